//! Nodes on loopback: connecting through a relay at once, switching to the direct path when a
//! probe round trip proves it, connecting directly without a relay, and what relays refuse.

use std::time::{Duration, Instant};

use kith_transport::net::RelayConfig;
use kith_transport::net::paths::Route;
use kith_transport::node::punch::PunchConfig;
use kith_transport::{
    Connection, EndpointOptions, Node, NodeConfig, PeerAddrs, ProtocolHandler, RelayAddr,
    SecretKey, TransportError,
};

const ECHO: &[u8] = b"kith/test-echo/1";

#[derive(Debug)]
struct Echo;

#[async_trait::async_trait]
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

fn config() -> NodeConfig {
    NodeConfig {
        endpoint: EndpointOptions::localhost(),
        ..NodeConfig::default()
    }
}

fn relay_node() -> Node {
    let mut config = config();
    config.endpoint.relay = RelayConfig {
        enabled: true,
        ..RelayConfig::default()
    };
    Node::builder(SecretKey::generate(), config)
        .unwrap()
        .spawn()
        .unwrap()
}

fn relay_addr(relay: &Node) -> RelayAddr {
    RelayAddr {
        peer: relay.peer_id(),
        addr: relay.endpoint().local_addr(),
    }
}

fn node_with(relay: Option<RelayAddr>, punch: PunchConfig) -> Node {
    let mut config = config();
    config.relays = relay.into_iter().collect();
    config.punch = punch;
    Node::builder(SecretKey::generate(), config)
        .unwrap()
        .accept(ECHO, Echo)
        .spawn()
        .unwrap()
}

async fn echo(conn: &Connection, payload: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(payload).await.unwrap();
    send.finish().unwrap();
    recv.read_to_end(usize::MAX).await.unwrap()
}

async fn wait_for_route(
    node: &Node,
    peer: &kith_transport::PeerId,
    want: fn(&Route) -> bool,
) -> Duration {
    let started = Instant::now();
    while !want(&node.route(peer)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "route stayed {:?}",
            node.route(peer)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_relayed_connection_carries_data_when_punching_is_off() {
    let relay = relay_node();
    let no_punch = PunchConfig {
        rounds: 0,
        ..PunchConfig::default()
    };
    let b = node_with(Some(relay_addr(&relay)), no_punch.clone());
    let a = node_with(None, no_punch);
    assert!(b.wait_registered(Duration::from_secs(5)).await);
    let conn = a
        .connect(
            b.peer_id(),
            PeerAddrs {
                addrs: vec![],
                relay: Some(relay_addr(&relay)),
            },
            ECHO,
        )
        .await
        .unwrap();
    assert_eq!(conn.remote_peer(), b.peer_id());
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(&conn, &payload).await, payload);
    assert!(matches!(a.route(&b.peer_id()), Route::Relay(_)));
    assert!(matches!(b.route(&a.peer_id()), Route::Relay(_)));
    let stats = relay.endpoint().net().relay_stats();
    assert_eq!(stats.registered, 2);
    assert!(
        stats.forwarded_bytes > 2_000_000,
        "the relay carried the megabyte both ways: {stats:?}"
    );
    for node in [a, b, relay] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_relayed_connection_moves_to_the_direct_path_once_proven() {
    let relay = relay_node();
    let b = node_with(Some(relay_addr(&relay)), PunchConfig::default());
    let a = node_with(None, PunchConfig::default());
    assert!(b.wait_registered(Duration::from_secs(5)).await);
    let started = Instant::now();
    let conn = a
        .connect(
            b.peer_id(),
            PeerAddrs {
                addrs: vec![],
                relay: Some(relay_addr(&relay)),
            },
            ECHO,
        )
        .await
        .unwrap();
    assert_eq!(
        echo(&conn, b"first, probably relayed").await,
        b"first, probably relayed"
    );
    let is_direct = |r: &Route| matches!(r, Route::Direct(_));
    wait_for_route(&a, &b.peer_id(), is_direct).await;
    wait_for_route(&b, &a.peer_id(), is_direct).await;
    let time_to_direct = started.elapsed();
    assert!(
        time_to_direct < Duration::from_secs(2),
        "{time_to_direct:?}"
    );
    // The same connection goes on, now direct: the relay carries nothing more.
    let relayed_before = relay.endpoint().net().relay_stats().forwarded_packets;
    let payload = vec![7u8; 2_000_000];
    assert_eq!(echo(&conn, &payload).await, payload);
    let relayed_after = relay.endpoint().net().relay_stats().forwarded_packets;
    assert!(
        relayed_after - relayed_before < 10,
        "relay forwarded {} packets after the switch",
        relayed_after - relayed_before
    );
    assert_eq!(a.paths()[0].route, "direct");
    for node in [a, b, relay] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn without_a_relay_a_node_connects_to_an_address_that_answers() {
    let b = node_with(None, PunchConfig::default());
    let a = node_with(None, PunchConfig::default());
    let conn = a
        .connect(
            b.peer_id(),
            PeerAddrs {
                addrs: vec![b.endpoint().local_addr()],
                relay: None,
            },
            ECHO,
        )
        .await
        .unwrap();
    assert_eq!(echo(&conn, b"hello").await, b"hello");
    assert!(matches!(a.route(&b.peer_id()), Route::Direct(_)));

    // Nothing to try: a clear error, at once.
    let c = SecretKey::generate().peer_id();
    let err = a.connect(c, PeerAddrs::default(), ECHO).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_node_that_does_not_relay_refuses_registrations() {
    let not_a_relay = node_with(None, PunchConfig::default());
    let mut config = config();
    config.connect_timeout = Duration::from_millis(800);
    let a = Node::builder(SecretKey::generate(), config)
        .unwrap()
        .spawn()
        .unwrap();
    let peer = SecretKey::generate().peer_id();
    let err = a
        .connect(
            peer,
            PeerAddrs {
                addrs: vec![],
                relay: Some(relay_addr(&not_a_relay)),
            },
            ECHO,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert_eq!(not_a_relay.endpoint().net().relay_stats().registered, 0);
    a.shutdown().await;
    not_a_relay.shutdown().await;
}

#[tokio::test]
async fn a_peer_found_by_id_in_the_dht_is_reached_through_its_relay_then_directly() {
    let relay = relay_node();
    let seed = relay.endpoint().local_addr();
    let with_dht = |relay: Option<RelayAddr>| {
        let mut config = config();
        config.relays = relay.into_iter().collect();
        config.bootstrap = vec![seed];
        Node::builder(SecretKey::generate(), config)
            .unwrap()
            .accept(ECHO, Echo)
            .spawn()
            .unwrap()
    };
    let b = with_dht(Some(relay_addr(&relay)));
    let a = with_dht(None);
    assert!(b.wait_registered(Duration::from_secs(5)).await);
    // B's record (its addresses and its relay) reaches the DHT.
    let started = Instant::now();
    let found = loop {
        match a.find(b.peer_id()).await {
            Ok(found) if found.relay.is_some() => break found,
            _ => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "b never published"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(found.relay, Some(relay_addr(&relay)));
    let conn = a.connect_by_id(b.peer_id(), ECHO).await.unwrap();
    assert_eq!(echo(&conn, b"found").await, b"found");
    wait_for_route(&a, &b.peer_id(), |r| matches!(r, Route::Direct(_))).await;
    let unknown = SecretKey::generate().peer_id();
    let err = a.connect_by_id(unknown, ECHO).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    let status = a.dht().unwrap().status().await.unwrap();
    assert!(status.routing_table_size >= 2, "{status:?}");
    for node in [a, b, relay] {
        node.shutdown().await;
    }
}

/// Dual-stack nodes (one socket on `[::]`) reach each other over IPv6 and over IPv4, relayed and
/// then direct.
#[tokio::test]
async fn dual_stack_nodes_connect_over_either_family() {
    for loopback in ["::1", "127.0.0.1"] {
        let dual = |relay: bool, relays: Vec<RelayAddr>| {
            let mut config = NodeConfig::default();
            config.endpoint.relay.enabled = relay;
            config.relays = relays;
            config.dht = None;
            Node::builder(SecretKey::generate(), config)
                .unwrap()
                .accept(ECHO, Echo)
                .spawn()
                .unwrap()
        };
        let relay = dual(true, vec![]);
        assert!(relay.endpoint().local_addr().is_ipv6(), "bound [::]");
        let relay_addr = RelayAddr {
            peer: relay.peer_id(),
            addr: std::net::SocketAddr::new(
                loopback.parse().unwrap(),
                relay.endpoint().local_addr().port(),
            ),
        };
        let b = dual(false, vec![relay_addr]);
        let a = dual(false, vec![]);
        assert!(
            b.wait_registered(Duration::from_secs(5)).await,
            "{loopback}"
        );
        let conn = a
            .connect(
                b.peer_id(),
                PeerAddrs {
                    addrs: vec![],
                    relay: Some(relay_addr),
                },
                ECHO,
            )
            .await
            .unwrap();
        assert_eq!(echo(&conn, loopback.as_bytes()).await, loopback.as_bytes());
        wait_for_route(&a, &b.peer_id(), |r| matches!(r, Route::Direct(_))).await;
        let Route::Direct(direct) = a.route(&b.peer_id()) else {
            unreachable!()
        };
        assert_eq!(direct.ip(), loopback.parse::<std::net::IpAddr>().unwrap());
        assert_eq!(echo(&conn, b"direct").await, b"direct");
        for node in [a, b, relay] {
            node.shutdown().await;
        }
    }
}

/// Garbage, forged and replayed frames on a node's socket are dropped and counted, change
/// nothing, and the node keeps relaying and connecting.
#[tokio::test]
async fn bad_frames_on_the_shared_socket_change_nothing() {
    use kith_transport::net::frame::{self, Frame, RelayRegistration};

    let relay = relay_node();
    let b = node_with(Some(relay_addr(&relay)), PunchConfig::default());
    assert!(b.wait_registered(Duration::from_secs(5)).await);
    let target = relay.endpoint().local_addr();
    let raw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stranger = SecretKey::generate();
    let quic_like = vec![0x40u8; 100];
    let mut bad_probe = Frame::Probe {
        nonce: 1,
        sender: stranger.peer_id(),
    }
    .encode();
    bad_probe[63] = 9;
    let mut forged = RelayRegistration::sign(&stranger, relay.peer_id(), 1);
    forged.signature[3] ^= 1;
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let good = RelayRegistration::sign(&stranger, relay.peer_id(), unix_ms);
    let datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x3f; 50],
        vec![frame::KIND_PROBE; 10],
        bad_probe,
        // An answer to a probe nobody sent.
        Frame::ProbeAck {
            nonce: 7,
            sender: stranger.peer_id(),
            observed: raw.local_addr().unwrap(),
        }
        .encode(),
        // Forwarding from an address that never registered.
        frame::relay_frame(frame::KIND_RELAY_FORWARD, &b.peer_id(), &quic_like),
        // A relay frame carrying something that is not QUIC.
        frame::relay_frame(frame::KIND_RELAY_FORWARD, &b.peer_id(), &[1u8; 100]),
        // "Delivered" by someone who is not a relay we registered with.
        frame::relay_frame(frame::KIND_RELAY_DELIVER, &b.peer_id(), &quic_like),
        Frame::RelayRegister(forged).encode(),
        Frame::RelayRegister(good.clone()).encode(),
        // The same registration again: a replay.
        Frame::RelayRegister(good).encode(),
    ];
    for datagram in &datagrams {
        raw.send_to(datagram, target).await.unwrap();
        raw.send_to(datagram, b.endpoint().local_addr())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let relay_stats = relay.endpoint().net().relay_stats();
    // b, and the stranger's one good registration; the forged one and the replay refused.
    assert_eq!(relay_stats.registered, 2, "{relay_stats:?}");
    assert!(relay_stats.refused >= 3, "{relay_stats:?}");
    let b_stats = b.endpoint().net().stats();
    assert!(b_stats.dropped_frames >= 6, "{b_stats:?}");
    assert_eq!(b_stats.relayed_in, 0, "nothing injected: {b_stats:?}");
    // Everything still works.
    let a = node_with(None, PunchConfig::default());
    let conn = a
        .connect(
            b.peer_id(),
            PeerAddrs {
                addrs: vec![],
                relay: Some(relay_addr(&relay)),
            },
            ECHO,
        )
        .await
        .unwrap();
    assert_eq!(echo(&conn, b"still fine").await, b"still fine");
    for node in [a, b, relay] {
        node.shutdown().await;
    }
}
