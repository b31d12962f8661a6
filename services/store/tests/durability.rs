//! An acknowledged append survives `kill -9`, on both backends.
//!
//! The test re-executes its own binary as a child (the same test, with `KITH_STORE_CHILD_URL`
//! set) that appends batches of 1 KiB-ish entries in a loop and prints `ACK <length>` after each
//! append returned (after its commit). The parent SIGKILLs the child at a random moment, reopens
//! the store and checks that every acknowledged entry is there, byte for byte, and that the log
//! verifies (root signature, tree, every entry). Three kills per backend; each new child goes on
//! from where the last one's committed state ends.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestDb;
use kith_store::Store;
use kith_store::log::Ed25519Signer;
use rand::Rng;

const CHILD_URL: &str = "KITH_STORE_CHILD_URL";
const SEED: [u8; 32] = [42; 32];
const KILLS: usize = 3;

/// Entry `i`: deterministic so the parent can check every byte.
fn entry(i: u64) -> Vec<u8> {
    let len = 900 + (i as usize * 31) % 250;
    let mut out = Vec::with_capacity(len);
    let mut x = blake3::hash(&i.to_le_bytes());
    while out.len() < len {
        out.extend_from_slice(x.as_bytes());
        x = blake3::hash(x.as_bytes());
    }
    out.truncate(len);
    out
}

/// The child: append forever, acknowledging each committed length on stdout.
async fn child(url: &str) -> ! {
    let store = Store::open(url).await.expect("child: open store");
    let signer = Ed25519Signer::from_seed(SEED);
    let key = signer.log_key();
    let mut length = match store.log_info(&key).await {
        Ok(info) => info.length,
        Err(_) => 0,
    };
    let mut rng = rand::thread_rng();
    loop {
        let n = rng.gen_range(1..=16u64);
        let batch: Vec<Vec<u8>> = (length..length + n).map(entry).collect();
        let root = store.append(&signer, &batch).await.expect("child: append");
        length = root.length();
        println!("ACK {length}");
    }
}

/// Runs a child on `url`, kills it with SIGKILL at a random moment after its first ack, and
/// returns the highest length it acknowledged.
fn run_and_kill(test_name: &str, url: &str) -> u64 {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_URL, url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                let _ = tx.send(n.trim().parse::<u64>().expect("ack length"));
            }
        }
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked == 0 {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) => acked = n,
            Err(_) if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
                    panic!("child exited before appending ({status}): {err}");
                }
            }
            Err(_) => panic!("child acknowledged nothing in 60 s"),
        }
    }
    let wait = rand::thread_rng().gen_range(50..1200);
    std::thread::sleep(Duration::from_millis(wait));
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    // Everything it printed before dying was acknowledged.
    acked = acked.max(rx.try_iter().max().unwrap_or(0));
    acked
}

/// Waits until the killed child's PostgreSQL sessions are gone. The server finishes a command
/// it was running when its client died — a COMMIT the child sent but never saw acknowledged —
/// so the state is read only once nothing else can land.
async fn killed_sessions_gone(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to check sessions");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count sessions");
        if others == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{others} sessions of the killed child still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await.expect("close");
}

async fn check_survives_kill_9(test_name: &str, db: TestDb) {
    let key = Ed25519Signer::from_seed(SEED).log_key();
    let mut previous = 0;
    for round in 0..KILLS {
        let acked = run_and_kill(test_name, &db.url);
        assert!(
            acked > previous,
            "round {round}: the child made no progress"
        );
        if db.url.starts_with("postgres") {
            killed_sessions_gone(&db.url).await;
        }
        let store = db.open().await;
        let info = store.log_info(&key).await.expect("log after kill");
        assert!(
            info.length >= acked,
            "{} round {round}: acknowledged {acked}, found {}",
            db.name,
            info.length
        );
        // At most the one batch in flight may be there without an ack.
        assert!(info.length <= acked + 16);
        assert_eq!(info.held_entries, info.length);
        let report = store
            .verify_log(&key)
            .await
            .expect("log verifies after kill");
        assert_eq!(report.held_entries, info.length);
        let mut at = 0;
        while at < info.length {
            let end = (at + 1000).min(info.length);
            let got = store.get_range(&key, at, end).await.unwrap();
            for (k, e) in got.iter().enumerate() {
                assert_eq!(e, &entry(at + k as u64), "entry {}", at + k as u64);
            }
            at = end;
        }
        eprintln!(
            "{} round {round}: acknowledged {acked}, held {} after kill -9",
            db.name, info.length
        );
        previous = info.length;
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_sqlite() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        child(&url).await;
    }
    check_survives_kill_9(
        "acknowledged_appends_survive_kill_9_sqlite",
        common::sqlite(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9_postgres() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        child(&url).await;
    }
    check_survives_kill_9(
        "acknowledged_appends_survive_kill_9_postgres",
        common::postgres().await,
    )
    .await;
}
