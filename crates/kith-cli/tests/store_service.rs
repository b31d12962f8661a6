//! The store as its own process (`kith serve store`), driven over its gRPC socket as another
//! service would: appends acknowledged to the caller survive `kill -9` of the store process at
//! any moment, on SQLite and on PostgreSQL; and `kith log append|read` go through it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use kith_service::{Connection, Endpoint};
use kith_store::StoreClient;
use kith_store::log::LogKey;
use rand::Rng;

fn serve_store(home: &Path, url: &str) -> (Node, serde_json::Value) {
    start(
        home,
        &["--json", "serve", "store", "--no-network", "--store", url],
    )
}

fn client(home: &Path) -> StoreClient {
    StoreClient::connect(Connection::new(
        Endpoint::Unix(home.join("run/store.sock")),
        None,
    ))
}

/// The entries of round `round`, batch `batch`: distinct, of varied sizes.
fn batch(round: u32, batch: u32, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut e = format!("round {round} batch {batch} entry {i}: ").into_bytes();
            e.resize(64 + (i * 37) % 900, b'x');
            e
        })
        .collect()
}

async fn kill_9_mid_stream(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    kith(&home, &["init", "--name", "durable"]).ok();
    let mut acknowledged: Vec<Vec<u8>> = Vec::new();
    let mut key: Option<LogKey> = None;
    let mut rng = rand::thread_rng();
    for round in 0..3u32 {
        let (mut node, ready) = serve_store(&home, url);
        assert!(ready["services"]["store"].is_array(), "{ready}");
        let store = client(&home);
        // After a restart, every acknowledged entry is there, in order, and the log verifies.
        if let Some(key) = key {
            check(&store, key, &mut acknowledged, round).await;
        }
        // Append batches until the process is killed at a random moment.
        let pid = node.child.id();
        let kill_after = Duration::from_millis(rng.gen_range(300..1500));
        let killer = tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status()
                .unwrap();
        });
        let mut batches = 0;
        loop {
            let entries = batch(round, batches, rng.gen_range(1..40));
            match store.append("durable".into(), entries.clone()).await {
                Ok(log) => {
                    key = Some(log.key);
                    acknowledged.extend(entries);
                    assert_eq!(log.length, acknowledged.len() as u64, "round {round}");
                    batches += 1;
                }
                Err(_) => break,
            }
        }
        killer.await.unwrap();
        let status = node.child.wait().unwrap();
        assert!(!status.success(), "the store was killed, not stopped");
        assert!(
            batches > 0,
            "round {round}: no append was acknowledged before the kill"
        );
    }
    // A final, clean start: everything acknowledged is there.
    let (mut node, _) = serve_store(&home, url);
    let store = client(&home);
    check(&store, key.unwrap(), &mut acknowledged, 3).await;
    assert_eq!(sigterm(&mut node), 0);
}

/// Every acknowledged entry is held, in order, and the log verifies. An append in flight when
/// the process died may have landed too (it was never acknowledged): those entries are taken
/// into `acknowledged`, as the log now holds them.
async fn check(store: &StoreClient, key: LogKey, acknowledged: &mut Vec<Vec<u8>>, round: u32) {
    let log = store.get_log(key).await.unwrap();
    let acked = acknowledged.len() as u64;
    assert!(
        log.length >= acked,
        "round {round}: lost acknowledged entries ({} < {acked})",
        log.length
    );
    let mut at = 0;
    while at < log.length {
        let end = log.length.min(at + 4096);
        let got = store.get_entries(key, at, end).await.unwrap();
        for (i, entry) in (at..end).zip(got) {
            match acknowledged.get(i as usize) {
                Some(sent) => assert_eq!(&entry, sent, "round {round}: entry {i}"),
                None => acknowledged.push(entry),
            }
        }
        at = end;
    }
    assert_eq!(
        store.verify_log(key).await.unwrap().held_entries,
        log.length,
        "round {round}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_kill_9_of_the_store_process_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    kill_9_mid_stream(&format!(
        "sqlite://{}",
        dir.path().join("store.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_kill_9_of_the_store_process_on_postgres() {
    let url = kith_store::testing::fresh_postgres_database("kith_cli_kill")
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and could not be had: {e}")
        });
    kill_9_mid_stream(&url).await;
}

#[test]
fn log_append_and_read_through_the_store_service() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    kith(&home, &["init", "--name", "writer"]).ok();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let (mut node, _) = serve_store(&home, &url);
    let log = kith(
        &home,
        &["--json", "log", "append", "notes", "first", "second"],
    )
    .json();
    assert_eq!(log["length"], 2);
    let key = log["key"].as_str().unwrap().to_string();
    let more = kith_in(
        &home,
        &["--json", "log", "append", "notes", "-"],
        b"third\nfourth\n",
    )
    .json();
    assert_eq!(
        (more["key"].as_str(), more["length"].as_u64()),
        (Some(key.as_str()), Some(4))
    );
    let read = kith(&home, &["log", "read", &key, "--start", "1"]);
    read.ok();
    assert_eq!(read.stdout.trim_end(), "second\nthird\nfourth");
    // Bad input: one error line, nothing appended.
    assert!(
        kith(&home, &["log", "append", "Bad Name", "x"])
            .error()
            .contains("log name")
    );
    assert!(
        kith(&home, &["log", "read", "nothex"])
            .error()
            .contains("log key")
    );
    assert!(
        kith(&home, &["log", "read", &key, "--start", "3", "--end", "9"])
            .error()
            .contains("out of range")
    );
    let read = kith(&home, &["--json", "log", "read", &key]).json();
    assert_eq!(read["entries"].as_array().unwrap().len(), 4);
    assert_eq!(sigterm(&mut node), 0);
    // Without a running store, the command opens the store in-process (the keystore unlocked
    // here signs): the same log goes on.
    let log = kith(
        &home,
        &["--json", "log", "append", "notes", "--store", &url, "fifth"],
    )
    .json();
    assert_eq!(
        (log["key"].as_str(), log["length"].as_u64()),
        (Some(key.as_str()), Some(5))
    );
}
