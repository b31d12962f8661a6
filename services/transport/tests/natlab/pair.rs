//! Two Kith nodes in the lab, one behind each router, with a relay and an observer on the
//! internet: the dialler connects through the relay, both punch, and the run reports whether
//! data crossed and when both sides had a proven direct path.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kith_transport::net::paths::Route;
use kith_transport::net::{Impairment, RelayConfig};
use kith_transport::node::nat::Mapping;
use kith_transport::node::punch::PunchConfig;
use kith_transport::{
    Connection, EndpointOptions, Node as KithNode, NodeConfig, PeerAddrs, PeerId, ProtocolHandler,
    RelayAddr, SecretKey,
};
use tokio::sync::oneshot;

use super::{Lab, Nat, Node, PRIMING_TTL};

/// The echo protocol the pair exchanges data over.
pub const ECHO: &[u8] = b"kith/natlab-echo/1";
/// The port public nodes listen on.
pub const PUBLIC_PORT: u16 = 7000;

/// What one run of a pair showed.
#[derive(Clone, Debug)]
pub struct PairOutcome {
    /// Side a's preset.
    pub a: Nat,
    /// Side b's preset.
    pub b: Nat,
    /// What ha's node classified its NAT as.
    pub a_mapping: Mapping,
    /// What hb's node classified its NAT as.
    pub b_mapping: Mapping,
    /// From the start of `connect` until both sides route the other directly, if they did.
    pub time_to_direct: Option<Duration>,
    /// From the start of `connect` until the first echo came back (through the relay or not).
    pub time_to_first_data: Duration,
}

/// Whether Kith gets a direct path between two presets: everywhere but symmetric against
/// symmetric (both sides' ports are random; the issue also lets symmetric against
/// port-restricted stay relayed, but the birthday strategy gets through there).
pub fn direct_expected(a: Nat, b: Nat) -> bool {
    !(a == Nat::Symmetric && b == Nat::Symmetric)
}

#[derive(Debug)]
pub struct Echo;

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

/// Sends `payload` on a new stream and checks it comes back.
pub async fn echo(conn: &Connection, payload: &[u8]) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    let back = recv.read_to_end(payload.len() + 1).await?;
    if back != payload {
        bail!("echo came back different");
    }
    Ok(())
}

/// A public node (relay or observer) on [`PUBLIC_PORT`].
pub fn public_config(relay: bool) -> NodeConfig {
    NodeConfig {
        endpoint: EndpointOptions {
            bind_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, PUBLIC_PORT)),
            relay: RelayConfig {
                enabled: relay,
                ..RelayConfig::default()
            },
            ..EndpointOptions::default()
        },
        ..NodeConfig::default()
    }
}

/// A node behind a lab router, using the lab's relay and observer.
pub fn host_config(relay: RelayAddr, observer: SocketAddr, impairment: Impairment) -> NodeConfig {
    NodeConfig {
        endpoint: EndpointOptions {
            impairment,
            ..EndpointOptions::default()
        },
        relays: vec![relay],
        observers: vec![observer],
        punch: PunchConfig {
            priming_ttl: PRIMING_TTL,
            ..PunchConfig::default()
        },
        ..NodeConfig::default()
    }
}

/// Waits until the node is registered with its relay and has classified its NAT.
pub async fn settle(node: &KithNode) -> Result<Mapping> {
    if !node.wait_registered(Duration::from_secs(5)).await {
        bail!("not registered with the relay");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mapping = node.nat_status().mapping;
        if mapping != Mapping::Unknown {
            return Ok(mapping);
        }
        if Instant::now() > deadline {
            bail!("NAT not classified: {:?}", node.nat_status());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` routes `peer` directly (or `deadline` passes); when it did.
pub async fn direct_since(node: &KithNode, peer: &PeerId, deadline: Instant) -> Option<Instant> {
    loop {
        if matches!(node.route(peer), Route::Direct(_)) {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs one pair: relay and observer on the internet, ha dials hb through the relay.
pub fn run_pair(
    a: Nat,
    b: Nat,
    impairment: Impairment,
    wait_direct: Duration,
) -> Result<PairOutcome> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KITH_LOG"))
        .with_test_writer()
        .try_init();
    let lab = Lab::new(a, b)?;
    let relay_secret = SecretKey::generate();
    let relay = RelayAddr {
        peer: relay_secret.peer_id(),
        addr: SocketAddr::from((lab.ip(Node::Relay), PUBLIC_PORT)),
    };
    let observer_addr = SocketAddr::from((lab.ip(Node::Observer), PUBLIC_PORT));
    let public = |node, secret: SecretKey, relays: bool| {
        lab.spawn_in(node, move || async move {
            let node = KithNode::builder(secret, public_config(relays))?.spawn()?;
            std::future::pending::<()>().await;
            node.shutdown().await;
            anyhow::Ok(())
        })
    };
    let _relay_task = public(Node::Relay, relay_secret, true);
    let _observer_task = public(Node::Observer, SecretKey::generate(), false);

    let a_secret = SecretKey::generate();
    let b_secret = SecretKey::generate();
    let a_peer = a_secret.peer_id();
    let b_peer = b_secret.peer_id();
    let (b_ready_tx, b_ready_rx) = oneshot::channel::<Result<(PeerAddrs, Mapping)>>();
    let b_direct: Arc<Mutex<Option<Instant>>> = Arc::default();
    let b_direct_seen = b_direct.clone();
    let deadline = Instant::now() + Duration::from_secs(30) + wait_direct;
    let b_task = lab.spawn_in(Node::Hb, move || async move {
        let node = KithNode::builder(b_secret, host_config(relay, observer_addr, impairment))?
            .accept(ECHO, Echo)
            .spawn()?;
        match settle(&node).await {
            Ok(mapping) => {
                let _ = b_ready_tx.send(Ok((node.addrs(), mapping)));
            }
            Err(error) => {
                let _ = b_ready_tx.send(Err(error));
                bail!("hb did not settle");
            }
        }
        let at = direct_since(&node, &a_peer, deadline).await;
        *b_direct_seen.lock().unwrap() = at;
        // Keep serving until the lab stops this task.
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });

    let a_task = lab.spawn_in(Node::Ha, move || async move {
        let node =
            KithNode::builder(a_secret, host_config(relay, observer_addr, impairment))?.spawn()?;
        let a_mapping = settle(&node).await?;
        let (b_addrs, b_mapping) = b_ready_rx.await.context("hb gone")??;
        let started = Instant::now();
        let conn = node.connect(b_peer, b_addrs, ECHO).await?;
        echo(&conn, &vec![0x5a; 64 * 1024]).await?;
        let first_data = started.elapsed();
        let a_direct = direct_since(&node, &b_peer, started + wait_direct).await;
        // Data still flows after whatever switch happened.
        echo(&conn, &vec![0xa5; 256 * 1024]).await?;
        node.shutdown().await;
        anyhow::Ok((started, a_mapping, b_mapping, first_data, a_direct))
    });
    let (started, a_mapping, b_mapping, time_to_first_data, a_direct) =
        a_task.join_blocking().context("ha's run")??;
    let b_direct_at = {
        // hb notices within a few milliseconds of ha when the path is direct both ways.
        let until = Instant::now() + Duration::from_millis(500);
        loop {
            let seen = *b_direct.lock().unwrap();
            if seen.is_some() || Instant::now() > until || a_direct.is_none() {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    b_task.stop();
    let time_to_direct = match (a_direct, b_direct_at) {
        (Some(x), Some(y)) => Some(x.max(y).duration_since(started)),
        _ => None,
    };
    Ok(PairOutcome {
        a,
        b,
        a_mapping,
        b_mapping,
        time_to_direct,
        time_to_first_data,
    })
}
