//! Replication over the network and blind mirrors, on both backends: every scenario runs with
//! every node on SQLite, then with every node on PostgreSQL. Nodes talk over the in-memory
//! network (`MemoryNetwork`) or over hand-made pipes when a test needs to cut or script one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use common::TestDb;
use kith_store::log::{Ed25519Signer, LogKey, RangeSet, RootSigner};
use kith_store::net::{MemoryNetwork, Network, PeerChannel, PeerId};
use kith_store::replicate::wire::{self, Message, capability};
use kith_store::replicate::{MirrorPolicy, Replicator, ReplicatorConfig, discovery_id};
use kith_store::topic::{Direction, RoomTopic, TopicId, TopicKey, TopicTag};
use kith_store::{Store, StoreError};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, ReadBuf};

const WAIT: Duration = Duration::from_secs(30);

/// `n` fresh databases per backend: all SQLite, then all PostgreSQL.
async fn dbs(n: usize) -> Vec<Vec<TestDb>> {
    let sqlite = (0..n).map(|_| common::sqlite()).collect();
    let mut pg = Vec::new();
    for _ in 0..n {
        pg.push(common::postgres().await);
    }
    vec![sqlite, pg]
}

fn config() -> ReplicatorConfig {
    ReplicatorConfig {
        timeout: Duration::from_secs(10),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        lookup_interval: Duration::from_millis(100),
        ..ReplicatorConfig::default()
    }
}

struct Node {
    peer: PeerId,
    store: Arc<Store>,
    net: MemoryNetwork,
    repl: Arc<Replicator>,
}

impl Node {
    async fn new(db: &TestDb, net: &MemoryNetwork, id: u8, config: ReplicatorConfig) -> Node {
        let peer = [id; 32];
        let net = net.join(peer);
        let store = Arc::new(db.open().await);
        let repl = Replicator::new(store.clone(), Arc::new(net.clone()), config);
        Node {
            peer,
            store,
            net,
            repl,
        }
    }
}

/// A 1 KiB entry that looks like ciphertext.
fn entry(seed: u8, i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut x = blake3::hash(&[&[seed][..], &i.to_le_bytes()].concat());
    while out.len() < 1024 {
        out.extend_from_slice(x.as_bytes());
        x = blake3::hash(x.as_bytes());
    }
    out
}

async fn append(store: &Store, signer: &Ed25519Signer, seed: u8, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let end = (at + 500).min(to);
        let batch: Vec<Vec<u8>> = (at..end).map(|i| entry(seed, i)).collect();
        store.append(signer, &batch).await.unwrap();
        at = end;
    }
}

/// Every held entry of `key` in `b` equals the one in `a`.
async fn same_entries(a: &Store, b: &Store, key: &LogKey) {
    for (s, e) in b.held(key).await.unwrap().iter() {
        let mut at = s;
        while at < e {
            let to = (at + 1000).min(e);
            assert_eq!(
                a.get_range(key, at, to).await.unwrap(),
                b.get_range(key, at, to).await.unwrap()
            );
            at = to;
        }
    }
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reader that fails once `left` bytes went through: a connection that breaks mid-session.
struct CutReader<R> {
    inner: R,
    left: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for CutReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut",
            )));
        }
        let want = buf.remaining().min(self.left);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        let me = &mut *self;
        let poll = std::pin::Pin::new(&mut me.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        if let std::task::Poll::Ready(Ok(())) = poll {
            buf.advance(n);
            me.left -= n;
        }
        poll
    }
}

/// A stream between peers `a` and `b`: (a's end, b's end). With `cut_a_after`, a's reads fail
/// after that many bytes.
fn pipe(a: PeerId, b: PeerId, cut_a_after: Option<usize>) -> (PeerChannel, PeerChannel) {
    let (x, y) = tokio::io::duplex(256 * 1024);
    let (xr, xw) = tokio::io::split(x);
    let (yr, yw) = tokio::io::split(y);
    let a_recv: Box<dyn AsyncRead + Send + Unpin> = match cut_a_after {
        Some(left) => Box::new(CutReader { inner: xr, left }),
        None => Box::new(xr),
    };
    (
        PeerChannel {
            peer: b,
            send: Box::new(xw),
            recv: a_recv,
        },
        PeerChannel {
            peer: a,
            send: Box::new(yw),
            recv: Box::new(yr),
        },
    )
}

/// `puller` replicates `key` from `server` over a pipe, once; (puller's result, server's).
async fn pull(
    puller: &Node,
    server: &Node,
    key: LogKey,
    cut_after: Option<usize>,
) -> (
    Result<kith_store::replicate::SessionReport, StoreError>,
    Result<kith_store::replicate::SessionReport, StoreError>,
) {
    let (a, b) = pipe(puller.peer, server.peer, cut_after);
    let keys = [key];
    tokio::join!(
        puller.repl.replicate(a, &keys, false),
        server.repl.handle(b)
    )
}

#[tokio::test]
async fn a_reader_catches_up_thousands_of_entries_in_batches() {
    for dbs in dbs(2).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let reader = Node::new(&dbs[1], &hub, 2, config()).await;
        let signer = Ed25519Signer::from_seed([1; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 1, 0, 5000).await;
        writer.repl.start().await.unwrap();

        let report = reader.repl.sync_log(key).await.unwrap();
        assert_eq!(report.length, 5000, "{}", dbs[0].name);
        assert_eq!(report.entries_received, 5000);
        let info = reader.store.log_info(&key).await.unwrap();
        assert_eq!((info.length, info.held_entries), (5000, 5000));
        assert_eq!(info.root, writer.store.log_info(&key).await.unwrap().root);
        assert_eq!(
            reader.store.verify_log(&key).await.unwrap().held_entries,
            5000
        );
        same_entries(&writer.store, &reader.store, &key).await;
        // Every entry crossed once.
        assert_eq!(writer.repl.stats().entries_sent, 5000);

        // Syncing again sends nothing.
        let again = reader.repl.sync_log(key).await.unwrap();
        assert_eq!(again.entries_received, 0);
        assert_eq!(writer.repl.stats().entries_sent, 5000);
        writer.repl.shutdown().await;
        reader.repl.shutdown().await;
    }
}

#[tokio::test]
async fn sparse_replication_and_resume_after_an_interrupted_session() {
    for dbs in dbs(3).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let sparse = Node::new(&dbs[1], &hub, 2, config()).await;
        let reader = Node::new(&dbs[2], &hub, 3, config()).await;
        let signer = Ed25519Signer::from_seed([2; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 2, 0, 3000).await;

        // A sparse holder: two islands, given to it directly with proofs.
        for (s, e) in [(500, 1500), (2000, 2500)] {
            let mut at = s;
            while at < e {
                let to = (at + 1000).min(e);
                let (root, es, proof) = writer
                    .store
                    .get_range_with_proof(&key, at, to, None)
                    .await
                    .unwrap();
                sparse
                    .store
                    .put_remote(&root, at, &es, &proof)
                    .await
                    .unwrap();
                at = to;
            }
        }

        // The reader pulls from the sparse holder: exactly its islands, verified.
        let (r, s) = pull(&reader, &sparse, key, None).await;
        let (r, s) = (r.unwrap(), s.unwrap());
        assert_eq!(r.entries_received, 1500, "{}", dbs[0].name);
        assert_eq!(s.entries_sent, 1500);
        assert_eq!(
            reader.store.held(&key).await.unwrap(),
            RangeSet::from(vec![(500, 1500), (2000, 2500)])
        );
        assert_eq!(
            reader.store.verify_log(&key).await.unwrap().held_entries,
            1500
        );
        same_entries(&writer.store, &reader.store, &key).await;

        // Then from the writer, over a connection that breaks after ~600 KiB.
        let (r, _) = pull(&reader, &writer, key, Some(600 * 1024)).await;
        assert!(r.is_err(), "the cut session must fail");
        let held = reader.store.held(&key).await.unwrap();
        let had = held.count();
        assert!(had > 1500 && had < 3000, "held {had} after the cut");
        reader.store.verify_log(&key).await.unwrap();

        // Resuming sends exactly what is missing: no entry twice.
        let (r, w) = pull(&reader, &writer, key, None).await;
        let (r, w) = (r.unwrap(), w.unwrap());
        assert_eq!(w.entries_sent, 3000 - had);
        assert_eq!(r.entries_received, 3000 - had);
        assert_eq!(
            reader.store.held(&key).await.unwrap(),
            RangeSet::from(vec![(0, 3000)])
        );
        assert_eq!(
            reader.store.verify_log(&key).await.unwrap().held_entries,
            3000
        );
        same_entries(&writer.store, &reader.store, &key).await;
    }
}

#[tokio::test]
async fn a_follower_receives_live_appends() {
    for dbs in dbs(2).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let follower = Node::new(&dbs[1], &hub, 2, config()).await;
        let signer = Ed25519Signer::from_seed([3; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 3, 0, 300).await;
        writer.repl.start().await.unwrap();
        follower.repl.start().await.unwrap();
        follower.repl.follow(key);
        let store = follower.store.clone();
        wait_for("initial catch-up", async || {
            store
                .log_info(&key)
                .await
                .is_ok_and(|i| i.held_entries == 300)
        })
        .await;
        // Appends one at a time and in batches, while the session is live.
        for i in 300..340 {
            writer.store.append(&signer, &[entry(3, i)]).await.unwrap();
        }
        append(&writer.store, &signer, 3, 340, 1500).await;
        wait_for("live appends", async || {
            store
                .log_info(&key)
                .await
                .is_ok_and(|i| i.held_entries == 1500 && i.length == 1500)
        })
        .await;
        follower.store.verify_log(&key).await.unwrap();
        same_entries(&writer.store, &follower.store, &key).await;
        writer.repl.shutdown().await;
        follower.repl.shutdown().await;
    }
}

/// What a scripted malicious peer does.
#[derive(Clone, Copy, Debug)]
enum Evil {
    Garbage,
    OversizedFrame,
    OversizedEntry,
    BadSignature,
    WrongLog,
    BadProof,
    TamperedEntry,
    UnaskedData,
}

/// A peer that speaks the protocol until it lies. It holds `key`'s log in `store` (a copy of
/// the writer's) and the root of another log.
async fn evil_peer(
    me: PeerId,
    ch: PeerChannel,
    store: Arc<Store>,
    key: LogKey,
    other: Ed25519Signer,
    how: Evil,
) {
    let PeerChannel {
        peer: them,
        mut send,
        recv,
    } = ch;
    let mut recv = BufReader::new(recv);
    let mut buf = Vec::new();
    let Ok(Some(Message::Hello { nonce: theirs, .. })) =
        wire::read_message(&mut recv, &mut buf).await
    else {
        return;
    };
    let mut out = Message::Hello {
        version: wire::VERSION,
        nonce: [0; 32],
    }
    .encode();
    match how {
        Evil::Garbage => {
            out.extend((0..2000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
            let _ = send.write_all(&out).await;
            return;
        }
        Evil::OversizedFrame => {
            out.extend_from_slice(&(wire::MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
            out.extend_from_slice(&[6; 1000]);
            let _ = send.write_all(&out).await;
            return;
        }
        _ => {}
    }
    let _ = send.write_all(&out).await;
    let Ok(Some(Message::Open { discovery, .. })) = wire::read_message(&mut recv, &mut buf).await
    else {
        return;
    };
    let info = store.log_info(&key).await.unwrap();
    let root = info.root.unwrap();
    let mut out = Message::Open {
        discovery,
        capability: capability(&key, &theirs, &me, &them),
    }
    .encode();
    let have = Message::Have {
        discovery,
        root: Some(root),
        held: RangeSet::from(vec![(0, root.length())]),
    };
    match how {
        Evil::BadSignature => {
            let mut bytes = have.encode();
            // Frame header 4, kind 1, discovery 32, flag 1, then the root: key 32, length 8,
            // hash 32, signature 64.
            bytes[4 + 1 + 32 + 1 + 72 + 5] ^= 1;
            out.extend_from_slice(&bytes);
        }
        Evil::WrongLog => {
            let unsigned = kith_store::log::UnsignedRoot {
                key: other.log_key(),
                length: 1,
                hash: [1; 32],
            };
            let sig = other.sign_root(&unsigned).await.unwrap();
            let foreign = kith_store::log::SignedRoot::new(unsigned, sig).unwrap();
            out.extend_from_slice(
                &Message::Have {
                    discovery,
                    root: Some(foreign),
                    held: RangeSet::new(),
                }
                .encode(),
            );
        }
        Evil::UnaskedData => {
            out.extend_from_slice(&have.encode());
            let (entries, proof) = store
                .get_range_with_proof_at(&key, 0, 4, root.length(), None, 1 << 20)
                .await
                .unwrap();
            out.extend_from_slice(
                &Message::Data {
                    discovery,
                    id: 777,
                    start: 0,
                    entries,
                    proof,
                }
                .encode(),
            );
        }
        _ => out.extend_from_slice(&have.encode()),
    }
    if send.write_all(&out).await.is_err() {
        return;
    }
    // Answer requests, badly.
    while let Ok(Some(msg)) = wire::read_message(&mut recv, &mut buf).await {
        let Message::Request {
            id,
            length,
            start,
            end,
            upgrade_from,
            ..
        } = msg
        else {
            continue;
        };
        let (mut entries, mut proof) = store
            .get_range_with_proof_at(&key, start, end, length, upgrade_from, 256 * 1024)
            .await
            .unwrap();
        let bytes = match how {
            Evil::BadProof => {
                proof.nodes[0].hash[0] ^= 1;
                Message::Data {
                    discovery,
                    id,
                    start,
                    entries,
                    proof,
                }
                .encode()
            }
            Evil::TamperedEntry => {
                entries[0][0] ^= 1;
                Message::Data {
                    discovery,
                    id,
                    start,
                    entries,
                    proof,
                }
                .encode()
            }
            Evil::OversizedEntry => {
                let mut bytes = Message::Data {
                    discovery,
                    id,
                    start,
                    entries,
                    proof,
                }
                .encode();
                let at = 4 + 1 + 32 + 4 + 8 + 4;
                bytes[at..at + 4]
                    .copy_from_slice(&(kith_store::log::MAX_ENTRY_BYTES as u32 + 1).to_le_bytes());
                bytes
            }
            _ => continue,
        };
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn malicious_peers_are_cut_off_and_honest_replication_completes() {
    for dbs in dbs(3).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let reader = Node::new(&dbs[1], &hub, 2, config()).await;
        // The liar holds a real copy of the log (so its roots are genuine) and lies about it.
        let liar = Node::new(&dbs[2], &hub, 9, config()).await;
        let signer = Ed25519Signer::from_seed([4; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 4, 0, 2000).await;
        let (r, _) = pull(&liar, &writer, key, None).await;
        r.unwrap();

        let cases = [
            Evil::Garbage,
            Evil::OversizedFrame,
            Evil::OversizedEntry,
            Evil::BadSignature,
            Evil::WrongLog,
            Evil::BadProof,
            Evil::TamperedEntry,
            Evil::UnaskedData,
        ];
        for (k, how) in cases.into_iter().enumerate() {
            let (ours, theirs) = pipe(reader.peer, liar.peer, None);
            let evil = tokio::spawn(evil_peer(
                liar.peer,
                theirs,
                liar.store.clone(),
                key,
                Ed25519Signer::from_seed([99; 32]),
                how,
            ));
            let result = reader.repl.replicate(ours, &[key], false).await;
            assert!(
                matches!(result, Err(StoreError::Protocol(_))),
                "{how:?} on {}: {result:?}",
                dbs[0].name
            );
            assert_eq!(reader.repl.stats().protocol_errors, k as u64 + 1);
            // Nothing the liar sent was stored.
            let info = reader.store.log_info(&key).await.unwrap();
            assert_eq!((info.length, info.held_entries), (0, 0), "{how:?}");
            evil.await.unwrap();
        }

        // A liar and an honest peer at the same time: the liar is cut, the honest peer's
        // replication completes and the log verifies.
        let (ours, theirs) = pipe(reader.peer, liar.peer, None);
        let evil = tokio::spawn(evil_peer(
            liar.peer,
            theirs,
            liar.store.clone(),
            key,
            Ed25519Signer::from_seed([99; 32]),
            Evil::BadProof,
        ));
        let keys = [key];
        let (bad, (good, _)) = tokio::join!(
            reader.repl.replicate(ours, &keys, false),
            pull(&reader, &writer, key, None)
        );
        assert!(matches!(bad, Err(StoreError::Protocol(_))), "{bad:?}");
        good.unwrap();
        evil.await.unwrap();
        let info = reader.store.log_info(&key).await.unwrap();
        assert_eq!((info.length, info.held_entries), (2000, 2000));
        assert_eq!(
            reader.store.verify_log(&key).await.unwrap().held_entries,
            2000
        );
        same_entries(&writer.store, &reader.store, &key).await;
    }
}

#[tokio::test]
async fn an_unknown_log_is_unavailable_and_reveals_nothing() {
    let dbs = [common::sqlite(), common::sqlite()];
    let hub = MemoryNetwork::new([0; 32]);
    let a = Node::new(&dbs[0], &hub, 1, config()).await;
    let b = Node::new(&dbs[1], &hub, 2, config()).await;
    let signer = Ed25519Signer::from_seed([5; 32]);
    append(&a.store, &signer, 5, 0, 10).await;
    // b asks a for a log a does not hold: the session ends with nothing exchanged.
    let other = Ed25519Signer::from_seed([6; 32]).log_key();
    let (r, s) = pull(&b, &a, other, None).await;
    let (r, s) = (r.unwrap(), s.unwrap());
    assert_eq!((r.entries_received, s.entries_sent), (0, 0));
    assert!(r.synced.is_empty());

    // A peer that knows only the discovery id cannot open the log: its capability is wrong.
    // Nor can one that relays a capability another peer who knows the key made for this
    // session (a man in the middle): it names that peer as the sender, not the relay.
    a.repl.start().await.unwrap(); // registers a's logs
    for relayed in [false, true] {
        let (ours, theirs) = pipe(b.peer, a.peer, None);
        let server = tokio::spawn({
            let repl = a.repl.clone();
            async move { repl.handle(theirs).await }
        });
        let PeerChannel { mut send, recv, .. } = ours;
        let mut recv = BufReader::new(recv);
        let mut buf = Vec::new();
        let Some(Message::Hello { nonce, .. }) =
            wire::read_message(&mut recv, &mut buf).await.unwrap()
        else {
            panic!("no hello");
        };
        let cap = if relayed {
            capability(&signer.log_key(), &nonce, &[9; 32], &a.peer)
        } else {
            [0; 32]
        };
        let mut out = Message::Hello {
            version: wire::VERSION,
            nonce: [1; 32],
        }
        .encode();
        out.extend_from_slice(
            &Message::Open {
                discovery: discovery_id(&signer.log_key()),
                capability: cap,
            }
            .encode(),
        );
        send.write_all(&out).await.unwrap();
        // Nothing about the log comes back (no Open, no root): at most a `Done`, then the end.
        while let Ok(Some(msg)) = wire::read_message(&mut recv, &mut buf).await {
            assert_eq!(msg, Message::Done, "relayed: {relayed}");
        }
        assert!(
            matches!(server.await.unwrap(), Err(StoreError::Protocol(_))),
            "relayed: {relayed}"
        );
    }
    a.repl.shutdown().await;
}

#[tokio::test]
async fn quotas_evict_the_oldest_entries_of_the_lowest_priority_first() {
    for dbs in dbs(4).await {
        let hub = MemoryNetwork::new([0; 32]);
        let wa = Node::new(&dbs[0], &hub, 1, config()).await;
        let wb = Node::new(&dbs[1], &hub, 2, config()).await;
        let mirror = Node::new(
            &dbs[2],
            &hub,
            3,
            ReplicatorConfig {
                total_quota_bytes: Some(120 * 1024),
                ..config()
            },
        )
        .await;
        let reader = Node::new(&dbs[3], &hub, 4, config()).await;
        let sa = Ed25519Signer::from_seed([7; 32]);
        let sb = Ed25519Signer::from_seed([8; 32]);
        let (ka, kb) = (sa.log_key(), sb.log_key());
        append(&wa.store, &sa, 7, 0, 100).await;
        append(&wb.store, &sb, 8, 0, 100).await;
        wa.repl.start().await.unwrap();
        wb.repl.start().await.unwrap();

        // A: at most 50 KiB of its own, priority 1.
        let info = mirror
            .repl
            .add_mirror(
                ka,
                MirrorPolicy {
                    quota_bytes: Some(50 * 1024),
                    priority: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(info.length, 0);
        mirror.repl.sync_log(ka).await.unwrap();
        let a = mirror.store.log_info(&ka).await.unwrap();
        assert_eq!((a.length, a.held_entries), (100, 50), "{}", dbs[0].name);
        assert_eq!(
            mirror.store.held(&ka).await.unwrap(),
            RangeSet::from(vec![(50, 100)])
        );
        // What remains still verifies and can be served: a reader gets it from the mirror.
        mirror.store.verify_log(&ka).await.unwrap();
        mirror.repl.start().await.unwrap();
        let (r, _) = pull(&reader, &mirror, ka, None).await;
        assert_eq!(r.unwrap().entries_received, 50);
        reader.store.verify_log(&ka).await.unwrap();
        // Syncing again does not fetch the evicted entries back.
        let again = mirror.repl.sync_log(ka).await.unwrap();
        assert_eq!(again.entries_received, 0);

        // B: no quota of its own, priority 0: over the total (50 + 100 > 120 KiB) B loses its
        // oldest 30 entries, A keeps everything it had.
        mirror
            .repl
            .add_mirror(
                kb,
                MirrorPolicy {
                    quota_bytes: None,
                    priority: 0,
                },
            )
            .await
            .unwrap();
        wait_for("B mirrored", async || {
            mirror
                .store
                .log_info(&kb)
                .await
                .is_ok_and(|i| i.length == 100)
                && mirror.store.held(&kb).await.is_ok_and(|h| h.contains(99))
        })
        .await;
        wait_for("B evicted to the total quota", async || {
            mirror
                .store
                .held(&kb)
                .await
                .is_ok_and(|h| h == RangeSet::from(vec![(30, 100)]))
        })
        .await;
        assert_eq!(
            mirror.store.held(&ka).await.unwrap(),
            RangeSet::from(vec![(50, 100)])
        );
        mirror.store.verify_log(&kb).await.unwrap();

        // A grows: its own quota keeps it at 50 entries, the newest.
        append(&wa.store, &sa, 7, 100, 120).await;
        mirror.repl.sync_log(ka).await.unwrap();
        wait_for("A grown", async || {
            mirror
                .store
                .held(&ka)
                .await
                .is_ok_and(|h| h == RangeSet::from(vec![(70, 120)]))
        })
        .await;
        mirror.store.verify_log(&ka).await.unwrap();

        let listed = mirror.repl.list_mirrors().await.unwrap();
        assert_eq!(listed.len(), 2);
        let la = listed.iter().find(|m| m.key == ka).unwrap();
        assert_eq!(la.policy.quota_bytes, Some(50 * 1024));
        assert_eq!(
            (la.length, la.held_entries, la.bytes_held),
            (120, 50, 50 * 1024)
        );
        assert_eq!(la.evicted_below, 70);
        assert!(la.peers_seen >= 1);
        assert!(la.last_sync_ms.is_some());
        let lb = listed.iter().find(|m| m.key == kb).unwrap();
        assert_eq!(
            (lb.held_entries, lb.bytes_held, lb.evicted_below),
            (70, 70 * 1024, 30)
        );

        // The node's own log is never a mirror, so never evicted.
        let own = Ed25519Signer::from_seed([9; 32]);
        append(&mirror.store, &own, 9, 0, 200).await;
        assert!(
            mirror
                .repl
                .add_mirror(own.log_key(), MirrorPolicy::default())
                .await
                .is_err()
        );
        assert_eq!(
            mirror
                .store
                .log_info(&own.log_key())
                .await
                .unwrap()
                .held_entries,
            200
        );

        // Removing a mirror deletes what it held.
        assert!(mirror.repl.remove_mirror(&kb).await.unwrap());
        assert!(mirror.store.log_info(&kb).await.is_err());
        assert_eq!(mirror.repl.list_mirrors().await.unwrap().len(), 1);
        for n in [&wa, &wb, &mirror] {
            n.repl.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_mirror_persists_across_restart_and_keeps_following() {
    for dbs in dbs(2).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let signer = Ed25519Signer::from_seed([10; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 10, 0, 200).await;
        writer.repl.start().await.unwrap();
        let policy = MirrorPolicy {
            quota_bytes: Some(1 << 30),
            priority: 5,
        };
        {
            let mirror = Node::new(&dbs[1], &hub, 2, config()).await;
            mirror.repl.start().await.unwrap();
            mirror.repl.add_mirror(key, policy).await.unwrap();
            let store = mirror.store.clone();
            wait_for("mirrored", async || {
                store
                    .log_info(&key)
                    .await
                    .is_ok_and(|i| i.held_entries == 200)
            })
            .await;
            mirror.repl.shutdown().await;
            mirror.store.close().await;
        }
        // Restarted: the mirror is still there with its policy, and it follows new appends.
        let mirror = Node::new(&dbs[1], &hub, 2, config()).await;
        let listed = mirror.repl.list_mirrors().await.unwrap();
        assert_eq!(listed.len(), 1, "{}", dbs[0].name);
        assert_eq!((listed[0].key, listed[0].policy), (key, policy));
        assert_eq!(listed[0].length, 200);
        mirror.repl.start().await.unwrap();
        append(&writer.store, &signer, 10, 200, 260).await;
        let store = mirror.store.clone();
        wait_for("following after restart", async || {
            store
                .log_info(&key)
                .await
                .is_ok_and(|i| i.held_entries == 260)
        })
        .await;
        mirror.store.verify_log(&key).await.unwrap();
        writer.repl.shutdown().await;
        mirror.repl.shutdown().await;
    }
}

#[tokio::test]
async fn fork_evidence_propagates() {
    for dbs in dbs(4).await {
        let hub = MemoryNetwork::new([0; 32]);
        let honest = Node::new(&dbs[0], &hub, 1, config()).await;
        let twin = Node::new(&dbs[1], &hub, 2, config()).await;
        let reader = Node::new(&dbs[2], &hub, 3, config()).await;
        let late = Node::new(&dbs[3], &hub, 4, config()).await;
        // One key, two histories of the same length (a restored backup writing on).
        let signer = Ed25519Signer::from_seed([11; 32]);
        let key = signer.log_key();
        append(&honest.store, &signer, 11, 0, 40).await;
        append(&twin.store, &signer, 12, 0, 40).await;

        let (r, _) = pull(&reader, &honest, key, None).await;
        r.unwrap();
        // The twin advertises a different root of the same length: the reader keeps the
        // evidence and hands it to the twin.
        let (r, t) = pull(&reader, &twin, key, None).await;
        r.unwrap();
        t.unwrap();
        assert!(
            reader.store.log_info(&key).await.unwrap().forked,
            "{}",
            dbs[0].name
        );
        assert_eq!(reader.store.fork_evidence(&key).await.unwrap().len(), 1);
        assert!(twin.store.log_info(&key).await.unwrap().forked);
        assert_eq!(twin.store.fork_evidence(&key).await.unwrap().len(), 1);
        // Someone opening the log with the reader gets the evidence too.
        let (l, _) = pull(&late, &reader, key, None).await;
        l.unwrap();
        let got = late.store.fork_evidence(&key).await.unwrap();
        assert_eq!(got.len(), 1);
        got[0].verify().unwrap();
        assert!(late.store.log_info(&key).await.unwrap().forked);
    }
}

/// Canary plaintexts: if any of these bytes shows up in the mirror's storage, it saw plaintext.
const CANARIES: [&str; 3] = [
    "CANARY-7f3a9c-the-eagle-lands-at-dawn",
    "CANARY-b81e44-meet-me-by-the-old-mill",
    "CANARY-0c5d2e-the-password-is-swordfish",
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` (recursively): which canaries appear in its bytes.
fn canaries_in_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for c in CANARIES {
                if contains(&bytes, c.as_bytes()) {
                    found.push(format!("{c} in {}", path.display()));
                }
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    found
}

/// Every row of every table of a PostgreSQL database, as text (bytea as hex): which canaries
/// appear, raw or hex-encoded.
async fn canaries_in_postgres(url: &str) -> Vec<String> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut found = Vec::new();
    for t in tables {
        let rows: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(t AS TEXT) FROM {t} t"
        )))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
        for row in rows {
            for c in CANARIES {
                if row.contains(c) || row.contains(&hex::encode(c)) {
                    found.push(format!("{c} in table {t}"));
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn a_blind_mirror_never_holds_plaintext_and_serves_readers_while_the_writer_is_offline() {
    for dbs in dbs(3).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let mirror = Node::new(&dbs[1], &hub, 2, config()).await;
        let reader = Node::new(&dbs[2], &hub, 3, config()).await;
        let signer = Ed25519Signer::from_seed([13; 32]);
        let key = signer.log_key();
        // The room key: the writer and the reader have it, the mirror never does.
        let room = ChaCha20Poly1305::new(Key::from_slice(&[42; 32]));
        let nonce = |i: u64| {
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&i.to_le_bytes());
            n
        };
        let plaintexts: Vec<String> = (0..600u64)
            .map(|i| format!("{} message {i}", CANARIES[i as usize % CANARIES.len()]))
            .collect();
        let sealed: Vec<Vec<u8>> = plaintexts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = nonce(i as u64);
                let mut e = n.to_vec();
                e.extend(room.encrypt(Nonce::from_slice(&n), p.as_bytes()).unwrap());
                e
            })
            .collect();
        for chunk in sealed.chunks(100) {
            writer.store.append(&signer, chunk).await.unwrap();
        }
        writer.repl.start().await.unwrap();
        mirror.repl.start().await.unwrap();
        // The mirror is given the log's public key and nothing else.
        mirror
            .repl
            .add_mirror(key, MirrorPolicy::default())
            .await
            .unwrap();
        let store = mirror.store.clone();
        wait_for("mirror caught up", async || {
            store
                .log_info(&key)
                .await
                .is_ok_and(|i| i.held_entries == 600)
        })
        .await;
        mirror.store.verify_log(&key).await.unwrap();

        // The writer goes offline; the reader catches up from the mirror alone.
        writer.net.set_offline(writer.peer, true);
        let report = reader.repl.sync_log(key).await.unwrap();
        assert_eq!(report.length, 600, "{}", dbs[0].name);
        assert_eq!(report.peers_synced, 1);
        assert_eq!(
            reader.store.verify_log(&key).await.unwrap().held_entries,
            600
        );
        let got = reader.store.get_range(&key, 0, 600).await.unwrap();
        for (i, e) in got.iter().enumerate() {
            let (n, c) = e.split_at(12);
            let p = room.decrypt(Nonce::from_slice(n), c).unwrap();
            assert_eq!(p, plaintexts[i].as_bytes());
        }
        let listed = mirror.repl.list_mirrors().await.unwrap();
        assert_eq!(listed[0].held_entries, 600);

        // Not one canary anywhere in the mirror's storage.
        mirror.repl.shutdown().await;
        let found = if dbs[1].name == "sqlite" {
            let path = dbs[1].url.trim_start_matches("sqlite://").to_owned();
            let dir = std::path::Path::new(&path).parent().unwrap().to_owned();
            // Scanned while open (the WAL holds the latest pages) and after closing.
            let mut found = canaries_in_files(&dir);
            mirror.store.close().await;
            found.extend(canaries_in_files(&dir));
            found
        } else {
            let found = canaries_in_postgres(&dbs[1].url).await;
            mirror.store.close().await;
            found
        };
        assert!(found.is_empty(), "plaintext in the mirror: {found:?}");

        // The scanners do find a canary where there is one.
        let control = tempfile::tempdir().unwrap();
        std::fs::write(control.path().join("x"), format!("..{}..", CANARIES[1])).unwrap();
        assert_eq!(canaries_in_files(control.path()).len(), 1);
        if dbs[1].name == "postgres" {
            let url = kith_store::testing::fresh_postgres_database("kith_canary")
                .await
                .unwrap();
            let plain = Store::open(&url).await.unwrap();
            let s = Ed25519Signer::from_seed([14; 32]);
            plain.append(&s, &[CANARIES[2].as_bytes()]).await.unwrap();
            plain.close().await;
            assert!(!canaries_in_postgres(&url).await.is_empty());
        }
        writer.repl.shutdown().await;
        reader.repl.shutdown().await;
    }
}

#[tokio::test]
async fn ranges_are_proven_against_an_older_advertised_root_and_a_moved_root_is_not_the_senders_fault()
 {
    for dbs in dbs(2).await {
        let writer = dbs[0].open().await;
        let reader = dbs[1].open().await;
        let signer = Ed25519Signer::from_seed([15; 32]);
        let key = signer.log_key();
        append(&writer, &signer, 15, 0, 100).await;
        let old = writer.root(&key).await.unwrap().unwrap();
        append(&writer, &signer, 15, 100, 300).await;

        // The writer, now at 300, proves entries against the root of 100 it advertised before,
        // revealing the reader's (empty) length: the reader takes it.
        let (es, proof) = writer
            .get_range_with_proof_at(&key, 10, 60, 100, Some(0), 1 << 20)
            .await
            .unwrap();
        assert_eq!(es.len(), 50);
        reader
            .put_remote_at(&old, 10, &es, &proof, Some(0))
            .await
            .unwrap();
        assert_eq!(
            reader.root(&key).await.unwrap(),
            Some(old),
            "{}",
            dbs[0].name
        );

        // A byte budget cuts the range to a prefix (at least one entry).
        let (few, _) = writer
            .get_range_with_proof_at(&key, 0, 50, 100, None, 3 * 1024)
            .await
            .unwrap();
        assert_eq!(few.len(), 3);
        let (one, _) = writer
            .get_range_with_proof_at(&key, 0, 50, 100, None, 1)
            .await
            .unwrap();
        assert_eq!(one.len(), 1);

        // A proof made for a reader at length 0 while the reader has since reached 100: not a
        // bad proof, a stale request — nothing stored, `StaleRoot`.
        let new = writer.root(&key).await.unwrap().unwrap();
        let (es, proof) = writer
            .get_range_with_proof_at(&key, 200, 250, 300, Some(0), 1 << 20)
            .await
            .unwrap();
        let before = reader.held(&key).await.unwrap();
        let stale = reader.put_remote_at(&new, 200, &es, &proof, Some(0)).await;
        assert!(
            matches!(stale, Err(StoreError::StaleRoot { .. })),
            "{stale:?}"
        );
        assert_eq!(reader.held(&key).await.unwrap(), before);
        // The same entries with a tampered byte are the sender's fault.
        let mut bad = es.clone();
        bad[0][0] ^= 1;
        assert!(matches!(
            reader.put_remote_at(&new, 200, &bad, &proof, Some(0)).await,
            Err(StoreError::BadProof)
        ));
        // Asked again from the right length, it is taken.
        let (es, proof) = writer
            .get_range_with_proof_at(&key, 200, 250, 300, Some(100), 1 << 20)
            .await
            .unwrap();
        reader
            .put_remote_at(&new, 200, &es, &proof, Some(100))
            .await
            .unwrap();
        assert_eq!(reader.root(&key).await.unwrap(), Some(new));
        assert_eq!(reader.verify_log(&key).await.unwrap().held_entries, 100);
        // Beyond the held length: out of range. An empty range: the root's proof alone.
        assert!(
            writer
                .get_range_with_proof_at(&key, 0, 10, 301, None, 1 << 20)
                .await
                .is_err()
        );
        assert!(
            writer
                .get_range_with_proof_at(&key, 5, 5, 300, None, 1 << 20)
                .await
                .unwrap()
                .0
                .is_empty()
        );
    }
}

#[tokio::test]
async fn sessions_are_symmetric_a_writer_pushes_by_opening_one_to_its_mirror() {
    for dbs in dbs(2).await {
        let hub = MemoryNetwork::new([0; 32]);
        let writer = Node::new(&dbs[0], &hub, 1, config()).await;
        let mirror = Node::new(&dbs[1], &hub, 2, config()).await;
        let signer = Ed25519Signer::from_seed([16; 32]);
        let key = signer.log_key();
        append(&writer.store, &signer, 16, 0, 2500).await;
        mirror
            .repl
            .add_mirror(key, MirrorPolicy::default())
            .await
            .unwrap();
        // The writer opens the session; the mirror (the side that accepted) pulls, and the
        // one-shot session ends once it has everything.
        let (w, m) = pipe(writer.peer, mirror.peer, None);
        let keys = [key];
        let (w, m) = tokio::join!(
            writer.repl.replicate(w, &keys, false),
            mirror.repl.handle(m)
        );
        let (w, m) = (w.unwrap(), m.unwrap());
        assert_eq!(
            (w.entries_sent, m.entries_received),
            (2500, 2500),
            "{}",
            dbs[0].name
        );
        assert_eq!(w.entries_received, 0);
        assert_eq!(
            mirror.store.verify_log(&key).await.unwrap().held_entries,
            2500
        );
        same_entries(&writer.store, &mirror.store, &key).await;
    }
}

#[tokio::test]
async fn a_peer_with_too_many_requests_outstanding_is_cut_off() {
    let db = common::sqlite();
    let hub = MemoryNetwork::new([0; 32]);
    let server = Node::new(&db, &hub, 1, config()).await;
    let signer = Ed25519Signer::from_seed([17; 32]);
    let key = signer.log_key();
    append(&server.store, &signer, 17, 0, 2048).await;
    let root = server.store.root(&key).await.unwrap().unwrap();

    let (ours, theirs) = pipe([2; 32], server.peer, None);
    let serving = tokio::spawn({
        let repl = server.repl.clone();
        async move { repl.handle(theirs).await }
    });
    let PeerChannel { mut send, recv, .. } = ours;
    let mut recv = BufReader::new(recv);
    let mut buf = Vec::new();
    let Some(Message::Hello { nonce, .. }) = wire::read_message(&mut recv, &mut buf).await.unwrap()
    else {
        panic!("no hello");
    };
    let discovery = discovery_id(&key);
    let mut out = Message::Hello {
        version: wire::VERSION,
        nonce: [3; 32],
    }
    .encode();
    out.extend(
        Message::Open {
            discovery,
            capability: capability(&key, &nonce, &[2; 32], &server.peer),
        }
        .encode(),
    );
    send.write_all(&out).await.unwrap();
    // Its Open and Have (and maybe a Done) come back; then we ask for 1 MiB replies without
    // ever reading them.
    loop {
        match wire::read_message(&mut recv, &mut buf).await.unwrap() {
            Some(Message::Have { .. }) => break,
            Some(_) => continue,
            None => panic!("closed early"),
        }
    }
    let mut flood = Vec::new();
    for id in 0..40u32 {
        flood.extend(
            Message::Request {
                discovery,
                id,
                length: root.length(),
                start: 0,
                end: 1024,
                upgrade_from: None,
            }
            .encode(),
        );
    }
    send.write_all(&flood).await.unwrap();
    let result = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
    assert!(
        matches!(&result, Err(StoreError::Protocol(m)) if m.contains("requests in flight")),
        "{result:?}"
    );
    assert_eq!(server.repl.stats().protocol_errors, 1);
}

// Rooms' discovery topics.

/// A room's topic, known to its members (and to the mirrors they ask to keep the room).
fn room(seed: u8) -> TopicKey {
    RoomTopic::from_bytes([seed; 32]).key()
}

/// The writer of `signer`'s log puts it in the room.
async fn tag(store: &Store, signer: &Ed25519Signer, topic: &TopicKey) {
    let tag = TopicTag::sign(signer, &topic.id());
    store.create_log(&signer.log_key()).await.unwrap();
    assert!(store.tag_log(topic, &tag, true).await.unwrap());
}

async fn holds(store: &Store, key: &LogKey, entries: u64) -> bool {
    store
        .log_info(key)
        .await
        .is_ok_and(|i| i.length == entries && i.held_entries == entries)
}

#[tokio::test]
async fn a_topic_mirror_finds_a_rooms_logs_serves_them_and_follows_new_members() {
    for dbs in dbs(5).await {
        let hub = MemoryNetwork::new([0; 32]);
        let wa = Node::new(&dbs[0], &hub, 1, config()).await;
        let wb = Node::new(&dbs[1], &hub, 2, config()).await;
        let mirror = Node::new(&dbs[2], &hub, 3, config()).await;
        let reader = Node::new(&dbs[3], &hub, 4, config()).await;
        let late = Node::new(&dbs[4], &hub, 5, config()).await;
        let topic = room(40);
        let (sa, sb, sc) = (
            Ed25519Signer::from_seed([41; 32]),
            Ed25519Signer::from_seed([42; 32]),
            Ed25519Signer::from_seed([43; 32]),
        );
        // Two members' writer logs in the room, and a log outside it.
        append(&wa.store, &sa, 41, 0, 300).await;
        append(&wb.store, &sb, 42, 0, 200).await;
        tag(&wa.store, &sa, &topic).await;
        tag(&wb.store, &sb, &topic).await;
        let outside = Ed25519Signer::from_seed([44; 32]);
        append(&wa.store, &outside, 44, 0, 10).await;
        wa.repl.start().await.unwrap();
        wb.repl.start().await.unwrap();

        // The mirror is given the topic and nothing else.
        mirror.repl.start().await.unwrap();
        let policy = MirrorPolicy {
            quota_bytes: Some(1 << 30),
            priority: 2,
        };
        mirror.repl.add_topic_mirror(&topic, policy).await.unwrap();
        let store = mirror.store.clone();
        wait_for("both members' logs mirrored", async || {
            holds(&store, &sa.log_key(), 300).await && holds(&store, &sb.log_key(), 200).await
        })
        .await;
        mirror.store.verify_log(&sa.log_key()).await.unwrap();
        same_entries(&wa.store, &mirror.store, &sa.log_key()).await;
        same_entries(&wb.store, &mirror.store, &sb.log_key()).await;
        assert!(
            mirror.store.log_info(&outside.log_key()).await.is_err(),
            "a log outside the room is not mirrored ({})",
            dbs[0].name
        );
        let mut members = vec![sa.log_key(), sb.log_key()];
        members.sort();
        let topics = mirror.repl.list_topic_mirrors().await.unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!((topics[0].id, topics[0].policy), (topic.id(), policy));
        assert_eq!(topics[0].logs, members);
        assert!(topics[0].peers_seen >= 2);
        assert!(topics[0].last_check_ms.is_some());
        // Each found log is a mirror of its own, under the topic's policy.
        let logs = mirror.repl.list_mirrors().await.unwrap();
        assert_eq!(logs.len(), 2);
        for m in &logs {
            assert_eq!((m.policy, m.by_key), (policy, false));
            assert_eq!(m.topics, vec![topic.id()]);
        }

        // Every writer goes offline; a reader knowing only the topic catches both logs up from
        // the mirror, which answers for the topic and announces it itself.
        wa.net.set_offline(wa.peer, true);
        wb.net.set_offline(wb.peer, true);
        let report = reader.repl.sync_topic(&topic).await.unwrap();
        assert_eq!(report.peers_answered, 1, "{report:?}");
        let got: Vec<_> = report.logs.iter().map(|l| (l.key, l.length)).collect();
        let mut want = vec![(sa.log_key(), 300), (sb.log_key(), 200)];
        want.sort();
        assert_eq!(got, want);
        assert!(report.logs.iter().all(|l| l.error.is_none()));
        reader.store.verify_log(&sa.log_key()).await.unwrap();
        same_entries(&wa.store, &reader.store, &sa.log_key()).await;
        same_entries(&wb.store, &reader.store, &sb.log_key()).await;
        // The reader keeps the writers' tags: it lists the room's logs too.
        let tags = reader.store.topic_tags(&topic.id()).await.unwrap();
        assert_eq!(tags.iter().map(|t| t.key).collect::<Vec<_>>(), members);

        // A new member joins while the others are offline: the mirror finds its log.
        append(&late.store, &sc, 43, 0, 50).await;
        tag(&late.store, &sc, &topic).await;
        late.repl.start().await.unwrap();
        wait_for("the new member's log mirrored", async || {
            holds(&store, &sc.log_key(), 50).await
        })
        .await;
        // And follows its appends.
        append(&late.store, &sc, 43, 50, 80).await;
        wait_for("the new member's appends mirrored", async || {
            holds(&store, &sc.log_key(), 80).await
        })
        .await;
        assert_eq!(
            mirror.repl.list_topic_mirrors().await.unwrap()[0]
                .logs
                .len(),
            3
        );
        for n in [&wa, &wb, &mirror, &reader, &late] {
            n.repl.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_topic_mirror_persists_across_restart_and_finds_members_that_join_later() {
    for dbs in dbs(3).await {
        let hub = MemoryNetwork::new([0; 32]);
        let wa = Node::new(&dbs[0], &hub, 1, config()).await;
        let wb = Node::new(&dbs[1], &hub, 2, config()).await;
        let topic = room(50);
        let (sa, sb) = (
            Ed25519Signer::from_seed([51; 32]),
            Ed25519Signer::from_seed([52; 32]),
        );
        append(&wa.store, &sa, 51, 0, 100).await;
        tag(&wa.store, &sa, &topic).await;
        wa.repl.start().await.unwrap();
        let policy = MirrorPolicy {
            quota_bytes: None,
            priority: -1,
        };
        {
            let mirror = Node::new(&dbs[2], &hub, 3, config()).await;
            mirror.repl.start().await.unwrap();
            mirror.repl.add_topic_mirror(&topic, policy).await.unwrap();
            let store = mirror.store.clone();
            wait_for("mirrored", async || holds(&store, &sa.log_key(), 100).await).await;
            mirror.repl.shutdown().await;
            mirror.store.close().await;
        }
        // Restarted: the topic mirror is still there, with its policy and the log it found.
        let mirror = Node::new(&dbs[2], &hub, 3, config()).await;
        let listed = mirror.repl.list_topic_mirrors().await.unwrap();
        assert_eq!(listed.len(), 1, "{}", dbs[0].name);
        assert_eq!(
            (listed[0].id, listed[0].policy, listed[0].logs.clone()),
            (topic.id(), policy, vec![sa.log_key()])
        );
        mirror.repl.start().await.unwrap();
        // It still follows the log it found, and finds a member that joins after the restart.
        append(&wa.store, &sa, 51, 100, 120).await;
        append(&wb.store, &sb, 52, 0, 70).await;
        tag(&wb.store, &sb, &topic).await;
        wb.repl.start().await.unwrap();
        let store = mirror.store.clone();
        wait_for("following after restart", async || {
            holds(&store, &sa.log_key(), 120).await && holds(&store, &sb.log_key(), 70).await
        })
        .await;
        let found = mirror.repl.list_mirrors().await.unwrap();
        assert!(found.iter().all(|m| m.policy == policy && !m.by_key));
        for n in [&wa, &wb, &mirror] {
            n.repl.shutdown().await;
        }
    }
}

#[tokio::test]
async fn removing_a_topic_mirror_drops_only_what_it_alone_mirrored() {
    for dbs in dbs(4).await {
        let hub = MemoryNetwork::new([0; 32]);
        let wa = Node::new(&dbs[0], &hub, 1, config()).await;
        let wb = Node::new(&dbs[1], &hub, 2, config()).await;
        let mirror = Node::new(&dbs[2], &hub, 3, config()).await;
        let asker = Node::new(&dbs[3], &hub, 4, config()).await;
        let topic = room(60);
        let (sa, sb) = (
            Ed25519Signer::from_seed([61; 32]),
            Ed25519Signer::from_seed([62; 32]),
        );
        append(&wa.store, &sa, 61, 0, 20).await;
        append(&wb.store, &sb, 62, 0, 20).await;
        tag(&wa.store, &sa, &topic).await;
        tag(&wb.store, &sb, &topic).await;
        wa.repl.start().await.unwrap();
        wb.repl.start().await.unwrap();
        mirror.repl.start().await.unwrap();
        mirror
            .repl
            .add_topic_mirror(&topic, MirrorPolicy::default())
            .await
            .unwrap();
        let store = mirror.store.clone();
        wait_for("mirrored", async || {
            holds(&store, &sa.log_key(), 20).await && holds(&store, &sb.log_key(), 20).await
        })
        .await;
        // A is also mirrored by key (its policy is now its own).
        let by_key = MirrorPolicy {
            quota_bytes: Some(1 << 20),
            priority: 7,
        };
        let a = mirror.repl.add_mirror(sa.log_key(), by_key).await.unwrap();
        assert!(a.by_key);
        assert_eq!(a.topics, vec![topic.id()]);
        // Changing the topic mirror's policy moves B's (found by the topic only), not A's.
        let newer = MirrorPolicy {
            quota_bytes: Some(1 << 21),
            priority: 3,
        };
        mirror.repl.add_topic_mirror(&topic, newer).await.unwrap();
        let listed = mirror.repl.list_mirrors().await.unwrap();
        let policy_of = |k: LogKey| listed.iter().find(|m| m.key == k).unwrap().policy;
        assert_eq!(policy_of(sa.log_key()), by_key, "{}", dbs[0].name);
        assert_eq!(policy_of(sb.log_key()), newer);

        assert!(mirror.repl.remove_topic_mirror(&topic.id()).await.unwrap());
        assert!(!mirror.repl.remove_topic_mirror(&topic.id()).await.unwrap());
        // B went with everything held of it; A stays, mirrored by key, out of the room here.
        assert!(mirror.store.log_info(&sb.log_key()).await.is_err());
        assert!(holds(&mirror.store, &sa.log_key(), 20).await);
        let left = mirror.repl.list_mirrors().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].key, left[0].by_key), (sa.log_key(), true));
        assert!(left[0].topics.is_empty());
        assert!(mirror.repl.list_topic_mirrors().await.unwrap().is_empty());
        assert!(
            mirror
                .store
                .log_topics(&sa.log_key())
                .await
                .unwrap()
                .is_empty()
        );
        // The mirror forgot the topic: it no longer answers for it.
        assert!(mirror.store.topic(&topic.id()).await.unwrap().is_none());
        let (ours, theirs) = pipe(asker.peer, mirror.peer, None);
        let serving = tokio::spawn({
            let repl = mirror.repl.clone();
            async move { repl.handle(theirs).await }
        });
        assert_eq!(asker.repl.query_topic(ours, &topic).await.unwrap(), None);
        serving.await.unwrap().unwrap();
        // And it stays gone: nothing comes back while the writers go on.
        append(&wb.store, &sb, 62, 20, 25).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(mirror.store.log_info(&sb.log_key()).await.is_err());
        for n in [&wa, &wb, &mirror] {
            n.repl.shutdown().await;
        }
    }
}

/// Reads the hello of a session the other side opened or accepted; returns its nonce.
async fn their_hello(recv: &mut BufReader<Box<dyn AsyncRead + Send + Unpin>>) -> [u8; 32] {
    let mut buf = Vec::new();
    match wire::read_message(recv, &mut buf).await.unwrap() {
        Some(Message::Hello { nonce, .. }) => nonce,
        other => panic!("expected hello, got {other:?}"),
    }
}

/// The next message that is not a `Done`.
async fn next_answer(recv: &mut BufReader<Box<dyn AsyncRead + Send + Unpin>>) -> Option<Message> {
    let mut buf = Vec::new();
    loop {
        match wire::read_message(recv, &mut buf).await {
            Ok(Some(Message::Done)) => continue,
            Ok(other) => return other,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn topic_queries_without_the_topic_reveal_nothing() {
    for db in [common::sqlite(), common::postgres().await] {
        let hub = MemoryNetwork::new([0; 32]);
        let holder = Node::new(&db, &hub, 1, config()).await;
        let topic = room(70);
        let signer = Ed25519Signer::from_seed([71; 32]);
        append(&holder.store, &signer, 71, 0, 5).await;
        tag(&holder.store, &signer, &topic).await;
        let me = [2u8; 32];

        let (ours, theirs) = pipe(me, holder.peer, None);
        let serving = tokio::spawn({
            let repl = holder.repl.clone();
            async move { repl.handle(theirs).await }
        });
        let PeerChannel { mut send, recv, .. } = ours;
        let mut recv = BufReader::new(recv);
        let nonce = their_hello(&mut recv).await;
        let my_nonce = [9u8; 32];
        send.write_all(
            &Message::Hello {
                version: wire::VERSION,
                nonce: my_nonce,
            }
            .encode(),
        )
        .await
        .unwrap();
        let id = topic.id();
        let unknown = room(72);
        let query = |topic: TopicId, capability: [u8; 32]| {
            Message::TopicQuery { topic, capability }.encode()
        };
        // Knowing the id is not knowing the topic; nor is a proof made for another receiver
        // (relayed), for another sender, for the answer's direction or for another session.
        let wrong = [
            query(id, [0; 32]),
            query(
                id,
                topic.capability(Direction::Query, &nonce, &me, &[7; 32]),
            ),
            query(
                id,
                topic.capability(Direction::Query, &nonce, &[8; 32], &holder.peer),
            ),
            query(
                id,
                topic.capability(Direction::Answer, &nonce, &me, &holder.peer),
            ),
            query(
                id,
                topic.capability(Direction::Query, &[5; 32], &me, &holder.peer),
            ),
            query(
                unknown.id(),
                unknown.capability(Direction::Query, &nonce, &me, &holder.peer),
            ),
        ];
        for (i, q) in wrong.iter().enumerate() {
            send.write_all(q).await.unwrap();
            let answer = next_answer(&mut recv).await;
            let asked = if i == wrong.len() - 1 {
                unknown.id()
            } else {
                id
            };
            // The same answer as for a topic it does not have: not even that it holds it.
            assert_eq!(
                answer,
                Some(Message::TopicUnknown { topic: asked }),
                "case {i} on {}",
                db.name
            );
        }
        // The session was not cut: a proven query in it is answered, with the holder's proof.
        send.write_all(&query(
            id,
            topic.capability(Direction::Query, &nonce, &me, &holder.peer),
        ))
        .await
        .unwrap();
        match next_answer(&mut recv).await {
            Some(Message::TopicLogs {
                topic: t,
                capability,
                logs,
            }) => {
                assert_eq!(t, id);
                assert!(topic.check(&capability, Direction::Answer, &my_nonce, &holder.peer, &me));
                assert_eq!(logs.len(), 1);
                assert_eq!(logs[0].key, signer.log_key());
                logs[0].verify(&id).unwrap();
            }
            other => panic!("expected the topic's logs, got {other:?}"),
        }
        // Flooding queries ends the session.
        let mut flood = Vec::new();
        for _ in 0..kith_store::replicate::session::MAX_SESSION_TOPIC_QUERIES {
            flood.extend(query(unknown.id(), [1; 32]));
        }
        send.write_all(&flood).await.unwrap();
        let result = tokio::time::timeout(WAIT, serving).await.unwrap().unwrap();
        assert!(
            matches!(&result, Err(StoreError::Protocol(m)) if m.contains("topic queries")),
            "{result:?}"
        );
        assert_eq!(holder.repl.stats().protocol_errors, 1);
    }
}

/// How a topic holder lies when asked.
#[derive(Clone, Copy, Debug)]
enum TopicLie {
    /// Answers without knowing the topic (a made-up proof).
    NoProof,
    /// Knows the topic but lists a log whose writer never put it in the room.
    ForgedTag,
    /// Lists the same log twice.
    Duplicate,
    /// Answers a query that was never asked.
    Unasked,
    /// Garbage in place of an answer.
    Garbage,
}

/// Peer `me`, which knows `topic` (unless it lies about that too), answers a query badly.
async fn lying_holder(ch: PeerChannel, me: PeerId, topic: TopicKey, how: TopicLie) {
    let PeerChannel {
        mut send,
        recv,
        peer,
        ..
    } = ch;
    let mut recv = BufReader::new(recv);
    let theirs = their_hello(&mut recv).await;
    let mut out = Message::Hello {
        version: wire::VERSION,
        nonce: [4; 32],
    }
    .encode();
    let id = topic.id();
    let proof = topic.capability(Direction::Answer, &theirs, &me, &peer);
    let member = Ed25519Signer::from_seed([81; 32]);
    let stranger = Ed25519Signer::from_seed([82; 32]);
    let answer = |capability, logs| {
        Message::TopicLogs {
            topic: id,
            capability,
            logs,
        }
        .encode()
    };
    match how {
        TopicLie::Unasked => {
            // An answer, with a valid proof, for a room the asker did not ask about.
            let other = room(98);
            out.extend(
                Message::TopicLogs {
                    topic: other.id(),
                    capability: other.capability(Direction::Answer, &theirs, &me, &peer),
                    logs: vec![TopicTag::sign(&member, &other.id())],
                }
                .encode(),
            );
            let _ = send.write_all(&out).await;
            // Keep the stream open until the asker cuts it.
            let _ = next_answer(&mut recv).await;
            let _ = next_answer(&mut recv).await;
            return;
        }
        TopicLie::Garbage => {
            out.extend([11, 0, 0, 0, 11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
            let _ = send.write_all(&out).await;
            return;
        }
        _ => {}
    }
    let _ = send.write_all(&out).await;
    let Some(Message::TopicQuery { .. }) = next_answer(&mut recv).await else {
        return;
    };
    let bytes = match how {
        TopicLie::NoProof => answer([3; 32], vec![TopicTag::sign(&member, &id)]),
        TopicLie::ForgedTag => {
            // The stranger's tag is for another room.
            let mut forged = TopicTag::sign(&stranger, &room(99).id());
            forged.key = stranger.log_key();
            let mut logs = vec![TopicTag::sign(&member, &id), forged];
            logs.sort_by_key(|t| t.key);
            answer(proof, logs)
        }
        TopicLie::Duplicate => {
            // The encoder writes what it is given; the decoder refuses a repeated key.
            let tag = TopicTag::sign(&member, &id);
            answer(proof, vec![tag, tag])
        }
        _ => unreachable!(),
    };
    let _ = send.write_all(&bytes).await;
    let _ = next_answer(&mut recv).await;
}

#[tokio::test]
async fn lying_topic_holders_are_cut_off_and_nothing_they_said_is_kept() {
    for dbs in dbs(2).await {
        let hub = MemoryNetwork::new([0; 32]);
        let asker = Node::new(&dbs[0], &hub, 1, config()).await;
        let honest = Node::new(&dbs[1], &hub, 2, config()).await;
        let topic = room(80);
        let member = Ed25519Signer::from_seed([81; 32]);
        append(&honest.store, &member, 81, 0, 10).await;
        tag(&honest.store, &member, &topic).await;
        honest.repl.start().await.unwrap();
        let liar: PeerId = [9; 32];
        let cases = [
            TopicLie::NoProof,
            TopicLie::ForgedTag,
            TopicLie::Duplicate,
            TopicLie::Unasked,
            TopicLie::Garbage,
        ];
        for (k, how) in cases.into_iter().enumerate() {
            let (ours, theirs) = pipe(asker.peer, liar, None);
            let lying = tokio::spawn(lying_holder(theirs, liar, topic.clone(), how));
            // An honest peer answers at the same time, on its own session.
            let honest_channel = asker.net.open(honest.peer, kith_store::replicate::ALPN);
            let (bad, good) = tokio::join!(asker.repl.query_topic(ours, &topic), async {
                let ch = honest_channel.await.unwrap();
                asker.repl.query_topic(ch, &topic).await
            });
            assert!(
                matches!(bad, Err(StoreError::Protocol(_))),
                "{how:?} on {}: {bad:?}",
                dbs[0].name
            );
            assert_eq!(asker.repl.stats().protocol_errors, k as u64 + 1);
            let good = good.unwrap().unwrap();
            assert_eq!(good.len(), 1);
            assert_eq!(good[0].key, member.log_key());
            // query_topic keeps nothing; neither did the session: no tag, no log.
            assert!(asker.store.topic(&topic.id()).await.unwrap().is_none());
            assert!(asker.store.log_keys().await.unwrap().is_empty());
            lying.await.unwrap();
        }
        // A whole round with the honest peer keeps its answer.
        asker.repl.start().await.unwrap();
        let check = asker.repl.check_topic(&topic, None).await.unwrap();
        assert_eq!(check.peers_answered, 1);
        assert_eq!(check.new_logs, vec![member.log_key()]);
        assert_eq!(
            asker.store.topic_tags(&topic.id()).await.unwrap()[0].key,
            member.log_key()
        );
        asker.repl.shutdown().await;
        honest.repl.shutdown().await;
    }
}
