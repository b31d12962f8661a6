//! The store service end to end, the same way in-process, over gRPC on a Unix socket and over
//! gRPC on TCP, on both backends: writer logs (append, read, list, verify), typed errors for bad
//! input that change nothing, and mailboxes deposited at and fetched from another node over the
//! network (an in-memory one here; the `kith` binary's tests use the real transport), and rooms'
//! topics: writer logs tagged, a room mirrored and synced by its topic alone.

mod common;

use std::sync::Arc;

use kith_service::{Connection, Endpoint, Listen, ServerHandle, Token};
use kith_store::api::ApiError;
use kith_store::daemon::spawn;
use kith_store::log::LogKey;
use kith_store::mailbox::{self, MailboxKey};
use kith_store::net::{MemoryNetwork, Network};
use kith_store::replicate::MirrorPolicy;
use kith_store::service::SeededKeys;
use kith_store::topic::RoomTopic;
use kith_store::{Store, StoreClient, StoreConfig, StoreService};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Local,
    Unix,
    Tcp,
}

struct Served {
    client: StoreClient,
    service: Arc<StoreService>,
    server: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn stop(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
        self.service.shutdown().await;
    }
}

async fn serve(
    via: Via,
    url: &str,
    seed: u8,
    network: Option<MemoryNetwork>,
    config: StoreConfig,
) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(url).await.unwrap());
    let network = network.map(|n| Arc::new(n) as Arc<dyn Network>);
    let service = StoreService::start(
        store,
        Arc::new(SeededKeys::new([seed; 32])),
        network,
        config,
    )
    .await
    .unwrap();
    let (client, server) = match via {
        Via::Local => (StoreClient::local(service.clone()), None),
        Via::Unix => {
            let path = dir.path().join("store.sock");
            let server = spawn(service.clone(), &[Listen::Unix(path.clone())])
                .await
                .unwrap();
            (
                StoreClient::connect(Connection::new(Endpoint::Unix(path), None)),
                Some(server),
            )
        }
        Via::Tcp => {
            let token = Token::generate();
            let listen = Listen::Tcp {
                addr: "127.0.0.1:0".parse().unwrap(),
                token: token.clone(),
            };
            let server = spawn(service.clone(), &[listen]).await.unwrap();
            let endpoint = server.endpoints()[0].clone();
            (
                StoreClient::connect(Connection::new(endpoint, Some(token))),
                Some(server),
            )
        }
    };
    Served {
        client,
        service,
        server,
        _dir: dir,
    }
}

#[tokio::test]
async fn writer_logs_through_the_api() {
    for db in common::backends().await {
        for via in [Via::Local, Via::Unix, Via::Tcp] {
            let label = format!("{} via {via:?}", db.name);
            // A fresh database per round: the same seed writes the same log.
            let db = match db.name {
                "sqlite" => common::sqlite(),
                _ => common::postgres().await,
            };
            let served = serve(via, &db.url, 1, None, StoreConfig::default()).await;
            let api = &served.client;

            let empty = api.writer_log("chat".into()).await.unwrap();
            assert_eq!(empty.length, 0, "{label}");
            let entries: Vec<Vec<u8>> = (0..100u32)
                .map(|i| format!("ciphertext {i}").into_bytes())
                .collect();
            let log = api
                .append("chat".into(), entries[..60].to_vec())
                .await
                .unwrap();
            assert_eq!((log.key, log.length), (empty.key, 60), "{label}");
            let log = api
                .append("chat".into(), entries[60..].to_vec())
                .await
                .unwrap();
            assert_eq!(log.length, 100);
            assert!(log.root.is_some());
            assert_eq!(
                api.get_entries(log.key, 10, 20).await.unwrap(),
                entries[10..20].to_vec()
            );
            assert_eq!(api.get_log(log.key).await.unwrap(), log);
            assert_eq!(api.verify_log(log.key).await.unwrap().held_entries, 100);
            // Another name is another log, with another key.
            let other = api
                .append("notes".into(), vec![b"x".to_vec()])
                .await
                .unwrap();
            assert_ne!(other.key, log.key);
            let logs = api.list_logs().await.unwrap();
            assert_eq!(logs.len(), 2, "{label}");
            let status = api.status().await.unwrap();
            // The same totals whether asked in-process or over gRPC.
            assert_eq!(
                status.stats,
                served.service.store().stats().await.unwrap(),
                "{label}"
            );
            assert_eq!(
                (status.stats.logs, status.stats.entries),
                (2, 101),
                "{label}"
            );

            // Bad input: a clear, typed error, and nothing changes.
            let bad_name = api
                .append("Bad Name".into(), vec![b"x".to_vec()])
                .await
                .unwrap_err();
            assert!(
                matches!(bad_name, ApiError::InvalidArgument(_)),
                "{label}: {bad_name:?}"
            );
            let empty = api.append("chat".into(), vec![]).await.unwrap_err();
            assert!(matches!(empty, ApiError::InvalidArgument(_)), "{empty:?}");
            let too_big = api
                .append("chat".into(), vec![vec![0; 65537]])
                .await
                .unwrap_err();
            assert!(matches!(too_big, ApiError::Full(_)), "{label}: {too_big:?}");
            let too_many = api
                .append("chat".into(), vec![vec![1]; 4097])
                .await
                .unwrap_err();
            assert!(
                matches!(too_many, ApiError::Full(_)),
                "{label}: {too_many:?}"
            );
            let past_end = api.get_entries(log.key, 90, 101).await.unwrap_err();
            assert!(
                matches!(past_end, ApiError::InvalidArgument(_)),
                "{past_end:?}"
            );
            let unknown = LogKey::from_bytes(
                ed25519_dalek::SigningKey::from_bytes(&[42; 32])
                    .verifying_key()
                    .to_bytes(),
            )
            .unwrap();
            assert!(matches!(
                api.get_log(unknown).await.unwrap_err(),
                ApiError::NotFound(_)
            ));
            assert_eq!(api.get_log(log.key).await.unwrap().length, 100, "{label}");
            assert_eq!(api.status().await.unwrap().stats.entries, 101, "{label}");
            served.stop().await;
        }
    }
}

#[tokio::test]
async fn malformed_grpc_requests_are_refused() {
    use kith_proto::store::v1 as pb;
    use kith_proto::store::v1::store_client::StoreClient as Grpc;
    let db = common::sqlite();
    let served = serve(Via::Unix, &db.url, 2, None, StoreConfig::default()).await;
    let endpoint = served.server.as_ref().unwrap().endpoints()[0].clone();
    let mut grpc = Grpc::new(Connection::new(endpoint, None).channel());
    for key in [vec![], vec![1; 31], vec![0; 32]] {
        let status = grpc
            .get_log(pb::GetLogRequest { key: key.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // A topic is 32 bytes; a topic id too.
    for topic in [vec![], vec![1; 31], vec![1; 33]] {
        let status = grpc
            .tag_log(pb::TagLogRequest {
                name: "chat".into(),
                topic: topic.clone().into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let status = grpc
            .remove_topic_mirror(pb::RemoveTopicMirrorRequest {
                topic_id: topic.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    let status = grpc
        .mailbox_put(pb::MailboxPutRequest {
            peer: vec![1; 5].into(),
            mailbox: vec![0; 32].into(),
            record: b"x".to_vec().into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    served.stop().await;
}

#[tokio::test]
async fn mailboxes_at_another_node() {
    for db in common::backends().await {
        let keeper_db = match db.name {
            "sqlite" => common::sqlite(),
            _ => common::postgres().await,
        };
        let network = MemoryNetwork::new([0; 32]);
        let (keeper_id, alice_id, bob_id) = (peer(10), peer(11), peer(12));
        let small_quota = StoreConfig {
            mailbox_quota: 40 * 1024,
            ..StoreConfig::default()
        };
        let keeper = serve(
            Via::Local,
            &keeper_db.url,
            10,
            Some(network.join(keeper_id)),
            small_quota,
        )
        .await;
        let alice = serve(
            Via::Unix,
            &db.url,
            11,
            Some(network.join(alice_id)),
            StoreConfig::default(),
        )
        .await;
        let bob_db = common::sqlite();
        let bob = serve(
            Via::Tcp,
            &bob_db.url,
            12,
            Some(network.join(bob_id)),
            StoreConfig::default(),
        )
        .await;

        // Bob deposits two sealed records for Alice at the keeper while Alice is offline.
        let alice_box = alice.client.mailbox_key().await.unwrap();
        network.set_offline(alice_id, true);
        let first = bob
            .client
            .mailbox_put(Some(keeper_id), alice_box, b"sealed one".to_vec(), 0)
            .await
            .unwrap();
        let now = mailbox::unix_now();
        assert!(
            first.expires_at.abs_diff(now + 48 * 3600) < 60,
            "48 h by default"
        );
        bob.client
            .mailbox_put(Some(keeper_id), alice_box, b"sealed two".to_vec(), 3600)
            .await
            .unwrap();
        // The same record again is kept once.
        bob.client
            .mailbox_put(Some(keeper_id), alice_box, b"sealed one".to_vec(), 0)
            .await
            .unwrap();
        assert_eq!(
            keeper.client.status().await.unwrap().mailboxes.records,
            2,
            "{}",
            db.name
        );

        // Limits: an oversized record, a ttl too long, the node quota: refused, nothing kept.
        let big = bob
            .client
            .mailbox_put(Some(keeper_id), alice_box, vec![0; 16 * 1024 + 1], 0)
            .await
            .unwrap_err();
        assert!(matches!(big, ApiError::Full(_)), "{big:?}");
        let long = bob
            .client
            .mailbox_put(Some(keeper_id), alice_box, b"x".to_vec(), 8 * 24 * 3600)
            .await
            .unwrap_err();
        assert!(matches!(long, ApiError::InvalidArgument(_)), "{long:?}");
        let carol = MailboxKey::of(&ed25519_dalek::SigningKey::from_bytes(&[13; 32]));
        let mut refused = None;
        for i in 0..4u8 {
            if let Err(e) = bob
                .client
                .mailbox_put(Some(keeper_id), carol, vec![i; 16 * 1024], 0)
                .await
            {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(refused, Some(ApiError::Full(ref m)) if m.contains("quota")),
            "{refused:?}"
        );

        // Only the owner reads: Bob fetching "his" mailbox at the keeper sees nothing of Alice's.
        assert!(
            bob.client
                .mailbox_fetch(Some(keeper_id), false)
                .await
                .unwrap()
                .is_empty()
        );

        // Alice comes back and reads, then acknowledges; the records are gone.
        network.set_offline(alice_id, false);
        let records = alice
            .client
            .mailbox_fetch(Some(keeper_id), false)
            .await
            .unwrap();
        let data: Vec<_> = records.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data,
            vec![b"sealed one".to_vec(), b"sealed two".to_vec()],
            "{}",
            db.name
        );
        let again = alice
            .client
            .mailbox_fetch(Some(keeper_id), true)
            .await
            .unwrap();
        assert_eq!(again.len(), 2);
        assert!(
            alice
                .client
                .mailbox_fetch(Some(keeper_id), false)
                .await
                .unwrap()
                .is_empty()
        );

        // Expiry: a record past its time is not returned and is removed.
        let store = keeper.service.store();
        let dave_key = ed25519_dalek::SigningKey::from_bytes(&[14; 32]);
        let dave = MailboxKey::of(&dave_key);
        store
            .mailbox_put(&dave, &bob_id, b"old", 10, now - 100, u64::MAX)
            .await
            .unwrap();
        assert!(
            store
                .mailbox_fetch(&dave, now, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.mailbox_expire(now).await.unwrap() >= 1);

        // Without a network, a peer's mailbox is a clear error.
        let lonely_db = common::sqlite();
        let lonely = serve(Via::Local, &lonely_db.url, 15, None, StoreConfig::default()).await;
        let error = lonely
            .client
            .mailbox_fetch(Some(keeper_id), false)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ApiError::FailedPrecondition(_)),
            "{error:?}"
        );
        // Its own mailbox works locally.
        let own = lonely.client.mailbox_key().await.unwrap();
        lonely
            .client
            .mailbox_put(None, own, b"note to self".to_vec(), 0)
            .await
            .unwrap();
        assert_eq!(
            lonely.client.mailbox_fetch(None, true).await.unwrap().len(),
            1
        );
        assert!(
            lonely
                .client
                .mailbox_fetch(None, false)
                .await
                .unwrap()
                .is_empty()
        );

        for served in [keeper, alice, bob, lonely] {
            served.stop().await;
        }
    }
}

#[tokio::test]
async fn rooms_by_topic_through_the_api() {
    let mut rounds = vec![(Via::Local, common::postgres().await)];
    for via in [Via::Local, Via::Unix, Via::Tcp] {
        rounds.push((via, common::sqlite()));
    }
    for (via, db) in rounds {
        let label = format!("{} via {via:?}", db.name);
        let network = MemoryNetwork::new([0; 32]);
        let (writer_db, reader_db) = (common::sqlite(), common::sqlite());
        let writer = serve(
            Via::Local,
            &writer_db.url,
            21,
            Some(network.join(peer(21))),
            StoreConfig::default(),
        )
        .await;
        let mirror = serve(
            via,
            &db.url,
            22,
            Some(network.join(peer(22))),
            StoreConfig::default(),
        )
        .await;
        let reader = serve(
            via,
            &reader_db.url,
            23,
            Some(network.join(peer(23))),
            StoreConfig::default(),
        )
        .await;
        let topic = RoomTopic::from_bytes([24; 32]);
        let id = topic.key().id();

        // The writer puts its log in the room and writes.
        let tagged = writer
            .client
            .tag_log("chat".into(), topic.clone())
            .await
            .unwrap();
        assert_eq!(tagged.topics, vec![id], "{label}");
        let log = writer
            .client
            .append("chat".into(), vec![b"sealed".to_vec(); 5])
            .await
            .unwrap();
        assert_eq!(log.key, tagged.key);
        let listed = writer.client.topic_logs(topic.clone()).await.unwrap();
        assert_eq!(listed, vec![log.clone()]);
        let bad = writer
            .client
            .tag_log("Bad Name".into(), topic.clone())
            .await
            .unwrap_err();
        assert!(matches!(bad, ApiError::InvalidArgument(_)), "{bad:?}");

        // The mirror is given the topic: it finds the log and mirrors it.
        let policy = MirrorPolicy {
            quota_bytes: Some(1 << 20),
            priority: 4,
        };
        let added = mirror
            .client
            .add_topic_mirror(topic.clone(), policy)
            .await
            .unwrap();
        assert_eq!((added.id, added.policy), (id, policy), "{label}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mirrors = mirror.client.list_mirrors().await.unwrap();
            if mirrors.first().is_some_and(|m| m.held_entries == 5) {
                assert_eq!(mirrors[0].key, log.key);
                assert_eq!(mirrors[0].topics, vec![id]);
                assert!(!mirrors[0].by_key);
                assert_eq!(mirrors[0].policy, policy);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{label}: not mirrored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let topics = mirror.client.list_topic_mirrors().await.unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].logs, vec![log.key], "{label}");

        // The writer goes offline; a reader knowing the topic catches up from the mirror.
        network.set_offline(peer(21), true);
        let report = reader.client.sync_topic(topic.clone()).await.unwrap();
        assert_eq!(report.topic, id);
        assert_eq!(report.logs.len(), 1, "{label}: {report:?}");
        assert_eq!((report.logs[0].key, report.logs[0].length), (log.key, 5));
        assert_eq!(
            reader.client.get_entries(log.key, 0, 5).await.unwrap(),
            vec![b"sealed".to_vec(); 5]
        );

        // Untagging here, and stopping the topic mirror there.
        assert!(
            writer
                .client
                .untag_log("chat".into(), topic.clone())
                .await
                .unwrap()
        );
        assert!(
            !writer
                .client
                .untag_log("chat".into(), topic.clone())
                .await
                .unwrap()
        );
        assert!(
            writer
                .client
                .topic_logs(topic.clone())
                .await
                .unwrap()
                .is_empty()
        );
        assert!(mirror.client.remove_topic_mirror(id).await.unwrap());
        assert!(!mirror.client.remove_topic_mirror(id).await.unwrap());
        assert!(mirror.client.list_topic_mirrors().await.unwrap().is_empty());
        assert!(mirror.client.list_mirrors().await.unwrap().is_empty());
        for served in [writer, mirror, reader] {
            served.stop().await;
        }
    }

    // Without a network: tagging works (announced once there is one), mirroring and syncing by
    // topic are a clear error.
    let db = common::sqlite();
    let lonely = serve(Via::Local, &db.url, 25, None, StoreConfig::default()).await;
    let topic = RoomTopic::from_bytes([26; 32]);
    lonely
        .client
        .tag_log("chat".into(), topic.clone())
        .await
        .unwrap();
    for error in [
        lonely
            .client
            .add_topic_mirror(topic.clone(), MirrorPolicy::default())
            .await
            .unwrap_err(),
        lonely.client.sync_topic(topic.clone()).await.unwrap_err(),
    ] {
        assert!(
            matches!(error, ApiError::FailedPrecondition(_)),
            "{error:?}"
        );
    }
    assert!(lonely.client.list_topic_mirrors().await.unwrap().is_empty());
    lonely.stop().await;
}

fn peer(seed: u8) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .verifying_key()
        .to_bytes()
}
