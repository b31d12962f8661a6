//! The store on both backends: every scenario runs identically on SQLite and PostgreSQL.

mod common;

use common::{TestDb, backends};
use kith_store::backend::copy_store;
use kith_store::log::tree;
use kith_store::log::{
    Ed25519Signer, ForkEvidence, MAX_BATCH_ENTRIES, MAX_ENTRY_BYTES, Proof, RootSigner, SignedRoot,
    UnsignedRoot,
};
use kith_store::topic::{MAX_LOG_TOPICS, MAX_TOPIC_LOGS, RoomTopic, TopicKey, TopicTag};
use kith_store::{LogInfo, PutOutcome, Stats, Store, StoreError};
use std::sync::Arc;

/// Entry `i` of a test log: bytes that look like ciphertext (pseudo-random, varying length).
fn entry(seed: u8, i: u64) -> Vec<u8> {
    let len = 1 + (i as usize * 37) % 300;
    let mut out = Vec::with_capacity(len);
    let mut x = blake3::hash(&[&[seed][..], &i.to_le_bytes()].concat());
    while out.len() < len {
        out.extend_from_slice(x.as_bytes());
        x = blake3::hash(x.as_bytes());
    }
    out.truncate(len);
    out
}

fn entries(seed: u8, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range.map(|i| entry(seed, i)).collect()
}

/// Appends `[from, to)` in batches of `batch`.
async fn append_range(
    store: &Store,
    signer: &Ed25519Signer,
    seed: u8,
    from: u64,
    to: u64,
    batch: u64,
) -> SignedRoot {
    let mut root = None;
    let mut at = from;
    while at < to {
        let end = (at + batch).min(to);
        root = Some(store.append(signer, &entries(seed, at..end)).await.unwrap());
        at = end;
    }
    root.expect("appended something")
}

/// Everything a caller can observe about a store, to show bad input changed nothing.
async fn snapshot(store: &Store) -> (Stats, Vec<LogInfo>) {
    (
        store.stats().await.unwrap(),
        store.list_logs().await.unwrap(),
    )
}

#[test]
fn database_names_are_replaced_in_urls() {
    use kith_store::testing::with_database;
    assert_eq!(
        with_database("postgres://u@127.0.0.1:5/postgres", "x"),
        "postgres://u@127.0.0.1:5/x"
    );
    assert_eq!(
        with_database("postgres://u@h/postgres?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
}

#[tokio::test]
async fn a_new_sqlite_store_has_16_kib_pages_and_an_old_one_keeps_its_own() {
    use sqlx::{Connection, Row};
    let db = common::sqlite();
    db.open().await.close().await;
    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let size: i64 = sqlx::query("PRAGMA page_size")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 16384);
    c.close().await.unwrap();
    // A database made with 4 KiB pages opens, migrates and works as before.
    let old = common::sqlite();
    let opts = kith_store::backend::sqlite_connect_options(&old.url)
        .unwrap()
        .page_size(4096);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("CREATE TABLE before_kith (x INTEGER)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    let store = old.open().await;
    let signer = Ed25519Signer::from_seed([30; 32]);
    append_range(&store, &signer, 30, 0, 50, 10).await;
    store.verify_log(&signer.log_key()).await.unwrap();
    store.close().await;
    let mut c = sqlx::SqliteConnection::connect(&old.url).await.unwrap();
    let size: i64 = sqlx::query("PRAGMA page_size")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 4096);
}

#[tokio::test]
async fn append_read_prove_and_verify_with_the_public_key_only() {
    for db in backends().await {
        let store = db.open().await;
        let signer = Ed25519Signer::from_seed([1; 32]);
        let key = signer.log_key();
        let root = append_range(&store, &signer, 1, 0, 100, 7).await;
        assert_eq!(root.length(), 100, "{}", db.name);
        assert_eq!(root.key(), key);

        let info = store.log_info(&key).await.unwrap();
        assert_eq!(info.length, 100);
        assert_eq!(info.held_entries, 100);
        assert_eq!(info.root, Some(root));
        assert!(!info.forked);
        let total: u64 = (0..100).map(|i| entry(1, i).len() as u64).sum();
        assert_eq!(info.byte_length, total);

        assert_eq!(
            store.get_range(&key, 10, 20).await.unwrap(),
            entries(1, 10..20)
        );
        assert_eq!(store.get_entry(&key, 99).await.unwrap(), entry(1, 99));
        assert!(matches!(
            store.get_entry(&key, 100).await,
            Err(StoreError::OutOfRange)
        ));
        assert_eq!(
            store.held(&key).await.unwrap().iter().collect::<Vec<_>>(),
            vec![(0, 100)]
        );

        // Proofs from the store verify with nothing but the signed root (the public key).
        let root_bytes = root.to_bytes();
        let received = SignedRoot::from_bytes(&root_bytes).unwrap();
        for (start, end) in [(0, 1), (37, 38), (99, 100), (10, 60), (0, 100)] {
            let (r, es, proof) = store
                .get_range_with_proof(&key, start, end, None)
                .await
                .unwrap();
            assert_eq!(r, received);
            let proof = Proof::decode(&proof.to_bytes()).unwrap().0;
            proof.verify(&received, start, &es, &[]).unwrap();
            // The same proof does not verify other bytes.
            let mut wrong = es.clone();
            wrong[0][0] ^= 1;
            assert!(proof.verify(&received, start, &wrong, &[]).is_err());
        }
        let report = store.verify_log(&key).await.unwrap();
        assert_eq!((report.length, report.held_entries), (100, 100));

        let stats = store.stats().await.unwrap();
        assert_eq!(stats.backend, db.name);
        assert_eq!(
            (stats.logs, stats.entries, stats.entry_bytes),
            (1, 100, total)
        );
        // Every full node of a 100-entry tree: 100 leaves + 100 - popcount(100) parents.
        assert_eq!(stats.nodes, 200 - 100u64.count_ones() as u64);
        let logs = store.list_logs().await.unwrap();
        assert_eq!(logs, vec![info]);
        store.close().await;
    }
}

/// Verifying a log while it grows never mistakes a fresh append for corruption (it read the
/// root before the held entries once, and an append in between looked like entries past the
/// root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_a_log_while_it_is_appended_to_finds_it_sound() {
    for db in backends().await {
        let store = std::sync::Arc::new(db.open().await);
        let signer = Ed25519Signer::from_seed([9; 32]);
        let key = signer.log_key();
        append_range(&store, &signer, 9, 0, 10, 10).await;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { append_range(&store, &signer, 9, 10, 400, 1).await })
        };
        let mut checks = 0;
        while !writer.is_finished() {
            let report = store.verify_log(&key).await.unwrap_or_else(|e| {
                panic!("{}: verify during appends, check {checks}: {e}", db.name)
            });
            assert!(report.held_entries >= 10 && report.held_entries <= 400);
            checks += 1;
        }
        writer.await.unwrap();
        assert!(
            checks > 1,
            "{}: only {checks} checks ran during the appends",
            db.name
        );
        assert_eq!(store.verify_log(&key).await.unwrap().held_entries, 400);
    }
}

#[tokio::test]
async fn a_reopened_store_continues_the_same_tree() {
    for db in backends().await {
        let signer = Ed25519Signer::from_seed([2; 32]);
        let store = db.open().await;
        append_range(&store, &signer, 2, 0, 13, 5).await;
        store.close().await;
        drop(store);

        let store = db.open().await;
        let root = append_range(&store, &signer, 2, 13, 40, 4).await;
        // The root equals the root of the same 40 entries appended in one go elsewhere.
        let mut appender = tree::Appender::new();
        let mut nodes = Vec::new();
        for e in entries(2, 0..40) {
            appender.append(&e, &mut nodes).unwrap();
        }
        assert_eq!(root.hash(), &appender.root_hash(), "{}", db.name);
        store.verify_log(&signer.log_key()).await.unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn a_log_this_node_wrote_stays_its_own_after_a_restart_and_a_migration() {
    for db in backends().await {
        let signer = Ed25519Signer::from_seed([3; 32]);
        let key = signer.log_key();
        let store = db.open().await;
        append_range(&store, &signer, 3, 0, 5, 5).await;
        assert!(store.writes(&key));
        store.close().await;
        drop(store);

        // A new process that has not appended yet still knows the log is its own: it is not
        // mirrored (a mirror's quota could evict it), evicted or deleted.
        let store = db.open().await;
        assert!(store.writes(&key), "{}", db.name);
        assert!(matches!(
            store.set_mirror(&key, Some(1), 0).await,
            Err(StoreError::Malformed(_))
        ));
        assert!(store.evict_oldest(&key, 1024).await.is_err());
        assert!(store.mirrors().await.unwrap().is_empty());
        assert_eq!(store.log_info(&key).await.unwrap().held_entries, 5);
        // Another log (a reader's copy) is not.
        assert!(!store.writes(&Ed25519Signer::from_seed([4; 32]).log_key()));

        // `store migrate` carries it.
        let to = common::sqlite();
        let copy = to.open().await;
        let report = copy_store(&store, &copy).await.unwrap();
        assert_eq!(report.own_logs, 1);
        assert!(copy.writes(&key), "{}", db.name);
        store.close().await;
        copy.close().await;
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
    for db in backends().await {
        let store = db.open().await;
        store.close().await;
        let store = db.open().await;
        assert_eq!(store.stats().await.unwrap().logs, 0);
        store.close().await;
        // A newer build recorded a migration this build does not know.
        match db.name {
            "sqlite" => {
                let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                sqlx::query("INSERT INTO kith_store_schema VALUES (99, 'future', x'00')")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
            _ => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                sqlx::query("INSERT INTO kith_store_schema VALUES (99, 'future', '\\x00')")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
        let err = Store::open(&db.url).await.unwrap_err();
        assert!(matches!(err, StoreError::Schema(_)), "{}: {err:?}", db.name);
    }
}

#[tokio::test]
async fn urls_choose_the_backend() {
    assert!(matches!(
        Store::open("mysql://x").await,
        Err(StoreError::InvalidUrl(_))
    ));
    assert!(matches!(
        Store::open("/tmp/x.db").await,
        Err(StoreError::InvalidUrl(_))
    ));
    let store = Store::open("sqlite::memory:").await.unwrap();
    assert_eq!(store.backend(), "sqlite");
}

#[tokio::test]
async fn bad_appends_change_nothing() {
    for db in backends().await {
        let store = db.open().await;
        let signer = Ed25519Signer::from_seed([3; 32]);
        append_range(&store, &signer, 3, 0, 10, 10).await;
        let before = snapshot(&store).await;

        let oversized = vec![entry(3, 10), vec![0u8; MAX_ENTRY_BYTES + 1]];
        assert!(matches!(
            store.append(&signer, &oversized).await,
            Err(StoreError::EntryTooLarge { size }) if size == MAX_ENTRY_BYTES + 1
        ));
        let too_many = vec![vec![1u8]; MAX_BATCH_ENTRIES + 1];
        assert!(matches!(
            store.append(&signer, &too_many).await,
            Err(StoreError::BatchTooLarge { .. })
        ));
        let none: Vec<Vec<u8>> = Vec::new();
        assert!(store.append(&signer, &none).await.is_err());

        // A signer that returns a signature by another key: refused before anything is written.
        struct Liar(Ed25519Signer, Ed25519Signer);
        #[async_trait::async_trait]
        impl RootSigner for Liar {
            fn log_key(&self) -> kith_store::log::LogKey {
                self.0.log_key()
            }
            async fn sign_root(&self, root: &UnsignedRoot) -> Result<[u8; 64], StoreError> {
                let forged = UnsignedRoot {
                    key: self.1.log_key(),
                    ..*root
                };
                Ok(self.1.sign(&forged))
            }
        }
        let liar = Liar(
            Ed25519Signer::from_seed([3; 32]),
            Ed25519Signer::from_seed([4; 32]),
        );
        assert!(matches!(
            store.append(&liar, &[b"x"]).await,
            Err(StoreError::BadSignature)
        ));

        // The maximum size itself is fine.
        assert_eq!(snapshot(&store).await, before, "{}", db.name);
        let root = store
            .append(&signer, &[vec![7u8; MAX_ENTRY_BYTES]])
            .await
            .unwrap();
        assert_eq!(root.length(), 11);
        store.verify_log(&signer.log_key()).await.unwrap();
        store.close().await;
    }
}

#[tokio::test]
async fn bad_remote_input_changes_nothing() {
    for db in backends().await {
        let writer_db = common::sqlite();
        let writer = writer_db.open().await;
        let signer = Ed25519Signer::from_seed([5; 32]);
        let key = signer.log_key();
        append_range(&writer, &signer, 5, 0, 10, 16).await;

        let mirror = db.open().await;
        let (root, es, proof) = writer
            .get_range_with_proof(&key, 0, 10, None)
            .await
            .unwrap();
        assert!(matches!(
            mirror.put_remote(&root, 0, &es, &proof).await.unwrap(),
            PutOutcome::Stored { .. }
        ));
        let before = snapshot(&mirror).await;
        append_range(&writer, &signer, 5, 10, 50, 16).await;

        let (root2, es2, proof2) = writer
            .get_range_with_proof(&key, 20, 30, Some(10))
            .await
            .unwrap();
        // Tampered entry, wrong position, missing proof node, extra proof node, oversized entry.
        let mut tampered = es2.clone();
        tampered[3][0] ^= 0x80;
        assert!(matches!(
            mirror.put_remote(&root2, 20, &tampered, &proof2).await,
            Err(StoreError::BadProof)
        ));
        assert!(mirror.put_remote(&root2, 21, &es2, &proof2).await.is_err());
        let mut short = proof2.clone();
        short.nodes.pop();
        assert!(matches!(
            mirror.put_remote(&root2, 20, &es2, &short).await,
            Err(StoreError::BadProof)
        ));
        let mut long = proof2.clone();
        long.nodes.push(long.nodes[0]);
        assert!(matches!(
            mirror.put_remote(&root2, 20, &es2, &long).await,
            Err(StoreError::BadProof)
        ));
        let mut big = es2.clone();
        big[0] = vec![0; MAX_ENTRY_BYTES + 1];
        assert!(matches!(
            mirror.put_remote(&root2, 20, &big, &proof2).await,
            Err(StoreError::EntryTooLarge { .. })
        ));
        // An upgrade whose proof does not reveal the held peaks is refused.
        let (_, es3, no_reveal) = writer
            .get_range_with_proof(&key, 20, 30, None)
            .await
            .unwrap();
        let refused = mirror.put_remote(&root2, 20, &es3, &no_reveal).await;
        assert!(matches!(refused, Err(StoreError::BadProof)), "{refused:?}");
        // A forged root never gets as far as the store: decoding checks the signature.
        let mut forged = root2.to_bytes();
        forged[40] ^= 1;
        assert!(matches!(
            SignedRoot::from_bytes(&forged),
            Err(StoreError::BadSignature)
        ));
        assert_eq!(snapshot(&mirror).await, before, "{}", db.name);

        // The same tree signed by another key is another log: stored there, not here.
        let other = Ed25519Signer::from_seed([6; 32]);
        let u = UnsignedRoot {
            key: other.log_key(),
            length: root2.length(),
            hash: *root2.hash(),
        };
        let other_root = SignedRoot::new(u, other.sign(&u)).unwrap();
        let (_, es4, plain) = writer
            .get_range_with_proof(&key, 20, 30, None)
            .await
            .unwrap();
        assert!(
            mirror
                .put_remote(&other_root, 20, &es4, &plain)
                .await
                .is_ok()
        );
        assert_eq!(mirror.log_info(&key).await.unwrap(), before.1[0]);
        // The honest upgrade goes through.
        mirror.put_remote(&root2, 20, &es2, &proof2).await.unwrap();
        let info = mirror.log_info(&key).await.unwrap();
        assert_eq!((info.length, info.held_entries), (50, 20));
        writer.close().await;
        mirror.close().await;
    }
}

#[tokio::test]
async fn a_sparse_mirror_holds_and_proves_only_what_it_has() {
    for db in backends().await {
        let writer_db = common::sqlite();
        let writer = writer_db.open().await;
        let signer = Ed25519Signer::from_seed([7; 32]);
        let key = signer.log_key();
        append_range(&writer, &signer, 7, 0, 64, 64).await;

        let mirror = db.open().await;
        // [10, 20) at length 64.
        let (root, es, proof) = writer
            .get_range_with_proof(&key, 10, 20, None)
            .await
            .unwrap();
        let out = mirror.put_remote(&root, 10, &es, &proof).await.unwrap();
        assert_eq!(
            out,
            PutOutcome::Stored {
                root,
                upgraded: true
            },
            "{}",
            db.name
        );
        // The writer grows to 100; the mirror upgrades while fetching [70, 75): the proof reveals
        // the mirror's old peaks.
        append_range(&writer, &signer, 7, 64, 100, 9).await;
        let (root100, es, proof) = writer
            .get_range_with_proof(&key, 70, 75, Some(64))
            .await
            .unwrap();
        let out = mirror.put_remote(&root100, 70, &es, &proof).await.unwrap();
        assert_eq!(
            out,
            PutOutcome::Stored {
                root: root100,
                upgraded: true
            }
        );
        // At the held length no reveal is needed.
        let (_, es_b, proof_b) = writer
            .get_range_with_proof(&key, 80, 82, None)
            .await
            .unwrap();
        let out = mirror
            .put_remote(&root100, 80, &es_b, &proof_b)
            .await
            .unwrap();
        assert_eq!(
            out,
            PutOutcome::Stored {
                root: root100,
                upgraded: false
            }
        );

        let held = mirror.held(&key).await.unwrap();
        assert_eq!(
            held.iter().collect::<Vec<_>>(),
            vec![(10, 20), (70, 75), (80, 82)]
        );
        let info = mirror.log_info(&key).await.unwrap();
        assert_eq!((info.length, info.held_entries), (100, 17));
        assert_eq!(mirror.verify_log(&key).await.unwrap().held_entries, 17);

        // The mirror proves what it has, to anyone with the public key.
        for (s, e) in [(10, 20), (12, 13), (70, 75), (81, 82)] {
            let (r, got, p) = mirror.get_range_with_proof(&key, s, e, None).await.unwrap();
            assert_eq!(r, root100);
            assert_eq!(got, entries(7, s..e));
            p.verify(&r, s, &got, &[]).unwrap();
        }
        // An upgrade proof for a reader that holds length 64 (the mirror held that root too).
        let (r, got, p) = mirror
            .get_range_with_proof(&key, 12, 14, Some(64))
            .await
            .unwrap();
        p.verify(&r, 12, &got, &tree::full_roots(64)).unwrap();
        // ... and says what it lacks.
        assert!(matches!(
            mirror.get_range(&key, 30, 31).await,
            Err(StoreError::EntryNotHeld { index: 30 })
        ));
        assert!(matches!(
            mirror.get_range(&key, 18, 22).await,
            Err(StoreError::EntryNotHeld { index: 20 })
        ));
        // An older root whose peaks the mirror holds (64) still adds entries, without going back.
        let old_writer_db = common::sqlite();
        let old_writer = old_writer_db.open().await;
        append_range(&old_writer, &signer, 7, 0, 64, 64).await;
        let (r64, es, p) = old_writer
            .get_range_with_proof(&key, 0, 3, None)
            .await
            .unwrap();
        assert_eq!(r64, root);
        let out = mirror.put_remote(&r64, 0, &es, &p).await.unwrap();
        assert_eq!(
            out,
            PutOutcome::Stored {
                root: root100,
                upgraded: false
            }
        );
        // An older root it cannot place (length 5: peaks it never saw) is refused.
        let short_db = common::sqlite();
        let short = short_db.open().await;
        let r5 = append_range(&short, &signer, 7, 0, 5, 5).await;
        let (_, es, p) = short.get_range_with_proof(&key, 4, 5, None).await.unwrap();
        assert!(matches!(
            mirror.put_remote(&r5, 4, &es, &p).await,
            Err(StoreError::StaleRoot {
                offered: 5,
                held: 100
            })
        ));
        assert_eq!(mirror.held(&key).await.unwrap().count(), 20);
        mirror.verify_log(&key).await.unwrap();
        for s in [&writer, &mirror, &old_writer, &short] {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn two_roots_for_one_length_fork_the_log() {
    for db in backends().await {
        let signer = Ed25519Signer::from_seed([8; 32]);
        let key = signer.log_key();
        // The same key writes two histories in two places (a restored backup, a stolen key).
        let (a_db, b_db) = (common::sqlite(), common::sqlite());
        let (a, b) = (a_db.open().await, b_db.open().await);
        append_range(&a, &signer, 8, 0, 20, 20).await;
        append_range(&b, &signer, 9, 0, 20, 20).await;

        let mirror = db.open().await;
        let (ra, es, p) = a.get_range_with_proof(&key, 0, 5, None).await.unwrap();
        mirror.put_remote(&ra, 0, &es, &p).await.unwrap();
        let before_entries = mirror.stats().await.unwrap().entries;
        let (rb, es, p) = b.get_range_with_proof(&key, 5, 10, None).await.unwrap();
        let PutOutcome::Forked(evidence) = mirror.put_remote(&rb, 5, &es, &p).await.unwrap() else {
            panic!("{}: fork not detected", db.name);
        };
        assert!(matches!(evidence, ForkEvidence::SameLength { .. }));
        evidence.verify().unwrap();
        assert!(mirror.log_info(&key).await.unwrap().forked);
        assert_eq!(
            mirror.stats().await.unwrap().entries,
            before_entries,
            "nothing of b stored"
        );
        // The log takes nothing more, and the evidence is served.
        assert!(matches!(
            mirror.put_remote(&ra, 0, &es, &p).await,
            Err(StoreError::Forked { .. })
        ));
        let served = mirror.fork_evidence(&key).await.unwrap();
        assert_eq!(served, vec![evidence.clone()]);
        // Anyone can check it from its bytes, and another store takes it.
        let bytes = evidence.to_bytes();
        let other = db.open().await;
        other
            .add_fork_evidence(ForkEvidence::from_bytes(&bytes).unwrap())
            .await
            .unwrap();
        assert!(other.log_info(&key).await.unwrap().forked);
        assert_eq!(other.stats().await.unwrap().forked_logs, 1);
        // A forked writer's store refuses appends once it learns.
        a.add_fork_evidence(evidence).await.unwrap();
        assert!(matches!(
            a.append(&signer, &[b"more"]).await,
            Err(StoreError::Forked { .. })
        ));
        for s in [&a, &b, &mirror, &other] {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn a_longer_root_that_rewrites_the_prefix_forks_the_log() {
    for db in backends().await {
        let signer = Ed25519Signer::from_seed([10; 32]);
        let key = signer.log_key();
        let (a_db, b_db) = (common::sqlite(), common::sqlite());
        let (a, b) = (a_db.open().await, b_db.open().await);
        // a: 8 honest entries. b: the same key rewrote entry 2, then went on to 12.
        append_range(&a, &signer, 10, 0, 8, 8).await;
        let mut rewritten = entries(10, 0..12);
        rewritten[2] = b"rewritten".to_vec();
        b.append(&signer, &rewritten).await.unwrap();

        let mirror = db.open().await;
        let (ra, es, p) = a.get_range_with_proof(&key, 0, 8, None).await.unwrap();
        mirror.put_remote(&ra, 0, &es, &p).await.unwrap();
        let (rb, es, p) = b.get_range_with_proof(&key, 8, 12, Some(8)).await.unwrap();
        let PutOutcome::Forked(evidence) = mirror.put_remote(&rb, 8, &es, &p).await.unwrap() else {
            panic!("{}: fork not detected", db.name);
        };
        let ForkEvidence::ConflictingNode { a: ca, b: cb } = &evidence else {
            panic!("expected conflicting-node evidence, got {evidence:?}");
        };
        assert_eq!(ca.index, 7, "the peak of the 8-entry tree");
        assert_eq!((ca.root.length(), cb.root.length()), (8, 12));
        ForkEvidence::from_bytes(&evidence.to_bytes())
            .unwrap()
            .verify()
            .unwrap();
        let info = mirror.log_info(&key).await.unwrap();
        assert!(info.forked);
        assert_eq!(info.length, 8, "the contradicting root is not adopted");
        for s in [&a, &b, &mirror] {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn concurrent_writers_on_one_database_never_interleave_a_batch() {
    for db in backends().await {
        let signer = std::sync::Arc::new(Ed25519Signer::from_seed([11; 32]));
        let key = signer.log_key();
        // Two stores (two pools: like two processes) append to the same log.
        let (s1, s2) = (db.open().await, db.open().await);
        async fn run(store: &Store, signer: &Ed25519Signer, tag: u8) -> u64 {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 15 {
                let batch = vec![vec![tag; 100]; 3];
                match store.append(signer, &batch).await {
                    Ok(_) => done += 1,
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("append: {e:?}"),
                }
                assert!(conflicts < 1000, "no progress");
            }
            done
        }
        let (d1, d2) = tokio::join!(run(&s1, &signer, 1), run(&s2, &signer, 2));
        assert_eq!(d1 + d2, 30);
        let info = s1.log_info(&key).await.unwrap();
        assert_eq!(info.length, 90, "{}", db.name);
        s1.verify_log(&key).await.unwrap();
        // Batches are contiguous: every aligned group of 3 has one writer's tag.
        let all = s1.get_range(&key, 0, 90).await.unwrap();
        for batch in all.chunks(3) {
            assert!(
                batch.iter().all(|e| e == &batch[0]),
                "a batch was interleaved"
            );
        }
        s1.close().await;
        s2.close().await;
    }
}

#[tokio::test]
async fn copying_sqlite_to_postgres_and_back_loses_nothing() {
    let [first, second]: [TestDb; 2] = backends().await.try_into().ok().unwrap();
    let third = common::sqlite();
    let source = first.open().await;

    // A full log, a sparse mirror copy of another writer's log, a forked log and an empty one.
    let full = Ed25519Signer::from_seed([20; 32]);
    append_range(&source, &full, 20, 0, 2500, 100).await;
    let writer_db = common::sqlite();
    let writer = writer_db.open().await;
    let sparse = Ed25519Signer::from_seed([21; 32]);
    append_range(&writer, &sparse, 21, 0, 40, 40).await;
    let (r, es, p) = writer
        .get_range_with_proof(&sparse.log_key(), 5, 9, None)
        .await
        .unwrap();
    source.put_remote(&r, 5, &es, &p).await.unwrap();
    append_range(&writer, &sparse, 21, 40, 90, 25).await;
    let (r, es, p) = writer
        .get_range_with_proof(&sparse.log_key(), 60, 70, Some(40))
        .await
        .unwrap();
    source.put_remote(&r, 60, &es, &p).await.unwrap();
    let forked = Ed25519Signer::from_seed([22; 32]);
    append_range(&source, &forked, 22, 0, 6, 6).await;
    let other_db = common::sqlite();
    let other = other_db.open().await;
    let (r, es, p) = {
        append_range(&other, &forked, 23, 0, 6, 6).await;
        other
            .get_range_with_proof(&forked.log_key(), 0, 6, None)
            .await
            .unwrap()
    };
    assert!(matches!(
        source.put_remote(&r, 0, &es, &p).await.unwrap(),
        PutOutcome::Forked(_)
    ));
    let empty = Ed25519Signer::from_seed([24; 32]);
    source.create_log(&empty.log_key()).await.unwrap();
    // The sparse log is mirrored here, with a policy.
    source
        .set_mirror(&sparse.log_key(), Some(1 << 20), 3)
        .await
        .unwrap();
    // A room: the full log is this node's own in it, the sparse one a member's (its writer's
    // tag kept), the empty one mirrored only because the mirrored room lists it.
    let topic = RoomTopic::from_bytes([26; 32]).key();
    source
        .set_topic_mirror(&topic, Some(1 << 22), -2)
        .await
        .unwrap();
    for (signer, own) in [(&full, true), (&sparse, false), (&empty, false)] {
        let tag = TopicTag::sign(signer, &topic.id());
        assert!(source.tag_log(&topic, &tag, own).await.unwrap());
    }
    source
        .adopt_mirror(&empty.log_key(), Some(1 << 22), -2)
        .await
        .unwrap();
    // Mailbox records kept for others, one of them already expired: all move, times unchanged.
    let owner = ed25519_dalek::SigningKey::from_bytes(&[25; 32]);
    let mailbox = kith_store::mailbox::MailboxKey::of(&owner);
    let now = kith_store::mailbox::unix_now();
    for (i, at) in [now, now - 1000, now - 999_999].into_iter().enumerate() {
        let data = format!("sealed {i}").into_bytes();
        source
            .mailbox_put(&mailbox, &[9; 32], &data, 3600, at, u64::MAX)
            .await
            .unwrap();
    }
    let records = source.mailbox_export(None, 10).await.unwrap();
    assert_eq!(records.len(), 3);

    let middle = second.open().await;
    let report = copy_store(&source, &middle).await.unwrap();
    assert_eq!(report.mailbox_records, 3);
    assert_eq!(middle.mailbox_export(None, 10).await.unwrap(), records);
    assert_eq!(
        middle.mailbox_fetch(&mailbox, now, 10).await.unwrap().len(),
        2
    );
    assert_eq!(report.logs, 4);
    assert_eq!(report.entries, 2500 + 4 + 10 + 6);
    assert_eq!(report.fork_evidence, 1);
    assert_eq!(report.mirrors, 2);
    assert_eq!((report.topic_tags, report.topic_mirrors), (3, 1));
    let last = third.open().await;
    copy_store(&middle, &last).await.unwrap();
    assert_eq!(last.mailbox_export(None, 10).await.unwrap(), records);

    let expected = source.list_logs().await.unwrap();
    for (name, store) in [(second.name, &middle), (third.name, &last)] {
        assert_eq!(store.list_logs().await.unwrap(), expected, "{name}");
        for info in &expected {
            let held = source.held(&info.key).await.unwrap();
            assert_eq!(store.held(&info.key).await.unwrap(), held, "{name}");
            for (s, e) in held.iter() {
                let mut at = s;
                while at < e {
                    let to = (at + 1000).min(e);
                    assert_eq!(
                        store.get_range(&info.key, at, to).await.unwrap(),
                        source.get_range(&info.key, at, to).await.unwrap()
                    );
                    at = to;
                }
            }
            assert_eq!(
                store.fork_evidence(&info.key).await.unwrap(),
                source.fork_evidence(&info.key).await.unwrap()
            );
            store.verify_log(&info.key).await.unwrap();
        }
        let policies = |ms: Vec<kith_store::backend::MirrorRow>| {
            ms.into_iter()
                .map(|m| (m.key, m.quota_bytes, m.priority, m.evicted_below, m.by_key))
                .collect::<Vec<_>>()
        };
        let topic_policies = |ts: Vec<kith_store::backend::TopicMirrorRow>| {
            ts.into_iter()
                .map(|t| (t.topic, t.quota_bytes, t.priority))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            topic_policies(store.topic_mirrors().await.unwrap()),
            topic_policies(source.topic_mirrors().await.unwrap()),
            "{name}"
        );
        assert_eq!(
            store.topic_tags_owned(&topic.id()).await.unwrap(),
            source.topic_tags_owned(&topic.id()).await.unwrap(),
            "{name}"
        );
        assert_eq!(
            policies(store.mirrors().await.unwrap()),
            policies(source.mirrors().await.unwrap()),
            "{name}"
        );
        // The copy goes on being a working store: the full log's writer appends to it.
        let root = store.append(&full, &[b"after the move"]).await.unwrap();
        assert_eq!(root.length(), 2501);
    }
    // Copying again changes nothing (both copies appended the same entry with the same key, so
    // their roots agree).
    let before = snapshot(&last).await;
    copy_store(&middle, &last).await.unwrap();
    assert_eq!(snapshot(&last).await, before);
    for s in [&source, &middle, &last, &writer, &other] {
        s.close().await;
    }
}

fn room(seed: u8) -> TopicKey {
    RoomTopic::from_bytes([seed; 32]).key()
}

#[tokio::test]
async fn topic_tags_are_verified_bounded_and_forgotten_with_their_last_use() {
    for db in backends().await {
        let store = db.open().await;
        let topic = room(30);
        let writer = Ed25519Signer::from_seed([32; 32]);
        append_range(&store, &writer, 32, 0, 10, 10).await;
        let key = writer.log_key();

        // A tag for another room, or by another writer, is refused and changes nothing.
        let before = snapshot(&store).await;
        let elsewhere = TopicTag::sign(&writer, &room(31).id());
        let mut forged = TopicTag::sign(&writer, &topic.id());
        forged.key = Ed25519Signer::from_seed([33; 32]).log_key();
        for bad in [elsewhere, forged] {
            let err = store.tag_log(&topic, &bad, true).await.unwrap_err();
            assert!(
                matches!(err, StoreError::BadSignature),
                "{}: {err:?}",
                db.name
            );
        }
        assert_eq!(snapshot(&store).await, before);
        assert!(store.topics().await.unwrap().is_empty());
        assert!(store.topic(&topic.id()).await.unwrap().is_none());

        // The writer's own tag: kept once.
        let tag = TopicTag::sign(&writer, &topic.id());
        assert!(store.tag_log(&topic, &tag, true).await.unwrap());
        assert!(!store.tag_log(&topic, &tag, false).await.unwrap());
        assert_eq!(store.topic(&topic.id()).await.unwrap(), Some(topic.clone()));
        assert_eq!(store.topic_tags(&topic.id()).await.unwrap(), vec![tag]);
        assert_eq!(
            store.log_topics(&key).await.unwrap(),
            vec![(topic.id(), true)]
        );

        // A log carries at most MAX_LOG_TOPICS topics; past that nothing is added, not even
        // the topic.
        for i in 1..MAX_LOG_TOPICS as u8 {
            let t = room(100 + i);
            assert!(
                store
                    .tag_log(&t, &TopicTag::sign(&writer, &t.id()), true)
                    .await
                    .unwrap()
            );
        }
        let extra = room(99);
        let err = store
            .tag_log(&extra, &TopicTag::sign(&writer, &extra.id()), true)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TopicLimit(_)), "{err:?}");
        assert!(store.topic(&extra.id()).await.unwrap().is_none());
        assert_eq!(store.log_topics(&key).await.unwrap().len(), MAX_LOG_TOPICS);

        // Untagging forgets a topic nothing else uses; a mirrored topic stays.
        assert!(store.untag_log(&key, &topic.id()).await.unwrap());
        assert!(!store.untag_log(&key, &topic.id()).await.unwrap());
        assert!(store.topic(&topic.id()).await.unwrap().is_none());
        let kept = room(101);
        store.set_topic_mirror(&kept, None, 0).await.unwrap();
        assert!(store.untag_log(&key, &kept.id()).await.unwrap());
        assert_eq!(store.topic(&kept.id()).await.unwrap(), Some(kept.clone()));
        assert!(store.topic_tags(&kept.id()).await.unwrap().is_empty());
        assert_eq!(
            store.remove_topic_mirror(&kept.id()).await.unwrap(),
            Some(vec![])
        );
        assert!(store.topic(&kept.id()).await.unwrap().is_none());
        assert_eq!(store.remove_topic_mirror(&kept.id()).await.unwrap(), None);
        store.close().await;
    }
}

#[tokio::test]
async fn a_topic_lists_at_most_max_topic_logs() {
    let db = common::sqlite();
    let store = db.open().await;
    let topic = room(34);
    for i in 0..MAX_TOPIC_LOGS as u32 {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        let tag = TopicTag::sign(&Ed25519Signer::from_seed(seed), &topic.id());
        assert!(store.tag_log(&topic, &tag, false).await.unwrap());
    }
    let one_more = TopicTag::sign(&Ed25519Signer::from_seed([8; 32]), &topic.id());
    let err = store.tag_log(&topic, &one_more, false).await.unwrap_err();
    assert!(matches!(err, StoreError::TopicLimit(_)), "{err:?}");
    let tags = store.topic_tags(&topic.id()).await.unwrap();
    assert_eq!(tags.len(), MAX_TOPIC_LOGS);
    assert!(tags.windows(2).all(|w| w[0].key < w[1].key));
    assert!(tags.iter().all(|t| t.key != one_more.key));
    store.close().await;
}

/// Tags all of `tags` at once, alternately through `a` and `b`: how many were added, and how
/// many refused for a topic limit (anything else fails the test).
async fn race(
    a: &Arc<Store>,
    b: &Arc<Store>,
    tags: Vec<(TopicKey, TopicTag)>,
    own: bool,
) -> (usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (topic, tag)) in tags.into_iter().enumerate() {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { store.tag_log(&topic, &tag, own).await });
    }
    let (mut added, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(true) => added += 1,
            Err(StoreError::TopicLimit(_)) => refused += 1,
            other => panic!("tag_log: {other:?}"),
        }
    }
    (added, refused)
}

/// The topic limits hold when two stores share one database (two store processes on one
/// PostgreSQL, say) and tag at the same moment: each store's tags race the other's, and the
/// counts they check must not both read "one below the limit".
#[tokio::test]
async fn topic_limits_hold_under_concurrent_tagging_from_two_stores() {
    for db in backends().await {
        let (a, b) = (Arc::new(db.open().await), Arc::new(db.open().await));
        let writer = Ed25519Signer::from_seed([61; 32]);
        let key = writer.log_key();
        let racers = 12u8;

        // One log, 4 topics short of its limit, then 12 new topics at once, half through each
        // store: exactly 4 get in.
        for i in 0..MAX_LOG_TOPICS as u8 - 4 {
            let t = room(150 + i);
            a.tag_log(&t, &TopicTag::sign(&writer, &t.id()), true)
                .await
                .unwrap();
        }
        let tags: Vec<_> = (0..racers)
            .map(|i| {
                let t = room(200 + i);
                let tag = TopicTag::sign(&writer, &t.id());
                (t, tag)
            })
            .collect();
        let (added, refused) = race(&a, &b, tags, true).await;
        assert_eq!((added, refused), (4, 8), "{}", db.name);
        assert_eq!(
            a.log_topics(&key).await.unwrap().len(),
            MAX_LOG_TOPICS,
            "{}",
            db.name
        );

        // One topic, 4 logs short of its limit, then 12 new logs at once.
        let topic = room(33);
        let signer = |i: u32| {
            let mut seed = [9u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            Ed25519Signer::from_seed(seed)
        };
        for i in 0..MAX_TOPIC_LOGS as u32 - 4 {
            a.tag_log(&topic, &TopicTag::sign(&signer(i), &topic.id()), false)
                .await
                .unwrap();
        }
        let tags: Vec<_> = (0..u32::from(racers))
            .map(|i| {
                (
                    topic.clone(),
                    TopicTag::sign(&signer(10_000 + i), &topic.id()),
                )
            })
            .collect();
        let (added, refused) = race(&a, &b, tags, false).await;
        assert_eq!((added, refused), (4, 8), "{}", db.name);
        assert_eq!(
            b.topic_tags(&topic.id()).await.unwrap().len(),
            MAX_TOPIC_LOGS,
            "{}",
            db.name
        );
        a.close().await;
        b.close().await;
    }
}

/// A mailbox's limits hold when two stores share one database and deposits race: a depositor
/// 4 records short of its share sends 12 at once through both, exactly 4 are kept.
#[tokio::test]
async fn mailbox_limits_hold_under_concurrent_deposits_from_two_stores() {
    use kith_store::mailbox::{MAX_RECORDS_PER_DEPOSITOR, MailboxKey, unix_now};
    for db in backends().await {
        let (a, b) = (Arc::new(db.open().await), Arc::new(db.open().await));
        let mailbox = MailboxKey::of(&ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        let (depositor, now) = ([4u8; 32], unix_now());
        for i in 0..MAX_RECORDS_PER_DEPOSITOR - 4 {
            a.mailbox_put(&mailbox, &depositor, &i.to_le_bytes(), 3600, now, u64::MAX)
                .await
                .unwrap();
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..12u64 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.spawn(async move {
                let data = (1000 + i).to_le_bytes();
                store
                    .mailbox_put(&mailbox, &depositor, &data, 3600, now, u64::MAX)
                    .await
            });
        }
        let (mut kept, mut full) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(_) => kept += 1,
                Err(StoreError::MailboxFull(_)) => full += 1,
                other => panic!("{}: mailbox_put: {other:?}", db.name),
            }
        }
        assert_eq!((kept, full), (4, 8), "{}", db.name);
        let held = b.mailbox_fetch(&mailbox, now, 1000).await.unwrap();
        assert_eq!(held.len() as u64, MAX_RECORDS_PER_DEPOSITOR, "{}", db.name);
        a.close().await;
        b.close().await;
    }
}

/// Random sparse replication: a writer grows in random batches; a mirror pulls random ranges at
/// the writer's current length (upgrading from whatever it holds); a reader pulls random ranges
/// from the mirror only (upgrading from its own length, which is always one the mirror held).
/// After every step both verify, and each proves every range it holds.
#[tokio::test]
async fn random_sparse_replication_keeps_every_holder_provable() {
    use rand::{Rng, SeedableRng};
    for db in backends().await {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let ctx = format!("{} seed {seed}", db.name);
        let writer_db = common::sqlite();
        let writer = writer_db.open().await;
        let mirror = db.open().await;
        let reader_db = common::sqlite();
        let reader = reader_db.open().await;
        let signer = Ed25519Signer::from_seed([30; 32]);
        let key = signer.log_key();
        let mut length = 0u64;
        for _ in 0..12 {
            let grow = rng.gen_range(1..40u64);
            append_range(
                &writer,
                &signer,
                30,
                length,
                length + grow,
                rng.gen_range(1..9),
            )
            .await;
            length += grow;
            for _ in 0..rng.gen_range(1..4) {
                let s = rng.gen_range(0..length);
                let e = rng.gen_range(s..=length.min(s + 20));
                let known = mirror.log_info(&key).await.map(|i| i.length).unwrap_or(0);
                let (r, es, p) = writer
                    .get_range_with_proof(&key, s, e, Some(known))
                    .await
                    .unwrap();
                let out = mirror.put_remote(&r, s, &es, &p).await.unwrap();
                assert!(matches!(out, PutOutcome::Stored { .. }), "{ctx}");
            }
            let mirror_info = mirror.log_info(&key).await.unwrap();
            assert_eq!(mirror_info.length, length, "{ctx}");
            mirror.verify_log(&key).await.unwrap();
            // The reader pulls held ranges from the mirror.
            let held: Vec<(u64, u64)> = mirror.held(&key).await.unwrap().iter().collect();
            if !held.is_empty() && rng.gen_bool(0.7) {
                let (hs, he) = held[rng.gen_range(0..held.len())];
                let s = rng.gen_range(hs..he);
                let e = rng.gen_range(s + 1..=he);
                let known = reader.log_info(&key).await.map(|i| i.length).unwrap_or(0);
                let (r, es, p) = mirror
                    .get_range_with_proof(&key, s, e, Some(known))
                    .await
                    .unwrap_or_else(|err| {
                        panic!("{ctx}: mirror proves {s}..{e} from {known}: {err:?}")
                    });
                reader.put_remote(&r, s, &es, &p).await.unwrap();
                reader.verify_log(&key).await.unwrap();
            }
            // Every holder proves every range it holds, to anyone with the key.
            for store in [&mirror, &reader] {
                let Ok(info) = store.log_info(&key).await else {
                    continue;
                };
                for (s, e) in store.held(&key).await.unwrap().iter() {
                    let (r, es, p) = store.get_range_with_proof(&key, s, e, None).await.unwrap();
                    assert_eq!(r.length(), info.length);
                    assert_eq!(es, entries(30, s..e), "{ctx}");
                    p.verify(&r, s, &es, &[]).unwrap();
                }
            }
        }
        for s in [&writer, &mirror, &reader] {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn stores_opened_at_once_on_a_fresh_database_migrate_it_once() {
    for db in backends().await {
        let (a, b, c) = tokio::join!(
            Store::open(&db.url),
            Store::open(&db.url),
            Store::open(&db.url)
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let signer = Ed25519Signer::from_seed([40; 32]);
        a.append(&signer, &[b"one"]).await.unwrap();
        assert_eq!(
            b.log_info(&signer.log_key()).await.unwrap().length,
            1,
            "{}",
            db.name
        );
        assert_eq!(c.stats().await.unwrap().logs, 1);
        for s in [&a, &b, &c] {
            s.close().await;
        }
    }
}
