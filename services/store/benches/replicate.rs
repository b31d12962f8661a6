//! Replication between two stores over a real loopback TCP connection, against the receiving
//! store's own local appends of the same bytes, in one run.
//!
//! - **replication**: a writer's store holds `ENTRIES` 1 KiB entries; a fresh receiving store
//!   pulls them over `127.0.0.1` TCP (a `TcpStream` split into a `PeerChannel`: a real socket,
//!   kernel buffers and all) with the `kith/store/1` protocol — pipelined requests of up to 1024
//!   entries / 1 MiB, each reply's range proof verified and stored in one transaction
//!   (`put_remote_at`). Timed from the connection to the verified, stored last entry.
//! - **local append** (anchor): the same bytes appended by the receiving store's own writer in
//!   batches of 1024, the size of one reply (`Store::append`: hashing, one signature per batch,
//!   one transaction each), so the ratio is what the protocol costs.
//!
//! Both on SQLite with the store's production settings (WAL, `synchronous=FULL`: every batch
//! fsynced), on the temp dir's disk. Rounds interleave the two; medians. Run:
//! `cargo bench -p kith-store --bench replicate` (release). Writes its table into BENCHMARKS.md.

use std::sync::Arc;
use std::time::Instant;

use kith_bench::{today, verdict, write_section};
use kith_store::Store;
use kith_store::log::Ed25519Signer;
use kith_store::net::{MemoryNetwork, PeerChannel};
use kith_store::replicate::{Replicator, ReplicatorConfig};
use rand::RngCore;
use tokio::net::{TcpListener, TcpStream};

const ROUNDS: usize = 5;
const ENTRIES: usize = 20_480;
const ENTRY_BYTES: usize = 1024;
/// The anchor's batch: the same as one replication reply (`MAX_REQUEST_ENTRIES`), so the ratio is the
/// protocol's cost.
/// The anchor's batch: one replication reply's worth.
const BATCH: usize = 1024;
const TARGET: f64 = 20_000.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn channel(stream: TcpStream, peer: [u8; 32]) -> PeerChannel {
    stream.set_nodelay(true).unwrap();
    let (recv, send) = stream.into_split();
    PeerChannel {
        peer,
        send: Box::new(send),
        recv: Box::new(recv),
    }
}

async fn open(dir: &std::path::Path, name: &str) -> Arc<Store> {
    let url = format!("sqlite://{}", dir.join(name).display());
    Arc::new(Store::open(&url).await.unwrap())
}

/// One replication of the writer's log into a fresh store; entries/s.
async fn replicate_once(
    writer: &Arc<Replicator>,
    dir: &std::path::Path,
    round: usize,
    key: kith_store::log::LogKey,
) -> f64 {
    let store = open(dir, &format!("recv-{round}.db")).await;
    let reader = Replicator::new(
        store.clone(),
        Arc::new(MemoryNetwork::new([2; 32])),
        ReplicatorConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let t = Instant::now();
    let (accepted, connected) = tokio::join!(listener.accept(), TcpStream::connect(addr));
    let server = channel(accepted.unwrap().0, [2; 32]);
    let client = channel(connected.unwrap(), [1; 32]);
    let serve = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.handle(server).await })
    };
    let report = reader.replicate(client, &[key], false).await.unwrap();
    let rate = ENTRIES as f64 / t.elapsed().as_secs_f64();
    serve.await.unwrap().unwrap();
    assert_eq!(report.entries_received, ENTRIES as u64);
    let info = store.log_info(&key).await.unwrap();
    assert_eq!(
        (info.length, info.held_entries),
        (ENTRIES as u64, ENTRIES as u64)
    );
    store.close().await;
    rate
}

/// The receiving side's own appends of the same bytes, in a fresh store; entries/s.
async fn append_once(dir: &std::path::Path, round: usize, entries: &[Vec<u8>]) -> f64 {
    let store = open(dir, &format!("local-{round}.db")).await;
    let signer = Ed25519Signer::generate();
    let t = Instant::now();
    for chunk in entries.chunks(BATCH) {
        store.append(&signer, chunk).await.unwrap();
    }
    let rate = entries.len() as f64 / t.elapsed().as_secs_f64();
    store.close().await;
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let entries: Vec<Vec<u8>> = (0..ENTRIES)
        .map(|_| {
            let mut e = vec![0u8; ENTRY_BYTES];
            rng.fill_bytes(&mut e);
            e
        })
        .collect();
    let writer_store = open(dir.path(), "writer.db").await;
    let signer = Ed25519Signer::generate();
    for chunk in entries.chunks(BATCH) {
        writer_store.append(&signer, chunk).await.unwrap();
    }
    let key = signer.log_key();
    let writer = Replicator::new(
        writer_store.clone(),
        Arc::new(MemoryNetwork::new([1; 32])),
        ReplicatorConfig::default(),
    );

    let (mut repl, mut local, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (r, a) = if round % 2 == 0 {
            let r = replicate_once(&writer, dir.path(), round, key).await;
            (r, append_once(dir.path(), round, &entries).await)
        } else {
            let a = append_once(dir.path(), round, &entries).await;
            (replicate_once(&writer, dir.path(), round, key).await, a)
        };
        eprintln!("round {round}: replication {r:.0}/s, local append {a:.0}/s");
        repl.push(r);
        local.push(a);
        ratios.push(r / a);
    }
    let (r, a, ratio) = (median(repl), median(local), median(ratios));
    let body = format!(
        "Measured {} by `cargo bench -p kith-store --bench replicate` (release, {ROUNDS} \
         interleaved rounds, medians; {ENTRIES} random {ENTRY_BYTES}-byte entries; SQLite WAL with \
         `synchronous=FULL` on both sides, on the temp dir's disk; the two stores in one process, \
         talking over a 127.0.0.1 TCP socket).\n\n\
         | what | entries/s | MiB/s |\n|---|---:|---:|\n\
         | replication over loopback TCP (pull into a fresh store, every batch verified and fsynced) | {r:.0} | {:.1} |\n\
         | anchor: the receiving store's own batched appends of the same bytes (batches of {BATCH}) | {a:.0} | {:.1} |\n\n\
         Replication runs at {ratio:.2}× the receiving store's local append rate (median of \
         per-round ratios). Target: ≥ {TARGET:.0} entries/s replicated — {}.\n",
        today(),
        r * ENTRY_BYTES as f64 / (1024.0 * 1024.0),
        a * ENTRY_BYTES as f64 / (1024.0 * 1024.0),
        verdict(r >= TARGET),
    );
    write_section("store-replicate", &body);
    print!("{body}");
}
