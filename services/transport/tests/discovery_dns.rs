//! DNS discovery against a real authoritative server: hickory-server with an in-memory zone on
//! 127.0.0.1 (UDP and TCP on one random port), queried through the same resolver users get.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use kith_service::{Endpoint, Listen};
use kith_transport::api::{ApiError, Target};
use kith_transport::discovery::{
    DiscoveryError, DnsConfig, DnsResolver, IdentityId, MAX_ADDRS_PER_PEER, MAX_PEERS,
    resolve_bootstrap, resolve_name,
};
use kith_transport::{PeerId, SecretKey, TransportClient, TransportService};
use tokio::net::{TcpListener, UdpSocket};

const ZONE: &str = "example.com.";

/// Counts every request that reaches the server, then answers from the zone.
struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

struct TestDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    _server: Server<Counting>,
}

impl TestDns {
    async fn start(records: Vec<Record>) -> Self {
        let origin = Name::from_ascii(ZONE).unwrap();
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            name("ns.example.com."),
            name("admin.example.com."),
            1,
            3600,
            600,
            86400,
            60,
        );
        assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)), 1));
        for record in records {
            assert!(zone.upsert_mut(record, 1));
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(zone)]);
        let queries = Arc::new(AtomicUsize::new(0));
        let mut server = Server::new(Counting {
            catalog,
            queries: queries.clone(),
        });

        // UDP and TCP on the same random port (TCP carries answers too big for UDP).
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        Self {
            addr,
            queries,
            _server: server,
        }
    }

    fn resolver(&self) -> DnsResolver {
        DnsResolver::new(&DnsConfig::with_nameservers([self.addr])).unwrap()
    }
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn txt(owner: &str, strings: &[&str]) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::TXT(TXT::new(strings.iter().map(|s| s.to_string()).collect())),
    )
}

fn srv(owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::SRV(SRV::new(priority, weight, port, name(target))),
    )
}

fn a(owner: &str, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(A(ip)))
}

fn aaaa(owner: &str, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(owner), 300, RData::AAAA(AAAA(ip)))
}

fn peer() -> PeerId {
    SecretKey::generate().peer_id()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn srv_and_txt_bootstrap_records_give_peers_in_priority_order() {
    let (p1, p2, p3) = (peer(), peer(), peer());
    let dns = TestDns::start(vec![
        srv("_kith._udp.example.com.", 10, 0, 4433, "boot1.example.com."),
        srv("_kith._udp.example.com.", 5, 0, 5000, "boot2.example.com."),
        txt("boot1.example.com.", &[&format!("kith-peer={p1}")]),
        txt("boot1.example.com.", &["v=spf1 -all"]),
        a("boot1.example.com.", Ipv4Addr::new(192, 0, 2, 1)),
        aaaa("boot1.example.com.", "2001:db8::1".parse().unwrap()),
        txt("boot2.example.com.", &[&format!("kith-peer={p2}")]),
        a("boot2.example.com.", Ipv4Addr::new(192, 0, 2, 2)),
        // The static form under the same domain is merged in.
        txt(
            "_kith-bootstrap.example.com.",
            &[&format!("kith-bootstrap={p3}@198.51.100.7:7000")],
        ),
    ])
    .await;
    let started = Instant::now();
    let peers = resolve_bootstrap(&dns.resolver(), "Example.COM")
        .await
        .unwrap();
    eprintln!("srv bootstrap took {:?}", started.elapsed());

    assert_eq!(peers.len(), 3);
    assert_eq!(peers[0].peer, p2);
    assert_eq!(peers[0].addrs, vec![addr("192.0.2.2:5000")]);
    assert_eq!(peers[1].peer, p1);
    let mut addrs = peers[1].addrs.clone();
    addrs.sort();
    assert_eq!(
        addrs,
        vec![addr("192.0.2.1:4433"), addr("[2001:db8::1]:4433")]
    );
    assert_eq!(peers[2].peer, p3);
    assert_eq!(peers[2].addrs, vec![addr("198.51.100.7:7000")]);
}

#[tokio::test]
async fn txt_only_bootstrap_reads_v4_and_v6_entries() {
    let (p1, p2) = (peer(), peer());
    let dns = TestDns::start(vec![
        txt(
            "_kith-bootstrap.static.example.com.",
            &[&format!("kith-bootstrap={p1}@192.0.2.10:4433")],
        ),
        txt(
            "_kith-bootstrap.static.example.com.",
            &[&format!("kith-bootstrap={p2}@[2001:db8::10]:4433")],
        ),
        // The same peer again with a second address: merged into one entry.
        txt(
            "_kith-bootstrap.static.example.com.",
            &[&format!("kith-bootstrap={p1}@192.0.2.11:4433")],
        ),
        txt("_kith-bootstrap.static.example.com.", &["unrelated=1"]),
    ])
    .await;
    let mut peers = resolve_bootstrap(&dns.resolver(), "static.example.com.")
        .await
        .unwrap();
    peers.sort_by_key(|p| p.peer);
    let mut expected = vec![(p1, 2), (p2, 1)];
    expected.sort();
    assert_eq!(
        peers
            .iter()
            .map(|p| (p.peer, p.addrs.len()))
            .collect::<Vec<_>>(),
        expected
    );
    let p2_entry = peers.iter().find(|p| p.peer == p2).unwrap();
    assert_eq!(p2_entry.addrs, vec![addr("[2001:db8::10]:4433")]);
}

#[tokio::test]
async fn malformed_bootstrap_entries_are_skipped_and_all_malformed_is_an_error() {
    let good = peer();
    let long_a = "x".repeat(200);
    let long_b = "y".repeat(100);
    let dns = TestDns::start(vec![
        txt(
            "_kith-bootstrap.mixed.example.com.",
            &[&format!("kith-bootstrap={good}@192.0.2.20:4433")],
        ),
        txt(
            "_kith-bootstrap.mixed.example.com.",
            &["kith-bootstrap=nothex@192.0.2.1:1"],
        ),
        txt(
            "_kith-bootstrap.mixed.example.com.",
            &[&format!("kith-bootstrap={}@192.0.2.1:0", peer())],
        ),
        txt(
            "_kith-bootstrap.mixed.example.com.",
            &[&format!("kith-bootstrap={}@not-an-ip:1", peer())],
        ),
        // Over 255 bytes once its strings are joined: refused whole.
        txt("_kith-bootstrap.mixed.example.com.", &[&long_a, &long_b]),
        // SRV targets that are unusable: no kith-peer TXT, no address, target ".".
        srv(
            "_kith._udp.mixed.example.com.",
            1,
            0,
            4433,
            "nokey.example.com.",
        ),
        a("nokey.example.com.", Ipv4Addr::new(192, 0, 2, 30)),
        srv(
            "_kith._udp.mixed.example.com.",
            1,
            0,
            4433,
            "noaddr.example.com.",
        ),
        txt("noaddr.example.com.", &[&format!("kith-peer={}", peer())]),
        srv("_kith._udp.mixed.example.com.", 1, 0, 4433, "."),
        // A domain with only bad entries.
        txt(
            "_kith-bootstrap.bad.example.com.",
            &["kith-bootstrap=garbage"],
        ),
        txt(
            "_kith-bootstrap.bad.example.com.",
            &[&format!("kith-bootstrap={}@224.0.0.1:5", peer())],
        ),
    ])
    .await;
    let resolver = dns.resolver();
    let peers = resolve_bootstrap(&resolver, "mixed.example.com")
        .await
        .unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer, good);
    assert_eq!(peers[0].addrs, vec![addr("192.0.2.20:4433")]);

    let error = resolve_bootstrap(&resolver, "bad.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::Malformed { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn oversized_answers_are_bounded() {
    // 100 peers (about 10 KB of TXT: the answer comes over TCP after a truncated UDP reply),
    // and one SRV host with 20 addresses.
    let mut records = Vec::new();
    for i in 0..100u8 {
        records.push(txt(
            "_kith-bootstrap.many.example.com.",
            &[&format!("kith-bootstrap={}@192.0.2.{i}:4433", peer())],
        ));
    }
    let wide = peer();
    records.push(srv(
        "_kith._udp.wide.example.com.",
        1,
        0,
        4433,
        "wide.example.com.",
    ));
    records.push(txt("wide.example.com.", &[&format!("kith-peer={wide}")]));
    for i in 1..=20u8 {
        records.push(a("wide.example.com.", Ipv4Addr::new(198, 51, 100, i)));
    }
    let dns = TestDns::start(records).await;
    let resolver = dns.resolver();

    let peers = resolve_bootstrap(&resolver, "many.example.com")
        .await
        .unwrap();
    assert_eq!(peers.len(), MAX_PEERS);
    let peers = resolve_bootstrap(&resolver, "wide.example.com")
        .await
        .unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer, wide);
    assert_eq!(peers[0].addrs.len(), MAX_ADDRS_PER_PEER);
}

#[tokio::test]
async fn names_resolve_to_one_identity_and_its_nodes() {
    let identity = IdentityId::from_bytes(peer().as_bytes()).unwrap();
    let (n1, n2) = (peer(), peer());
    let dns = TestDns::start(vec![
        txt("_kith.alice.example.com.", &[&format!("kith={identity}")]),
        // The same identity again, in upper case: not a conflict.
        txt(
            "_kith.alice.example.com.",
            &[&format!("kith={}", identity.to_string().to_uppercase())],
        ),
        txt("_kith.alice.example.com.", &[&format!("node={n1}")]),
        txt("_kith.alice.example.com.", &[&format!("node={n2}")]),
        txt("_kith.alice.example.com.", &["node=zzzz"]),
        txt(
            "_kith.alice.example.com.",
            &["google-site-verification=abc"],
        ),
    ])
    .await;
    let record = resolve_name(&dns.resolver(), "Alice.Example.com")
        .await
        .unwrap();
    assert_eq!(record.name, "alice.example.com");
    assert_eq!(record.identity, identity);
    let mut nodes = record.nodes.clone();
    nodes.sort();
    let mut expected = vec![n1, n2];
    expected.sort();
    assert_eq!(nodes, expected);
}

#[tokio::test]
async fn missing_records_are_not_found() {
    let dns = TestDns::start(vec![
        // The name exists but holds no kith= entry.
        txt("_kith.carol.example.com.", &["hello"]),
        a("dave.example.com.", Ipv4Addr::new(192, 0, 2, 40)),
    ])
    .await;
    let resolver = dns.resolver();
    for name in ["bob.example.com", "carol.example.com", "dave.example.com"] {
        let error = resolve_name(&resolver, name).await.unwrap_err();
        assert!(
            matches!(error, DiscoveryError::NotFound { .. }),
            "{name}: {error:?}"
        );
    }
    let error = resolve_bootstrap(&resolver, "nothing.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::NotFound { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn conflicting_or_malformed_identities_are_errors() {
    let one = IdentityId::from_bytes(peer().as_bytes()).unwrap();
    let two = IdentityId::from_bytes(peer().as_bytes()).unwrap();
    let dns = TestDns::start(vec![
        txt("_kith.eve.example.com.", &[&format!("kith={one}")]),
        txt("_kith.eve.example.com.", &[&format!("kith={two}")]),
        txt("_kith.frank.example.com.", &["kith=kith1notanid"]),
        txt("_kith.frank.example.com.", &[&format!("kith={}", peer())]),
    ])
    .await;
    let resolver = dns.resolver();
    let error = resolve_name(&resolver, "eve.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::Ambiguous { .. }),
        "{error:?}"
    );
    let error = resolve_name(&resolver, "frank.example.com")
        .await
        .unwrap_err();
    assert!(
        matches!(error, DiscoveryError::Malformed { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn invalid_names_are_refused_before_any_query() {
    let dns = TestDns::start(vec![txt(
        "_kith.alice.example.com.",
        &[&format!(
            "kith={}",
            IdentityId::from_bytes(peer().as_bytes()).unwrap()
        )],
    )])
    .await;
    let resolver = dns.resolver();
    // 251 characters: a valid host name, but too long once `_kith.` is put in front.
    let too_long = format!("{}.com", vec!["a".repeat(61); 4].join("."));
    let far_too_long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
    for bad in [
        "",
        "alice",
        "alice..example.com",
        "-alice.example.com",
        "al ice.example.com",
        "alice_x.example.com",
        "alice.example.com\0",
        "192.168.1.1",
        too_long.as_str(),
        far_too_long.as_str(),
    ] {
        let error = resolve_name(&resolver, bad).await.unwrap_err();
        assert!(
            matches!(error, DiscoveryError::InvalidName { .. }),
            "{bad:?}: {error:?}"
        );
        let error = resolve_bootstrap(&resolver, bad).await.unwrap_err();
        assert!(
            matches!(error, DiscoveryError::InvalidName { .. }),
            "{bad:?}: {error:?}"
        );
    }
    assert_eq!(dns.queries.load(Ordering::SeqCst), 0, "a query was sent");

    // The counter does count: a valid name reaches the server.
    resolve_name(&resolver, "alice.example.com").await.unwrap();
    assert!(dns.queries.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn a_silent_server_times_out_within_the_deadline() {
    // A socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = DnsConfig {
        timeout: Duration::from_millis(200),
        attempts: 1,
        deadline: Duration::from_secs(1),
        ..DnsConfig::with_nameservers([silent.local_addr().unwrap()])
    };
    let resolver = DnsResolver::new(&config).unwrap();
    let started = Instant::now();
    let error = resolve_name(&resolver, "alice.example.com")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(error, DiscoveryError::Timeout { .. }), "{error:?}");
}

/// A node that knows nothing but a DNS server: it bootstraps into the DHT from the domain's
/// records, resolves `bob.example.com` to Bob's node key, finds Bob's record (and relay) in the
/// DHT, and connects.
#[tokio::test]
async fn a_node_bootstraps_from_dns_and_connects_to_a_name() {
    use kith_transport::net::RelayConfig;
    use kith_transport::{
        Connection, EndpointOptions, Node, NodeConfig, ProtocolHandler, RelayAddr, SecretKey,
    };

    #[derive(Debug)]
    struct Echo;

    #[async_trait::async_trait]
    impl ProtocolHandler for Echo {
        async fn accept(&self, conn: Connection) {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let _ = tokio::io::copy(&mut recv, &mut send).await;
                let _ = send.finish();
            }
        }
    }

    let config = |relay: bool| NodeConfig {
        endpoint: EndpointOptions {
            relay: RelayConfig {
                enabled: relay,
                ..RelayConfig::default()
            },
            ..EndpointOptions::localhost()
        },
        ..NodeConfig::default()
    };
    // The bootstrap node relays too.
    let seed = Node::builder(SecretKey::generate(), config(true))
        .unwrap()
        .spawn()
        .unwrap();
    let seed_addr = seed.endpoint().local_addr();
    let mut bob_config = config(false);
    bob_config.bootstrap = vec![seed_addr];
    bob_config.relays = vec![RelayAddr {
        peer: seed.peer_id(),
        addr: seed_addr,
    }];
    let bob = Node::builder(SecretKey::generate(), bob_config)
        .unwrap()
        .accept(b"kith/dns-echo/1", Echo)
        .spawn()
        .unwrap();
    let identity = IdentityId::from_bytes(SecretKey::generate().peer_id().as_bytes()).unwrap();
    let dns = TestDns::start(vec![
        txt(
            "_kith-bootstrap.example.com.",
            &[&format!("kith-bootstrap={}@{seed_addr}", seed.peer_id())],
        ),
        txt("_kith.bob.example.com.", &[&format!("kith={identity}")]),
        txt(
            "_kith.bob.example.com.",
            &[&format!("node={}", bob.peer_id())],
        ),
    ])
    .await;
    let mut alice_config = config(false);
    alice_config.dns_bootstrap = vec!["example.com".into()];
    alice_config.dns = DnsConfig::with_nameservers([dns.addr]);
    let alice = Node::builder(SecretKey::generate(), alice_config)
        .unwrap()
        .spawn()
        .unwrap();
    let named = alice.resolve_name("bob.example.com").await.unwrap();
    assert_eq!(named.identity, identity);
    assert_eq!(named.nodes, vec![bob.peer_id()]);
    // Bob's record reaches the DHT and Alice joins it from DNS alone; then the name connects.
    let started = std::time::Instant::now();
    let conn = loop {
        match alice
            .connect_by_name("bob.example.com", b"kith/dns-echo/1")
            .await
        {
            Ok(conn) => break conn,
            Err(error) => {
                assert!(started.elapsed() < Duration::from_secs(15), "{error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(conn.remote_peer(), bob.peer_id());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"by name").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(100).await.unwrap(), b"by name");
    let err = alice
        .connect_by_name("nobody.example.com", b"kith/dns-echo/1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, kith_transport::TransportError::Name { .. }),
        "{err}"
    );

    // The same through the service API (`kith peer connect bob.example.com`), in-process and
    // over gRPC: the name resolves and the built-in ping crosses.
    let bob_service = Arc::new(TransportService::new(bob.clone()).unwrap());
    let alice_service = Arc::new(TransportService::new(alice.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("transport.sock");
    let server =
        kith_transport::daemon::spawn(alice_service.clone(), &[Listen::Unix(socket.clone())])
            .await
            .unwrap();
    let remote =
        TransportClient::connect(kith_service::Connection::new(Endpoint::Unix(socket), None));
    for client in [TransportClient::local(alice_service.clone()), remote] {
        let record = client.resolve_name("bob.example.com".into()).await.unwrap();
        assert_eq!(record.identity, identity);
        assert_eq!(record.nodes, vec![bob.peer_id()]);
        let connected = client
            .connect(Target::Name("bob.example.com".into()))
            .await
            .unwrap();
        assert_eq!(connected.peer.peer_id, bob.peer_id());
        let err = client
            .connect(Target::Name("nobody.example.com".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Name(_)), "{err:?}");
    }
    server.shutdown().await;
    drop(bob_service);
    for node in [alice, bob, seed] {
        node.shutdown().await;
    }
}
