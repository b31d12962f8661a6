//! The DHT driver on real UDP: real [`Endpoint`]s on 127.0.0.1, each node's DHT datagrams
//! forwarded from its socket's events into its [`Dht`] inbox as the node does, and plain tokio
//! sockets standing in for strangers and attackers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kith_transport::dht::message::{MAX_DATAGRAM, error_code};
use kith_transport::dht::{
    Dht, DhtConfig, DhtMessage, MessageBody, NodeId, PeerRecord, RoutingConfig, topic_key,
};
use kith_transport::net::NetEvent;
use kith_transport::{Connection, Endpoint, EndpointOptions, ProtocolHandler, Router, SecretKey};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

struct Node {
    endpoint: Endpoint,
    dht: Dht,
    key: [u8; 32],
    forward: JoinHandle<()>,
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    fn id(&self) -> NodeId {
        self.dht.node_id()
    }

    async fn stop(self) {
        self.dht.shutdown().await;
        self.forward.abort();
        self.endpoint.close().await;
    }
}

/// No prefix limits (every node lives on 127.0.0.1). The request timeout is generous: thirty
/// nodes share one test thread on a loaded CI machine, and a timed-out request drops its
/// contact, which would make a lookup miss a live node.
fn config() -> DhtConfig {
    DhtConfig {
        routing: RoutingConfig::without_diversity_limits(),
        request_timeout: Duration::from_secs(2),
        ..DhtConfig::default()
    }
}

/// Runs a DHT on `endpoint`, fed by a loop that forwards the socket's DHT events (what the node
/// does), dropping datagrams when the DHT is behind.
fn run_dht(endpoint: &Endpoint, key: [u8; 32], config: DhtConfig) -> (Dht, JoinHandle<()>) {
    let mut events = endpoint.net().take_events().expect("events taken once");
    let (inbox, rx) = mpsc::channel(1024);
    let forward = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let NetEvent::Dht { from, bytes } = event {
                let _ = inbox.try_send((from, bytes));
            }
        }
    });
    let dht = Dht::spawn(
        endpoint.net().clone(),
        SecretKey::from_bytes(key),
        config,
        rx,
    )
    .unwrap();
    (dht, forward)
}

fn start_with(key: [u8; 32], config: DhtConfig) -> Node {
    let endpoint =
        Endpoint::bind(SecretKey::from_bytes(key), EndpointOptions::localhost()).unwrap();
    let (dht, forward) = run_dht(&endpoint, key, config);
    Node {
        endpoint,
        dht,
        key,
        forward,
    }
}

fn start() -> Node {
    start_with(rand::random(), config())
}

/// `n` nodes, each bootstrapped off the first.
async fn network(n: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n).map(|_| start()).collect();
    let seed = nodes[0].addr();
    for node in &nodes[1..] {
        let size = node.dht.bootstrap(vec![seed]).await.unwrap();
        assert!(size >= 1);
    }
    nodes
}

async fn stop_all(nodes: Vec<Node>) {
    for node in nodes {
        node.stop().await;
    }
}

fn message(txid: u64, sender: Option<SecretKey>, body: MessageBody) -> DhtMessage {
    DhtMessage {
        txid,
        sender: sender.map(|s| s.peer_id()),
        padding: 0,
        body,
    }
}

/// Sends `request` from `socket` to `to` and waits briefly for one answer.
async fn exchange(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(request, to).await.unwrap();
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await {
        Ok(Ok((len, from))) => {
            assert_eq!(from, to);
            buf.truncate(len);
            Some(buf)
        }
        _ => None,
    }
}

#[tokio::test]
async fn thirty_nodes_bootstrapped_off_one_seed_find_each_other() {
    let started = Instant::now();
    let nodes = network(30).await;
    let mut rng = rand::thread_rng();
    for _ in 0..15 {
        let pair: Vec<&Node> = nodes.choose_multiple(&mut rng, 2).collect();
        let found = pair[0].dht.find_node(pair[1].id()).await;
        assert_eq!(
            found.first().map(|c| (c.id, c.addr)),
            Some((pair[1].id(), pair[1].addr())),
            "lookup for a live node's id returns it first"
        );
    }
    let seed = nodes[0].dht.status().await.unwrap();
    assert!(
        seed.routing_table_size >= 20,
        "the seed heard from most: {seed:?}"
    );
    for node in &nodes {
        let status = node.dht.status().await.unwrap();
        assert!(status.routing_table_size >= 5, "{status:?}");
        assert!(status.non_empty_buckets >= 1);
        assert!(status.messages_in > 0 && status.messages_out > 0);
        assert_eq!(status.dropped_malformed, 0);
    }
    // Everyone learnt its own address from the seed's pong.
    let observed = nodes[1].dht.observed_addrs().await;
    assert!(
        observed.contains(&(nodes[0].addr(), nodes[1].addr())),
        "{observed:?}"
    );
    eprintln!("30-node network: {:?}", started.elapsed());
    stop_all(nodes).await;
}

#[tokio::test]
async fn announced_records_are_found_and_forged_ones_refused() {
    let nodes = network(8).await;
    let key = topic_key(b"a room's secret");
    let announcer = &nodes[1];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let record = PeerRecord::sign(
        &SecretKey::from_bytes(announcer.key),
        &key,
        vec![announcer.addr()],
        vec![],
        1,
        now + 600,
    )
    .unwrap();
    let stored = announcer.dht.announce(key, record.clone()).await.unwrap();
    assert!(stored >= 5, "stored at {stored} nodes");
    let found = nodes[6].dht.get_peers(key).await;
    assert_eq!(found, vec![record.clone()]);
    found[0].verify(&key, now).unwrap();
    // A record not signed by the key it names is refused by the announcer's own handle...
    let mut forged = record.clone();
    forged.signature[0] ^= 1;
    assert!(announcer.dht.announce(key, forged).await.is_err());

    // ...and by a node a stranger announces it to over raw UDP, even with a valid token.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = nodes[3].addr();
    let ask = message(7, None, MessageBody::GetPeers { key, token: None });
    let answer = exchange(&socket, target, &ask.encode().unwrap())
        .await
        .unwrap();
    let MessageBody::Peers {
        token: Some(token), ..
    } = DhtMessage::decode(&answer).unwrap().body
    else {
        panic!("expected peers with a token");
    };
    let stranger = SecretKey::generate();
    let mut bad = PeerRecord::sign(&stranger, &key, vec![], vec![], 9, now + 600).unwrap();
    bad.signature[5] ^= 0x40;
    let before = nodes[3].dht.status().await.unwrap().records_stored;
    let announce = message(
        8,
        Some(SecretKey::from_bytes(*stranger.to_bytes())),
        MessageBody::Announce {
            key,
            token,
            record: bad,
        },
    );
    let answer = exchange(&socket, target, &announce.encode().unwrap())
        .await
        .unwrap();
    assert_eq!(
        DhtMessage::decode(&answer).unwrap().body,
        MessageBody::Error {
            code: error_code::RECORD_REFUSED
        }
    );
    assert_eq!(nodes[3].dht.status().await.unwrap().records_stored, before);
    let found = nodes[5].dht.get_peers(key).await;
    assert_eq!(found, vec![record], "only the genuine record");
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_published_peer_is_found_by_its_id() {
    let nodes = network(8).await;
    let publisher = &nodes[2];
    let relay = SecretKey::generate().peer_id();
    let stored = publisher
        .dht
        .publish_self(
            vec![publisher.addr()],
            vec![relay],
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(stored >= 5, "stored at {stored} nodes");
    let peer = publisher.dht.peer_id();
    let found = nodes[6].dht.lookup_peer(peer).await.expect("found");
    assert_eq!(found.peer, peer);
    assert_eq!(found.addrs, vec![publisher.addr()]);
    assert_eq!(found.relays, vec![relay]);
    // A newer publication replaces the older one.
    publisher
        .dht
        .publish_self(vec![publisher.addr()], vec![], Duration::from_secs(600))
        .await
        .unwrap();
    let newer = nodes[4].dht.lookup_peer(peer).await.expect("found");
    assert!(newer.seq > found.seq);
    assert!(newer.relays.is_empty());
    assert!(
        nodes[4]
            .dht
            .lookup_peer(SecretKey::generate().peer_id())
            .await
            .is_none()
    );
    stop_all(nodes).await;
}

const ECHO: &[u8] = b"kith/echo/1";

struct Echo;

#[async_trait]
impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut recv, &mut send).await;
                let _ = send.finish();
            });
        }
    }
}

#[tokio::test]
async fn quic_and_the_dht_share_the_socket() {
    let nodes = network(6).await;
    let server = Router::builder(nodes[1].endpoint.clone())
        .accept(ECHO, Echo)
        .spawn()
        .unwrap();
    let quic = async {
        let conn = nodes[4]
            .endpoint
            .connect(nodes[1].dht.peer_id(), nodes[1].addr(), ECHO)
            .await
            .unwrap();
        for i in 0..20u32 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let payload = vec![i as u8; 50_000];
            send.write_all(&payload).await.unwrap();
            send.finish().unwrap();
            assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), payload);
        }
        conn
    };
    let dht = async {
        for node in &nodes {
            let found = nodes[4].dht.find_node(node.id()).await;
            if node.id() != nodes[4].id() {
                assert_eq!(found.first().map(|c| c.id), Some(node.id()));
            }
            let found = nodes[1].dht.find_node(node.id()).await;
            if node.id() != nodes[1].id() {
                assert_eq!(found.first().map(|c| c.id), Some(node.id()));
            }
        }
    };
    let (conn, ()) = tokio::join!(quic, dht);
    // Both ran on the very same sockets.
    assert_eq!(conn.remote_peer(), nodes[1].dht.peer_id());
    assert!(nodes[1].dht.status().await.unwrap().messages_in > 0);
    drop(conn);
    server.shutdown().await;
    stop_all(nodes).await;
}

#[tokio::test]
async fn garbage_is_dropped_and_counted_and_the_node_keeps_answering() {
    let nodes = network(4).await;
    let target = &nodes[1];
    let before = target.dht.status().await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::thread_rng();
    let ping = message(
        1,
        Some(SecretKey::generate()),
        MessageBody::Ping { token: None },
    )
    .encode()
    .unwrap();
    let mut garbage: Vec<Vec<u8>> = Vec::new();
    for _ in 0..40 {
        // Version byte right (so the socket hands it to the DHT), unknown kind, random rest.
        let mut bytes = vec![0u8; rng.gen_range(2..MAX_DATAGRAM)];
        rng.fill_bytes(&mut bytes);
        bytes[0] = 0x01;
        bytes[1] = 0xee;
        garbage.push(bytes);
    }
    for cut in 1..ping.len() {
        garbage.push(ping[..cut].to_vec()); // truncated
    }
    let mut trailing = ping.clone();
    trailing.push(0);
    garbage.push(trailing);
    let mut oversized = vec![0u8; MAX_DATAGRAM + 100];
    oversized[0] = 0x01;
    garbage.push(oversized);
    for bytes in &garbage {
        socket.send_to(bytes, target.addr()).await.unwrap();
    }
    // A well-formed response nobody asked for, twice (a replay).
    let unsolicited = message(
        rng.r#gen(),
        None,
        MessageBody::Pong {
            observed: None,
            token: None,
        },
    )
    .encode()
    .unwrap();
    for _ in 0..2 {
        socket.send_to(&unsolicited, target.addr()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        let status = target.dht.status().await.unwrap();
        if status.dropped_malformed - before.dropped_malformed >= garbage.len() as u64
            && status.dropped_unmatched - before.dropped_unmatched >= 2
        {
            break status;
        }
        assert!(Instant::now() < deadline, "not all counted: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.dropped_malformed - before.dropped_malformed,
        garbage.len() as u64
    );
    assert_eq!(status.dropped_unmatched - before.dropped_unmatched, 2);
    // Nothing was lost (refreshes running in the background may have added contacts).
    assert!(status.routing_table_size >= before.routing_table_size);
    // Still answering: a raw ping and a lookup by another node.
    let pong = exchange(&socket, target.addr(), &ping).await.expect("pong");
    assert!(matches!(
        DhtMessage::decode(&pong).unwrap().body,
        MessageBody::Pong { .. }
    ));
    let found = nodes[3].dht.find_node(target.id()).await;
    assert_eq!(found.first().map(|c| c.id), Some(target.id()));
    stop_all(nodes).await;
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kith-dht-net-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[tokio::test]
async fn a_restarted_node_knows_its_contacts_without_a_seed() {
    let mut nodes = network(6).await;
    let path = temp_path("routing.json");
    let key = rand::random();
    let snapshot_config = || DhtConfig {
        snapshot_path: Some(path.clone()),
        ..config()
    };
    let node = start_with(key, snapshot_config());
    let size = node.dht.bootstrap(vec![nodes[0].addr()]).await.unwrap();
    assert!(size >= 5);
    node.stop().await;
    assert!(path.exists(), "snapshot written on shutdown");

    let restarted = start_with(key, snapshot_config());
    let status = restarted.dht.status().await.unwrap();
    assert!(
        status.routing_table_size >= size,
        "restored before any traffic"
    );
    assert!(restarted.dht.bootstrap(vec![]).await.unwrap() >= 5);
    let far = nodes.pop().unwrap();
    let found = restarted.dht.find_node(far.id()).await;
    assert_eq!(found.first().map(|c| c.id), Some(far.id()));
    restarted.stop().await;

    // A corrupt snapshot starts the node empty rather than failing it.
    std::fs::write(&path, b"\x00garbage").unwrap();
    let empty = start_with(key, snapshot_config());
    assert_eq!(empty.dht.status().await.unwrap().routing_table_size, 0);
    assert!(empty.dht.bootstrap(vec![]).await.is_err());
    assert!(empty.dht.bootstrap(vec![nodes[0].addr()]).await.unwrap() >= 1);
    empty.stop().await;
    far.stop().await;
    stop_all(nodes).await;
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn an_unpadded_first_request_gets_no_larger_answer() {
    let nodes = network(5).await;
    let target = nodes[2].addr();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let requests = [
        message(
            1,
            Some(SecretKey::generate()),
            MessageBody::Ping { token: None },
        ),
        message(
            2,
            Some(SecretKey::generate()),
            MessageBody::FindNode {
                target: NodeId::random(&mut rand::thread_rng()),
                token: None,
            },
        ),
        message(
            3,
            None,
            MessageBody::GetPeers {
                key: topic_key(b"x"),
                token: None,
            },
        ),
    ];
    for request in &requests {
        let bytes = request.encode().unwrap();
        let answer = exchange(&socket, target, &bytes).await.expect("answered");
        assert!(
            answer.len() <= bytes.len(),
            "{:?}: {} > {}",
            request.body,
            answer.len(),
            bytes.len()
        );
    }
    // The smallest ping (no key, no token) is not answered at all.
    let bare = message(4, None, MessageBody::Ping { token: None })
        .encode()
        .unwrap();
    assert!(exchange(&socket, target, &bare).await.is_none());
    // Padded, the same find-node earns the full answer.
    let padded = requests[1].clone().padded_to(MAX_DATAGRAM).unwrap();
    let answer = exchange(&socket, target, &padded.encode().unwrap())
        .await
        .expect("answered");
    let MessageBody::Nodes { nodes: got, .. } = DhtMessage::decode(&answer).unwrap().body else {
        panic!("expected nodes");
    };
    assert!(!got.is_empty(), "contacts only a padded request earns");
    stop_all(nodes).await;
}

#[tokio::test]
async fn an_inbox_over_its_rate_drops_and_counts() {
    let seed = start();
    let node = start_with(
        rand::random(),
        DhtConfig {
            max_inbox_per_sec: 10,
            ..config()
        },
    );
    node.dht.bootstrap(vec![seed.addr()]).await.unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..100 {
        socket.send_to(&[0x01, 0xee], node.addr()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = node.dht.status().await.unwrap();
        if status.dropped_overload > 0 && status.dropped() >= 100 {
            assert!(status.dropped_malformed < 100, "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop().await;
    seed.stop().await;
}
