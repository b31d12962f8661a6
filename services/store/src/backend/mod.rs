//! Persistence: logs, entries, tree nodes and fork evidence in SQLite or PostgreSQL (sqlx),
//! chosen by URL (`sqlite://path`, `postgres://…`). The same SQL runs on both; only the schema
//! files, the way a write transaction begins, and the append statement on PostgreSQL differ.
//!
//! What is stored, per log: one `logs` row (key, the held signed root and its length and byte
//! length, the forked flag), `entries` rows (index → ciphertext, plus `tree`: the nodes that
//! entry's append completed — its leaf and each parent of which it is the rightmost entry — so
//! a writer's tree costs no rows of its own, like hypercore's flat tree file), `nodes` rows for
//! nodes held without their completing entry (a sparse holder's proof nodes), and
//! `fork_evidence` rows. Every stored node and entry has been proven against a signed root: a
//! writer's own appends compute them, remote ones are verified first. So the held root's peaks
//! are always held, and every held node's path up to them too (upgrades reveal the old peaks),
//! which is what lets a sparse holder prove what it has.
//!
//! Durability. An append is one transaction (entries with their new nodes, and the new signed
//! root, under an optimistic check on the old length) and is acknowledged only after `COMMIT`
//! returns. SQLite runs in WAL mode with `synchronous=FULL`: the WAL is fsynced at every commit,
//! so an acknowledged append survives `kill -9` *and* power loss. (`NORMAL` in WAL mode would
//! survive `kill -9` — the WAL write reaches the OS before the commit returns — but could lose
//! the last commits on power loss, and a message its sender was told is saved must not vanish.)
//! PostgreSQL's commit is durable with the server's default `synchronous_commit=on`.
//!
//! Bad input changes nothing: every check (sizes, signatures, proofs, fork rules) runs before
//! the write transaction starts.

mod copy;
mod migrate;

pub use copy::{CopyReport, copy_store};

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use crate::error::StoreError;
use crate::log::tree::{self, Appender, Node};
use crate::log::{
    ForkEvidence, LogKey, MAX_BATCH_ENTRIES, MAX_ENTRY_BYTES, MAX_LOG_LENGTH, NodeClaim, Proof,
    RangeSet, RootSigner, SignedRoot, Targets, UnsignedRoot,
};

/// Rows per multi-row `INSERT` (4 binds each: well under SQLite's and PostgreSQL's limits).
const INSERT_CHUNK: usize = 256;
/// Indices per `IN (…)` lookup.
const LOOKUP_CHUNK: usize = 500;
/// Entries per step when verifying a whole log.
const VERIFY_CHUNK: u64 = 512;

/// The two backends: the pool, and the connection kept for writes.
pub(crate) enum Db {
    Sqlite(SqlitePool, WriterConn<sqlx::Sqlite>),
    Postgres(PgPool, WriterConn<sqlx::Postgres>),
}

/// A pooled connection kept between writes. Taking a connection from sqlx's pool and giving it
/// back costs about half as much as a single-row insert on PostgreSQL (measured: ~140 µs on top
/// of ~280 µs), so writes reuse one. Whoever finds it busy uses the pool; a connection whose
/// write failed is closed, never kept.
pub(crate) type WriterConn<DB> = tokio::sync::Mutex<Option<PoolConnection<DB>>>;

type WriterGuard<'a, DB> = tokio::sync::MutexGuard<'a, Option<PoolConnection<DB>>>;

/// Takes the kept writer connection if it is free, else one from the pool.
pub(crate) async fn take_writer<'a, DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    kept: &'a WriterConn<DB>,
) -> Result<(Option<WriterGuard<'a, DB>>, PoolConnection<DB>), StoreError> {
    let mut guard = kept.try_lock().ok();
    let conn = match guard.as_mut().and_then(|g| g.take()) {
        Some(conn) => conn,
        None => pool.acquire().await?,
    };
    Ok((guard, conn))
}

/// After a write: keep the connection for the next one if the write succeeded (and the slot was
/// ours), close it if the write failed, else give it back to the pool.
pub(crate) fn release_writer<DB: sqlx::Database, T>(
    guard: Option<WriterGuard<'_, DB>>,
    conn: PoolConnection<DB>,
    result: &Result<T, StoreError>,
) {
    match (result, guard) {
        (Err(_), _) => drop(conn.detach()),
        (Ok(_), Some(mut slot)) => *slot = Some(conn),
        (Ok(_), None) => drop(conn),
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool and `$DB` to its sqlx database type.
/// The body is compiled once per backend.
macro_rules! on_db {
    ($db:expr, $pool:ident, $DB:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool, _) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            Db::Postgres($pool, _) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}

/// Runs `$body` inside a write transaction `$tx` (SQLite: `BEGIN IMMEDIATE`, so two writers never
/// deadlock upgrading read locks) and evaluates to its `Result`. The body commits; an early
/// return or error rolls back.
///
/// On SQLite a failed transaction's connection is closed instead of going back to the pool:
/// after some errors (a full disk) SQLite has already rolled the transaction back, sqlx's
/// `ROLLBACK` then fails, and sqlx would go on believing the connection is inside a transaction.
macro_rules! in_write_tx {
    ($db:expr, $tx:ident, $DB:ident => $body:expr) => {
        match $db {
            Db::Sqlite(pool, kept) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                let (guard, mut conn) = take_writer(pool, kept).await?;
                let result: Result<_, StoreError> = async {
                    let mut $tx =
                        sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
                    $body
                }
                .await;
                release_writer(guard, conn, &result);
                result
            }
            Db::Postgres(pool, kept) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                let (guard, mut conn) = take_writer(pool, kept).await?;
                let result: Result<_, StoreError> = async {
                    let mut $tx = sqlx::Connection::begin(&mut *conn).await?;
                    $body
                }
                .await;
                release_writer(guard, conn, &result);
                result
            }
        }
    };
}

mod mirror;
mod topics;
pub use mirror::{EvictReport, MirrorRow};
pub use topics::{TopicMirrorRow, TopicRow};
pub(crate) use {in_write_tx, on_db};

/// A log as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogInfo {
    pub key: LogKey,
    /// The held root's length (0 if no root is held yet).
    pub length: u64,
    /// Total entry bytes under the held root.
    pub byte_length: u64,
    pub root: Option<SignedRoot>,
    /// How many entries are held (all of `[0, length)` for a full copy).
    pub held_entries: u64,
    pub forked: bool,
}

/// What storing remote entries did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Verified and stored; `root` is the held root afterwards (the offered one if it was longer).
    Stored { root: SignedRoot, upgraded: bool },
    /// The offered root contradicts what is held: the log is now marked forked and the evidence
    /// kept. Nothing else was stored.
    Forked(ForkEvidence),
}

/// Totals over the whole store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub backend: &'static str,
    pub logs: u64,
    pub forked_logs: u64,
    pub entries: u64,
    pub entry_bytes: u64,
    pub nodes: u64,
    pub fork_evidence: u64,
}

/// The result of checking a whole log against its signed root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub length: u64,
    pub held_entries: u64,
}

struct LogRow {
    id: i64,
    length: u64,
    byte_length: u64,
    root: Option<SignedRoot>,
    forked: bool,
}

/// A writer's tree state, cached between appends (checked against the database by every append's
/// optimistic `UPDATE`).
struct WriterState {
    log_id: i64,
    appender: Appender,
}

/// The store: a database of logs.
pub struct Store {
    pub(crate) db: Db,
    /// One lock per log this process appends to, so appends to a log are serialised here; other
    /// processes are caught by the optimistic length check.
    writers: Mutex<HashMap<LogKey, Arc<tokio::sync::Mutex<Option<WriterState>>>>>,
    /// The logs this node writes, as recorded in `own_logs` (loaded at open, added to when a
    /// writer first appends here).
    own: Mutex<HashSet<LogKey>>,
    /// What [`Store::subscribe`] hands out: one message per committed change to a log.
    updates: tokio::sync::broadcast::Sender<LogUpdate>,
    /// Where file block data is kept (see [`Store::open_with_blob_dir`]); `None`: in the
    /// database's `file_blocks.data`.
    pub(crate) blobs: Option<crate::files::blobs::BlobDir>,
}

/// A committed change to a log, as [`Store::subscribe`] reports it: entries `[start, end)` were
/// stored (empty for a root-only upgrade) and the held root is now `length` long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogUpdate {
    pub key: LogKey,
    pub length: u64,
    pub start: u64,
    pub end: u64,
}

/// How many updates a slow subscriber may fall behind before it sees `Lagged`.
const UPDATE_CAPACITY: usize = 1024;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

pub(crate) fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange)
}

pub(crate) fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative value {v}")))
}

fn check_batch<E: AsRef<[u8]>>(entries: &[E]) -> Result<(), StoreError> {
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(StoreError::BatchTooLarge {
            count: entries.len(),
        });
    }
    for e in entries {
        let size = e.as_ref().len();
        if size > MAX_ENTRY_BYTES {
            return Err(StoreError::EntryTooLarge { size });
        }
    }
    Ok(())
}

fn node_from_row(hash: Vec<u8>, size: i64) -> Result<Node, StoreError> {
    Ok(Node {
        hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("node hash is not 32 bytes".into()))?,
        size: to_u64(size)?,
    })
}

/// How long [`Store::open`] retries an open that SQLite answered with `SQLITE_BUSY`.
pub const OPEN_BUSY_RETRY: Duration = Duration::from_secs(30);

/// Whether `error` is SQLite's `SQLITE_BUSY` / `SQLITE_LOCKED` (the database file is in use).
fn is_busy(error: &StoreError) -> bool {
    match error {
        StoreError::Database(sqlx::Error::Database(db)) => {
            // Primary result codes 5 (BUSY) and 6 (LOCKED); extended codes keep them in the
            // low byte.
            db.code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// The SQLite connection options [`Store::open`] uses for `url`: WAL, `synchronous=FULL`, foreign
/// keys, a 30 s busy timeout, created if missing, and 16 KiB pages for a new database. Public so
/// that tools and benchmarks that must match the store's settings use exactly these.
///
/// The page size: `entries` is a `WITHOUT ROWID` table, whose rows live in the B-tree itself,
/// and SQLite keeps at most ~1,000 bytes of such a row on a 4 KiB page — so every 1 KiB entry
/// (plus its key and `tree` column) spilled to an overflow page of its own. With 16 KiB pages
/// up to ~4,000 bytes stay in place: measured, 4–5× the appends and the replication rate of
/// 1 KiB entries. A database created with another page size keeps it (SQLite ignores the
/// setting once a database has tables, and in WAL mode).
pub fn sqlite_connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30))
        .page_size(16384))
}

/// Splits sorted, deduplicated `indices` into dense runs `(first, last)` (at least 16 indices,
/// gaps of at most 4) and the rest.
fn split_runs(indices: &[u64]) -> (Vec<(u64, u64)>, Vec<u64>) {
    const RUN_MIN: usize = 16;
    const MAX_GAP: u64 = 4;
    let (mut runs, mut singles) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < indices.len() {
        let mut j = i + 1;
        while j < indices.len() && indices[j] - indices[j - 1] <= MAX_GAP {
            j += 1;
        }
        if j - i >= RUN_MIN {
            runs.push((indices[i], indices[j - 1]));
        } else {
            singles.extend_from_slice(&indices[i..j]);
        }
        i = j;
    }
    (runs, singles)
}

/// Bytes per node in an entry's `tree` column: hash, then size (u64 LE).
const NODE_BYTES: usize = 40;

/// The size of entry `entry`'s `tree` column.
fn tree_blob_len(entry: u64) -> usize {
    (1 + entry.trailing_ones() as usize) * NODE_BYTES
}

fn decode_node(bytes: &[u8]) -> Node {
    Node {
        hash: bytes[..32].try_into().expect("32 bytes"),
        size: u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")),
    }
}

/// Entry `entry`'s `tree` column from nodes that include every node it completes.
fn tree_blob(entry: u64, nodes: impl Fn(u64) -> Option<Node>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(tree_blob_len(entry));
    for i in tree::completed_by(entry) {
        let n = nodes(i)?;
        out.extend_from_slice(&n.hash);
        out.extend_from_slice(&n.size.to_le_bytes());
    }
    Some(out)
}

/// The blob dir [`Store::open`] uses for `url`: `<db path>-blobs` for a SQLite file (so two
/// databases in one directory never share one), `None` for an in-memory SQLite database and for
/// PostgreSQL (their block data stays in the database).
pub fn default_blob_dir(url: &str) -> Result<Option<std::path::PathBuf>, StoreError> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = sqlite_connect_options(url)?;
    let mut dir = options.get_filename().as_os_str().to_owned();
    dir.push("-blobs");
    Ok(Some(std::path::PathBuf::from(dir)))
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    ///
    /// `sqlite://path` (or `sqlite:path`) is a file, created if missing; `postgres://…` or
    /// `postgresql://…` a server database (which must exist).
    ///
    /// Several processes (or stores in one process) may open a fresh SQLite file at once: its
    /// switch to WAL and the first migration need the file to themselves, and SQLite answers
    /// `SQLITE_BUSY` at once (no busy wait) where two connections would otherwise deadlock.
    /// Such an open is retried, with backoff, for up to [`OPEN_BUSY_RETRY`].
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with_blob_dir(url, None).await
    }

    /// [`Store::open`], keeping file block data (see [`crate::files`]) as files in `blob_dir`
    /// (created, mode 0700, if missing): one sparse data file per file, the database keeping
    /// which blocks are held.
    ///
    /// Without a blob dir: a SQLite file database uses [`default_blob_dir`] (`<db path>-blobs`,
    /// beside it like SQLite's `-wal` and `-shm`); an in-memory SQLite database and a
    /// PostgreSQL database keep block data in the database (`file_blocks.data`), as before —
    /// correct but slower (a PostgreSQL server has no natural place for files of its own on
    /// this machine, and a dir under the temp dir would not be durable).
    ///
    /// A blob dir belongs to one database: its data files are named by the database's file
    /// rows. Blocks written to a blob dir are read from it, so reopen a store with the same
    /// blob dir (reading them without it is [`StoreError::Corrupt`]); blocks kept in the
    /// database are read from there whatever the blob dir. Opening removes data files whose
    /// file row is gone (a crash while deleting a file left them).
    pub async fn open_with_blob_dir(
        url: &str,
        blob_dir: Option<std::path::PathBuf>,
    ) -> Result<Store, StoreError> {
        let blob_dir = match blob_dir {
            Some(dir) => Some(dir),
            None => default_blob_dir(url)?,
        };
        let mut store = Self::open_busy_retry(url).await?;
        if let Some(dir) = blob_dir {
            store.blobs = Some(
                crate::files::blobs::blocking(move || crate::files::blobs::BlobDir::open(dir))
                    .await?,
            );
        }
        store
            .sweep_stale_imports(crate::files::store::stale_import_cutoff())
            .await?;
        if store.blobs.is_some() {
            store.sweep_orphan_data_files().await?;
        }
        Ok(store)
    }

    /// The blob dir in use, if block data is kept in files.
    pub fn blob_dir(&self) -> Option<&std::path::Path> {
        self.blobs.as_ref().map(|b| b.dir())
    }

    async fn open_busy_retry(url: &str) -> Result<Store, StoreError> {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            match Self::open_once(url).await {
                Err(error) if is_busy(&error) && started.elapsed() < OPEN_BUSY_RETRY => {
                    tracing::debug!(%error, "store database busy while opening; retrying");
                    tokio::time::sleep(
                        delay
                            + Duration::from_millis(
                                rand_core::RngCore::next_u64(&mut rand_core::OsRng) % 10,
                            ),
                    )
                    .await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    async fn open_once(url: &str) -> Result<Store, StoreError> {
        let db = if url.starts_with("sqlite:") {
            let options = sqlite_connect_options(url)?;
            // An in-memory database exists once per connection: keep one.
            let max = if url.contains(":memory:") { 1 } else { 4 };
            // No ping before each use: it would be a worker-thread round trip per statement, and
            // a broken connection fails the statement anyway (a typed database error).
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .test_before_acquire(false)
                .connect_with(options)
                .await?;
            Db::Sqlite(pool, WriterConn::default())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
            // No ping before each use: it would double the round trips of an append.
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .connect_with(options)
                .await?;
            Db::Postgres(pool, WriterConn::default())
        } else {
            return Err(StoreError::InvalidUrl(
                "expected sqlite://path or postgres://…".into(),
            ));
        };
        migrate::run(&db).await?;
        let own = on_db!(&db, pool, DB => {
            sqlx::query_scalar::<_, Vec<u8>>("SELECT key FROM own_logs")
                .fetch_all(pool)
                .await?
        });
        let own = own
            .into_iter()
            .map(|k| {
                let bytes: [u8; 32] = k
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("an own log's key is not 32 bytes".into()))?;
                LogKey::from_bytes(bytes)
                    .map_err(|_| StoreError::Corrupt("an own log's key is not a public key".into()))
            })
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Store {
            db,
            writers: Mutex::new(HashMap::new()),
            own: Mutex::new(own),
            updates: tokio::sync::broadcast::channel(UPDATE_CAPACITY).0,
            blobs: None,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(..) => "sqlite",
            Db::Postgres(..) => "postgres",
        }
    }

    /// Every committed change to any log from now on: appends, and remote entries or roots
    /// stored. Sent after the commit, so whatever a subscriber reads back is there. A subscriber
    /// that falls more than 1024 updates behind gets `Lagged` and should re-read what it follows.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LogUpdate> {
        self.updates.subscribe()
    }

    fn notify(&self, update: LogUpdate) {
        // No subscriber is not an error.
        let _ = self.updates.send(update);
    }

    /// Whether `key`'s log is this node's own: it appended to it with the writer's key, in this
    /// process or an earlier one (recorded in `own_logs`). Such a log is never mirrored,
    /// evicted or deleted.
    pub fn writes(&self, key: &LogKey) -> bool {
        self.writers
            .lock()
            .expect("writers lock poisoned")
            .contains_key(key)
            || self.own.lock().expect("own lock poisoned").contains(key)
    }

    /// The logs recorded as this node's own, sorted.
    pub fn own_logs(&self) -> Vec<LogKey> {
        let mut keys: Vec<LogKey> = self
            .own
            .lock()
            .expect("own lock poisoned")
            .iter()
            .copied()
            .collect();
        keys.sort_by_key(|k| *k.as_bytes());
        keys
    }

    /// Records `key`'s log as this node's own (see [`Store::writes`]).
    pub async fn mark_own(&self, key: &LogKey) -> Result<(), StoreError> {
        if self.own.lock().expect("own lock poisoned").contains(key) {
            return Ok(());
        }
        on_db!(&self.db, pool, DB => {
            sqlx::query("INSERT INTO own_logs (key) VALUES ($1) ON CONFLICT (key) DO NOTHING")
                .bind(key.as_bytes().as_slice())
                .execute(pool)
                .await?;
        });
        self.own.lock().expect("own lock poisoned").insert(*key);
        Ok(())
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        // The kept writer connection goes back first: `close` waits for every connection.
        match &self.db {
            Db::Sqlite(pool, kept) => {
                kept.lock().await.take();
                pool.close().await
            }
            Db::Postgres(pool, kept) => {
                kept.lock().await.take();
                pool.close().await
            }
        }
    }

    async fn log_row(&self, key: &LogKey) -> Result<Option<LogRow>, StoreError> {
        let row = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT id, length, byte_length, root, forked FROM logs WHERE key = $1")
                .bind(key.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<_, sqlx::Error> {
                    Ok((
                        r.try_get::<i64, _>(0)?,
                        r.try_get::<i64, _>(1)?,
                        r.try_get::<i64, _>(2)?,
                        r.try_get::<Option<Vec<u8>>, _>(3)?,
                        r.try_get::<i64, _>(4)?,
                    ))
                })
                .transpose()?
        });
        let Some((id, length, byte_length, root, forked)) = row else {
            return Ok(None);
        };
        let root = root
            .map(|bytes| {
                SignedRoot::from_bytes(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("stored root of {key}: {e}")))
            })
            .transpose()?;
        let length = to_u64(length)?;
        if root.map_or(0, |r| r.length()) != length || root.is_some_and(|r| r.key() != *key) {
            return Err(StoreError::Corrupt(format!(
                "stored root of {key} does not match its row"
            )));
        }
        Ok(Some(LogRow {
            id,
            length,
            byte_length: to_u64(byte_length)?,
            root,
            forked: forked != 0,
        }))
    }

    /// Creates the log's row if it does not exist yet and returns it.
    async fn ensure_log(&self, key: &LogKey) -> Result<LogRow, StoreError> {
        // Usually the log exists: a read, no write lock.
        if let Some(row) = self.log_row(key).await? {
            return Ok(row);
        }
        on_db!(&self.db, pool, DB => {
            sqlx::query("INSERT INTO logs (key) VALUES ($1) ON CONFLICT (key) DO NOTHING")
                .bind(key.as_bytes().as_slice())
                .execute(pool)
                .await?;
        });
        self.log_row(key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("log {key} vanished after insert")))
    }

    /// Creates an empty log (idempotent). Appending or storing remote entries creates it too.
    pub async fn create_log(&self, key: &LogKey) -> Result<LogInfo, StoreError> {
        self.ensure_log(key).await?;
        self.log_info(key).await
    }

    /// The held nodes at `indices`: from the `tree` column of the entry that completes each
    /// node if that entry is held, else from `nodes`.
    async fn nodes(&self, log_id: i64, indices: &[u64]) -> Result<HashMap<u64, Node>, StoreError> {
        let mut out = HashMap::with_capacity(indices.len());
        let mut completing: Vec<u64> = indices.iter().map(|&i| tree::completing_entry(i)).collect();
        completing.sort_unstable();
        completing.dedup();
        let mut trees: HashMap<u64, Vec<u8>> = HashMap::with_capacity(completing.len());
        for (idx, blob) in self
            .select_by_index(log_id, "entries", "tree", &completing)
            .await?
        {
            let entry = to_u64(idx)?;
            if blob.len() != tree_blob_len(entry) {
                return Err(StoreError::Corrupt(format!(
                    "tree nodes of entry {entry} have the wrong size"
                )));
            }
            trees.insert(entry, blob);
        }
        let mut rest = Vec::new();
        for &i in indices {
            match trees.get(&tree::completing_entry(i)) {
                Some(blob) => {
                    let at = tree::depth(i) as usize * NODE_BYTES;
                    out.insert(i, decode_node(&blob[at..at + NODE_BYTES]));
                }
                None => rest.push(i),
            }
        }
        rest.sort_unstable();
        rest.dedup();
        for (idx, row) in self
            .select_by_index(log_id, "nodes", "hash, size", &rest)
            .await?
        {
            // `hash ‖ size (i64 LE)`, see `select_by_index`.
            let (hash, size) = row.split_at(row.len().saturating_sub(8));
            let size = i64::from_le_bytes(size.try_into().expect("8 bytes"));
            out.insert(to_u64(idx)?, node_from_row(hash.to_vec(), size)?);
        }
        Ok(out)
    }

    /// `(idx, columns)` of `table`'s rows of `log_id` at the sorted, deduplicated `wanted`
    /// indices. `columns` is one blob column, or `"hash, size"` (then the value is `hash ‖ size
    /// as i64 LE`). Dense runs (a range proof's nodes, a batch's entries) are read by index
    /// range, one query each; the rest by `IN` lists.
    async fn select_by_index(
        &self,
        log_id: i64,
        table: &'static str,
        columns: &'static str,
        wanted: &[u64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let with_size = columns == "hash, size";
        let (runs, singles) = split_runs(wanted);
        let mut out = Vec::with_capacity(wanted.len());
        for (lo, hi) in runs {
            let rows = on_db!(&self.db, pool, DB => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT idx, {columns} FROM {table} WHERE log_id = $1 AND idx >= $2 AND idx <= $3"
                )))
                .bind(log_id)
                .bind(to_i64(lo)?)
                .bind(to_i64(hi)?)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> {
                    let mut v = r.try_get::<Vec<u8>, _>(1)?;
                    if with_size {
                        v.extend_from_slice(&r.try_get::<i64, _>(2)?.to_le_bytes());
                    }
                    Ok((r.try_get::<i64, _>(0)?, v))
                })
                .collect::<Result<Vec<_>, _>>()?
            });
            out.extend(rows.into_iter().filter(|(i, _)| {
                u64::try_from(*i).is_ok_and(|i| wanted.binary_search(&i).is_ok())
            }));
        }
        for chunk in singles.chunks(LOOKUP_CHUNK) {
            let rows = on_db!(&self.db, pool, DB => {
                let mut qb = QueryBuilder::<DB>::new(format!("SELECT idx, {columns} FROM {table} WHERE log_id = "));
                qb.push_bind(log_id);
                qb.push(" AND idx IN (");
                let mut sep = qb.separated(", ");
                for &i in chunk {
                    sep.push_bind(to_i64(i)?);
                }
                sep.push_unseparated(")");
                qb.build()
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .map(|r| -> Result<_, sqlx::Error> {
                        let mut v = r.try_get::<Vec<u8>, _>(1)?;
                        if with_size {
                            v.extend_from_slice(&r.try_get::<i64, _>(2)?.to_le_bytes());
                        }
                        Ok((r.try_get::<i64, _>(0)?, v))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    fn writer_slot(&self, key: LogKey) -> Arc<tokio::sync::Mutex<Option<WriterState>>> {
        self.writers
            .lock()
            .expect("writers lock poisoned")
            .entry(key)
            .or_default()
            .clone()
    }

    async fn load_writer(&self, key: &LogKey) -> Result<WriterState, StoreError> {
        let row = self.ensure_log(key).await?;
        self.mark_own(key).await?;
        if row.forked {
            return Err(StoreError::Forked { key: *key });
        }
        let indices = tree::full_roots(row.length);
        let held = self.nodes(row.id, &indices).await?;
        let peaks = indices
            .iter()
            .map(|i| held.get(i).copied())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Corrupt(format!("peaks of {key} are missing")))?;
        let appender = Appender::from_peaks(row.length, peaks)
            .ok_or_else(|| StoreError::Corrupt(format!("peaks of {key} do not fit")))?;
        if appender.byte_length() != row.byte_length
            || row.root.is_some_and(|r| r.hash() != &appender.root_hash())
        {
            return Err(StoreError::Corrupt(format!(
                "peaks of {key} do not match its signed root"
            )));
        }
        Ok(WriterState {
            log_id: row.id,
            appender,
        })
    }

    /// Appends `entries` to the signer's log as one batch: computes the new tree nodes, has the
    /// new root signed, and writes entries, nodes and root in one transaction. Returns the new
    /// signed root once the transaction has committed.
    pub async fn append<E: AsRef<[u8]>>(
        &self,
        signer: &dyn RootSigner,
        entries: &[E],
    ) -> Result<SignedRoot, StoreError> {
        check_batch(entries)?;
        if entries.is_empty() {
            return Err(StoreError::Malformed("empty append"));
        }
        let key = signer.log_key();
        let slot = self.writer_slot(key);
        let mut cached = slot.lock().await;
        // The cache may be stale if another process appended; then the write is refused and we
        // retry once from the database.
        for attempt in 0..2 {
            let state = match cached.take() {
                Some(s) => s,
                None => self.load_writer(&key).await?,
            };
            let old_length = state.appender.length();
            let mut appender = state.appender.clone();
            // Each entry's append emits exactly the nodes it completes, by depth: its `tree`.
            let mut trees = Vec::with_capacity(entries.len());
            let mut new_nodes = Vec::with_capacity(8);
            for e in entries {
                new_nodes.clear();
                appender
                    .append(e.as_ref(), &mut new_nodes)
                    .ok_or(StoreError::OutOfRange)?;
                let mut blob = Vec::with_capacity(new_nodes.len() * NODE_BYTES);
                for (_, n) in &new_nodes {
                    blob.extend_from_slice(&n.hash);
                    blob.extend_from_slice(&n.size.to_le_bytes());
                }
                trees.push(blob);
            }
            let unsigned = UnsignedRoot {
                key,
                length: appender.length(),
                hash: appender.root_hash(),
            };
            let signature = signer.sign_root(&unsigned).await?;
            let root = if signer.signs_in_process() && unsigned.length <= MAX_LOG_LENGTH {
                SignedRoot::from_trusted_signer(unsigned, signature)
            } else {
                SignedRoot::new(unsigned, signature)?
            };
            let written = self
                .write_append(
                    state.log_id,
                    old_length,
                    appender.byte_length(),
                    &root,
                    entries,
                    &trees,
                )
                .await?;
            if written {
                *cached = Some(WriterState {
                    log_id: state.log_id,
                    appender,
                });
                self.notify(LogUpdate {
                    key,
                    length: root.length(),
                    start: old_length,
                    end: root.length(),
                });
                return Ok(root);
            }
            if self.log_row(&key).await?.is_some_and(|r| r.forked) {
                return Err(StoreError::Forked { key });
            }
            if attempt == 1 {
                break;
            }
        }
        Err(StoreError::Conflict { key })
    }

    /// The append transaction. Returns `false` (and writes nothing) if the log's length is no
    /// longer `old_length` or the log is forked.
    async fn write_append<E: AsRef<[u8]>>(
        &self,
        log_id: i64,
        old_length: u64,
        byte_length: u64,
        root: &SignedRoot,
        entries: &[E],
        trees: &[Vec<u8>],
    ) -> Result<bool, StoreError> {
        let root_bytes = root.to_bytes();
        if let Db::Postgres(pool, kept) = &self.db {
            return self
                .write_append_postgres(
                    pool,
                    kept,
                    log_id,
                    old_length,
                    byte_length,
                    &root_bytes,
                    root,
                    entries,
                    trees,
                )
                .await;
        }
        in_write_tx!(&self.db, tx, DB => {
            // The root first: on PostgreSQL this takes the row lock, so a concurrent appender
            // waits here and then finds the length changed.
            let updated = sqlx::query(
                "UPDATE logs SET length = $1, byte_length = $2, root = $3 \
                 WHERE id = $4 AND length = $5 AND forked = 0",
            )
            .bind(to_i64(root.length())?)
            .bind(to_i64(byte_length)?)
            .bind(root_bytes.as_slice())
            .bind(log_id)
            .bind(to_i64(old_length)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Ok(false);
            }
            let rows: Vec<(u64, &[u8], &[u8])> = entries
                .iter()
                .zip(trees)
                .enumerate()
                .map(|(j, (e, t))| (old_length + j as u64, e.as_ref(), t.as_slice()))
                .collect();
            for chunk in rows.chunks(INSERT_CHUNK) {
                let mut qb = QueryBuilder::<DB>::new("INSERT INTO entries (log_id, idx, data, tree) ");
                qb.push_values(chunk, |mut b, (i, e, t)| {
                    b.push_bind(log_id)
                        .push_bind(*i as i64)
                        .push_bind(*e)
                        .push_bind(*t);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The append on PostgreSQL: one statement, so one round trip and its own transaction.
    /// The entry and node inserts read the `UPDATE`'s returned row, so if the optimistic check
    /// fails (another writer, or the log forked) nothing at all is written.
    #[allow(clippy::too_many_arguments)]
    async fn write_append_postgres<E: AsRef<[u8]>>(
        &self,
        pool: &PgPool,
        kept: &WriterConn<sqlx::Postgres>,
        log_id: i64,
        old_length: u64,
        byte_length: u64,
        root_bytes: &[u8],
        root: &SignedRoot,
        entries: &[E],
        trees: &[Vec<u8>],
    ) -> Result<bool, StoreError> {
        let first = to_i64(old_length)?;
        let mut qb = QueryBuilder::<sqlx::Postgres>::new("WITH u AS (UPDATE logs SET length = ");
        qb.push_bind(to_i64(root.length())?)
            .push(", byte_length = ")
            .push_bind(to_i64(byte_length)?)
            .push(", root = ")
            .push_bind(root_bytes)
            .push(" WHERE id = ")
            .push_bind(log_id)
            .push(" AND length = ")
            .push_bind(first)
            .push(
                " AND forked = 0 RETURNING id), \
                 e AS (INSERT INTO entries (log_id, idx, data, tree) \
                 SELECT u.id, v.idx, v.data, v.tree FROM u, (",
            );
        qb.push_values(
            entries.iter().zip(trees).enumerate(),
            |mut b, (j, (e, t))| {
                b.push_bind(first + j as i64)
                    .push_bind(e.as_ref())
                    .push_bind(t.as_slice());
            },
        );
        qb.push(") AS v (idx, data, tree)) SELECT COUNT(*) FROM u");
        let (guard, mut conn) = take_writer(pool, kept).await?;
        let result = async {
            let updated: i64 = qb.build().fetch_one(&mut *conn).await?.try_get(0)?;
            Ok(updated == 1)
        }
        .await;
        release_writer(guard, conn, &result);
        result
    }

    /// The log as held, or [`StoreError::LogNotFound`].
    pub async fn log_info(&self, key: &LogKey) -> Result<LogInfo, StoreError> {
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let held_entries = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT COUNT(*) FROM entries WHERE log_id = $1")
                .bind(row.id)
                .fetch_one(pool)
                .await?
                .try_get::<i64, _>(0)?
        });
        Ok(LogInfo {
            key: *key,
            length: row.length,
            byte_length: row.byte_length,
            root: row.root,
            held_entries: to_u64(held_entries)?,
            forked: row.forked,
        })
    }

    /// The held signed root of `key`'s log (`None` if the log is unknown or has no root yet):
    /// one row read, cheaper than [`Self::log_info`].
    pub async fn root(&self, key: &LogKey) -> Result<Option<SignedRoot>, StoreError> {
        Ok(self.log_row(key).await?.and_then(|r| r.root))
    }

    /// Every log's key (cheaper than [`Self::list_logs`]).
    pub async fn log_keys(&self) -> Result<Vec<LogKey>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT key FROM logs ORDER BY key")
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| r.try_get::<Vec<u8>, _>(0))
                .collect::<Result<Vec<_>, _>>()?
        });
        rows.iter()
            .map(|k| {
                LogKey::from_slice(k)
                    .map_err(|e| StoreError::Corrupt(format!("stored log key: {e}")))
            })
            .collect()
    }

    /// Every log, ordered by key.
    pub async fn list_logs(&self) -> Result<Vec<LogInfo>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT l.key, l.length, l.byte_length, l.root, l.forked, \
                 (SELECT COUNT(*) FROM entries e WHERE e.log_id = l.id) \
                 FROM logs l ORDER BY l.key",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<Vec<u8>, _>(0)?,
                    r.try_get::<i64, _>(1)?,
                    r.try_get::<i64, _>(2)?,
                    r.try_get::<Option<Vec<u8>>, _>(3)?,
                    r.try_get::<i64, _>(4)?,
                    r.try_get::<i64, _>(5)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(key, length, byte_length, root, forked, held)| {
                let key = LogKey::from_slice(&key)
                    .map_err(|e| StoreError::Corrupt(format!("stored log key: {e}")))?;
                let root = root
                    .map(|b| {
                        SignedRoot::from_bytes(&b)
                            .map_err(|e| StoreError::Corrupt(format!("stored root of {key}: {e}")))
                    })
                    .transpose()?;
                Ok(LogInfo {
                    key,
                    length: to_u64(length)?,
                    byte_length: to_u64(byte_length)?,
                    root,
                    held_entries: to_u64(held)?,
                    forked: forked != 0,
                })
            })
            .collect()
    }

    /// Entries `[start, end)`; every one must be held.
    pub async fn get_range(
        &self,
        key: &LogKey,
        start: u64,
        end: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        if start > end || end - start > MAX_BATCH_ENTRIES as u64 {
            return Err(StoreError::OutOfRange);
        }
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        if end > row.length {
            return Err(StoreError::OutOfRange);
        }
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT idx, data FROM entries WHERE log_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
            )
            .bind(row.id)
            .bind(to_i64(start)?)
            .bind(to_i64(end)?)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut out = Vec::with_capacity(rows.len());
        for (expected, (idx, data)) in (start..end).zip(rows) {
            if to_u64(idx)? != expected {
                return Err(StoreError::EntryNotHeld { index: expected });
            }
            out.push(data);
        }
        if (out.len() as u64) < end - start {
            return Err(StoreError::EntryNotHeld {
                index: start + out.len() as u64,
            });
        }
        Ok(out)
    }

    /// One entry.
    pub async fn get_entry(&self, key: &LogKey, index: u64) -> Result<Vec<u8>, StoreError> {
        let end = index.checked_add(1).ok_or(StoreError::OutOfRange)?;
        Ok(self.get_range(key, index, end).await?.remove(0))
    }

    /// The entries held, as ranges.
    pub async fn held(&self, key: &LogKey) -> Result<RangeSet, StoreError> {
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        // Gaps and islands: consecutive indices share `idx - row_number`.
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT MIN(idx), MAX(idx) FROM \
                 (SELECT idx, idx - ROW_NUMBER() OVER (ORDER BY idx) AS grp FROM entries WHERE log_id = $1) runs \
                 GROUP BY grp ORDER BY 1",
            )
            .bind(row.id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut set = RangeSet::new();
        for (lo, hi) in rows {
            set.insert(to_u64(lo)?, to_u64(hi)? + 1);
        }
        Ok(set)
    }

    /// A proof of `targets` against the held root, from the held nodes. A sparse holder gets
    /// [`StoreError::NotHeld`] for what it lacks.
    pub async fn prove(
        &self,
        key: &LogKey,
        targets: &Targets,
    ) -> Result<(SignedRoot, Proof), StoreError> {
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let root = row.root.ok_or(StoreError::OutOfRange)?;
        let proof = self.prove_at(row.id, root.length(), targets).await?;
        Ok((root, proof))
    }

    async fn prove_at(
        &self,
        log_id: i64,
        length: u64,
        targets: &Targets,
    ) -> Result<Proof, StoreError> {
        let needed = crate::log::proof::required_nodes(length, targets)?;
        let held = self.nodes(log_id, &needed).await?;
        Proof::build(length, targets, |i| held.get(&i).copied())
    }

    /// Entries `[start, end)` with their proof against the held root; with `known_length`, the
    /// proof also reveals the peaks of that length (an upgrade for a receiver holding it).
    pub async fn get_range_with_proof(
        &self,
        key: &LogKey,
        start: u64,
        end: u64,
        known_length: Option<u64>,
    ) -> Result<(SignedRoot, Vec<Vec<u8>>, Proof), StoreError> {
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let root = row.root.ok_or(StoreError::OutOfRange)?;
        if start > end {
            return Err(StoreError::OutOfRange);
        }
        let targets = match known_length {
            Some(k) if k < root.length() => Targets::range_upgrading_from(start, end - start, k),
            _ => Targets::range(start, end - start),
        };
        let proof = self.prove_at(row.id, root.length(), &targets).await?;
        let entries = self.get_range(key, start, end).await?;
        Ok((root, entries, proof))
    }

    /// For a peer that holds a root of `length` (one this store held, so its nodes are here):
    /// entries from `[start, end)` with a proof against that root, revealing the peaks of
    /// `upgrade_from` if given. At most `max_bytes` of entries (but at least one) are returned,
    /// a prefix of the range. The counterpart of [`Self::put_remote_at`].
    pub async fn get_range_with_proof_at(
        &self,
        key: &LogKey,
        start: u64,
        end: u64,
        length: u64,
        upgrade_from: Option<u64>,
        max_bytes: u64,
    ) -> Result<(Vec<Vec<u8>>, Proof), StoreError> {
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        if start > end
            || end > length
            || length > row.length
            || end - start > MAX_BATCH_ENTRIES as u64
            || upgrade_from.is_some_and(|u| u > length)
        {
            return Err(StoreError::OutOfRange);
        }
        if start == end {
            // The root's upgrade proof alone.
            let targets = match upgrade_from {
                Some(k) if k < length => Targets::range_upgrading_from(start, 0, k),
                _ => Targets::range(start, 0),
            };
            return Ok((Vec::new(), self.prove_at(row.id, length, &targets).await?));
        }
        // Entries in chunks, until the byte budget: at most 256 rows (16 MiB of the largest
        // entries) are read beyond what is sent.
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0u64;
        let mut at = start;
        let mut chunk = 64u64;
        'read: while at < end {
            let to = (at + chunk).min(end);
            let rows = on_db!(&self.db, pool, DB => {
                sqlx::query(
                    "SELECT idx, data FROM entries WHERE log_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                )
                .bind(row.id)
                .bind(to_i64(at)?)
                .bind(to_i64(to)?)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)) })
                .collect::<Result<Vec<_>, _>>()?
            });
            let asked = to - at;
            let got = rows.len() as u64;
            for (idx, data) in rows {
                let size = data.len() as u64;
                if to_u64(idx)? != at || (at > start && bytes + size > max_bytes) {
                    break 'read;
                }
                bytes += size;
                entries.push(data);
                at += 1;
            }
            if got < asked {
                break; // a gap: the rest is not held
            }
            let average = (bytes / entries.len() as u64).max(1);
            chunk = (max_bytes.saturating_sub(bytes) / average).clamp(16, 256);
        }
        if entries.is_empty() {
            return Err(StoreError::EntryNotHeld { index: start });
        }
        let targets = match upgrade_from {
            Some(k) if k < length => Targets::range_upgrading_from(start, at - start, k),
            _ => Targets::range(start, at - start),
        };
        let proof = self.prove_at(row.id, length, &targets).await?;
        Ok((entries, proof))
    }

    /// Stores entries `[start, start + entries.len())` of `root`'s log received from someone else,
    /// after verifying them with `proof` against `root`. If the log's held root is shorter, the
    /// proof must reveal its peaks (see [`Self::get_range_with_proof`]) and `root` becomes the held
    /// root. A root that contradicts the held one marks the log forked and returns the evidence.
    pub async fn put_remote<E: AsRef<[u8]>>(
        &self,
        root: &SignedRoot,
        start: u64,
        entries: &[E],
        proof: &Proof,
    ) -> Result<PutOutcome, StoreError> {
        self.put_remote_inner(root, start, entries, proof, None)
            .await
    }

    /// [`Self::put_remote`] for a proof made by [`Self::get_range_with_proof_at`]: it reveals
    /// the peaks of `upgrade_from` (if given), whatever this store holds now. A root longer than
    /// the held one is adopted only if the proof established the held root's peaks (it extends
    /// what is held); if it did not (the held root changed since the request was made: another
    /// peer or writer got here first), nothing is stored and the answer is
    /// [`StoreError::StaleRoot`] — ask again, the sender did nothing wrong. A proof that fails
    /// against `root` is [`StoreError::BadProof`]: the sender's fault.
    pub async fn put_remote_at<E: AsRef<[u8]>>(
        &self,
        root: &SignedRoot,
        start: u64,
        entries: &[E],
        proof: &Proof,
        upgrade_from: Option<u64>,
    ) -> Result<PutOutcome, StoreError> {
        if upgrade_from.is_some_and(|u| u > root.length()) {
            return Err(StoreError::OutOfRange);
        }
        self.put_remote_inner(root, start, entries, proof, Some(upgrade_from))
            .await
    }

    async fn put_remote_inner<E: AsRef<[u8]>>(
        &self,
        root: &SignedRoot,
        start: u64,
        entries: &[E],
        proof: &Proof,
        revealed: Option<Option<u64>>,
    ) -> Result<PutOutcome, StoreError> {
        check_batch(entries)?;
        let key = root.key();
        let row = self.ensure_log(&key).await?;
        if row.forked {
            return Err(StoreError::Forked { key });
        }
        let current = row.root;
        if let Some(cur) = current
            && cur.length() == root.length()
            && cur.hash() != root.hash()
        {
            let evidence = ForkEvidence::SameLength { a: cur, b: *root };
            return self.record_fork(row.id, evidence).await;
        }
        let reveal = match (revealed, current) {
            (Some(from), _) => from.map(tree::full_roots).unwrap_or_default(),
            (None, Some(cur)) if root.length() > cur.length() => tree::full_roots(cur.length()),
            (None, _) => Vec::new(),
        };
        let verified = proof.verify(root, start, entries, &reveal)?;
        if let Some(cur) = current
            && root.length() > cur.length()
            && !tree::full_roots(cur.length())
                .iter()
                .all(|i| verified.nodes.contains_key(i))
        {
            // The proof does not show that `root` extends the held root (it revealed another
            // length's peaks).
            return Err(StoreError::StaleRoot {
                offered: root.length(),
                held: cur.length(),
            });
        }

        // Everything proven must agree with what is held: a full node never changes.
        let indices: Vec<u64> = verified.nodes.keys().copied().collect();
        let held = self.nodes(row.id, &indices).await?;
        let conflict = verified
            .nodes
            .iter()
            .find(|(i, n)| held.get(i).is_some_and(|h| h != *n))
            .map(|(i, _)| *i);
        if let Some(index) = conflict {
            let cur = current
                .ok_or_else(|| StoreError::Corrupt(format!("log {key} holds nodes but no root")))?;
            let ours = self.node_claim(row.id, cur, index).await?;
            let theirs = NodeClaim::build(*root, index, |i| verified.nodes.get(&i).copied())?;
            let evidence = ForkEvidence::ConflictingNode {
                a: Box::new(ours),
                b: Box::new(theirs),
            };
            return self.record_fork(row.id, evidence).await;
        }
        if let Some(cur) = current
            && root.length() < cur.length()
        {
            // An older root: its peaks must be nodes we hold, so what it proves is in our tree.
            let placed = tree::full_roots(root.length())
                .iter()
                .all(|i| held.contains_key(i));
            if !placed {
                return Err(StoreError::StaleRoot {
                    offered: root.length(),
                    held: cur.length(),
                });
            }
        }
        let upgrade = current.is_none_or(|cur| root.length() > cur.length());
        let byte_length: u64 = tree::full_roots(root.length())
            .iter()
            .map(|i| verified.nodes[i].size)
            .sum();
        // Each entry carries the nodes it completes (all established: they are its ancestors);
        // other new nodes get rows of their own.
        let end = start + entries.len() as u64;
        let mut rows = Vec::with_capacity(entries.len());
        for (j, e) in entries.iter().enumerate() {
            let index = start + j as u64;
            let blob = tree_blob(index, |i| verified.nodes.get(&i).copied())
                .ok_or(StoreError::BadProof)?;
            rows.push((index, e.as_ref(), blob));
        }
        let new_nodes: Vec<(u64, Node)> = verified
            .nodes
            .iter()
            .filter(|(i, _)| {
                let completing = tree::completing_entry(**i);
                !held.contains_key(i) && !(start..end).contains(&completing)
            })
            .map(|(i, n)| (*i, *n))
            .collect();
        let root_bytes = root.to_bytes();
        in_write_tx!(&self.db, tx, DB => {
            if upgrade {
                let updated = sqlx::query(
                    "UPDATE logs SET length = $1, byte_length = $2, root = $3 \
                     WHERE id = $4 AND length = $5 AND forked = 0",
                )
                .bind(to_i64(root.length())?)
                .bind(to_i64(byte_length)?)
                .bind(root_bytes.as_slice())
                .bind(row.id)
                .bind(to_i64(row.length)?)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated != 1 {
                    return Err(StoreError::Conflict { key });
                }
            }
            for chunk in rows.chunks(INSERT_CHUNK) {
                let mut qb = QueryBuilder::<DB>::new("INSERT INTO entries (log_id, idx, data, tree) ");
                qb.push_values(chunk, |mut b, (i, e, t)| {
                    b.push_bind(row.id)
                        .push_bind(*i as i64)
                        .push_bind(*e)
                        .push_bind(t.as_slice());
                });
                qb.push(" ON CONFLICT (log_id, idx) DO NOTHING");
                qb.build().execute(&mut *tx).await?;
            }
            for chunk in new_nodes.chunks(INSERT_CHUNK) {
                let mut qb = QueryBuilder::<DB>::new("INSERT INTO nodes (log_id, idx, hash, size) ");
                qb.push_values(chunk, |mut b, (i, n)| {
                    b.push_bind(row.id)
                        .push_bind(*i as i64)
                        .push_bind(n.hash.as_slice())
                        .push_bind(n.size as i64);
                });
                qb.push(" ON CONFLICT (log_id, idx) DO NOTHING");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })?;
        // The local writer's cached tree (if any) is now stale. If an append holds it right now,
        // that append's optimistic length check fails and it reloads instead.
        if upgrade
            && let Some(slot) = self.writers.lock().expect("writers lock").get(&key)
            && let Ok(mut cached) = slot.try_lock()
        {
            *cached = None;
        }
        if upgrade || !entries.is_empty() {
            self.notify(LogUpdate {
                key,
                length: root.length().max(current.map_or(0, |c| c.length())),
                start,
                end,
            });
        }
        Ok(PutOutcome::Stored {
            root: if upgrade {
                *root
            } else {
                current.unwrap_or(*root)
            },
            upgraded: upgrade,
        })
    }

    async fn node_claim(
        &self,
        log_id: i64,
        root: SignedRoot,
        index: u64,
    ) -> Result<NodeClaim, StoreError> {
        let mut needed = crate::log::proof::required_nodes(root.length(), &Targets::node(index))?;
        needed.push(index);
        let held = self.nodes(log_id, &needed).await?;
        NodeClaim::build(root, index, |i| held.get(&i).copied())
    }

    async fn record_fork(
        &self,
        log_id: i64,
        evidence: ForkEvidence,
    ) -> Result<PutOutcome, StoreError> {
        evidence.verify()?;
        let bytes = evidence.to_bytes();
        let digest = blake3::hash(&bytes);
        in_write_tx!(&self.db, tx, DB => {
            sqlx::query(
                "INSERT INTO fork_evidence (log_id, digest, evidence) VALUES ($1, $2, $3) \
                 ON CONFLICT (log_id, digest) DO NOTHING",
            )
            .bind(log_id)
            .bind(digest.as_bytes().as_slice())
            .bind(bytes.as_slice())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE logs SET forked = 1 WHERE id = $1")
                .bind(log_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })?;
        tracing::warn!(log = %evidence.key(), "log forked: writer signed contradicting roots");
        Ok(PutOutcome::Forked(evidence))
    }

    /// Takes fork evidence from someone else: verified, kept, and the log marked forked.
    pub async fn add_fork_evidence(&self, evidence: ForkEvidence) -> Result<(), StoreError> {
        evidence.verify()?;
        let row = self.ensure_log(&evidence.key()).await?;
        self.record_fork(row.id, evidence).await?;
        Ok(())
    }

    /// The fork evidence held for a log (empty unless it is forked).
    pub async fn fork_evidence(&self, key: &LogKey) -> Result<Vec<ForkEvidence>, StoreError> {
        let Some(row) = self.log_row(key).await? else {
            return Ok(Vec::new());
        };
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT evidence FROM fork_evidence WHERE log_id = $1 ORDER BY id")
                .bind(row.id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| r.try_get::<Vec<u8>, _>(0))
                .collect::<Result<Vec<_>, _>>()?
        });
        rows.iter()
            .map(|b| {
                ForkEvidence::from_bytes(b)
                    .map_err(|e| StoreError::Corrupt(format!("stored fork evidence: {e}")))
            })
            .collect()
    }

    /// Checks a held log against its signed root: the signature, the peaks, and every held entry
    /// through a proof built from the held nodes.
    pub async fn verify_log(&self, key: &LogKey) -> Result<VerifyReport, StoreError> {
        // What is held is read before the root: an append committing in between (this node's
        // own, or a peer's being stored) adds entries and moves the root in one transaction,
        // so every entry read here is under the root read next. Read the other way round, such
        // an append looked like entries past the root.
        let held = self.held(key).await?;
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let Some(root) = row.root else {
            return Ok(VerifyReport {
                length: 0,
                held_entries: 0,
            });
        };
        let corrupt =
            |what: String| move |e: StoreError| StoreError::Corrupt(format!("{what}: {e}"));
        let empty: [&[u8]; 0] = [];
        let proof = self
            .prove_at(row.id, root.length(), &Targets::range(0, 0))
            .await
            .map_err(corrupt(format!("peaks of {key}")))?;
        proof
            .verify(&root, 0, &empty, &[])
            .map_err(corrupt(format!("peaks of {key}")))?;
        let mut held_entries = 0;
        for (s, e) in held.iter() {
            if e > root.length() {
                return Err(StoreError::Corrupt(format!(
                    "{key} holds entries past its root"
                )));
            }
            let mut at = s;
            while at < e {
                let to = (at + VERIFY_CHUNK).min(e);
                let entries = self.get_range(key, at, to).await?;
                let proof = self
                    .prove_at(row.id, root.length(), &Targets::range(at, to - at))
                    .await
                    .map_err(corrupt(format!("entries {at}..{to} of {key}")))?;
                proof
                    .verify(&root, at, &entries, &[])
                    .map_err(corrupt(format!("entries {at}..{to} of {key}")))?;
                held_entries += to - at;
                at = to;
            }
        }
        Ok(VerifyReport {
            length: root.length(),
            held_entries,
        })
    }

    /// Totals over the whole store.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let (logs, forked, entries, bytes, nodes, evidence) = on_db!(&self.db, pool, DB => {
            let r = sqlx::query(
                "SELECT \
                 (SELECT COUNT(*) FROM logs), \
                 (SELECT COUNT(*) FROM logs WHERE forked <> 0), \
                 (SELECT COUNT(*) FROM entries), \
                 (SELECT CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) FROM entries), \
                 (SELECT COUNT(*) FROM nodes) \
                 + (SELECT CAST(COALESCE(SUM(length(tree)), 0) / 40 AS BIGINT) FROM entries), \
                 (SELECT COUNT(*) FROM fork_evidence)",
            )
            .fetch_one(pool)
            .await?;
            (
                r.try_get::<i64, _>(0)?,
                r.try_get::<i64, _>(1)?,
                r.try_get::<i64, _>(2)?,
                r.try_get::<i64, _>(3)?,
                r.try_get::<i64, _>(4)?,
                r.try_get::<i64, _>(5)?,
            )
        });
        Ok(Stats {
            backend: self.backend(),
            logs: to_u64(logs)?,
            forked_logs: to_u64(forked)?,
            entries: to_u64(entries)?,
            entry_bytes: to_u64(bytes)?,
            nodes: to_u64(nodes)?,
            fork_evidence: to_u64(evidence)?,
        })
    }
}

mod mailbox;
pub use mailbox::MailboxStats;

#[cfg(test)]
mod tests {
    use super::split_runs;

    #[test]
    fn dense_indices_become_runs_and_the_rest_stays_single() {
        let mut v: Vec<u64> = (100..140).collect();
        v.extend([3, 7, 500, 9000]);
        v.extend((1000..1064).step_by(4));
        v.sort_unstable();
        let (runs, singles) = split_runs(&v);
        assert_eq!(runs, vec![(100, 139), (1000, 1060)]);
        assert_eq!(singles, vec![3, 7, 500, 9000]);
        let covered: usize = singles.len() + 40 + 16;
        assert_eq!(covered, v.len());
        assert_eq!(split_runs(&[]), (vec![], vec![]));
    }
}
