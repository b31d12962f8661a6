//! Test support (feature `testing`): fresh PostgreSQL databases for the tests of the store and
//! of whatever uses it. The server is `KITH_TEST_PG_URL` if set (CI starts one for the whole
//! run), else a throwaway one this process starts once (`tests/pg-server.sh`) and a watchdog
//! stops when the process exits. Each call makes a new, empty database.
//!
//! If PostgreSQL cannot be had the error says why: callers fail the test, never skip it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// A fresh, empty database named `<prefix>_<pid>_<n>_<nanos>` on the test server; its URL.
pub async fn fresh_postgres_database(prefix: &str) -> Result<String, String> {
    let admin = pg_admin_url()?;
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .map_err(|e| format!("connect to test PostgreSQL at {admin}: {e}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("create database {name}: {e}"))?;
    conn.close().await.ok();
    Ok(with_database(&admin, &name))
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
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg-server.sh"))
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
