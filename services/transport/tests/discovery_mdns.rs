//! mDNS discovery between real sockets, inside a private network namespace whose loopback
//! carries multicast (the host's loopback does not, and the host's LAN must not see tests).
//!
//! Needs root (CI runs as root) and `ip` from iproute2. Each test makes its own uniquely named
//! namespace, enters it on a dedicated OS thread with `setns`, runs a current-thread tokio
//! runtime there, and deletes the namespace afterwards.

use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Message, OpCode};
use hickory_server::proto::rr::rdata::{PTR, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use kith_transport::discovery::mdns::{MDNS_V4, SERVICE};
use kith_transport::discovery::{BootstrapPeer, Mdns, MdnsConfig};
use kith_transport::{PeerId, SecretKey};
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::broadcast;

/// A network namespace with loopback up and multicast on, deleted on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run `ip` (iproute2)");
    assert!(
        status.success(),
        "ip {args:?} failed (these tests need root)"
    );
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "kith-mdns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        ip(&[
            "-n",
            &netns.name,
            "link",
            "set",
            "lo",
            "up",
            "multicast",
            "on",
        ]);
        ip(&[
            "-n",
            &netns.name,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "lo",
        ]);
        netns
    }

    /// Runs `test` on a fresh thread inside the namespace, on a current-thread runtime.
    fn run<F, Fut>(&self, test: F) -> Fut::Output
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future,
        Fut::Output: Send,
    {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = File::open(&path).expect("open the namespace");
                    setns(&file, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(test())
                })
                .join()
                .expect("test thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn config() -> MdnsConfig {
    MdnsConfig {
        interfaces: vec![Ipv4Addr::LOCALHOST],
        ..MdnsConfig::default()
    }
}

/// Waits until `mdns` knows `peer`, from its receiver or its current set.
async fn wait_for(
    mdns: &Mdns,
    events: &mut broadcast::Receiver<BootstrapPeer>,
    peer: PeerId,
) -> BootstrapPeer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(found) = mdns.peers().into_iter().find(|p| p.peer == peer) {
            return found;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(found)) if found.peer == peer => return found,
            Ok(_) => {}
            Err(_) => panic!("peer {peer:?} not found within 5 s"),
        }
    }
}

#[test]
fn two_nodes_find_each_other_and_goodbye_is_heard() {
    let netns = Netns::new();
    netns.run(|| async {
        let (a, b) = (
            SecretKey::generate().peer_id(),
            SecretKey::generate().peer_id(),
        );
        let started = Instant::now();
        let node_a = Mdns::spawn(a, 4001, config()).unwrap();
        let mut events_a = node_a.discovered();
        let node_b = Mdns::spawn(b, 4002, config()).unwrap();
        let mut events_b = node_b.discovered();

        let found_b = wait_for(&node_a, &mut events_a, b).await;
        let found_a = wait_for(&node_b, &mut events_b, a).await;
        eprintln!("two nodes found each other in {:?}", started.elapsed());
        assert_eq!(
            found_b.addrs,
            vec!["127.0.0.1:4002".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            found_a.addrs,
            vec!["127.0.0.1:4001".parse::<SocketAddr>().unwrap()]
        );
        // Each knows exactly the other: not itself.
        assert_eq!(node_a.peers().len(), 1);
        assert_eq!(node_b.peers().len(), 1);

        // A goodbye makes the other forget at once.
        node_b.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while !node_a.peers().is_empty() {
            assert!(Instant::now() < deadline, "goodbye not heard");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node_a.shutdown().await;
    });
}

#[test]
fn a_node_started_later_is_answered_at_once_with_the_default_interface() {
    let netns = Netns::new();
    netns.run(|| async {
        let (a, b) = (
            SecretKey::generate().peer_id(),
            SecretKey::generate().peer_id(),
        );
        // The kernel's choice of interface (the route to 224.0.0.0/4 is on loopback here).
        let node_a = Mdns::spawn(a, 4001, MdnsConfig::default()).unwrap();
        // Let A's start-up announcements (two, a second apart) pass and the one-second gap
        // after them: B then learns of A only from A's answer to B's query.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let started = Instant::now();
        let node_b = Mdns::spawn(b, 4002, MdnsConfig::default()).unwrap();
        let mut events_b = node_b.discovered();
        wait_for(&node_b, &mut events_b, a).await;
        let took = started.elapsed();
        eprintln!("late node answered in {took:?}");
        // Answers wait for the next tick of A's loop (250 ms), not for the next announcement (60 s);
        // the bound leaves room for a loaded CI machine.
        assert!(took < Duration::from_secs(2), "answer took {took:?}");
        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}

/// A socket on the mDNS port, as another responder on the link would have.
fn raw_sender() -> tokio::net::UdpSocket {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_V4.port())).into())
        .unwrap();
    socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    socket.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(socket.into()).unwrap()
}

/// A response announcing `instance` with a TXT of `txt` and an SRV on `port`.
fn forged(instance: &str, txt: &str, port: u16) -> Vec<u8> {
    let service = Name::from_ascii(SERVICE).unwrap();
    let instance = Name::from_ascii(instance).unwrap();
    let mut message = Message::response(0, OpCode::Query);
    message.add_answer(Record::from_rdata(
        service,
        120,
        RData::PTR(PTR(instance.clone())),
    ));
    message.add_answer(Record::from_rdata(
        instance.clone(),
        120,
        RData::SRV(SRV::new(0, 0, port, Name::from_ascii("x.local.").unwrap())),
    ));
    message.add_answer(Record::from_rdata(
        instance,
        120,
        RData::TXT(TXT::new(vec![txt.to_owned()])),
    ));
    message.to_vec().unwrap()
}

#[test]
fn malformed_packets_and_own_announcements_change_nothing() {
    let netns = Netns::new();
    netns.run(|| async {
        let (a, b) = (
            SecretKey::generate().peer_id(),
            SecretKey::generate().peer_id(),
        );
        let node_a = Mdns::spawn(a, 4001, config()).unwrap();
        let mut events_a = node_a.discovered();
        let sender = raw_sender();
        let to = SocketAddr::V4(MDNS_V4);

        let stranger = SecretKey::generate().peer_id();
        let stranger_label = format!("kith-{}", &stranger.to_string()[..20]);
        let mut too_many = forged(
            &format!("{stranger_label}.{SERVICE}"),
            &format!("peer={stranger}"),
            9,
        );
        too_many[6..8].copy_from_slice(&60u16.to_be_bytes()); // claims 60 + 3 answers... and more
        too_many[10..12].copy_from_slice(&10u16.to_be_bytes());
        let mut oversized = forged(
            &format!("{stranger_label}.{SERVICE}"),
            &format!("peer={stranger}"),
            9,
        );
        oversized.resize(9500, 0);
        let packets: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 7],
            (0..=255u8).cycle().take(1500).collect(),
            vec![0; 12],
            too_many,
            oversized,
            // An instance whose TXT is not a peer id.
            forged(&format!("{stranger_label}.{SERVICE}"), "peer=nothex", 9),
            // A weak key (the identity point).
            forged(
                &format!("kith-0100000000000000000000.{SERVICE}"),
                &format!("peer=01{}", "00".repeat(31)),
                9,
            ),
            // A valid peer under someone else's instance name.
            forged(
                &format!("kith-{}.{SERVICE}", "ab".repeat(10)),
                &format!("peer={stranger}"),
                9,
            ),
            // A valid instance with port 0.
            forged(
                &format!("{stranger_label}.{SERVICE}"),
                &format!("peer={stranger}"),
                0,
            ),
            // Our own peer id, as if from elsewhere.
            forged(
                &format!("kith-{}.{SERVICE}", &a.to_string()[..20]),
                &format!("peer={a}"),
                9,
            ),
        ];
        for packet in &packets {
            sender.send_to(packet, to).await.unwrap();
        }
        // Through A's own start-up announcements (two, a second apart) and all of the above.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert!(node_a.peers().is_empty(), "{:?}", node_a.peers());
        assert!(matches!(
            events_a.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));

        // Discovery still works afterwards, and finds only the real peer.
        let node_b = Mdns::spawn(b, 4002, config()).unwrap();
        wait_for(&node_a, &mut events_a, b).await;
        assert_eq!(
            node_a
                .peers()
                .into_iter()
                .map(|p| p.peer)
                .collect::<Vec<_>>(),
            vec![b]
        );

        // A well-formed stranger sent the same way is taken: the forged packets failed only for
        // what was wrong with them.
        sender
            .send_to(
                &forged(
                    &format!("{stranger_label}.{SERVICE}"),
                    &format!("peer={stranger}"),
                    9,
                ),
                to,
            )
            .await
            .unwrap();
        let found = wait_for(&node_a, &mut events_a, stranger).await;
        assert_eq!(
            found.addrs,
            vec!["127.0.0.1:9".parse::<SocketAddr>().unwrap()]
        );
        node_a.shutdown().await;
        node_b.shutdown().await;
    });
}

/// Two Kith nodes on one LAN with no internet (no bootstrap, no relay, no DNS) meet through mDNS,
/// find each other by id and connect directly.
#[test]
fn two_nodes_on_a_lan_without_internet_meet_and_connect() {
    use kith_transport::{Connection, Node, NodeConfig, ProtocolHandler};

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

    let netns = Netns::new();
    netns.run(|| async {
        let node = || {
            let mut node_config = NodeConfig::default();
            node_config.endpoint.bind_addr = "0.0.0.0:0".parse().unwrap();
            node_config.mdns = Some(config());
            Node::builder(SecretKey::generate(), node_config)
                .unwrap()
                .accept(b"kith/lan-echo/1", Echo)
                .spawn()
                .unwrap()
        };
        let (a, b) = (node(), node());
        let started = Instant::now();
        let found = loop {
            if let Ok(found) = a.find(b.peer_id()).await
                && !found.addrs.is_empty()
            {
                break found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "b not found on the LAN"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(found.relay.is_none());
        let conn = a
            .connect_by_id(b.peer_id(), b"kith/lan-echo/1")
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"no internet needed").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"no internet needed");
        a.shutdown().await;
        b.shutdown().await;
    });
}
