//! What every store test runs against: both backends. SQLite in a temp dir always; PostgreSQL
//! from `KITH_TEST_PG_URL` if set (CI starts one server for the whole run), else a throwaway
//! server this process starts once (`tests/pg-server.sh`) and a watchdog stops when the process
//! exits. Each test gets a fresh database, so tests running in parallel never share state.
//!
//! If PostgreSQL cannot be had, the test fails with the reason: it never skips silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use kith_store::Store;
use sqlx::Connection;

/// One backend to run a test on.
pub struct TestDb {
    pub name: &'static str,
    pub url: String,
    /// The SQLite file's directory (removed on drop).
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {} store at {}: {e:?}", self.name, self.url))
    }
}

/// Both backends, each with a fresh, empty database.
pub async fn backends() -> Vec<TestDb> {
    vec![sqlite(), postgres().await]
}

pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    TestDb {
        name: "sqlite",
        url,
        _dir: Some(dir),
    }
}

/// A fresh database on the test PostgreSQL server.
pub async fn postgres() -> TestDb {
    let admin = match pg_admin_url() {
        Ok(url) => url,
        Err(e) => panic!(
            "PostgreSQL is required for the store tests and could not be had: {e}\n\
             set KITH_TEST_PG_URL=postgres://… to a server this user may create databases on, \
             or install PostgreSQL (initdb, pg_ctl) so the tests can start one"
        ),
    };
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "kith_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to test PostgreSQL at {admin}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    conn.close().await.ok();
    TestDb {
        name: "postgres",
        url: with_database(&admin, &name),
        _dir: None,
    }
}

/// `admin` with its database name replaced by `db`.
pub fn with_database(admin: &str, db: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// The URL of a PostgreSQL database on which this process may create databases.
pub fn pg_admin_url() -> Result<String, String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("KITH_TEST_PG_URL")
            && !url.is_empty()
        {
            return Ok(url);
        }
        start_throwaway_server()
    })
    .clone()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg-server.sh")
}

/// Starts a server in a new temp dir, and a watchdog that stops it and removes the dir once this
/// process has exited (statics are never dropped, so the process cannot do it itself).
fn start_throwaway_server() -> Result<String, String> {
    let dir = tempfile::Builder::new()
        .prefix("kith-pg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} start failed: {}",
            script().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; exec bash '{script}' stop '{dir}'",
        pid = std::process::id(),
        script = script().display(),
        dir = dir.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(watchdog)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn the server's watchdog: {e}"))?;
    Ok(url)
}
