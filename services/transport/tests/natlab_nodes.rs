//! Kith nodes across the NAT lab's matrix: for every pair of presets the dialler connects through
//! the relay, data crosses, both nodes classify their NAT correctly, and the path becomes direct
//! everywhere but symmetric against symmetric (symmetric against port-restricted goes direct by
//! the birthday strategy).
//! Every host's socket adds 5 ms of delay and 1% loss (the lab's UDP shim: tc netem is not
//! available). The `natlab` benchmark runs the same matrix repeatedly for time-to-direct.

mod natlab;

use std::time::Duration;

use kith_transport::net::Impairment;
use kith_transport::node::nat::Mapping;
use natlab::Nat;
use natlab::pair::{direct_expected, run_pair};

fn expected_mapping(nat: Nat) -> Mapping {
    match nat {
        Nat::None => Mapping::NoNat,
        Nat::Symmetric => Mapping::EndpointDependent,
        _ => Mapping::EndpointIndependent,
    }
}

fn pair(a: Nat, b: Nat) {
    // KITH_NATLAB_DELAY_MS and KITH_NATLAB_LOSS override the default shim (5 ms, 1%).
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
    let impairment = Impairment {
        delay: Duration::from_millis(env("KITH_NATLAB_DELAY_MS").unwrap_or(5.0) as u64),
        loss: env("KITH_NATLAB_LOSS").unwrap_or(0.01),
    };
    let outcome = run_pair(a, b, impairment, Duration::from_secs(8)).unwrap();
    println!("{outcome:?}");
    assert_eq!(outcome.a_mapping, expected_mapping(a), "side a classified");
    assert_eq!(outcome.b_mapping, expected_mapping(b), "side b classified");
    if direct_expected(a, b) {
        let time = outcome
            .time_to_direct
            .unwrap_or_else(|| panic!("{a:?} x {b:?} stayed relayed"));
        assert!(time < Duration::from_secs(8), "{time:?}");
    }
}

macro_rules! pairs {
    ($($name:ident: $a:ident x $b:ident,)*) => {$(
        #[test]
        fn $name() {
            pair(Nat::$a, Nat::$b);
        }
    )*};
}

pairs! {
    none_none: None x None,
    none_full_cone: None x FullCone,
    none_port_restricted: None x PortRestricted,
    none_symmetric: None x Symmetric,
    full_cone_full_cone: FullCone x FullCone,
    full_cone_port_restricted: FullCone x PortRestricted,
    full_cone_symmetric: FullCone x Symmetric,
    port_restricted_port_restricted: PortRestricted x PortRestricted,
    port_restricted_symmetric: PortRestricted x Symmetric,
    symmetric_symmetric: Symmetric x Symmetric,
    symmetric_port_restricted: Symmetric x PortRestricted,
    symmetric_full_cone: Symmetric x FullCone,
    symmetric_none: Symmetric x None,
    race_port_restricted: PortRestrictedRace x PortRestricted,
    port_restricted_race: PortRestricted x PortRestrictedRace,
    race_race: PortRestrictedRace x PortRestrictedRace,
}

/// A proven direct path that stops working (a firewall starts dropping it) falls back to the
/// relay without losing the connection, and the nodes punch again once the path works again.
#[test]
fn a_broken_direct_path_falls_back_to_the_relay_and_is_punched_again() {
    use std::net::SocketAddr;
    use std::sync::mpsc;

    use kith_transport::net::paths::Route;
    use kith_transport::{Node as KithNode, RelayAddr, SecretKey};
    use natlab::pair::{Echo, PUBLIC_PORT, direct_since, echo, host_config, public_config, settle};
    use natlab::{Lab, Node};
    use std::time::Instant;

    let lab = Lab::new(Nat::PortRestricted, Nat::PortRestricted).unwrap();
    let relay_secret = SecretKey::generate();
    let relay = RelayAddr {
        peer: relay_secret.peer_id(),
        addr: SocketAddr::from((lab.ip(Node::Relay), PUBLIC_PORT)),
    };
    let observer = SocketAddr::from((lab.ip(Node::Observer), PUBLIC_PORT));
    let public = |node, secret: SecretKey, relays: bool| {
        lab.spawn_in(node, move || async move {
            let _node = KithNode::builder(secret, public_config(relays))?.spawn()?;
            std::future::pending::<()>().await;
            anyhow::Ok(())
        })
    };
    let _relay = public(Node::Relay, relay_secret, true);
    let _observer = public(Node::Observer, SecretKey::generate(), false);
    let config = move || {
        let mut config = host_config(relay, observer, Impairment::default());
        config.path_check_interval = Duration::from_millis(200);
        config.punch.round_timeout = Duration::from_millis(500);
        config.punch.retry_after = Duration::from_millis(500);
        config.punch.min_interval = Duration::ZERO;
        config
    };
    let b_secret = SecretKey::generate();
    let b_peer = b_secret.peer_id();
    let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
    let _b = lab.spawn_in(Node::Hb, move || async move {
        let node = KithNode::builder(b_secret, config())?
            .accept(natlab::pair::ECHO, Echo)
            .spawn()?;
        settle(&node).await?;
        let _ = addrs_tx.send(node.addrs());
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let (step_tx, step_rx) = mpsc::channel::<&'static str>();
    let (go_tx, mut go_rx) = tokio::sync::mpsc::channel::<()>(1);
    let a = lab.spawn_in(Node::Ha, move || async move {
        let node = KithNode::builder(SecretKey::generate(), config())?.spawn()?;
        settle(&node).await?;
        let conn = node
            .connect(b_peer, addrs_rx.await?, natlab::pair::ECHO)
            .await?;
        let far = Instant::now() + Duration::from_secs(10);
        anyhow::ensure!(
            direct_since(&node, &b_peer, far).await.is_some(),
            "never direct"
        );
        echo(&conn, b"direct").await?;
        step_tx.send("direct")?;
        go_rx.recv().await;
        // The firewall drops the direct path now: back to the relay, same connection.
        let started = Instant::now();
        while !matches!(node.route(&b_peer), Route::Relay(_)) {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(5), "no fallback");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fallback = started.elapsed();
        echo(&conn, &vec![1u8; 100_000]).await?;
        step_tx.send("relayed")?;
        go_rx.recv().await;
        // The firewall is gone: punched again, direct again.
        let started = Instant::now();
        let far = Instant::now() + Duration::from_secs(10);
        anyhow::ensure!(
            direct_since(&node, &b_peer, far).await.is_some(),
            "not again"
        );
        let again = started.elapsed();
        echo(&conn, &vec![2u8; 100_000]).await?;
        node.shutdown().await;
        anyhow::Ok((fallback, again))
    });
    assert_eq!(
        step_rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "direct"
    );
    let hb_public = lab.public_ip(Node::Hb).to_string();
    for args in [
        vec!["nft", "add", "table", "ip", "cut"],
        vec![
            "nft",
            "add",
            "chain",
            "ip",
            "cut",
            "blocker",
            "{ type filter hook forward priority -10; }",
        ],
        vec![
            "nft", "add", "rule", "ip", "cut", "blocker", "ip", "daddr", &hb_public, "drop",
        ],
    ] {
        lab.exec(Node::Ra, &args).unwrap();
    }
    go_tx.blocking_send(()).unwrap();
    assert_eq!(
        step_rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "relayed"
    );
    lab.exec(Node::Ra, &["nft", "delete", "table", "ip", "cut"])
        .unwrap();
    go_tx.blocking_send(()).unwrap();
    let (fallback, again) = a.join_blocking().unwrap().unwrap();
    println!("fell back to the relay after {fallback:?}, direct again after {again:?}");
}
