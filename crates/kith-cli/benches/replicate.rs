//! Replication between two nodes over Kith's real QUIC transport on loopback: a fresh store
//! pulls a writer's log of 1 KiB entries through `kith/store/1` on two in-process transport
//! nodes (`TransportService`, as `kith node up` runs them) and the CLI's `TransportNetwork`,
//! against the receiving store's own local appends of the same bytes in the same run (the
//! anchor: what its disk and SQLite take at all). The same protocol over plain TCP is
//! `cargo bench -p kith-store --bench replicate`.
//!
//! The writer (node, store, replicator) runs on its own thread and single-threaded runtime, like
//! another process; the receiver on the main runtime. Rounds interleave; medians, and the median
//! of per-round ratios. Run: `cargo bench -p kith --bench replicate` (release). Writes its table
//! into BENCHMARKS.md.

#[path = "../src/store_net.rs"]
#[allow(dead_code)]
mod store_net;

use std::sync::Arc;
use std::time::Instant;

use kith_bench::{today, verdict, write_section};
use kith_store::Store;
use kith_store::log::{Ed25519Signer, LogKey};
use kith_store::net::Network;
use kith_store::replicate::{ALPN, Replicator, ReplicatorConfig};
use kith_transport::api::TransportApi;
use kith_transport::{
    EndpointOptions, Node, NodeConfig, PeerAddrs, PeerId, SecretKey, TransportService,
};
use rand::RngCore;
use store_net::TransportNetwork;

const ROUNDS: usize = 5;
const ENTRIES: usize = 20_480;
const ENTRY_BYTES: usize = 1024;
const BATCH: usize = 1024;
const TARGET: f64 = 20_000.0;

fn config() -> NodeConfig {
    NodeConfig {
        endpoint: EndpointOptions::localhost(),
        ..NodeConfig::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn open(dir: &std::path::Path, name: &str) -> Arc<Store> {
    let url = format!("sqlite://{}", dir.join(name).display());
    Arc::new(Store::open(&url).await.unwrap())
}

struct Writer {
    peer: PeerId,
    addr: std::net::SocketAddr,
    key: LogKey,
}

/// The writer's node on its own thread: a store holding the log, served by its replicator.
fn spawn_writer(dir: std::path::PathBuf, entries: Vec<Vec<u8>>) -> Writer {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = open(&dir, "writer.db").await;
            let signer = Ed25519Signer::generate();
            for chunk in entries.chunks(BATCH) {
                store.append(&signer, chunk).await.unwrap();
            }
            let node = Node::builder(SecretKey::generate(), config())
                .unwrap()
                .spawn()
                .unwrap();
            let service = Arc::new(TransportService::new(node).unwrap());
            let me = service.node().peer_id();
            let network = Arc::new(TransportNetwork::new(service.clone(), *me.as_bytes()));
            let replicator = Replicator::new(store, network, ReplicatorConfig::default());
            replicator.start().await.unwrap();
            tx.send(Writer {
                peer: me,
                addr: service.node().endpoint().local_addr(),
                key: signer.log_key(),
            })
            .unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

async fn replicate_once(
    network: &Arc<TransportNetwork>,
    writer: &Writer,
    dir: &std::path::Path,
    round: usize,
) -> f64 {
    let store = open(dir, &format!("recv-{round}.db")).await;
    let reader = Replicator::new(store.clone(), network.clone(), ReplicatorConfig::default());
    let t = Instant::now();
    let channel = network.open(*writer.peer.as_bytes(), ALPN).await.unwrap();
    let report = reader
        .replicate(channel, &[writer.key], false)
        .await
        .unwrap();
    let rate = ENTRIES as f64 / t.elapsed().as_secs_f64();
    assert_eq!(report.entries_received, ENTRIES as u64);
    let info = store.log_info(&writer.key).await.unwrap();
    assert_eq!(
        (info.length, info.held_entries),
        (ENTRIES as u64, ENTRIES as u64)
    );
    reader.shutdown().await;
    store.close().await;
    rate
}

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
    let writer = spawn_writer(dir.path().to_path_buf(), entries.clone());
    let node = Node::builder(SecretKey::generate(), config())
        .unwrap()
        .spawn()
        .unwrap();
    let service = Arc::new(TransportService::new(node).unwrap());
    let me = *service.node().peer_id().as_bytes();
    let network = Arc::new(TransportNetwork::new(
        service.clone() as Arc<dyn TransportApi>,
        me,
    ));
    network.add_hint(
        *writer.peer.as_bytes(),
        PeerAddrs {
            addrs: vec![writer.addr],
            relay: None,
        },
    );
    // Warm: the connection and both databases' first pages.
    replicate_once(&network, &writer, dir.path(), 99).await;

    let (mut repl, mut local, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (r, a) = if round % 2 == 0 {
            let r = replicate_once(&network, &writer, dir.path(), round).await;
            (r, append_once(dir.path(), round, &entries).await)
        } else {
            let a = append_once(dir.path(), round, &entries).await;
            (
                replicate_once(&network, &writer, dir.path(), round).await,
                a,
            )
        };
        eprintln!("round {round}: replication over QUIC {r:.0}/s, local append {a:.0}/s");
        repl.push(r);
        local.push(a);
        ratios.push(r / a);
    }
    let (r, a, ratio) = (median(repl), median(local), median(ratios));
    let mib = |rate: f64| rate * ENTRY_BYTES as f64 / 1048576.0;
    let body = format!(
        "Measured {} by `cargo bench -p kith --bench replicate` (release, {ROUNDS} interleaved rounds after one warm-up, medians; {ENTRIES} random {ENTRY_BYTES}-byte entries; two in-process transport nodes on 127.0.0.1 — QUIC, TLS 1.3 with the nodes' ed25519 keys — each store SQLite WAL with `synchronous=FULL`; the writer's node on its own thread and runtime).\n\n\
| what | entries/s | MiB/s |\n|---|---:|---:|\n\
| replication over Kith's QUIC transport (a fresh store pulls the log; every batch verified and fsynced) | {r:.0} | {:.1} |\n\
| anchor: the receiving store's own batched appends of the same bytes (batches of {BATCH}) | {a:.0} | {:.1} |\n\n\
Replication over QUIC runs at {ratio:.2}× the receiving store's local append rate (median of per-round ratios). Target: ≥ {TARGET:.0} entries/s replicated between two nodes on loopback — {}.\n",
        today(),
        mib(r),
        mib(a),
        verdict(r >= TARGET),
    );
    println!("{body}");
    write_section("store-replicate-quic", &body);
}
