//! What every store test runs against: both backends. SQLite in a temp dir always; PostgreSQL
//! from `KITH_TEST_PG_URL` if set (CI starts one server for the whole run), else a throwaway
//! server this process starts once (`tests/pg-server.sh`) and a watchdog stops when the process
//! exits. Each test gets a fresh database, so tests running in parallel never share state.
//!
//! If PostgreSQL cannot be had, the test fails with the reason: it never skips silently.

#![allow(dead_code)]

use kith_store::Store;

/// One backend to run a test on.
pub struct TestDb {
    pub name: &'static str,
    pub url: String,
    /// The SQLite file's directory (removed on drop).
    _dir: Option<tempfile::TempDir>,
    /// The blob dir the store is opened with (`None`: the default, see `Store::open`).
    pub blob_dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        Store::open_with_blob_dir(
            &self.url,
            self.blob_dir.as_ref().map(|d| d.path().join("blobs")),
        )
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
        blob_dir: None,
    }
}

/// A fresh database on the test PostgreSQL server, opened with a blob dir for file data.
pub async fn postgres() -> TestDb {
    TestDb {
        name: "postgres",
        blob_dir: Some(tempfile::tempdir().expect("temp dir")),
        ..postgres_inline().await
    }
}

/// A fresh database on the test PostgreSQL server, opened without a blob dir: file data is kept
/// in the database.
pub async fn postgres_inline() -> TestDb {
    let url = kith_store::testing::fresh_postgres_database("kith_test")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for the store tests and could not be had: {e}\n\
                 set KITH_TEST_PG_URL=postgres://… to a server this user may create databases \
                 on, or install PostgreSQL (initdb, pg_ctl) so the tests can start one"
            )
        });
    TestDb {
        name: "postgres-inline",
        url,
        _dir: None,
        blob_dir: None,
    }
}
