//! `kith store …` and `kith log …` driven as a user would, on stores written through the
//! `kith-store` library: SQLite files, and PostgreSQL from `KITH_TEST_PG_URL` or a throwaway
//! server started once (`services/store/tests/pg-server.sh`), a fresh database per use. Without
//! PostgreSQL the tests that need it fail with the reason; they never skip.

mod common;

use std::path::Path;

use common::kith;

use kith_store::Store;
use kith_store::log::{Ed25519Signer, LogKey};
use serde_json::Value;
use sqlx::Connection as _;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn entries(seed: u8, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range
        .map(|i| {
            let mut e = format!("entry {i} of log {seed}: ").into_bytes();
            e.resize(100 + (i as usize * 7) % 300, seed);
            e
        })
        .collect()
}

/// A store with three logs: 300 entries in two batches, 5 entries, and a sparse copy holding
/// entries 10..20 of a 30-entry log. Returns the keys, in that order.
async fn fill(url: &str, scratch: &Path) -> Vec<LogKey> {
    let store = Store::open(url).await.unwrap();
    let a = Ed25519Signer::from_seed([1; 32]);
    let b = Ed25519Signer::from_seed([2; 32]);
    let c = Ed25519Signer::from_seed([3; 32]);
    store.append(&a, &entries(1, 0..200)).await.unwrap();
    store.append(&a, &entries(1, 200..300)).await.unwrap();
    store.append(&b, &entries(2, 0..5)).await.unwrap();
    // c's writer keeps its log elsewhere; this store holds part of it, as a mirror would.
    let writer = Store::open(&sqlite_url(&scratch.join("writer.db")))
        .await
        .unwrap();
    writer.append(&c, &entries(3, 0..30)).await.unwrap();
    let (root, got, proof) = writer
        .get_range_with_proof(&c.log_key(), 10, 20, None)
        .await
        .unwrap();
    store.put_remote(&root, 10, &got, &proof).await.unwrap();
    writer.close().await;
    store.close().await;
    vec![a.log_key(), b.log_key(), c.log_key()]
}

fn logs_by_key(list: &Value) -> Vec<Value> {
    list["logs"].as_array().expect("logs array").clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_list_show_verify_and_migrate_sqlite_postgres_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let first = sqlite_url(&dir.path().join("first.db"));
    let keys = fill(&first, dir.path()).await;
    let total_entries = 300 + 5 + 10;

    let stats = kith(&home, &["--json", "store", "stats", "--store", &first]).json();
    assert_eq!(stats["backend"], "sqlite");
    assert_eq!(stats["logs"], 3);
    assert_eq!(stats["entries"], total_entries);
    assert_eq!(stats["forked_logs"], 0);

    let list = kith(&home, &["--json", "log", "list", "--store", &first]).json();
    let logs = logs_by_key(&list);
    assert_eq!(logs.len(), 3);
    let by_key = |k: &LogKey| {
        logs.iter()
            .find(|l| l["key"] == k.to_string())
            .unwrap_or_else(|| panic!("log {k} missing from {list}"))
            .clone()
    };
    let a = by_key(&keys[0]);
    assert_eq!(a["length"], 300);
    assert_eq!(a["held"], serde_json::json!([[0, 300]]));
    let a_bytes: u64 = entries(1, 0..300).iter().map(|e| e.len() as u64).sum();
    assert_eq!(a["byte_length"], a_bytes);
    let c = by_key(&keys[2]);
    assert_eq!(c["length"], 30);
    assert_eq!(c["held_entries"], 10);
    assert_eq!(c["held"], serde_json::json!([[10, 20]]));

    // Text output names every log with its held ranges.
    let text = kith(&home, &["log", "list", "--store", &first]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains(&format!("{}  length 30", keys[2])));
    assert!(text.stdout.contains("held 10..20"), "{}", text.stdout);

    let show = kith(
        &home,
        &[
            "--json",
            "log",
            "show",
            &keys[1].to_string(),
            "--store",
            &first,
        ],
    )
    .json();
    assert_eq!(show["length"], 5);
    assert_eq!(show["fork_evidence"], 0);

    let verify = kith(&home, &["--json", "log", "verify", "--store", &first]).json();
    let results = logs_by_key(&verify);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["ok"] == true), "{verify}");

    // SQLite → PostgreSQL: everything arrives and verifies, and the logs list the same.
    let pg = postgres().await;
    let migrated = kith(
        &home,
        &["--json", "store", "migrate", "--from", &first, "--to", &pg],
    )
    .json();
    assert_eq!(migrated["logs"], 3);
    assert_eq!(migrated["entries"], total_entries);
    assert_eq!(migrated["verified_logs"], 3);
    assert_eq!(
        migrated["entry_bytes"], stats["entry_bytes"],
        "{migrated} vs {stats}"
    );
    let pg_list = kith(&home, &["--json", "log", "list", "--store", &pg]).json();
    assert_eq!(pg_list, list);
    let pg_stats = kith(&home, &["--json", "store", "stats", "--store", &pg]).json();
    assert_eq!(pg_stats["backend"], "postgres");
    assert_eq!(pg_stats["entries"], stats["entries"]);
    assert_eq!(pg_stats["entry_bytes"], stats["entry_bytes"]);

    // And back to a fresh SQLite file, given through KITH_STORE_URL this time.
    let back_path = dir.path().join("back.db");
    let back = sqlite_url(&back_path);
    let returned = kith(&home, &["store", "migrate", "--from", &pg, "--to", &back]);
    assert_eq!(returned.code, 0, "{}", returned.stderr);
    assert!(
        returned.stdout.contains("copied 3 logs, 315 entries"),
        "{}",
        returned.stdout
    );
    let mut cmd = common::kith_cmd(&home);
    cmd.env("KITH_STORE_URL", &back);
    let back_list = common::run_with(cmd, &["--json", "log", "list"], b"").json();
    assert_eq!(back_list, list);
    let back_verify = kith(&home, &["log", "verify", "--store", &back]);
    assert_eq!(back_verify.code, 0, "{}", back_verify.stderr);
    assert_eq!(back_verify.stdout.lines().count(), 3);
    assert!(back_verify.stdout.lines().all(|l| l.starts_with("ok ")));

    // None of this touched the home: every store was given by URL.
    assert!(!home.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn default_store_is_in_the_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let stats = kith(&home, &["--json", "store", "stats"]).json();
    assert_eq!(stats["logs"], 0);
    let store_dir = home.join("store");
    assert!(store_dir.join("store.db").is_file());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&store_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    // A log written there by the library shows up without --store.
    let url = sqlite_url(&store_dir.join("store.db"));
    let keys = fill(&url, dir.path()).await;
    let list = kith(&home, &["--json", "log", "list"]).json();
    assert_eq!(logs_by_key(&list).len(), keys.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_entry_fails_verify_naming_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let path = dir.path().join("store.db");
    let url = sqlite_url(&path);
    let keys = fill(&url, dir.path()).await;
    assert_eq!(kith(&home, &["log", "verify", "--store", &url]).code, 0);

    // Zero entry 3 of the second log, keeping its length.
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let changed = sqlx::query(
        "UPDATE entries SET data = zeroblob(length(data)) \
         WHERE idx = 3 AND log_id = (SELECT id FROM logs WHERE key = $1)",
    )
    .bind(keys[1].as_bytes().as_slice())
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    conn.close().await.unwrap();

    let bad = kith(&home, &["log", "verify", "--store", &url]);
    let line = bad.error();
    assert!(
        line.contains(&format!("log {} failed verification", keys[1])),
        "{line}"
    );
    // The other logs still check out, and the output says which failed.
    assert!(bad.stdout.contains(&format!("FAILED  {}", keys[1])));
    assert!(bad.stdout.contains(&format!("ok      {}", keys[0])));
    let one = kith(
        &home,
        &["log", "verify", &keys[0].to_string(), "--store", &url],
    );
    assert_eq!(one.code, 0, "{}", one.stderr);
    let json = kith(
        &home,
        &[
            "--json",
            "log",
            "verify",
            &keys[1].to_string(),
            "--store",
            &url,
        ],
    );
    json.error();
    let value: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["logs"][0]["ok"], false);

    // A migration from the damaged store refuses it: the destination verifies what it gets.
    let dest = sqlite_url(&dir.path().join("dest.db"));
    let copy = kith(&home, &["store", "migrate", "--from", &url, "--to", &dest]);
    assert!(copy.error().contains("copy "), "{}", copy.stderr);
}

#[test]
fn bad_urls_and_keys_are_one_error_line_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let src_path = dir.path().join("src.db");
    let src = sqlite_url(&src_path);

    let e = kith(&home, &["store", "stats", "--store", "mysql://localhost/x"]);
    assert!(e.error().contains("unsupported store URL"), "{}", e.stderr);
    let e = kith(&home, &["log", "list", "--store", "sqlite://"]);
    e.error();
    let e = kith(&home, &["log", "show", "nothex", "--store", &src]);
    assert!(e.error().contains("not hex"), "{}", e.stderr);
    let e = kith(&home, &["log", "verify", &"00".repeat(31)]);
    assert!(e.error().contains("invalid log key"), "{}", e.stderr);

    // A source that does not exist is not created.
    let to = dir.path().join("to.db");
    let e = kith(
        &home,
        &["store", "migrate", "--from", &src, "--to", &sqlite_url(&to)],
    );
    assert!(e.error().contains("no store database"), "{}", e.stderr);
    assert!(!src_path.exists() && !to.exists());

    // The same database twice, spelled differently.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let e = kith(
        &home,
        &[
            "store",
            "migrate",
            "--from",
            &src,
            "--to",
            &format!("sqlite://{}/sub/../src.db", dir.path().display()),
        ],
    );
    assert!(e.error().contains("same database"), "{}", e.stderr);

    // An unreachable destination: one line, and the source is left as it was.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(fill(&src, dir.path()));
    let before = std::fs::read(&src_path).unwrap();
    let e = kith(
        &home,
        &[
            "store",
            "migrate",
            "--from",
            &src,
            "--to",
            "postgres://kith:secret@127.0.0.1:1/none",
        ],
    );
    let line = e.error();
    assert!(
        line.contains("connect to postgres://kith:***@127.0.0.1:1/none"),
        "{line}"
    );
    assert!(!line.contains("secret"), "password in {line}");
    assert_eq!(std::fs::read(&src_path).unwrap(), before);
    // Into a directory that does not exist.
    let e = kith(
        &home,
        &[
            "store",
            "migrate",
            "--from",
            &src,
            "--to",
            &sqlite_url(&dir.path().join("missing/dir/x.db")),
        ],
    );
    e.error();
    assert!(!dir.path().join("missing").exists());
    assert!(!home.exists(), "a refused command created the home");
}

/// A fresh, empty database on the test PostgreSQL server (kith-store's test support).
async fn postgres() -> String {
    kith_store::testing::fresh_postgres_database("kith_cli_test")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for the store CLI tests and could not be had: {e}\n\
                 set KITH_TEST_PG_URL=postgres://… to a server this user may create databases \
                 on, or install PostgreSQL (initdb, pg_ctl) so the tests can start one"
            )
        })
}
