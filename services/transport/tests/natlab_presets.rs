//! The NAT lab's presets behave as named, shown with plain UDP sockets (no Kith code): mapping
//! seen by two observers, filtering of unsolicited packets, a naive hole punch across the
//! matrix, and the conntrack race with its cure, low-TTL priming. See `natlab/mod.rs`.

mod natlab;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use natlab::{Lab, Nat, Node, PRIMING_TTL, observe};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::sleep;

/// The reflector port on the relay and the observer.
const REFLECTOR: u16 = 3478;

fn reflector(lab: &Lab, node: Node) -> SocketAddr {
    SocketAddr::from((lab.ip(node), REFLECTOR))
}

async fn bind_any() -> UdpSocket {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.unwrap()
}

fn local_port(socket: &UdpSocket) -> u16 {
    socket.local_addr().unwrap().port()
}

/// Collects what arrives on `socket` for `window`.
async fn collect(socket: &UdpSocket, window: Duration) -> Vec<(String, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let (len, from) = received.unwrap();
        got.push((String::from_utf8_lossy(&buf[..len]).into_owned(), from));
    }
    got
}

/// Sends `payload` from a fresh socket bound on `from` to `to`, three times.
async fn probe(from: SocketAddr, to: SocketAddrV4, payload: &'static str) {
    let socket = UdpSocket::bind(from).await.unwrap();
    for _ in 0..3 {
        socket.send_to(payload.as_bytes(), to).await.unwrap();
        sleep(Duration::from_millis(30)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// (a) mapping: one socket, two observers on different addresses.

async fn check_mapping(nat: Nat) {
    let lab = Lab::new(nat, Nat::None).unwrap();
    let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
    let _o = lab.spawn_reflector(Node::Observer, REFLECTOR);
    let (relay, observer) = (
        reflector(&lab, Node::Relay),
        reflector(&lab, Node::Observer),
    );
    let (port, seen_by_relay, seen_by_observer) = lab
        .run_in(Node::Ha, move || async move {
            let socket = bind_any().await;
            let first = observe(&socket, relay).await.unwrap();
            let second = observe(&socket, observer).await.unwrap();
            (local_port(&socket), first, second)
        })
        .await
        .unwrap();
    let public = lab.public_ip(Node::Ha);
    assert_eq!(*seen_by_relay.ip(), public, "{nat:?}");
    assert_eq!(*seen_by_observer.ip(), public, "{nat:?}");
    if nat.is_endpoint_independent() {
        assert_eq!(seen_by_relay, seen_by_observer, "{nat:?}: one mapping");
        // Deterministic presets: the port is preserved when nothing else holds it.
        assert_eq!(seen_by_relay.port(), port, "{nat:?}: port preserved");
    } else {
        assert_ne!(
            seen_by_relay.port(),
            seen_by_observer.port(),
            "{nat:?}: a new port per destination"
        );
    }
    if nat == Nat::None {
        assert_eq!(seen_by_relay, SocketAddrV4::new(lab.ip(Node::Ha), port));
    }
}

#[tokio::test]
async fn mapping_none_is_the_hosts_own_address() {
    check_mapping(Nat::None).await;
}

#[tokio::test]
async fn mapping_full_cone_is_endpoint_independent() {
    check_mapping(Nat::FullCone).await;
}

#[tokio::test]
async fn mapping_port_restricted_is_endpoint_independent() {
    check_mapping(Nat::PortRestricted).await;
}

#[tokio::test]
async fn mapping_race_preset_is_endpoint_independent() {
    check_mapping(Nat::PortRestrictedRace).await;
}

#[tokio::test]
async fn mapping_symmetric_is_endpoint_dependent() {
    check_mapping(Nat::Symmetric).await;
}

// ---------------------------------------------------------------------------------------------
// (b) filtering: the host has sent only to the relay's reflector; who else gets through?

async fn check_filtering(nat: Nat) {
    let lab = Lab::new(nat, Nat::None).unwrap();
    let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
    let relay = reflector(&lab, Node::Relay);
    let (mapped_tx, mapped_rx) = oneshot::channel();
    let host = lab.spawn_in(Node::Ha, move || async move {
        let socket = bind_any().await;
        mapped_tx
            .send(observe(&socket, relay).await.unwrap())
            .unwrap();
        collect(&socket, Duration::from_millis(600)).await
    });
    let mapped = mapped_rx.await.unwrap();
    let relay_other_port = SocketAddr::from((lab.ip(Node::Relay), REFLECTOR + 1));
    let observer = SocketAddr::from((lab.ip(Node::Observer), REFLECTOR));
    let (same_address, other_address) = tokio::join!(
        lab.run_in(Node::Relay, move || probe(
            relay_other_port,
            mapped,
            "relay, other port"
        )),
        lab.run_in(Node::Observer, move || probe(observer, mapped, "observer")),
    );
    same_address.unwrap();
    other_address.unwrap();
    let got = host.join().await.unwrap();
    let from_observer = got.iter().any(|(_, from)| *from == observer);
    let from_other_port = got.iter().any(|(_, from)| *from == relay_other_port);
    let open = matches!(nat, Nat::None | Nat::FullCone);
    assert_eq!(
        from_observer, open,
        "{nat:?}: packet from an address never contacted; got {got:?}"
    );
    assert_eq!(
        from_other_port, open,
        "{nat:?}: packet from a contacted address's other port; got {got:?}"
    );
}

#[tokio::test]
async fn filtering_none_lets_everything_in() {
    check_filtering(Nat::None).await;
}

#[tokio::test]
async fn filtering_full_cone_is_endpoint_independent() {
    check_filtering(Nat::FullCone).await;
}

#[tokio::test]
async fn filtering_port_restricted_is_address_and_port_dependent() {
    check_filtering(Nat::PortRestricted).await;
}

#[tokio::test]
async fn filtering_race_preset_is_address_and_port_dependent() {
    check_filtering(Nat::PortRestrictedRace).await;
}

#[tokio::test]
async fn filtering_symmetric_is_address_and_port_dependent() {
    check_filtering(Nat::Symmetric).await;
}

// ---------------------------------------------------------------------------------------------
// (c) naive hole punching across the matrix.

/// One side of a naive punch: learn the mapping from the relay, swap it with the peer (through
/// the test), then send to the peer's mapping every 50 ms; answer whatever address the peer's
/// packets come from. Returns when it has heard the peer and answered a few times, or after
/// `give_up`: `Some(time from first send to first packet heard)`.
async fn punch_side(
    relay: SocketAddr,
    mine: oneshot::Sender<SocketAddrV4>,
    theirs: oneshot::Receiver<SocketAddrV4>,
    give_up: Duration,
) -> Option<Duration> {
    let socket = bind_any().await;
    mine.send(observe(&socket, relay).await.unwrap()).unwrap();
    let target = SocketAddr::V4(theirs.await.unwrap());
    naive_loop(&socket, target, relay, give_up).await
}

/// Sends to `target` every 50 ms and retargets to wherever the peer's packets come from;
/// returns once it has heard the peer and answered four times, or after `give_up`.
async fn naive_loop(
    socket: &UdpSocket,
    mut target: SocketAddr,
    relay: SocketAddr,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut heard = None;
    let mut answers = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut buf = [0u8; 64];
    while start.elapsed() < give_up && answers < 4 {
        tokio::select! {
            _ = tick.tick() => {
                socket.send_to(b"punch", target).await.unwrap();
                if heard.is_some() {
                    answers += 1;
                }
            }
            received = socket.recv_from(&mut buf) => {
                let (_, from) = received.unwrap();
                if from != relay {
                    heard.get_or_insert(start.elapsed());
                    target = from;
                }
            }
        }
    }
    heard
}

/// Runs a naive punch between ha and hb; returns each side's time to hear the other.
async fn naive_punch(a: Nat, b: Nat, give_up: Duration) -> (Option<Duration>, Option<Duration>) {
    let lab = Lab::new(a, b).unwrap();
    let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
    let relay = reflector(&lab, Node::Relay);
    let (a_mine, a_mapping) = oneshot::channel();
    let (b_mine, b_mapping) = oneshot::channel();
    let (to_a, a_theirs) = oneshot::channel();
    let (to_b, b_theirs) = oneshot::channel();
    let ha = lab.spawn_in(Node::Ha, move || {
        punch_side(relay, a_mine, a_theirs, give_up)
    });
    let hb = lab.spawn_in(Node::Hb, move || {
        punch_side(relay, b_mine, b_theirs, give_up)
    });
    let (a_mapped, b_mapped) = (a_mapping.await.unwrap(), b_mapping.await.unwrap());
    to_a.send(b_mapped).unwrap();
    to_b.send(a_mapped).unwrap();
    (ha.join().await.unwrap(), hb.join().await.unwrap())
}

/// Naive punching works unless one side is symmetric and the other filters by port
/// (port restricted or symmetric): the symmetric side's packets come from a port the other
/// side's NAT has never sent to.
fn punch_should_work(a: Nat, b: Nat) -> bool {
    let blocks =
        |x: Nat, y: Nat| x == Nat::Symmetric && matches!(y, Nat::Symmetric | Nat::PortRestricted);
    !(blocks(a, b) || blocks(b, a))
}

async fn check_punch(a: Nat, b: Nat) {
    let expected = punch_should_work(a, b);
    let give_up = if expected {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(1200)
    };
    let (heard_by_a, heard_by_b) = naive_punch(a, b, give_up).await;
    eprintln!("{a:?} × {b:?}: ha heard hb after {heard_by_a:?}, hb heard ha after {heard_by_b:?}");
    if expected {
        assert!(
            heard_by_a.is_some() && heard_by_b.is_some(),
            "{a:?} × {b:?} should punch"
        );
    } else {
        assert!(
            heard_by_a.is_none() && heard_by_b.is_none(),
            "{a:?} × {b:?} should not punch"
        );
    }
}

macro_rules! punch_tests {
    ($($name:ident: $a:ident, $b:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            check_punch(Nat::$a, Nat::$b).await;
        }
    )*};
}

punch_tests! {
    punch_none_none: None, None;
    punch_none_full_cone: None, FullCone;
    punch_none_port_restricted: None, PortRestricted;
    punch_none_symmetric: None, Symmetric;
    punch_full_cone_full_cone: FullCone, FullCone;
    punch_full_cone_port_restricted: FullCone, PortRestricted;
    punch_full_cone_symmetric: FullCone, Symmetric;
    punch_port_restricted_port_restricted: PortRestricted, PortRestricted;
    punch_port_restricted_symmetric_fails: PortRestricted, Symmetric;
    punch_symmetric_symmetric_fails: Symmetric, Symmetric;
}

// ---------------------------------------------------------------------------------------------
// (d) the conntrack race, and low-TTL priming.

/// hb (public) sends to ha's mapping first; then ha sends to hb. Returns ha's mapping (learned
/// from the relay) and the address hb saw ha's packet come from.
async fn peer_first(nat: Nat) -> (SocketAddrV4, SocketAddr, Vec<(String, SocketAddr)>) {
    let lab = Lab::new(nat, Nat::None).unwrap();
    let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
    let relay = reflector(&lab, Node::Relay);
    let hb_addr = SocketAddr::from((lab.ip(Node::Hb), 4000));
    let (mapped_tx, mapped_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let ha = lab.spawn_in(Node::Ha, move || async move {
        let socket = bind_any().await;
        mapped_tx
            .send(observe(&socket, relay).await.unwrap())
            .unwrap();
        go_rx.await.unwrap();
        socket.send_to(b"hello from ha", hb_addr).await.unwrap();
        collect(&socket, Duration::from_millis(300)).await
    });
    let mapped = mapped_rx.await.unwrap();
    let seen = lab
        .run_in(Node::Hb, move || async move {
            let socket = UdpSocket::bind(hb_addr).await.unwrap();
            // The peer's packets reach ra before ha has sent anything to hb.
            for _ in 0..3 {
                socket.send_to(b"early from hb", mapped).await.unwrap();
            }
            sleep(Duration::from_millis(50)).await;
            go_tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            let (_, from) = socket.recv_from(&mut buf).await.unwrap();
            from
        })
        .await
        .unwrap();
    (mapped, seen, ha.join().await.unwrap())
}

#[tokio::test]
async fn race_the_peers_early_packet_remaps_the_hosts_port() {
    let (mapped, seen, got) = peer_first(Nat::PortRestrictedRace).await;
    assert_eq!(seen.ip(), *mapped.ip());
    assert_ne!(
        seen.port(),
        mapped.port(),
        "ra should have mapped ha's packet to hb to a new port"
    );
    assert!(
        got.is_empty(),
        "hb's early packets must not reach ha: {got:?}"
    );
}

#[tokio::test]
async fn race_does_not_happen_where_the_router_drops_unsolicited_packets() {
    let (mapped, seen, got) = peer_first(Nat::PortRestricted).await;
    assert_eq!(
        seen,
        SocketAddr::V4(mapped),
        "port-restricted keeps the mapping"
    );
    assert!(
        got.is_empty(),
        "hb's early packets must not reach ha: {got:?}"
    );
}

/// ha primes with a TTL-limited packet to hb before hb's packet arrives: the prime opens ra's
/// mapping but never reaches hb; hb's packet then gets through, and ha keeps its port.
#[tokio::test]
async fn race_is_prevented_by_a_low_ttl_priming_packet() {
    let lab = Lab::new(Nat::PortRestrictedRace, Nat::None).unwrap();
    let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
    let relay = reflector(&lab, Node::Relay);
    let hb_addr = SocketAddr::from((lab.ip(Node::Hb), 4000));
    let (mapped_tx, mapped_rx) = oneshot::channel();
    let (primed_tx, primed_rx) = oneshot::channel::<()>();
    let (sent_tx, sent_rx) = oneshot::channel::<()>();
    let hb = lab.spawn_in(Node::Hb, move || async move {
        let socket = UdpSocket::bind(hb_addr).await.unwrap();
        let mapped = mapped_rx.await.unwrap();
        primed_rx.await.unwrap();
        let before = collect(&socket, Duration::from_millis(150)).await;
        for _ in 0..3 {
            socket.send_to(b"early from hb", mapped).await.unwrap();
        }
        sent_tx.send(()).unwrap();
        let after = collect(&socket, Duration::from_millis(400)).await;
        (mapped, before, after)
    });
    let heard_by_ha = lab
        .run_in(Node::Ha, move || async move {
            let socket = bind_any().await;
            mapped_tx
                .send(observe(&socket, relay).await.unwrap())
                .unwrap();
            socket.set_ttl(PRIMING_TTL).unwrap();
            socket.send_to(b"prime", hb_addr).await.unwrap();
            socket.set_ttl(64).unwrap();
            primed_tx.send(()).unwrap();
            sent_rx.await.unwrap();
            let got = collect(&socket, Duration::from_millis(200)).await;
            socket.send_to(b"hello from ha", hb_addr).await.unwrap();
            got
        })
        .await
        .unwrap();
    let (mapped, before, after) = hb.join().await.unwrap();
    assert!(
        before.is_empty(),
        "the prime must die before hb: {before:?}"
    );
    assert!(
        heard_by_ha.iter().any(|(_, from)| *from == hb_addr),
        "hb's packet should reach the primed ha: {heard_by_ha:?}"
    );
    assert_eq!(
        after,
        vec![("hello from ha".to_owned(), SocketAddr::V4(mapped))],
        "ha keeps its mapping"
    );
}

/// Across two NATs: hb's early packet makes ha's NAT remap ha, so a naive punch fails; the same
/// punch with a prime from ha first succeeds.
#[tokio::test]
async fn race_breaks_a_naive_punch_and_priming_fixes_it() {
    for prime in [false, true] {
        let lab = Lab::new(Nat::PortRestrictedRace, Nat::PortRestricted).unwrap();
        let _r = lab.spawn_reflector(Node::Relay, REFLECTOR);
        let relay = reflector(&lab, Node::Relay);
        let (a_map_tx, a_map_rx) = oneshot::channel();
        let (b_map_tx, b_map_rx) = oneshot::channel();
        let (a_peer_tx, a_peer_rx) = oneshot::channel();
        let (b_peer_tx, b_peer_rx) = oneshot::channel();
        let (primed_tx, primed_rx) = oneshot::channel::<()>();
        let (early_tx, early_rx) = oneshot::channel::<()>();
        let give_up = Duration::from_millis(1000);
        let ha = lab.spawn_in(Node::Ha, move || async move {
            let socket = bind_any().await;
            a_map_tx
                .send(observe(&socket, relay).await.unwrap())
                .unwrap();
            let peer: SocketAddrV4 = a_peer_rx.await.unwrap();
            if prime {
                socket.set_ttl(PRIMING_TTL).unwrap();
                socket.send_to(b"prime", peer).await.unwrap();
                socket.set_ttl(64).unwrap();
            }
            primed_tx.send(()).unwrap();
            early_rx.await.unwrap();
            naive_loop(&socket, peer.into(), relay, give_up).await
        });
        let hb = lab.spawn_in(Node::Hb, move || async move {
            let socket = bind_any().await;
            b_map_tx
                .send(observe(&socket, relay).await.unwrap())
                .unwrap();
            let peer: SocketAddrV4 = b_peer_rx.await.unwrap();
            primed_rx.await.unwrap();
            // hb goes first: its packet reaches ra before ha has sent anything to hb.
            socket.send_to(b"early", peer).await.unwrap();
            sleep(Duration::from_millis(30)).await;
            early_tx.send(()).unwrap();
            naive_loop(&socket, peer.into(), relay, give_up).await
        });
        let (a_mapped, b_mapped) = (a_map_rx.await.unwrap(), b_map_rx.await.unwrap());
        a_peer_tx.send(b_mapped).unwrap();
        b_peer_tx.send(a_mapped).unwrap();
        let (heard_by_a, heard_by_b) = (ha.join().await.unwrap(), hb.join().await.unwrap());
        eprintln!(
            "prime {prime}: ha heard hb after {heard_by_a:?}, hb heard ha after {heard_by_b:?}"
        );
        if prime {
            assert!(
                heard_by_a.is_some() && heard_by_b.is_some(),
                "primed punch should work"
            );
        } else {
            assert!(
                heard_by_a.is_none() && heard_by_b.is_none(),
                "the race should break the punch"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The harness itself.

/// Tasks run in their namespace, stop on request, re-raise panics; dropping the lab removes its
/// namespaces.
#[tokio::test]
async fn lab_tasks_stop_and_namespaces_go_away() {
    let lab = Lab::new(Nat::PortRestricted, Nat::Symmetric).unwrap();
    // A socket made in ha has ha's address; the same bind elsewhere fails.
    let ha = lab.ip(Node::Ha);
    let bound = lab
        .run_in(Node::Ha, move || async move {
            UdpSocket::bind((ha, 0)).await.map(|_| ()).is_ok()
        })
        .await
        .unwrap();
    assert!(bound, "ha's address is bindable inside ha");
    let elsewhere = lab
        .run_in(Node::Hb, move || async move {
            UdpSocket::bind((ha, 0)).await.is_ok()
        })
        .await
        .unwrap();
    assert!(!elsewhere, "ha's address is not bindable inside hb");

    let forever = lab.spawn_in(Node::Relay, std::future::pending::<()>);
    forever.stop();
    assert!(forever.join().await.is_err(), "a stopped task reports it");

    let panicked = lab.spawn_in(Node::Relay, || async { panic!("boom") });
    let caught = tokio::spawn(panicked.join()).await;
    assert!(
        caught.unwrap_err().is_panic(),
        "a task's panic is re-raised by join"
    );

    let names: Vec<String> = Node::ALL.iter().map(|&node| lab.ns(node)).collect();
    assert!(
        names
            .iter()
            .all(|ns| std::path::Path::new(&format!("/run/netns/{ns}")).exists())
    );
    drop(lab);
    assert!(
        names
            .iter()
            .all(|ns| !std::path::Path::new(&format!("/run/netns/{ns}")).exists())
    );
}
