//! The transport API end to end, run the same way in-process, over gRPC on a Unix socket and
//! over gRPC on TCP: two real nodes on loopback; status, connect with ping, peers, streams to a
//! peer both ways (open on one side, listen on the other, through the API on both), and the
//! same typed errors everywhere.

use std::sync::Arc;
use std::time::Duration;

use kith_proto::transport::v1 as pb;
use kith_proto::transport::v1::transport_client::TransportClient as GrpcClient;
use kith_service::{Connection, Endpoint, Listen, ServerHandle, Token};
use kith_transport::api::{ApiError, PING_ALPN, Target};
use kith_transport::daemon::spawn;
use kith_transport::dht::topic_key;
use kith_transport::node::nat::Mapping;
use kith_transport::{
    EndpointOptions, Node, NodeConfig, PeerAddrs, PeerId, SecretKey, TransportClient,
    TransportService,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Local,
    Unix,
    Tcp,
}

const ALL_VIAS: [Via; 3] = [Via::Local, Via::Unix, Via::Tcp];

fn config() -> NodeConfig {
    NodeConfig {
        endpoint: EndpointOptions::localhost(),
        connect_timeout: Duration::from_secs(2),
        ..NodeConfig::default()
    }
}

struct Served {
    client: TransportClient,
    service: Arc<TransportService>,
    server: Option<ServerHandle>,
    _dir: tempfile::TempDir,
}

impl Served {
    fn peer(&self) -> PeerId {
        self.service.node().peer_id()
    }

    fn hints(&self) -> PeerAddrs {
        PeerAddrs {
            addrs: vec![self.service.node().endpoint().local_addr()],
            relay: None,
        }
    }

    async fn stop(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
        self.service.shutdown().await;
    }
}

async fn serve(via: Via) -> Served {
    serve_with(via, config()).await
}

async fn serve_with(via: Via, config: NodeConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::builder(SecretKey::generate(), config)
        .unwrap()
        .spawn()
        .unwrap();
    let service = Arc::new(TransportService::new(node).unwrap());
    let (client, server) = match via {
        Via::Local => (TransportClient::local(service.clone()), None),
        Via::Unix => {
            let path = dir.path().join("transport.sock");
            let server = spawn(service.clone(), &[Listen::Unix(path.clone())])
                .await
                .unwrap();
            let client = TransportClient::connect(Connection::new(Endpoint::Unix(path), None));
            (client, Some(server))
        }
        Via::Tcp => {
            let token = Token::generate();
            let listen = Listen::Tcp {
                addr: "127.0.0.1:0".parse().unwrap(),
                token: token.clone(),
            };
            let server = spawn(service.clone(), &[listen]).await.unwrap();
            let endpoint = server.endpoints()[0].clone();
            let client = TransportClient::connect(Connection::new(endpoint, Some(token)));
            (client, Some(server))
        }
    };
    Served {
        client,
        service,
        server,
        _dir: dir,
    }
}

async fn echo_server(mut listener: kith_transport::api::Listener) {
    while let Some(mut stream) = listener.accept().await {
        tokio::spawn(async move {
            // Shut down and drop at once: what was written must still arrive.
            let _ = tokio::io::copy(&mut stream.recv, &mut stream.send).await;
            let _ = stream.send.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_connect_and_peers_behave_the_same_everywhere() {
    for via in ALL_VIAS {
        let a = serve(via).await;
        let b = serve(Via::Local).await;
        let c = &a.client;

        let status = c.status().await.unwrap();
        assert_eq!(status.peer_id, a.peer(), "{via:?}");
        assert_eq!(status.local_addr, a.service.node().endpoint().local_addr());
        assert!(!status.relaying);
        assert!(status.protocols.iter().any(|p| p.as_bytes() == PING_ALPN));
        let dht = status.dht.expect("a DHT runs by default");
        assert_eq!(
            dht.node_id,
            c.dht_status().await.unwrap().node_id,
            "{via:?}"
        );
        let nat = c.nat_status().await.unwrap();
        assert_eq!(nat.mapping, Mapping::Unknown, "no observers yet");
        assert_eq!(status.nat, nat);

        // Connect by key and address: the ping crosses, the path is direct, and the peer
        // shows up with its protocol (on both sides).
        let connected = c
            .connect(Target::Peer {
                peer: b.peer(),
                hints: Some(b.hints()),
            })
            .await
            .unwrap();
        assert_eq!(connected.peer.peer_id, b.peer());
        assert_eq!(connected.peer.route, "direct", "{via:?}");
        assert_eq!(connected.peer.direct_addr, Some(b.hints().addrs[0]));
        assert!(connected.ping > Duration::ZERO && connected.ping < Duration::from_secs(2));
        let peers = c.peers().await.unwrap();
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].protocols, vec!["kith/ping/1".to_owned()]);
        assert!(peers[0].rtt_us.is_some());
        let theirs = b.client.peers().await.unwrap();
        assert_eq!(
            theirs.len(),
            1,
            "the accepting side lists the dialler: {theirs:?}"
        );
        assert_eq!(theirs[0].peer_id, a.peer());
        // A second connect reuses the connection.
        c.connect(Target::Peer {
            peer: b.peer(),
            hints: None,
        })
        .await
        .unwrap();
        assert_eq!(b.client.peers().await.unwrap().len(), 1);

        // Typed errors, the same everywhere.
        let nobody = SecretKey::generate().peer_id();
        let err = c
            .connect(Target::Peer {
                peer: nobody,
                hints: None,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Unreachable(_)), "{via:?}: {err:?}");
        // The right address but another key: refused in the handshake.
        let err = c
            .connect(Target::Peer {
                peer: nobody,
                hints: Some(b.hints()),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::Unreachable(_) | ApiError::WrongPeer(_)),
            "{via:?}: {err:?}"
        );
        let err = c
            .connect(Target::Name("not a name".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Name(_)), "{via:?}: {err:?}");

        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_in_both_directions_through_the_api() {
    for via in ALL_VIAS {
        // `a` opens, `b` listens; both through the API (`b` over the same kind of client).
        let a = serve(via).await;
        let b = serve(via).await;
        let listener = b.client.listen("kith/test-echo/1".into()).await.unwrap();
        assert_eq!(listener.alpn(), "kith/test-echo/1");
        let echo = tokio::spawn(echo_server(listener));

        let stream = a
            .client
            .open_stream(b.peer(), "kith/test-echo/1".into(), Some(b.hints()))
            .await
            .unwrap();
        assert_eq!(stream.peer, b.peer());
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = blake3::hash(&data);
        let (mut send, mut recv) = (stream.send, stream.recv);
        let writer = tokio::spawn(async move {
            send.write_all(&data).await.unwrap();
            send.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(&mut back))
            .await
            .expect("echo within 20 s")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(back.len(), 1_000_000, "{via:?}");
        assert_eq!(blake3::hash(&back), expected, "{via:?}");

        // Several streams at once on the same connection.
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let mut s = a
                .client
                .open_stream(b.peer(), "kith/test-echo/1".into(), None)
                .await
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let msg = vec![i; 10_000];
                s.send.write_all(&msg).await.unwrap();
                s.send.shutdown().await.unwrap();
                let mut got = Vec::new();
                s.recv.read_to_end(&mut got).await.unwrap();
                assert_eq!(got.len(), msg.len(), "{via:?} stream {i}");
                assert_eq!(got, msg);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }

        // One listener per protocol; the node's own protocol and bad names are refused.
        let err = b
            .client
            .listen("kith/test-echo/1".into())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::ProtocolTaken(_)),
            "{via:?}: {err:?}"
        );
        let err = b.client.listen("kith/ping/1".into()).await.unwrap_err();
        assert!(
            matches!(err, ApiError::ProtocolTaken(_)),
            "{via:?}: {err:?}"
        );
        for bad in ["", "has space", &"x".repeat(256)] {
            let err = b.client.listen(bad.into()).await.unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidArgument(_)),
                "{via:?} {bad:?}: {err:?}"
            );
        }
        // A protocol nobody serves is refused in the handshake.
        let err = a
            .client
            .open_stream(b.peer(), "kith/nobody/1".into(), Some(b.hints()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ApiError::ProtocolRefused(_)),
            "{via:?}: {err:?}"
        );

        // Dropping the listener stops serving the protocol: new connections are refused.
        echo.abort();
        let _ = echo.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let protocols = b.client.status().await.unwrap().protocols;
            if !protocols.iter().any(|p| p == "kith/test-echo/1") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{via:?}: still served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // ... and it can be served again.
        let again = b.client.listen("kith/test-echo/1".into()).await.unwrap();
        drop(again);

        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_announced_and_looked_up_everywhere() {
    for via in ALL_VIAS {
        let a = serve(via).await;
        let b = serve_with(
            via,
            NodeConfig {
                bootstrap: vec![a.hints().addrs[0]],
                ..config()
            },
        )
        .await;
        // b joins the DHT off a.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.client.dht_status().await.unwrap().routing_table_size == 0
            || b.client.dht_status().await.unwrap().routing_table_size == 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{via:?}: no DHT contact"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let topic = topic_key(b"room secret");
        assert!(b.client.announce(topic).await.unwrap() >= 1, "{via:?}");
        let found = a.client.lookup(topic).await.unwrap();
        assert_eq!(found.len(), 1, "{via:?}: {found:?}");
        assert_eq!(found[0].peer_id, b.peer());
        assert!(found[0].addrs.contains(&b.hints().addrs[0]), "{found:?}");
        // Another topic finds nobody; the topic key is all the DHT saw.
        assert!(
            a.client
                .lookup(topic_key(b"other room"))
                .await
                .unwrap()
                .is_empty()
        );
        a.stop().await;
        b.stop().await;
    }
    // A node without a DHT says so.
    let lone = serve_with(
        Via::Unix,
        NodeConfig {
            dht: None,
            ..config()
        },
    )
    .await;
    let err = lone.client.announce(topic_key(b"x")).await.unwrap_err();
    assert!(matches!(err, ApiError::FailedPrecondition(_)), "{err:?}");
    let err = lone.client.dht_status().await.unwrap_err();
    assert!(matches!(err, ApiError::FailedPrecondition(_)), "{err:?}");
    lone.stop().await;
}

/// Bad stream calls on the wire: a wrong first frame, an unknown incoming stream, a bad peer
/// id. Each is a typed error and the service goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stream_calls_are_refused() {
    let a = serve(Via::Unix).await;
    let path = a._dir.path().join("transport.sock");
    let connection = Connection::new(Endpoint::Unix(path), None);
    let mut raw = GrpcClient::new(connection.channel());

    let frames = |list: Vec<pb::StreamFrame>| tokio_stream::iter(list);
    let data = pb::StreamFrame {
        frame: Some(pb::stream_frame::Frame::Data(vec![1, 2, 3].into())),
    };
    let status = raw
        .open_stream(frames(vec![data.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = raw.open_stream(frames(vec![])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let open = pb::StreamFrame {
        frame: Some(pb::stream_frame::Frame::Open(pb::OpenRequest {
            peer_id: vec![0u8; 31].into(),
            alpn: "kith/x/1".into(),
            hints: None,
        })),
    };
    let status = raw.open_stream(frames(vec![open])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let accept = pb::StreamFrame {
        frame: Some(pb::stream_frame::Frame::Accept(pb::AcceptRequest {
            stream_id: 12345,
        })),
    };
    let status = raw.accept_stream(frames(vec![accept])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = raw
        .connect(pb::ConnectRequest {
            target: None,
            hints: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = raw
        .connect(pb::ConnectRequest {
            target: Some(pb::connect_request::Target::PeerId(vec![7u8; 32].into())),
            hints: Some(pb::PeerHints {
                addrs: vec!["not an address".into()],
                relay: None,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let status = raw
        .lookup(pb::LookupRequest {
            topic: vec![1u8; 31].into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Still serving.
    assert_eq!(a.client.status().await.unwrap().peer_id, a.peer());
    a.stop().await;
}
