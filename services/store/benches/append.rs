//! Signed appends against plain inserts of the same bytes, in one run, on SQLite and PostgreSQL.
//!
//! - **store**: `Store::append` — per batch: leaf and parent hashes, one ed25519 signature over
//!   the new root, one transaction writing the entries, the new tree nodes and the signed root,
//!   acknowledged after commit.
//! - **plain, row by row** (anchor): a transaction per batch with one prepared `INSERT` per entry
//!   into a table of the same shape as the store's `entries` (log id, index, bytes).
//! - **plain, multi-row** (anchor): one multi-row `INSERT` statement per batch, in autocommit (a
//!   single statement is atomic by itself) — the fastest plain way, and the way the store writes
//!   on PostgreSQL (one statement per append). The ratio is taken against the faster anchor.
//!
//! Same database, same connection settings (SQLite: `sqlite_connect_options`, i.e. WAL with
//! `synchronous=FULL`; PostgreSQL: the server's defaults, `synchronous_commit=on`), same 1 KiB
//! entries, interleaved rounds, medians. PostgreSQL is the test server (`KITH_TEST_PG_URL`, or one
//! this bench starts like the tests do).
//!
//! Run: `cargo bench -p kith-store --bench append` (release). Writes its table into BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use kith_bench::{today, verdict, write_section};
use kith_store::Store;
use kith_store::backend::sqlite_connect_options;
use kith_store::log::Ed25519Signer;
use rand::RngCore;
use sqlx::{Connection, QueryBuilder};

const ROUNDS: usize = 7;
const ENTRY_BYTES: usize = 1024;

/// (batch size, entries per round)
const CASES: &[(usize, usize)] = &[(64, 8192), (1, 400)];

enum Plain {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

macro_rules! on_plain {
    ($p:expr, $c:ident, $DB:ident, $begin:ident => $body:expr) => {
        match $p {
            Plain::Sqlite($c) => {
                type $DB = sqlx::Sqlite;
                let $begin = "BEGIN IMMEDIATE";
                $body
            }
            Plain::Postgres($c) => {
                type $DB = sqlx::Postgres;
                let $begin = "BEGIN";
                $body
            }
        }
    };
}

impl Plain {
    async fn open(backend: &str, url: &str) -> Plain {
        match backend {
            "sqlite" => {
                let mut c =
                    sqlx::SqliteConnection::connect_with(&sqlite_connect_options(url).unwrap())
                        .await
                        .unwrap();
                sqlx::query(
                    "CREATE TABLE plain (log_id INTEGER NOT NULL, idx INTEGER NOT NULL, \
                     data BLOB NOT NULL, PRIMARY KEY (log_id, idx)) WITHOUT ROWID",
                )
                .execute(&mut c)
                .await
                .unwrap();
                Plain::Sqlite(c)
            }
            _ => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(
                    "CREATE TABLE plain (log_id BIGINT NOT NULL, idx BIGINT NOT NULL, \
                     data BYTEA NOT NULL, PRIMARY KEY (log_id, idx))",
                )
                .execute(&mut c)
                .await
                .unwrap();
                sqlx::query("ALTER TABLE plain ALTER COLUMN data SET STORAGE EXTERNAL")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Plain::Postgres(c)
            }
        }
    }

    /// Inserts `entries` as log `log` in batches; returns entries per second.
    async fn insert(
        &mut self,
        log: i64,
        entries: &[Vec<u8>],
        batch: usize,
        multi_row: bool,
    ) -> f64 {
        let t = Instant::now();
        on_plain!(self, c, DB, begin => {
            for (k, chunk) in entries.chunks(batch).enumerate() {
                let base = (k * batch) as i64;
                if multi_row {
                    // One statement: atomic by itself, no BEGIN/COMMIT round trips.
                    let mut qb = QueryBuilder::<DB>::new("INSERT INTO plain (log_id, idx, data) ");
                    qb.push_values(chunk.iter().enumerate(), |mut b, (j, e)| {
                        b.push_bind(log).push_bind(base + j as i64).push_bind(e.as_slice());
                    });
                    qb.build().execute(&mut *c).await.unwrap();
                } else {
                    sqlx::query(begin).execute(&mut *c).await.unwrap();
                    for (j, e) in chunk.iter().enumerate() {
                        sqlx::query("INSERT INTO plain (log_id, idx, data) VALUES ($1, $2, $3)")
                            .bind(log)
                            .bind(base + j as i64)
                            .bind(e.as_slice())
                            .execute(&mut *c)
                            .await
                            .unwrap();
                    }
                    sqlx::query("COMMIT").execute(&mut *c).await.unwrap();
                }
            }
        });
        entries.len() as f64 / t.elapsed().as_secs_f64()
    }
}

async fn store_appends(store: &Store, seed: u64, entries: &[Vec<u8>], batch: usize) -> f64 {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = 0xbe;
    let signer = Ed25519Signer::from_seed(s);
    let t = Instant::now();
    for chunk in entries.chunks(batch) {
        store.append(&signer, chunk).await.unwrap();
    }
    let rate = entries.len() as f64 / t.elapsed().as_secs_f64();
    assert_eq!(
        store.log_info(&signer.log_key()).await.unwrap().length,
        entries.len() as u64
    );
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    backend: &'static str,
    batch: usize,
    store: f64,
    row_by_row: f64,
    multi_row: f64,
    /// Median over rounds of store ÷ the round's faster anchor.
    ratio: f64,
}

async fn measure(backend: &'static str, url: &str) -> Vec<Row> {
    let store = Store::open(url).await.unwrap();
    let mut plain = Plain::open(backend, url).await;
    let mut rng = rand::thread_rng();
    let mut rows = Vec::new();
    let mut log = 0i64;
    for &(batch, count) in CASES {
        let (mut s, mut r, mut m, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let entries: Vec<Vec<u8>> = (0..count)
                .map(|_| {
                    let mut e = vec![0u8; ENTRY_BYTES];
                    rng.fill_bytes(&mut e);
                    e
                })
                .collect();
            log += 1;
            // Alternate who goes first (WAL checkpoints and the like land on whoever follows).
            let (store_rate, row_rate, multi_rate) = if round % 2 == 0 {
                let s = store_appends(&store, log as u64, &entries, batch).await;
                let r = plain.insert(log * 2, &entries, batch, false).await;
                let m = plain.insert(log * 2 + 1, &entries, batch, true).await;
                (s, r, m)
            } else {
                let m = plain.insert(log * 2 + 1, &entries, batch, true).await;
                let r = plain.insert(log * 2, &entries, batch, false).await;
                let s = store_appends(&store, log as u64, &entries, batch).await;
                (s, r, m)
            };
            // The disk's fsync latency drifts with the machine's other work: pair each round's
            // store figure with that round's anchors.
            ratios.push(store_rate / row_rate.max(multi_rate));
            s.push(store_rate);
            r.push(row_rate);
            m.push(multi_rate);
        }
        let row = Row {
            backend,
            batch,
            store: median(s),
            row_by_row: median(r),
            multi_row: median(m),
            ratio: median(ratios),
        };
        eprintln!(
            "{backend} batch {batch}: store {:.0}/s, plain row-by-row {:.0}/s, plain multi-row {:.0}/s, ratio {:.2}",
            row.store, row.row_by_row, row.multi_row, row.ratio
        );
        rows.push(row);
    }
    store.close().await;
    rows
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut rows = measure("sqlite", &sqlite_url).await;
    let pg = common::postgres().await;
    rows.extend(measure("postgres", &pg.url).await);

    let mut body = format!(
        "Measured {} by `cargo bench -p kith-store --bench append` (release, {ROUNDS} interleaved \
         rounds, medians; the ratio is the median of per-round ratios to that round's faster anchor; {ENTRY_BYTES}-byte random entries; one writer; SQLite WAL with \
         `synchronous=FULL` on the temp dir's disk, PostgreSQL 15 on 127.0.0.1 with default \
         `synchronous_commit=on`).\n\n\
         | backend | batch | signed appends/s | plain row-by-row/s | plain multi-row/s | ratio to the faster anchor (median of rounds) |\n\
         |---|---:|---:|---:|---:|---:|\n",
        today()
    );
    let mut all_met = true;
    for r in &rows {
        all_met &= r.ratio >= 0.5;
        body.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2}× |\n",
            r.backend, r.batch, r.store, r.row_by_row, r.multi_row, r.ratio
        ));
    }
    body.push_str(&format!(
        "\nTarget: signed appends at ≥ 0.5× plain inserts of the same bytes, every row — {}.\n",
        verdict(all_met)
    ));
    write_section("store-append", &body);
    print!("{body}");
}
