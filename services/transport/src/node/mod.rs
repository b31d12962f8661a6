//! The node: an endpoint plus everything that gets its connections through NATs.
//!
//! A [`Node`] owns an [`Endpoint`] and its [`Router`], and runs beside them:
//!
//! - the **event loop** over the shared socket's [`NetEvent`]s (probes, relay answers, DHT
//!   datagrams, which go to the DHT driver when one is attached);
//! - the **relay client**: registration with the node's home relays, renewed well within their
//!   lifetime, which also keeps our NAT's mapping towards them open;
//! - **NAT classification** ([`nat`]) from what relays and observers report;
//! - **hole punching** ([`punch`]): a session per peer over the [`PUNCH_ALPN`] protocol, on a
//!   connection that starts relayed;
//! - the **path monitor**: re-probes every direct path, falls back to the relay when one goes
//!   quiet, and punches again; a changed public address (a network change) also re-punches.
//!
//! [`Node::connect`] connects *through a relay at once* when the peer has one, starts punching
//! in the background, and the socket moves the connection to the direct path as soon as a probe
//! round trip proves it. Without a relay it probes the peer's addresses and connects when one
//! answers.

pub mod nat;
pub mod punch;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::nat::{Mapping, NatObservations, NatStatus, local_addr_towards};
use self::punch::{MAX_CANDIDATES, Message, PUNCH_ALPN, PunchConfig, initiates};
use crate::connection::Connection;
use crate::dht::{Dht, DhtConfig, NodeId, PeerRecord};
use crate::discovery::{BootstrapPeer, DnsConfig, DnsResolver, Mdns, MdnsConfig, NameRecord};
use crate::endpoint::{Endpoint, EndpointOptions};
use crate::error::TransportError;
use crate::net::paths::Route;
use crate::net::{Frame, NetEvent, RelayRegistration};
use crate::peer::{PeerId, SecretKey};
use crate::router::{ProtocolHandler, Router, RouterBuilder};

/// Where DHT datagrams go: the DHT driver's inbox of (source, datagram).
pub type DhtInbox = mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// A relay: its key and address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RelayAddr {
    /// The relay's peer id (registrations are signed for it).
    pub peer: PeerId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// What is known about reaching a peer: its direct addresses and its relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerAddrs {
    /// Addresses to try directly.
    pub addrs: Vec<SocketAddr>,
    /// The relay it is registered with, if any.
    pub relay: Option<RelayAddr>,
}

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The endpoint's socket and QUIC settings (and whether this node relays for others).
    pub endpoint: EndpointOptions,
    /// Relays this node registers with, so that peers can reach it through them.
    pub relays: Vec<RelayAddr>,
    /// Extra public nodes to ask for our address (NAT classification needs two observers;
    /// relays count as observers).
    pub observers: Vec<SocketAddr>,
    /// Hole punching.
    pub punch: PunchConfig,
    /// How often a direct path is re-probed; three silent intervals drop it.
    pub path_check_interval: Duration,
    /// How long [`Node::connect`] waits for a relay registration or a direct answer.
    pub connect_timeout: Duration,
    /// The DHT (on the same socket); `None` runs the node without one.
    pub dht: Option<DhtConfig>,
    /// DHT nodes to bootstrap from (from config, DNS or mDNS).
    pub bootstrap: Vec<SocketAddr>,
    /// How long our published peer record lives (it is republished well before).
    pub record_ttl: Duration,
    /// Domains whose DNS records list bootstrap nodes (`_kith._udp.<domain>` SRV or
    /// `_kith-bootstrap.<domain>` TXT; see [`crate::discovery::dns`]).
    pub dns_bootstrap: Vec<String>,
    /// How DNS is resolved (bootstrap domains and names).
    pub dns: DnsConfig,
    /// Find and be found by Kith nodes on the LAN (mDNS), so two nodes on one network meet with
    /// no internet. Off by default in the library (tests must not talk to the real LAN); the
    /// daemon turns it on.
    pub mdns: Option<MdnsConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            endpoint: EndpointOptions::default(),
            relays: Vec::new(),
            observers: Vec::new(),
            punch: PunchConfig::default(),
            path_check_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            dht: Some(DhtConfig::default()),
            bootstrap: Vec::new(),
            record_ttl: Duration::from_secs(3600),
            dns_bootstrap: Vec::new(),
            dns: DnsConfig::default(),
            mdns: None,
        }
    }
}

/// How one peer is reached now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathStatus {
    /// The peer.
    pub peer: PeerId,
    /// `direct`, `relay` or `none`.
    pub route: &'static str,
    /// The direct address, if proven.
    pub direct: Option<SocketAddr>,
    /// The proving round trip, in microseconds.
    pub direct_rtt_us: Option<u64>,
    /// The relay's address, if any.
    pub relay: Option<SocketAddr>,
}

#[derive(Debug)]
struct RelayState {
    relay: RelayAddr,
    registered_at: Option<Instant>,
    lifetime: Duration,
}

#[derive(Debug, Default)]
struct Session {
    /// Addresses the peer probed us from (peer-reflexive candidates), and on which socket.
    reflexive: Vec<(SocketAddr, Option<u16>)>,
    /// Extra sockets opened for the birthday strategy.
    aux: Vec<u16>,
    /// Wakes the session to punch again (direct path lost, network changed).
    repunch: Arc<Notify>,
    /// Probes received from the peer so far.
    probes_in: u64,
}

struct Inner {
    endpoint: Endpoint,
    secret: SecretKey,
    config: NodeConfig,
    nat: Mutex<NatObservations>,
    relays: Mutex<HashMap<SocketAddr, RelayState>>,
    relay_registered: Notify,
    sessions: Mutex<HashMap<PeerId, Session>>,
    last_punch: Mutex<HashMap<PeerId, Instant>>,
    probed_back: Mutex<HashSet<(PeerId, SocketAddr, Option<u16>)>>,
    dht_inbox: Mutex<Option<DhtInbox>>,
    dht: Mutex<Option<Dht>>,
    /// Peers seen on the LAN (mDNS): a fallback for finding them without the DHT.
    lan_peers: Mutex<HashMap<PeerId, Vec<SocketAddr>>>,
    cancel: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a round's initiator holds its probes after priming, waiting for the peer's first
/// probe: two round trips of the (relayed) connection, within bounds.
fn lead_window(conn: &Connection) -> Duration {
    (conn.rtt() * 2).clamp(Duration::from_millis(30), Duration::from_millis(500))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Builds a [`Node`]: protocols to serve, then [`NodeBuilder::spawn`].
pub struct NodeBuilder {
    inner: Arc<Inner>,
    router: RouterBuilder,
}

impl NodeBuilder {
    /// Serves `alpn` with `handler` (as [`RouterBuilder::accept`]).
    pub fn accept(mut self, alpn: impl AsRef<[u8]>, handler: impl ProtocolHandler) -> Self {
        self.router = self.router.accept(alpn, handler);
        self
    }

    /// Sends DHT datagrams arriving on the socket to `inbox` (the DHT driver's).
    pub fn dht_inbox(self, inbox: DhtInbox) -> Self {
        *lock(&self.inner.dht_inbox) = Some(inbox);
        self
    }

    /// Starts serving and the node's background tasks.
    pub fn spawn(self) -> Result<Node, TransportError> {
        let inner = self.inner;
        if let Some(config) = inner.config.dht.clone()
            && lock(&inner.dht_inbox).is_none()
        {
            let (tx, rx) = mpsc::channel(1024);
            let dht = Dht::spawn(
                inner.endpoint.net().clone(),
                inner.secret.clone(),
                config,
                rx,
            )
            .map_err(|e| TransportError::Config(format!("dht: {e}")))?;
            *lock(&inner.dht_inbox) = Some(tx);
            *lock(&inner.dht) = Some(dht);
            tokio::spawn(dht_keeper(inner.clone()));
        }
        let router = self
            .router
            .accept(
                PUNCH_ALPN,
                PunchHandler {
                    inner: Arc::downgrade(&inner),
                },
            )
            .spawn()?;
        let events = inner
            .endpoint
            .net()
            .take_events()
            .ok_or_else(|| TransportError::Config("socket events already taken".into()))?;
        tokio::spawn(event_loop(inner.clone(), events));
        tokio::spawn(relay_keeper(inner.clone()));
        tokio::spawn(observer_prober(inner.clone()));
        tokio::spawn(path_monitor(inner.clone()));
        if let Some(config) = inner.config.mdns.clone() {
            let port = inner.endpoint.local_addr().port();
            // A host without multicast (no interface, no route) still runs a node; it just
            // will not meet peers on the LAN.
            match Mdns::spawn(inner.endpoint.peer_id(), port, config) {
                Ok(mdns) => {
                    tokio::spawn(lan_keeper(inner.clone(), mdns));
                }
                Err(error) => warn!(%error, "mDNS not started: no LAN discovery"),
            }
        }
        Ok(Node {
            inner,
            router: Arc::new(router),
        })
    }
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    router: Arc<Router>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Binds the node's endpoint. Must be called inside a Tokio runtime.
    pub fn builder(secret: SecretKey, config: NodeConfig) -> Result<NodeBuilder, TransportError> {
        let endpoint = Endpoint::bind(secret.clone(), config.endpoint.clone())?;
        let router = Router::builder(endpoint.clone());
        let inner = Arc::new(Inner {
            endpoint,
            secret,
            config,
            nat: Mutex::new(NatObservations::default()),
            relays: Mutex::new(HashMap::new()),
            relay_registered: Notify::new(),
            sessions: Mutex::new(HashMap::new()),
            last_punch: Mutex::new(HashMap::new()),
            probed_back: Mutex::new(HashSet::new()),
            dht_inbox: Mutex::new(None),
            dht: Mutex::new(None),
            lan_peers: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
        });
        for relay in inner.config.relays.clone() {
            inner.add_relay(relay);
        }
        Ok(NodeBuilder { inner, router })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.endpoint.peer_id()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// Starts serving `alpn` with `handler` on the running node (see [`Router::add_protocol`]).
    pub fn add_protocol(
        &self,
        alpn: impl AsRef<[u8]>,
        handler: impl ProtocolHandler,
    ) -> Result<(), TransportError> {
        if alpn.as_ref() == PUNCH_ALPN {
            return Err(TransportError::ProtocolTaken(
                String::from_utf8_lossy(PUNCH_ALPN).into_owned(),
            ));
        }
        self.router.add_protocol(alpn, handler)
    }

    /// Stops offering `alpn` to new connections (see [`Router::remove_protocol`]).
    pub fn remove_protocol(&self, alpn: &[u8]) -> bool {
        alpn != PUNCH_ALPN && self.router.remove_protocol(alpn)
    }

    /// The protocols this node serves, its own (punching) included.
    pub fn protocols(&self) -> Vec<Vec<u8>> {
        self.router.protocols()
    }

    /// Whether this node relays for others.
    pub fn is_relay(&self) -> bool {
        self.inner.config.endpoint.relay.enabled
    }

    /// The NAT as observed so far.
    pub fn nat_status(&self) -> NatStatus {
        self.inner.nat_status()
    }

    /// The relays this node is registered with now.
    pub fn registered_relays(&self) -> Vec<RelayAddr> {
        let now = Instant::now();
        lock(&self.inner.relays)
            .values()
            .filter(|r| r.registered_at.is_some_and(|at| now < at + r.lifetime))
            .map(|r| r.relay)
            .collect()
    }

    /// Where this node can be reached: its candidates and its first registered relay.
    pub fn addrs(&self) -> PeerAddrs {
        PeerAddrs {
            addrs: self.inner.candidates(),
            relay: self.registered_relays().first().copied(),
        }
    }

    /// How each managed peer is reached now.
    pub fn paths(&self) -> Vec<PathStatus> {
        self.inner.endpoint.net().with_paths(|paths| {
            let mut list: Vec<PathStatus> = paths
                .iter()
                .map(|p| PathStatus {
                    peer: p.peer,
                    route: match p.route() {
                        Route::Direct(_) => "direct",
                        Route::Relay(_) => "relay",
                        Route::None => "none",
                    },
                    direct: p.direct.map(|d| d.addr),
                    direct_rtt_us: p.direct.map(|d| d.rtt.as_micros() as u64),
                    relay: p.relay,
                })
                .collect();
            list.sort_by_key(|p| p.peer.to_string());
            list
        })
    }

    /// The route to `peer` now.
    pub fn route(&self, peer: &PeerId) -> Route {
        self.inner
            .endpoint
            .net()
            .with_paths(|paths| paths.get(peer).map_or(Route::None, |p| p.route()))
    }

    /// Waits until this node is registered with at least one relay (or the timeout passes).
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.relay_registered.notified();
            if !self.registered_relays().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.registered_relays().is_empty();
            }
        }
    }

    /// Connects to `peer` for `alpn`: through its relay at once if it has one (punching for a
    /// direct path in the background), else directly at the first of its addresses that
    /// answers a probe.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: PeerAddrs,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let inner = &self.inner;
        if peer == self.peer_id() {
            return Err(TransportError::Unreachable {
                peer,
                reason: "that is this node".into(),
            });
        }
        let net = inner.endpoint.net();
        if net.with_paths(|paths| paths.ensure(peer).is_none()) {
            return Err(TransportError::Unreachable {
                peer,
                reason: "too many peers".into(),
            });
        }
        if let Some(relay) = addrs.relay {
            inner.ensure_relay(relay).await?;
            net.with_paths(|paths| paths.set_relay(peer, Some(relay.addr)));
        }
        let has_relay = net.with_paths(|paths| paths.get(&peer).is_some_and(|p| p.relay.is_some()));
        if has_relay {
            // No probes of our own yet: one that reached the peer's NAT before the peer sent
            // anything our way could make that NAT remap the peer (the conntrack race). The
            // punch session fires both sides together, primed.
            inner.start_punch(peer);
        } else {
            inner.wait_direct(peer, &addrs.addrs).await?;
        }
        inner.endpoint.connect_peer(peer, alpn).await
    }

    /// The DHT running on the node's socket, if any.
    pub fn dht(&self) -> Option<Dht> {
        lock(&self.inner.dht).clone()
    }

    /// Finds `peer` in the DHT (its signed record: addresses and relays, with each relay's
    /// address looked up too) and connects as [`Node::connect`] does.
    pub async fn connect_by_id(
        &self,
        peer: PeerId,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let addrs = self.find(peer).await?;
        self.connect(peer, addrs, alpn).await
    }

    /// Announces this node under a topic's DHT key ([`crate::dht::topic_key`] of the topic's
    /// secret, so DHT nodes cannot tell which room it is): a record signed by our key with our
    /// addresses and relay, valid for `record_ttl`. Announcements are not renewed: call again
    /// well before they expire. Returns how many DHT nodes stored it.
    pub async fn announce_topic(&self, topic: NodeId) -> Result<usize, TransportError> {
        let dht = self.dht().ok_or(TransportError::NoDht)?;
        let addrs = self.addrs();
        let now = unix_ms();
        let record = PeerRecord::sign(
            &self.inner.secret,
            &topic,
            addrs
                .addrs
                .into_iter()
                .take(crate::dht::record::MAX_ADDRS)
                .collect(),
            addrs.relay.map(|r| r.peer).into_iter().collect(),
            now,
            now / 1000 + self.inner.config.record_ttl.as_secs(),
        )
        .map_err(crate::dht::DhtError::from)?;
        Ok(dht.announce(topic, record).await?)
    }

    /// The peers announced under a topic's DHT key (verified records, newest per peer).
    pub async fn lookup_topic(&self, topic: NodeId) -> Result<Vec<PeerRecord>, TransportError> {
        let dht = self.dht().ok_or(TransportError::NoDht)?;
        Ok(dht.get_peers(topic).await)
    }

    /// Where the DHT says `peer` can be reached.
    pub async fn find(&self, peer: PeerId) -> Result<PeerAddrs, TransportError> {
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer,
            reason: reason.into(),
        };
        let lan = lock(&self.inner.lan_peers).get(&peer).cloned();
        let Some(dht) = self.dht() else {
            return lan
                .map(|addrs| PeerAddrs { addrs, relay: None })
                .ok_or_else(|| unreachable("no DHT on this node, and not on the LAN"));
        };
        let Some(record): Option<PeerRecord> = dht.lookup_peer(peer).await else {
            return lan
                .map(|addrs| PeerAddrs { addrs, relay: None })
                .ok_or_else(|| unreachable("no record in the DHT, and not on the LAN"));
        };
        let mut relay = None;
        for relay_peer in record.relays.iter().take(3) {
            let contacts = dht.find_node(NodeId::of_peer(relay_peer)).await;
            if let Some(contact) = contacts.iter().find(|c| c.peer == *relay_peer) {
                relay = Some(RelayAddr {
                    peer: *relay_peer,
                    addr: contact.addr,
                });
                break;
            }
            if let Some(record) = dht.lookup_peer(*relay_peer).await
                && let Some(addr) = record.addrs.first()
            {
                relay = Some(RelayAddr {
                    peer: *relay_peer,
                    addr: *addr,
                });
                break;
            }
        }
        Ok(PeerAddrs {
            addrs: record.addrs,
            relay,
        })
    }

    /// Resolves a name such as `alice.example.com` (DNS TXT `kith=…` and `node=…` under
    /// `_kith.<name>`) to the identity it names and the node keys that serve it.
    pub async fn resolve_name(&self, name: &str) -> Result<NameRecord, TransportError> {
        let resolver = DnsResolver::new(&self.inner.config.dns)
            .map_err(|e| TransportError::Config(format!("dns: {e}")))?;
        crate::discovery::resolve_name(&resolver, name)
            .await
            .map_err(|e| TransportError::Name {
                name: name.into(),
                reason: e.to_string(),
            })
    }

    /// Resolves `name` and connects to the first of its nodes that can be reached.
    pub async fn connect_by_name(
        &self,
        name: &str,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let record = self.resolve_name(name).await?;
        let mut last = None;
        for node in record.nodes.iter().take(8) {
            match self.connect_by_id(*node, alpn).await {
                Ok(conn) => return Ok(conn),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| TransportError::Name {
            name: name.into(),
            reason: "the name lists no node keys".into(),
        }))
    }

    /// Stops everything in order: background tasks and the DHT (which saves its routing
    /// table), then the router (connections, socket).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        if let Some(dht) = self.dht() {
            dht.shutdown().await;
        }
        self.router.shutdown().await;
    }
}

impl Inner {
    fn add_relay(&self, relay: RelayAddr) {
        self.endpoint.net().add_relay(relay.addr, relay.peer);
        lock(&self.relays).entry(relay.addr).or_insert(RelayState {
            relay,
            registered_at: None,
            lifetime: Duration::ZERO,
        });
    }

    async fn register(&self, relay: RelayAddr) {
        let frame =
            Frame::RelayRegister(RelayRegistration::sign(&self.secret, relay.peer, unix_ms()));
        if let Err(error) = self
            .endpoint
            .net()
            .send_frame(relay.addr, &frame.encode())
            .await
        {
            debug!(relay = %relay.addr, %error, "relay registration not sent");
        }
    }

    fn is_registered(&self, addr: &SocketAddr) -> bool {
        let now = Instant::now();
        lock(&self.relays)
            .get(addr)
            .is_some_and(|r| r.registered_at.is_some_and(|at| now < at + r.lifetime))
    }

    /// Registers with `relay` unless already registered, waiting for the answer.
    async fn ensure_relay(&self, relay: RelayAddr) -> Result<(), TransportError> {
        if self.is_registered(&relay.addr) {
            return Ok(());
        }
        self.add_relay(relay);
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        loop {
            let notified = self.relay_registered.notified();
            self.register(relay).await;
            let retry = tokio::time::Instant::now() + Duration::from_millis(500);
            let _ = tokio::time::timeout_at(retry.min(deadline), notified).await;
            if self.is_registered(&relay.addr) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TransportError::Unreachable {
                    peer: relay.peer,
                    reason: format!("relay at {} did not accept our registration", relay.addr),
                });
            }
        }
    }

    fn nat_status(&self) -> NatStatus {
        let bound = self.endpoint.local_addr();
        let mut local: Vec<SocketAddr> = Vec::new();
        for observer in self.observer_addrs() {
            if let Some(addr) = local_addr_towards(bound, observer) {
                local.push(addr);
            }
        }
        lock(&self.nat).status(&local)
    }

    fn observer_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.config.observers.clone();
        addrs.extend(lock(&self.relays).keys().copied());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Our candidate addresses: local ones towards our observers and relays, then the public
    /// ones they saw.
    fn candidates(&self) -> Vec<SocketAddr> {
        let bound = self.endpoint.local_addr();
        let mut candidates: Vec<SocketAddr> = Vec::new();
        for observer in self.observer_addrs() {
            if let Some(addr) = local_addr_towards(bound, observer) {
                candidates.push(addr);
            }
        }
        if candidates.is_empty() && !bound.ip().is_unspecified() {
            candidates.push(bound);
        }
        candidates.extend(self.nat_status().public_addrs);
        let mut seen = HashSet::new();
        candidates.retain(|a| seen.insert(*a));
        candidates.truncate(MAX_CANDIDATES);
        candidates
    }

    fn direct(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.endpoint
            .net()
            .with_paths(|paths| paths.get(peer).and_then(|p| p.direct.map(|d| d.addr)))
    }

    /// Probes `addrs` until one answers or the connect timeout passes.
    async fn wait_direct(&self, peer: PeerId, addrs: &[SocketAddr]) -> Result<(), TransportError> {
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        loop {
            if self.direct(&peer).is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline || addrs.is_empty() {
                return Err(TransportError::Unreachable {
                    peer,
                    reason: if addrs.is_empty() {
                        "no relay and no address".into()
                    } else {
                        "no relay, and no address answered".into()
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            for addr in addrs.iter().take(MAX_CANDIDATES) {
                let _ = self
                    .endpoint
                    .net()
                    .send_probe(*addr, Some(peer), None)
                    .await;
            }
        }
    }

    /// Starts a punch session with `peer` as the dialler, unless one runs or one ran too
    /// recently (the per-peer rate limit).
    fn start_punch(self: &Arc<Self>, peer: PeerId) {
        {
            let now = Instant::now();
            let mut last = lock(&self.last_punch);
            if lock(&self.sessions).contains_key(&peer)
                || last
                    .get(&peer)
                    .is_some_and(|at| now.duration_since(*at) < self.config.punch.min_interval)
            {
                return;
            }
            last.insert(peer, now);
        }
        let inner = self.clone();
        tokio::spawn(async move {
            let conn = match inner.endpoint.connect_peer(peer, PUNCH_ALPN).await {
                Ok(conn) => conn,
                Err(error) => {
                    debug!(%peer, %error, "punch connection failed");
                    return;
                }
            };
            if let Err(error) = inner.clone().run_session(conn, true).await {
                debug!(%peer, %error, "punch session ended");
            }
        });
    }

    /// One punch session: exchange candidates, then punch in rounds; afterwards, stay to punch
    /// again when asked (by the peer, or by our path monitor).
    async fn run_session(
        self: Arc<Self>,
        conn: Connection,
        dialler: bool,
    ) -> Result<(), TransportError> {
        let peer = conn.remote_peer();
        let (mut send, recv) = if dialler {
            conn.open_bi().await?
        } else {
            conn.accept_bi().await?
        };
        let repunch = {
            let mut sessions = lock(&self.sessions);
            sessions.entry(peer).or_default().repunch.clone()
        };
        let result = self
            .session_rounds(&conn, &mut send, recv, dialler, &repunch)
            .await;
        lock(&self.sessions).remove(&peer);
        self.endpoint.net().close_aux(&peer);
        result
    }

    async fn session_rounds(
        self: &Arc<Self>,
        conn: &Connection,
        send: &mut crate::connection::SendStream,
        mut recv: crate::connection::RecvStream,
        dialler: bool,
        repunch: &Notify,
    ) -> Result<(), TransportError> {
        let peer = conn.remote_peer();
        let hello = |inner: &Self| Message::Hello {
            mapping: inner.nat_status().mapping,
            candidates: inner.candidates(),
        };
        hello(self).write(send).await?;
        // Messages arrive on their own task: reading is not cancel-safe, waiting on a channel is.
        // `Direct` also sets a flag at once, so that a running round can stop early.
        let peer_direct = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::channel(16);
        let flag = peer_direct.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(message)) = Message::read(&mut recv).await {
                if message == Message::Direct {
                    flag.store(true, Ordering::Relaxed);
                }
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let (mut peer_mapping, mut peer_candidates) = match rx.recv().await {
            Some(Message::Hello {
                mapping,
                candidates,
            }) => (mapping, candidates),
            Some(other) => {
                return Err(TransportError::Protocol(format!(
                    "expected hello, got {other:?}"
                )));
            }
            None => return Ok(()),
        };
        let config = self.config.punch.clone();
        // Against an endpoint-independent peer from behind an endpoint-dependent NAT, open the
        // birthday sockets now, so that their mappings exist before the peer starts spraying.
        if self.nat_status().mapping == Mapping::EndpointDependent
            && peer_mapping == Mapping::EndpointIndependent
            && config.birthday_sockets > 0
        {
            self.open_birthday(peer, &peer_candidates).await;
        }
        let mut round: u8 = 0;
        let mut told_direct = false;
        loop {
            let direct = self.direct(&peer).is_some();
            if direct && !told_direct {
                Message::Direct.write(send).await?;
                told_direct = true;
            }
            // Rounds go on until *both* sides have a proven path: our probes are what lets a
            // peer behind an endpoint-dependent NAT prove its side (it probes back whatever
            // address reached it).
            let done = direct && peer_direct.load(Ordering::Relaxed);
            let punching = !done && round < config.rounds;
            if !punching {
                // Keep only the extra socket the direct path runs over, if any.
                self.endpoint.net().close_aux(&peer);
                if let Some(session) = lock(&self.sessions).get_mut(&peer) {
                    session.aux.clear();
                }
            }
            if punching && initiates(round, dialler) {
                self.prime(peer, &self.punch_candidates(&peer_candidates))
                    .await;
                Message::Sync { round }.write(send).await?;
                tokio::time::sleep(conn.rtt() / 2).await;
                self.punch_round(
                    peer,
                    &peer_candidates,
                    peer_mapping,
                    &peer_direct,
                    Some(lead_window(conn)),
                )
                .await;
                round += 1;
                continue;
            }
            let wait = if punching {
                config.round_timeout + conn.rtt() * 2
            } else if !done {
                config.retry_after
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                message = rx.recv() => match message {
                    None => return Ok(()),
                    Some(Message::Hello { mapping, candidates }) => {
                        peer_mapping = mapping;
                        peer_candidates = candidates;
                    }
                    Some(Message::Sync { round: theirs }) => {
                        self.punch_round(peer, &peer_candidates, peer_mapping, &peer_direct, None)
                            .await;
                        round = theirs.saturating_add(1);
                    }
                    Some(Message::Direct) => {}
                },
                _ = repunch.notified() => {
                    debug!(%peer, "punching again");
                    told_direct = false;
                    peer_direct.store(false, Ordering::Relaxed);
                    hello(self).write(send).await?;
                    self.prime(peer, &self.punch_candidates(&peer_candidates))
                        .await;
                    Message::Sync { round: 0 }.write(send).await?;
                    tokio::time::sleep(conn.rtt() / 2).await;
                    self.punch_round(
                        peer,
                        &peer_candidates,
                        peer_mapping,
                        &peer_direct,
                        Some(lead_window(conn)),
                    )
                    .await;
                    round = 1;
                }
                _ = tokio::time::sleep(wait) => {
                    if punching {
                        // The peer's turn passed without a Sync: take the next round ourselves.
                        round = round.saturating_add(1);
                    } else if !done {
                        // Every round failed: try again from the start after a pause (networks
                        // change; a firewall may have let up).
                        round = 0;
                    }
                }
                _ = self.cancel.cancelled() => return Ok(()),
            }
        }
    }

    /// The peer's candidates this socket can reach.
    fn punch_candidates(&self, candidates: &[SocketAddr]) -> Vec<SocketAddr> {
        let bound = self.endpoint.net().bound_addr();
        candidates
            .iter()
            .copied()
            .filter(|a| a.ip().is_ipv4() == bound.is_ipv4() || bound.is_ipv6())
            .take(MAX_CANDIDATES)
            .collect()
    }

    /// Priming: a low-TTL probe to every candidate opens our NAT's mapping towards it and dies
    /// before the peer's NAT. Sent twice: a lost one would leave the race open.
    async fn prime(&self, peer: PeerId, candidates: &[SocketAddr]) {
        let ttl = Some(self.config.punch.priming_ttl);
        for _ in 0..2 {
            for addr in candidates {
                let _ = self.endpoint.net().send_probe(*addr, Some(peer), ttl).await;
            }
        }
    }

    /// One round of probing: priming, then probes to every candidate (and to addresses the
    /// peer probed us from) until both sides have proven their path, or ours is proven and a
    /// few probes went out for the peer's sake, or the round times out.
    ///
    /// The round's initiator (`lead`) has primed before sending `Sync`, so the peer's probes
    /// find its mapping; here it holds its own probes until the peer's first probe arrives
    /// (answered at once by the event loop), or `lead` passes. The peer primed before it
    /// probed, so nothing of ours reaches its NAT before its own mapping exists, even when the
    /// `Sync` that started its side was lost and resent late: no conntrack race either way.
    async fn punch_round(
        &self,
        peer: PeerId,
        candidates: &[SocketAddr],
        peer_mapping: Mapping,
        peer_direct: &AtomicBool,
        lead: Option<Duration>,
    ) {
        let config = &self.config.punch;
        let net = self.endpoint.net();
        let started = Instant::now();
        let candidates = self.punch_candidates(candidates);
        if lead.is_none() {
            self.prime(peer, &candidates).await;
        }
        let own_mapping = self.nat_status().mapping;
        if own_mapping == Mapping::EndpointDependent
            && peer_mapping == Mapping::EndpointIndependent
            && config.birthday_sockets > 0
        {
            self.open_birthday(peer, &candidates).await;
        }
        if let Some(window) = lead {
            let probes_in = |inner: &Self| lock(&inner.sessions).get(&peer).map(|s| s.probes_in);
            let before = probes_in(self);
            while started.elapsed() < window
                && self.direct(&peer).is_none()
                && probes_in(self) == before
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let spray = peer_mapping == Mapping::EndpointDependent
            && own_mapping.is_predictable()
            && config.spray_budget > 0;
        let mut sprayed = 0u32;
        let mut sent = 0u32;
        while started.elapsed() < config.round_timeout {
            if self.direct(&peer).is_some()
                && (peer_direct.load(Ordering::Relaxed) || sent >= config.fast_probes / 3)
            {
                debug!(
                    %peer,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "direct path proven"
                );
                return;
            }
            let reflexive = lock(&self.sessions)
                .get(&peer)
                .map(|s| s.reflexive.clone())
                .unwrap_or_default();
            for addr in &candidates {
                let _ = net.send_probe(*addr, Some(peer), None).await;
            }
            for (addr, via) in &reflexive {
                let _ = net.send_probe_via(*via, *addr, Some(peer), None).await;
            }
            if spray {
                // Random ports of the peer's public addresses: a hit lands on the mapping its
                // NAT made towards us.
                let per_tick = (config.spray_budget / 20).max(1);
                for _ in 0..per_tick {
                    if sprayed >= config.spray_budget {
                        break;
                    }
                    for addr in candidates.iter().filter(|a| !is_private(a)) {
                        let port = rand::thread_rng().gen_range(1024..=u16::MAX);
                        let _ = net
                            .send_probe(SocketAddr::new(addr.ip(), port), Some(peer), None)
                            .await;
                    }
                    sprayed += 1;
                }
            }
            sent += 1;
            let interval = if sent < config.fast_probes {
                config.fast_interval
            } else {
                config.slow_interval
            };
            tokio::time::sleep(interval).await;
        }
        debug!(%peer, "punch round timed out");
    }

    /// The birthday strategy's half on an endpoint-dependent NAT: many extra sockets, each
    /// sending a priming probe (low TTL: it makes a mapping on our NAT and dies before the
    /// peer's) to the peer's public addresses, so that our NAT holds many mappings towards the
    /// peer, any of which the peer's random-port probes may hit.
    async fn open_birthday(&self, peer: PeerId, candidates: &[SocketAddr]) {
        let net = self.endpoint.net();
        let opened = lock(&self.sessions)
            .get(&peer)
            .map(|s| s.aux.clone())
            .unwrap_or_default();
        let aux = if opened.is_empty() {
            match net.open_aux(peer, self.config.punch.birthday_sockets) {
                Ok(ids) => {
                    if let Some(session) = lock(&self.sessions).get_mut(&peer) {
                        session.aux = ids.clone();
                    }
                    ids
                }
                Err(error) => {
                    debug!(%peer, %error, "no extra sockets for the birthday strategy");
                    return;
                }
            }
        } else {
            opened
        };
        let public: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|a| !is_private(a))
            .collect();
        debug!(%peer, sockets = aux.len(), "birthday: priming mappings towards the peer");
        let ttl = Some(self.config.punch.priming_ttl);
        for id in aux {
            for addr in &public {
                let _ = net.send_probe_via(Some(id), *addr, Some(peer), ttl).await;
            }
        }
    }

    fn handle_event(self: &Arc<Self>, event: NetEvent) {
        match event {
            NetEvent::Dht { from, bytes } => {
                if let Some(inbox) = lock(&self.dht_inbox).as_ref() {
                    let _ = inbox.try_send((from, bytes));
                }
            }
            NetEvent::Probed { from, peer, via } => {
                let is_new = {
                    let mut sessions = lock(&self.sessions);
                    match sessions.get_mut(&peer) {
                        Some(session) => {
                            session.probes_in += 1;
                            if !session.reflexive.contains(&(from, via))
                                && session.reflexive.len() < MAX_CANDIDATES
                            {
                                session.reflexive.push((from, via));
                            }
                            true
                        }
                        // No session yet (the dialler's probes can beat its connection through
                        // the relay): still probe back a peer we manage a path for, once per
                        // address.
                        None => {
                            let managed = self
                                .endpoint
                                .net()
                                .with_paths(|paths| paths.get(&peer).is_some());
                            let mut probed = lock(&self.probed_back);
                            if probed.len() >= 1024 {
                                probed.clear();
                            }
                            managed && probed.insert((peer, from, via))
                        }
                    }
                };
                // A peer we are punching with reached us from `from`: probe it back, so that our
                // side proves the path too (its NAT may only let `from` through).
                if is_new && self.direct(&peer).is_none() {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        let _ = inner
                            .endpoint
                            .net()
                            .send_probe_via(via, from, Some(peer), None)
                            .await;
                    });
                }
            }
            NetEvent::ProbeAnswered { from, observed, .. } => {
                if self.config.observers.contains(&from) {
                    self.observe(from, observed);
                }
            }
            NetEvent::RelayRegistered {
                relay,
                observed,
                lifetime,
            } => {
                let known = {
                    let mut relays = lock(&self.relays);
                    match relays.get_mut(&relay) {
                        Some(state) => {
                            state.registered_at = Some(Instant::now());
                            state.lifetime = lifetime;
                            true
                        }
                        None => false,
                    }
                };
                if known {
                    self.observe(relay, observed);
                    self.relay_registered.notify_waiters();
                }
            }
            NetEvent::RelayRefused { relay, reason } => {
                if let Some(state) = lock(&self.relays).get_mut(&relay) {
                    warn!(%relay, reason, "relay refused us");
                    state.registered_at = None;
                }
            }
        }
    }

    /// Records what an observer saw. A new public IP, or a new port behind a NAT that should
    /// keep its ports (endpoint-independent mapping), means our network changed: punch again.
    /// (Behind an endpoint-dependent NAT a mapping that expired and came back on another port
    /// is normal.)
    fn observe(&self, observer: SocketAddr, observed: SocketAddr) {
        let previous = lock(&self.nat).get(&observer);
        let predictable = self.nat_status().mapping.is_predictable();
        lock(&self.nat).record(observer, observed, Instant::now());
        let changed = previous.is_some_and(|before| {
            before.ip() != observed.ip() || (predictable && before.port() != observed.port())
        });
        if changed {
            info!(%observer, %observed, "public address changed; punching again");
            for session in lock(&self.sessions).values() {
                session.repunch.notify_one();
            }
        }
    }
}

fn is_private(addr: &SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_loopback() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct PunchHandler {
    inner: std::sync::Weak<Inner>,
}

#[async_trait]
impl ProtocolHandler for PunchHandler {
    async fn accept(&self, conn: Connection) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let peer = conn.remote_peer();
        if let Err(error) = inner.run_session(conn, false).await {
            debug!(%peer, %error, "punch session ended");
        }
    }
}

async fn event_loop(inner: Arc<Inner>, mut events: mpsc::Receiver<NetEvent>) {
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => inner.handle_event(event),
                None => return,
            },
        }
    }
}

/// Registers with every relay, renewing at a third of the lifetime it granted (and retrying
/// quickly while unregistered).
async fn relay_keeper(inner: Arc<Inner>) {
    loop {
        let relays: Vec<(RelayAddr, bool)> = {
            let now = Instant::now();
            lock(&inner.relays)
                .values()
                .map(|r| {
                    let fresh = r.registered_at.is_some_and(|at| now < at + r.lifetime / 3);
                    (r.relay, fresh)
                })
                .collect()
        };
        let mut all_fresh = true;
        for (relay, fresh) in relays {
            if !fresh {
                all_fresh = false;
                inner.register(relay).await;
            }
        }
        let pause = if all_fresh {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Asks the configured observers for our address, quickly at first, then every 30 s (which
/// also notices a network change).
async fn observer_prober(inner: Arc<Inner>) {
    let mut round = 0u32;
    loop {
        for observer in inner.config.observers.clone() {
            let _ = inner.endpoint.net().send_probe(observer, None, None).await;
        }
        round += 1;
        let pause = if round < 5 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(30)
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Re-probes direct paths; one silent for three intervals is dropped (traffic falls back to
/// the relay) and its session punches again.
async fn path_monitor(inner: Arc<Inner>) {
    let interval = inner.config.path_check_interval;
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let now = Instant::now();
        type Checked = (PeerId, SocketAddr, Option<u16>, Option<Instant>, bool);
        let paths: Vec<Checked> = inner.endpoint.net().with_paths(|paths| {
            paths
                .iter()
                .filter_map(|p| {
                    p.direct
                        .map(|d| (p.peer, d.addr, d.via, p.last_direct_rx, p.relay.is_some()))
                })
                .collect()
        });
        for (peer, addr, via, last_rx, has_relay) in paths {
            let silent = last_rx.is_none_or(|at| now.duration_since(at) > interval * 3);
            if silent && has_relay {
                warn!(%peer, %addr, "direct path went quiet; back to the relay");
                inner
                    .endpoint
                    .net()
                    .with_paths(|paths| paths.drop_direct(&peer));
                if let Some(session) = lock(&inner.sessions).get(&peer) {
                    session.repunch.notify_one();
                }
            } else {
                let _ = inner
                    .endpoint
                    .net()
                    .send_probe_via(via, addr, Some(peer), None)
                    .await;
            }
        }
    }
}

/// Keeps the node in the DHT: bootstraps from the configured seeds until the routing table has
/// contacts, learns our address from what DHT nodes saw, and publishes our signed record
/// (candidates and registered relays) whenever it changes, and before it expires.
async fn dht_keeper(inner: Arc<Inner>) {
    let Some(dht) = lock(&inner.dht).clone() else {
        return;
    };
    let mut bootstrapped =
        inner.config.bootstrap.is_empty() && inner.config.dns_bootstrap.is_empty();
    let mut published: Option<(Vec<SocketAddr>, Vec<PeerId>, Instant)> = None;
    loop {
        if !bootstrapped {
            let mut seeds = inner.config.bootstrap.clone();
            seeds.extend(dns_seeds(&inner).await);
            match dht.bootstrap(seeds).await {
                Ok(size) => {
                    debug!(contacts = size, "dht bootstrapped");
                    bootstrapped = true;
                }
                Err(error) => debug!(%error, "dht bootstrap failed; retrying"),
            }
        }
        for (observer, observed) in dht.observed_addrs().await {
            inner.observe(observer, observed);
        }
        let candidates = inner.candidates();
        let relays: Vec<PeerId> = {
            let now = Instant::now();
            lock(&inner.relays)
                .values()
                .filter(|r| r.registered_at.is_some_and(|at| now < at + r.lifetime))
                .map(|r| r.relay.peer)
                .collect()
        };
        let stale = published.as_ref().is_none_or(|(addrs, rels, at)| {
            *addrs != candidates || *rels != relays || at.elapsed() > inner.config.record_ttl / 2
        });
        if bootstrapped && stale && (!candidates.is_empty() || !relays.is_empty()) {
            match dht
                .publish_self(candidates.clone(), relays.clone(), inner.config.record_ttl)
                .await
            {
                Ok(stored) => {
                    debug!(stored, "peer record published");
                    published = Some((candidates, relays, Instant::now()));
                }
                Err(error) => debug!(%error, "peer record not published"),
            }
        }
        let pause = if bootstrapped {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Bootstrap addresses from the configured DNS domains (failures are logged and skipped).
async fn dns_seeds(inner: &Inner) -> Vec<SocketAddr> {
    if inner.config.dns_bootstrap.is_empty() {
        return Vec::new();
    }
    let resolver = match DnsResolver::new(&inner.config.dns) {
        Ok(resolver) => resolver,
        Err(error) => {
            warn!(%error, "no DNS resolver; DNS bootstrap skipped");
            return Vec::new();
        }
    };
    let mut seeds = Vec::new();
    for domain in &inner.config.dns_bootstrap {
        match crate::discovery::resolve_bootstrap(&resolver, domain).await {
            Ok(peers) => seeds.extend(peers.into_iter().flat_map(|p: BootstrapPeer| p.addrs)),
            Err(error) => warn!(%domain, %error, "DNS bootstrap failed"),
        }
    }
    seeds
}

/// Meets the nodes mDNS finds on the LAN: remembers their addresses and adds them to the DHT.
async fn lan_keeper(inner: Arc<Inner>, mdns: Mdns) {
    let mut found = mdns.discovered();
    loop {
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            peer = found.recv() => match peer {
                Ok(peer) => {
                    debug!(peer = %peer.peer, addrs = ?peer.addrs, "found on the LAN");
                    {
                        let mut lan = lock(&inner.lan_peers);
                        if lan.len() < 1024 || lan.contains_key(&peer.peer) {
                            lan.insert(peer.peer, peer.addrs.clone());
                        }
                    }
                    let dht = lock(&inner.dht).clone();
                    if let Some(dht) = dht {
                        let _ = dht.bootstrap(peer.addrs).await;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            },
        }
    }
    mdns.shutdown().await;
}
