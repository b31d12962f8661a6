//! A full disk is a clear error, not corruption (SQLite): the store lives on a 1 MiB tmpfs,
//! appends until the disk is full, and then every acknowledged entry is still there and the log
//! verifies; once there is room again, appends go on.
//!
//! Needs root (it mounts a tmpfs). CI runs as root; without it the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use kith_store::log::Ed25519Signer;
use kith_store::{Store, StoreError};

/// A tmpfs mounted on a temp dir, unmounted on drop (even when the test panics).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
        assert_eq!(
            uid, "0",
            "the full-disk test mounts a tmpfs and needs root; this process runs as uid {uid}. \
             CI runs as root; locally use `sudo -E cargo nextest run -p kith-store`"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "kith-store-test",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {}",
            dir.path().display()
        );
        Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "resize the tmpfs");
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let fs = Tmpfs::mount("1m");
    let url = format!("sqlite://{}", fs.path().join("store.db").display());
    let store = Store::open(&url).await.expect("open on the tmpfs");
    let signer = Ed25519Signer::from_seed([50; 32]);
    let key = signer.log_key();
    let entry = |i: u64| -> Vec<u8> {
        let mut e = blake3::hash(&i.to_le_bytes()).as_bytes().repeat(128); // 4 KiB
        e[0] = i as u8;
        e
    };

    let mut acked = 0u64;
    let err = loop {
        let batch: Vec<Vec<u8>> = (acked..acked + 4).map(entry).collect();
        match store.append(&signer, &batch).await {
            Ok(root) => acked = root.length(),
            Err(e) => break e,
        }
        assert!(acked < 10_000, "the 1 MiB disk never filled up");
    };
    assert!(acked > 0, "nothing fit on the disk");
    let StoreError::Database(source) = &err else {
        panic!("expected a database error, got {err:?}");
    };
    let message = source.to_string();
    assert!(
        message.contains("full"),
        "not a clear full-disk error: {message}"
    );
    eprintln!("disk full after {acked} acknowledged entries: {message}");

    // Nothing acknowledged was lost, nothing half-written is visible, and the log verifies.
    let info = store.log_info(&key).await.expect("read after full disk");
    assert_eq!(info.length, acked);
    assert_eq!(info.held_entries, acked);
    store
        .verify_log(&key)
        .await
        .expect("log verifies after full disk");
    for i in 0..acked {
        assert_eq!(store.get_entry(&key, i).await.unwrap(), entry(i));
    }

    // Further appends keep failing cleanly while the disk is full (on whichever pooled
    // connection they get).
    for _ in 0..6 {
        let batch: Vec<Vec<u8>> = (acked..acked + 4).map(entry).collect();
        let again = store.append(&signer, &batch).await;
        assert!(matches!(again, Err(StoreError::Database(_))), "{again:?}");
    }
    assert_eq!(store.log_info(&key).await.unwrap().length, acked);

    // With room again, the same store appends on.
    fs.resize("8m");
    let batch: Vec<Vec<u8>> = (acked..acked + 4).map(entry).collect();
    let root = store
        .append(&signer, &batch)
        .await
        .expect("append after resize");
    assert_eq!(root.length(), acked + 4);
    store.verify_log(&key).await.unwrap();
    store.close().await;
    drop(store);

    // And a reopened store sees the same log.
    let store = Store::open(&url).await.expect("reopen");
    assert_eq!(store.log_info(&key).await.unwrap().length, acked + 4);
    store.verify_log(&key).await.unwrap();
    store.close().await;
}
