//! File transfer between two stores over Kith's real QUIC transport, against a raw quinn stream
//! carrying the same bytes on the same loopback, in one run.
//!
//! - Kith: two in-process transport nodes (`TransportService`, the same as `kith node up`), each
//!   with a SQLite store (WAL, `synchronous=FULL`, as the store opens it; file block data in its
//!   default blob dir beside the database). The holder imported a 64 MiB file (its ciphertext:
//!   64 MiB of plaintext sealed by `EncryptReader`); each round the fetcher runs `files::fetch`
//!   over `kith/file/1` through the CLI's `TransportNetwork`: the holder reads the blocks from
//!   its data file and sends them as stored; the fetcher verifies every block against the
//!   outboard and stores it (data file written with direct I/O and `fdatasync`ed, then the rows
//!   committed) before the round ends. The fetched file is deleted between rounds (outside the timing).
//! - Anchor: raw quinn (rustls on the same ring provider, a self-signed certificate the client
//!   does not check), same socket set-up and transport settings; each round the client opens a
//!   stream and the server writes the same number of bytes from memory, in 1 MiB writes; the
//!   client reads them to the end. No storage, no verification.
//! - Where the time goes, three more figures: raw quinn doing the fetcher's verification and
//!   nothing else (the same stream read block by block through `AsyncRead`, each block's BLAKE3
//!   chaining value worked out with the store's `block_cv`; no storage); the same fetch into a store on tmpfs (`/dev/shm`:
//!   writes and syncs cost no disk, but tmpfs has no direct I/O, so the blocks are copied into
//!   its pages), and the fetcher's storage done plainly: the same 64 KiB blocks written with
//!   buffered positioned writes to a data file on the same disk, each 4 MiB batch `fdatasync`ed
//!   and then its 64 rows committed to a SQLite table (store settings) of the same shape, with
//!   no network, no hashing.
//!
//! The holder (node, store and the raw server) runs on its own thread and single-threaded
//! runtime, like another process; the fetcher and the raw client on the main thread's. Both
//! connections are warm (one untimed round each first). Rounds interleave the two systems,
//! alternating which goes first; figures are medians, the ratio the median of per-round ratios.
//!
//! Run: `cargo bench -p kith --bench file` (release). Writes its table into BENCHMARKS.md.
//! `KITH_FILE_BENCH_ONLY=kith` (or `raw`) runs one system alone, for a profiler.

#[path = "../src/store_net.rs"]
#[allow(dead_code)]
mod store_net;

#[path = "../../../services/transport/benches/support/raw_quic.rs"]
mod raw_quic;

/// The `kith` binary's allocator, for both systems measured here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kith_bench::{process_cpu, today, verdict, write_section};
use kith_store::Store;
use kith_store::files::{self, EncryptReader, FileId, FileKey, hash};
use kith_store::net::Network;
use kith_transport::api::TransportApi;
use kith_transport::{
    EndpointOptions, Node, NodeConfig, PeerAddrs, PeerId, SecretKey, TransportService,
};
use raw_quic::{raw_client_config, raw_endpoint, raw_server_config};
use store_net::TransportNetwork;
use tokio::io::AsyncWriteExt;

const RAW_ALPN: &[u8] = b"kith/bench-raw/1";
const PLAINTEXT_BYTES: u64 = 64 << 20;
const ROUNDS: usize = 15;
const WRITE_SIZE: usize = 1 << 20;

fn options() -> EndpointOptions {
    EndpointOptions::localhost()
}

fn config() -> NodeConfig {
    NodeConfig {
        endpoint: options(),
        ..NodeConfig::default()
    }
}

/// Plaintext that does not compress: a keyed BLAKE3 stream.
fn plaintext(len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    blake3::Hasher::new_keyed(&[42; 32])
        .finalize_xof()
        .fill(&mut out);
    out
}

/// What the holder thread tells the main thread.
struct Holder {
    peer: PeerId,
    addr: SocketAddr,
    raw_addr: SocketAddr,
    id: FileId,
    size: u64,
}

/// The holder: a transport node serving `kith/file/1` from a SQLite store holding the file, and
/// a raw quinn server sending the same number of bytes from memory. Runs until the process ends.
fn spawn_holder(dir: std::path::PathBuf) -> Holder {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = Arc::new(
                Store::open(&format!("sqlite://{}", dir.join("holder.db").display()))
                    .await
                    .unwrap(),
            );
            let plain = plaintext(PLAINTEXT_BYTES);
            let info = store
                .import_file(EncryptReader::new(&plain[..], FileKey::generate()))
                .await
                .unwrap();
            drop(plain);

            let node = Node::builder(SecretKey::generate(), config())
                .unwrap()
                .spawn()
                .unwrap();
            let service = Arc::new(TransportService::new(node).unwrap());
            let me = service.node().peer_id();
            let network = TransportNetwork::new(service.clone(), *me.as_bytes());
            let mut incoming = network.listen(files::ALPN).await.unwrap();
            let serving = store.clone();
            tokio::spawn(async move {
                while let Some(channel) = incoming.recv().await {
                    let store = serving.clone();
                    tokio::spawn(async move {
                        files::serve(&store, channel).await.unwrap();
                    });
                }
            });

            let raw = raw_endpoint(&options(), Some(raw_server_config(&options(), RAW_ALPN)));
            let size = info.size;
            tx.send(Holder {
                peer: me,
                addr: service.node().endpoint().local_addr(),
                raw_addr: raw.local_addr().unwrap(),
                id: info.id,
                size,
            })
            .unwrap();
            let bytes = Arc::new(vec![0x5au8; WRITE_SIZE]);
            while let Some(incoming) = raw.accept().await {
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let bytes = bytes.clone();
                        tokio::spawn(async move {
                            let _ = recv.read_to_end(16).await;
                            let mut left = size as usize;
                            while left > 0 {
                                let n = left.min(WRITE_SIZE);
                                send.write_all(&bytes[..n]).await.unwrap();
                                left -= n;
                            }
                            send.finish().unwrap();
                            let _ = send.stopped().await;
                        });
                    }
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// Each thread's name and CPU time so far (ns), from `/proc/self/task/*/schedstat`.
fn thread_cpu() -> std::collections::BTreeMap<u32, (String, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).unwrap_or_default();
        let ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (read("comm").trim().to_string(), ns));
    }
    out
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One fetch: its rate (MiB/s) and the CPU time the process spent on it (all threads: both
/// nodes, their stores, the blocking pool), in ms.
async fn kith_round(store: &Store, network: &TransportNetwork, holder: &Holder) -> (f64, f64) {
    let cpu = process_cpu();
    let started = Instant::now();
    let report = files::fetch(
        store,
        network,
        *holder.peer.as_bytes(),
        holder.id,
        0..u64::MAX,
        |_| {},
    )
    .await
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e3;
    assert!(report.complete() && report.bytes_received == holder.size);
    assert!(store.delete_file(&holder.id).await.unwrap());
    (mib_per_s(holder.size, secs), cpu)
}

/// One raw stream: its rate (MiB/s) and the process's CPU time on it, in ms.
async fn raw_round(conn: &quinn::Connection, size: u64) -> (f64, f64) {
    let cpu = process_cpu();
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    send.shutdown().await.unwrap();
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        total += chunk.bytes.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = (process_cpu() - cpu).as_secs_f64() * 1e3;
    assert_eq!(total, size);
    (mib_per_s(size, secs), cpu)
}

/// Raw quinn doing the fetcher's verification and nothing else: the stream read through
/// `AsyncRead` into a 64 KiB buffer block by block, each block's BLAKE3 chaining value worked
/// out as the fetcher does (`block_cv`); no storage. Its rate (MiB/s).
async fn verified_raw_round(conn: &quinn::Connection, size: u64) -> f64 {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[1]).await.unwrap();
    send.shutdown().await.unwrap();
    let mut buf = vec![0u8; hash::block_len(size, 0)];
    for idx in 0..hash::block_count(size) {
        let block = &mut buf[..hash::block_len(size, idx)];
        AsyncReadExt::read_exact(&mut recv, block).await.unwrap();
        std::hint::black_box(hash::block_cv(size, idx, block));
    }
    assert!(recv.read_chunk(1, true).await.unwrap().is_none());
    mib_per_s(size, started.elapsed().as_secs_f64())
}

/// The storage anchor: `blocks` stored as the fetcher stores them — each 4 MiB batch written to
/// a data file at its offsets and `fdatasync`ed, then its rows (no data) committed — then
/// removed (untimed).
async fn storage_round(pool: &sqlx::SqlitePool, path: &std::path::Path, blocks: &[Vec<u8>]) -> f64 {
    use std::os::unix::fs::FileExt;
    let started = Instant::now();
    let mut bytes = 0u64;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    for (batch, chunk) in blocks.chunks(64).enumerate() {
        for (k, data) in chunk.iter().enumerate() {
            file.write_all_at(data, ((batch * 64 + k) as u64) << 16)
                .unwrap();
            bytes += data.len() as u64;
        }
        file.sync_data().unwrap();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for (row, rows) in chunk.chunks(16).enumerate() {
            let mut qb =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO blocks (file_id, idx, data) ");
            qb.push_values(0..rows.len(), |mut b, k| {
                b.push_bind(1i64)
                    .push_bind((batch * 64 + row * 16 + k) as i64)
                    .push_bind(None::<&[u8]>);
            });
            qb.build().execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(path).unwrap();
    sqlx::query("DELETE FROM blocks")
        .execute(pool)
        .await
        .unwrap();
    mib_per_s(bytes, secs)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let holder = spawn_holder(dir.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&format!(
            "sqlite://{}",
            dir.path().join("fetcher.db").display()
        ))
        .await
        .unwrap();
        let node = Node::builder(SecretKey::generate(), config())
            .unwrap()
            .spawn()
            .unwrap();
        let service = Arc::new(TransportService::new(node).unwrap());
        let me = *service.node().peer_id().as_bytes();
        let transport: Arc<dyn TransportApi> = service.clone();
        let network = TransportNetwork::new(transport, me);
        network.add_hint(
            *holder.peer.as_bytes(),
            PeerAddrs {
                addrs: vec![holder.addr],
                relay: None,
            },
        );
        let raw = raw_endpoint(&options(), None);
        let conn = raw
            .connect_with(raw_client_config(&options(), RAW_ALPN), holder.raw_addr, "localhost")
            .unwrap()
            .await
            .unwrap();

        let options = kith_store::backend::sqlite_connect_options(&format!(
            "sqlite://{}",
            dir.path().join("anchor.db").display()
        ))
        .unwrap();
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE blocks (file_id INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB, \
             PRIMARY KEY (file_id, idx))",
        )
        .execute(&pool)
        .await
        .unwrap();
        let blob = plaintext(holder.size);
        let blocks: Vec<Vec<u8>> = blob.chunks(64 << 10).map(<[u8]>::to_vec).collect();
        drop(blob);

        let shm = tempfile::Builder::new()
            .prefix("kith-file-bench")
            .tempdir_in("/dev/shm")
            .unwrap();
        let shm_store = Store::open(&format!(
            "sqlite://{}",
            shm.path().join("fetcher.db").display()
        ))
        .await
        .unwrap();

        let anchor_data = dir.path().join("anchor.data");

        // Warm both connections (and the databases' caches) once, untimed.
        kith_round(&store, &network, &holder).await;
        kith_round(&shm_store, &network, &holder).await;
        raw_round(&conn, holder.size).await;
        verified_raw_round(&conn, holder.size).await;
        storage_round(&pool, &anchor_data, &blocks).await;

        // For profilers: `KITH_FILE_BENCH_ONLY=kith|raw|both` runs 20 rounds (or
        // `KITH_FILE_BENCH_ROUNDS`) of one system alone (or of both, alternating), prints their
        // figures and each thread's CPU per round, and writes nothing.
        if let Ok(only) = std::env::var("KITH_FILE_BENCH_ONLY") {
            let rounds: usize = std::env::var("KITH_FILE_BENCH_ROUNDS")
                .map_or(20, |n| n.parse().expect("KITH_FILE_BENCH_ROUNDS: a number"));
            let before = thread_cpu();
            for _ in 0..rounds {
                let (rate, cpu) = match only.as_str() {
                    "kith" => kith_round(&store, &network, &holder).await,
                    // Alternating, as the measured rounds do; the figures printed are Kith's.
                    "both" => {
                        let (rate, cpu) = raw_round(&conn, holder.size).await;
                        println!("raw: {rate:.0} MiB/s, {cpu:.0} ms CPU");
                        kith_round(&store, &network, &holder).await
                    }
                    "raw" => raw_round(&conn, holder.size).await,
                    other => panic!("KITH_FILE_BENCH_ONLY={other}: kith, raw or both"),
                };
                println!("{only}: {rate:.0} MiB/s, {cpu:.0} ms CPU");
            }
            // Where the CPU went, per thread, per round.
            let after = thread_cpu();
            for (tid, (name, ns)) in &after {
                let was = before.get(tid).map_or(0, |(_, ns)| *ns);
                let ms = (ns - was) as f64 / 1e6 / rounds as f64;
                if ms >= 0.5 {
                    println!("  thread {tid} {name}: {ms:.1} ms CPU per round");
                }
            }
            return;
        }

        let (mut kith, mut anchor, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut storage, mut storage_ratios) = (Vec::new(), Vec::new());
        let (mut in_memory, mut memory_ratios) = (Vec::new(), Vec::new());
        let (mut verified, mut verified_ratios, mut over_verified) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut kith_cpu, mut raw_cpu, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut kith_cores, mut raw_cores) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let ((k, kc), (r, rc)) = if round % 2 == 0 {
                let k = kith_round(&store, &network, &holder).await;
                (k, raw_round(&conn, holder.size).await)
            } else {
                let r = raw_round(&conn, holder.size).await;
                (kith_round(&store, &network, &holder).await, r)
            };
            let v = verified_raw_round(&conn, holder.size).await;
            verified.push(v);
            verified_ratios.push(v / r);
            over_verified.push(k / v);
            let sq = storage_round(&pool, &anchor_data, &blocks).await;
            let (m, _) = kith_round(&shm_store, &network, &holder).await;
            in_memory.push(m);
            memory_ratios.push(m / r);
            println!(
                "round {round}: kith {k:.0} MiB/s ({kc:.0} ms CPU), raw quinn {r:.0} MiB/s ({rc:.0} ms CPU), ratio {:.2}; raw quinn verifying {v:.0} MiB/s; storage alone {sq:.0} MiB/s; kith into tmpfs {m:.0} MiB/s",
                k / r
            );
            kith_cpu.push(kc);
            raw_cpu.push(rc);
            // CPU ms over wall ms: the wall time of 64 MiB at the measured rate.
            let wall_ms = |rate: f64| holder.size as f64 / (1 << 20) as f64 / rate * 1e3;
            kith_cores.push(kc / wall_ms(k));
            raw_cores.push(rc / wall_ms(r));
            cpu_ratios.push(kc / rc);
            kith.push(k);
            anchor.push(r);
            ratios.push(k / r);
            storage.push(sq);
            storage_ratios.push(k / sq);
        }
        let ratio = median(&ratios);
        let worst = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        let body = format!(
            "Measured {date} by `cargo bench -p kith --bench file` (release, loopback, {ROUNDS} interleaved rounds after one untimed warm-up each; a {plain} MiB file, {cipher} bytes of ciphertext in 64 KiB blocks, fetched whole by one store from another over `kith/file/1` on Kith's QUIC transport — the holder reading each block from its data file and sending it as stored, the fetcher verifying every block, writing it to its data file (direct I/O) and `fdatasync`ing each 4 MiB batch before committing the batch's rows to SQLite (WAL, `synchronous=FULL`), all before the round ends — against raw quinn sending the same number of bytes from memory on one stream of a warm connection; holder and raw server on their own thread and single-threaded runtime, fetcher and raw client on another; the ratio is the median of the per-round ratios, the columns are medians).\n\n\
| measurement | Kith file fetch | raw quinn stream (anchor) | ratio Kith / raw, median of per-round ratios |\n\
|---|---:|---:|---:|\n\
| 64 MiB, median MiB/s (worst round) | {k:.0} ({kw:.0}) | {r:.0} ({rw:.0}) | {ratio:.2}× |\n\
| raw quinn doing the fetcher's verification alone (each 64 KiB block read off the stream into a buffer and its BLAKE3 chaining value worked out; no storage), median MiB/s (worst round) | {v:.0} ({vw:.0}) | {r:.0} ({rw:.0}) | {vratio:.2}× |\n\
| the same fetch into a store on tmpfs (`/dev/shm`: no disk, and no direct I/O either, so buffered writes), median MiB/s (worst round) | {m:.0} ({mw:.0}) | {r:.0} ({rw:.0}) | {mratio:.2}× |\n\
| CPU time per 64 MiB, both ends together (the process's CPU clock: every thread), median ms | {kc:.0} | {rc:.0} | {cratio:.2}× |\n\
| cores busy during the transfer (CPU time / wall time; this machine has 2), median | {kcores:.2} | {rcores:.2} | |\n\n\
Where the time goes — the fetcher's storage alone, done plainly (the same 64 KiB blocks written with buffered positioned writes at their offsets in a data file on the same disk, `fdatasync` per 4 MiB batch, then the batch's 64 rows committed to SQLite with the store's settings; no network, no hashing), measured in the same rounds: median {sq:.0} MiB/s (worst {sqw:.0}); Kith's whole fetch runs at {sratio:.2}× of it (median of per-round ratios). Against raw quinn doing the verification alone, the fetch (storage, disk reads and protocol on top) runs at {vkratio:.2}×.\n\n\
Target: file transfer ≥ 0.8× a raw quinn stream on loopback — {ratio:.2}× ({verdict}).\n",
            date = today(),
            plain = PLAINTEXT_BYTES >> 20,
            cipher = holder.size,
            k = median(&kith),
            kw = worst(&kith),
            r = median(&anchor),
            rw = worst(&anchor),
            verdict = verdict(ratio >= 0.8),
            sq = median(&storage),
            sqw = worst(&storage),
            sratio = median(&storage_ratios),
            m = median(&in_memory),
            v = median(&verified),
            vw = worst(&verified),
            vratio = median(&verified_ratios),
            vkratio = median(&over_verified),
            mw = worst(&in_memory),
            mratio = median(&memory_ratios),
            kc = median(&kith_cpu),
            rc = median(&raw_cpu),
            cratio = median(&cpu_ratios),
            kcores = median(&kith_cores),
            rcores = median(&raw_cores),
        );
        println!("{body}");
        write_section("store-files", &body);
        store.close().await;
        shm_store.close().await;
        service.shutdown().await;
    });
}
