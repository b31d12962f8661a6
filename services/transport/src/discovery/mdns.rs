//! Kith nodes on the local link, by multicast DNS service discovery (RFC 6762, RFC 6763).
//!
//! Each node announces one DNS-SD service instance of type `_kith._udp.local`:
//!
//! ```text
//! _kith._udp.local.                      PTR  kith-<20 hex>._kith._udp.local.
//! kith-<20 hex>._kith._udp.local.        SRV  0 0 <port> kith-<20 hex>.local.
//! kith-<20 hex>._kith._udp.local.        TXT  "peer=<peer id, 64 hex>"
//! kith-<20 hex>.local.                   A    <interface address>   (when configured)
//! ```
//!
//! The instance label is `kith-` and the first 10 bytes of the peer id in hex; a receiver
//! recomputes it from the TXT `peer=` value and drops the instance if they differ. The address
//! a peer is dialled at is the source address of its multicast packet with the SRV port, so a
//! packet cannot point others at a third host; A records are sent for other DNS-SD browsers
//! (`avahi-browse`) and not trusted.
//!
//! [`Mdns::spawn`] binds `0.0.0.0:5353` (shared with other responders, such as Avahi, through
//! `SO_REUSEADDR`), joins 224.0.0.251 on the configured interfaces, sends a query for
//! `_kith._udp.local` so nodes already there answer at once, announces itself twice one second
//! apart and then every [`MdnsConfig::announce_interval`], answers queries for the service (at
//! most once a second, with known-answer suppression), and says goodbye (TTL 0) on
//! [`Mdns::shutdown`]. Peers found are sent to every [`Mdns::discovered`] receiver when they
//! are new or show a new address; [`Mdns::peers`] is the current set. A peer that is not heard
//! from for its TTL is forgotten, and reported again when it comes back.
//!
//! Bounded throughout: packets over [`MAX_PACKET`] bytes or with more than [`MAX_RECORDS`]
//! records are dropped before decoding, at most [`MdnsConfig::max_peers`] peers and
//! [`MAX_ADDRS_PER_PEER`] addresses each are remembered. A packet that does not decode, comes
//! from a port other than the mDNS port, or holds an instance whose name, peer id or port do not
//! check out is ignored without any effect. Our own announcements (looped back by the kernel)
//! are recognised by peer id and ignored.
//!
//! Why not a crate: hickory-proto, already used for unicast DNS, encodes and decodes the
//! messages, and the rest is one socket and a loop; `mdns-sd` would bring its own threads and
//! interface enumeration for what is a few hundred lines here. IPv6 (ff02::fb) and enumerating
//! every interface automatically are not done yet: by default the kernel picks the interface
//! (the one the default route uses), and [`MdnsConfig::interfaces`] lists others.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use super::{BootstrapPeer, DiscoveryError, MAX_ADDRS_PER_PEER};
use crate::peer::PeerId;

/// Largest packet read; anything longer is dropped (RFC 6762 allows up to 9000 bytes).
pub const MAX_PACKET: usize = 9000;
/// Most records (questions included) one packet may carry; packets with more are dropped.
pub const MAX_RECORDS: usize = 64;
/// The DNS-SD service type.
pub const SERVICE: &str = "_kith._udp.local.";
/// The mDNS IPv4 group and port.
pub const MDNS_V4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353);

/// Longest TTL taken from a peer's records: a peer silent for longer is forgotten.
const MAX_TTL: u32 = 3600;
/// How often the loop wakes for timers (announcements, deferred answers, expiry).
const TICK: Duration = Duration::from_millis(250);
/// RFC 6762 section 6: a record is not multicast again within a second.
const MIN_MULTICAST_GAP: Duration = Duration::from_secs(1);
/// Events buffered per receiver before it lags.
const EVENT_BUFFER: usize = 64;

/// How the mDNS service runs.
#[derive(Clone, Debug)]
pub struct MdnsConfig {
    /// Multicast group and port (224.0.0.251:5353; tests may choose another port).
    pub group: SocketAddrV4,
    /// Addresses of the interfaces to join the group on and send from. Empty: the kernel's
    /// choice (the interface of the route to 224.0.0.251, normally the default route's).
    pub interfaces: Vec<Ipv4Addr>,
    /// Time between announcements after the first two.
    pub announce_interval: Duration,
    /// TTL of our records, in seconds; peers forget us after it.
    pub ttl: u32,
    /// Most peers remembered at once.
    pub max_peers: usize,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            group: MDNS_V4,
            interfaces: Vec::new(),
            announce_interval: Duration::from_secs(60),
            ttl: 120,
            max_peers: 256,
        }
    }
}

/// A running mDNS responder and browser. Dropping it stops the task without a goodbye; prefer
/// [`Mdns::shutdown`].
#[derive(Debug)]
pub struct Mdns {
    peers: Arc<Mutex<HashMap<PeerId, Known>>>,
    events: broadcast::Sender<BootstrapPeer>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Known {
    addrs: Vec<SocketAddr>,
    expires: Instant,
}

impl Mdns {
    /// Starts announcing `peer`, reachable on UDP `port`, and browsing for other Kith nodes.
    /// Must be called inside a tokio runtime.
    pub fn spawn(peer: PeerId, port: u16, config: MdnsConfig) -> Result<Self, DiscoveryError> {
        if port == 0 {
            return Err(DiscoveryError::Config("mdns: port must not be 0".into()));
        }
        if config.max_peers == 0 || config.ttl == 0 || config.announce_interval.is_zero() {
            return Err(DiscoveryError::Config(
                "mdns: max_peers, ttl and announce_interval must be positive".into(),
            ));
        }
        let socket = bind_multicast(&config)?;
        let peers = Arc::new(Mutex::new(HashMap::new()));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let cancel = CancellationToken::new();
        let mut state = State {
            me: peer,
            port,
            instance: instance_name(&peer),
            host: host_name(&peer),
            service: Name::from_ascii(SERVICE).expect("valid service name"),
            config,
            socket,
            peers: peers.clone(),
            events: events.clone(),
            last_announce: None,
            answer_due: None,
        };
        let token = cancel.clone();
        let task = tokio::spawn(async move { state.run(token).await });
        Ok(Self {
            peers,
            events,
            cancel,
            task: Some(task),
        })
    }

    /// A receiver of peers as they are found (or show a new address). Each call gives a new
    /// receiver that sees what is found from then on; [`Mdns::peers`] gives what is known now.
    pub fn discovered(&self) -> broadcast::Receiver<BootstrapPeer> {
        self.events.subscribe()
    }

    /// The peers known now.
    pub fn peers(&self) -> Vec<BootstrapPeer> {
        let peers = self.peers.lock().expect("mdns peers lock");
        peers
            .iter()
            .map(|(peer, known)| BootstrapPeer {
                peer: *peer,
                addrs: known.addrs.clone(),
            })
            .collect()
    }

    /// Says goodbye (our records with TTL 0) and stops.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `kith-` and the first 10 bytes of the peer id in hex.
fn instance_label(peer: &PeerId) -> String {
    format!("kith-{}", hex::encode(&peer.as_bytes()[..10]))
}

fn instance_name(peer: &PeerId) -> Name {
    Name::from_ascii(format!("{}.{SERVICE}", instance_label(peer))).expect("valid instance name")
}

fn host_name(peer: &PeerId) -> Name {
    Name::from_ascii(format!("{}.local.", instance_label(peer))).expect("valid host name")
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> DiscoveryError {
    move |source| DiscoveryError::Io { context, source }
}

fn bind_multicast(config: &MdnsConfig) -> Result<UdpSocket, DiscoveryError> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(io_error("mdns: create socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(io_error("mdns: set SO_REUSEADDR"))?;
    let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, config.group.port());
    socket
        .bind(&SocketAddr::V4(bind).into())
        .map_err(io_error("mdns: bind the mdns port"))?;
    let interfaces = if config.interfaces.is_empty() {
        vec![Ipv4Addr::UNSPECIFIED]
    } else {
        config.interfaces.clone()
    };
    for interface in &interfaces {
        socket
            .join_multicast_v4(config.group.ip(), interface)
            .map_err(io_error("mdns: join the multicast group"))?;
    }
    // Loop back, so that two nodes on one host see each other (our own packets are ignored).
    socket
        .set_multicast_loop_v4(true)
        .map_err(io_error("mdns: set multicast loop"))?;
    // RFC 6762 section 11: sent with IP TTL 255 (and on-link anyway: 224.0.0.0/24).
    socket
        .set_multicast_ttl_v4(255)
        .map_err(io_error("mdns: set multicast ttl"))?;
    socket
        .set_nonblocking(true)
        .map_err(io_error("mdns: set non-blocking"))?;
    UdpSocket::from_std(socket.into()).map_err(io_error("mdns: register socket"))
}

struct State {
    me: PeerId,
    port: u16,
    instance: Name,
    host: Name,
    service: Name,
    config: MdnsConfig,
    socket: UdpSocket,
    peers: Arc<Mutex<HashMap<PeerId, Known>>>,
    events: broadcast::Sender<BootstrapPeer>,
    last_announce: Option<Instant>,
    answer_due: Option<Instant>,
}

impl State {
    async fn run(&mut self, cancel: CancellationToken) {
        self.send(&self.query()).await;
        self.announce().await;
        let mut next_announce = Instant::now() + MIN_MULTICAST_GAP;
        let mut tick = tokio::time::interval(TICK);
        // One byte more than allowed, to tell a packet of exactly MAX_PACKET from a longer one.
        let mut buf = vec![0u8; MAX_PACKET + 1];
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_packet(&buf[..len], from),
                    Err(error) => {
                        debug!(%error, "mdns receive failed");
                        tokio::time::sleep(TICK).await;
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= next_announce || self.answer_due.is_some_and(|due| now >= due) {
                        self.announce().await;
                        next_announce = now + self.config.announce_interval;
                    }
                    self.expire(now);
                }
            }
        }
        // Goodbye: the same records with TTL 0 (RFC 6762 section 10.1).
        let goodbye = self.announcement(0);
        self.send(&goodbye).await;
    }

    fn query(&self) -> Message {
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = false;
        message.add_query(Query::query(self.service.clone(), RecordType::PTR));
        message
    }

    fn announcement(&self, ttl: u32) -> Message {
        let mut message = Message::response(0, OpCode::Query);
        message.metadata.authoritative = true;
        message.add_answer(Record::from_rdata(
            self.service.clone(),
            ttl,
            RData::PTR(PTR(self.instance.clone())),
        ));
        message.add_answer(Record::from_rdata(
            self.instance.clone(),
            ttl,
            RData::SRV(SRV::new(0, 0, self.port, self.host.clone())),
        ));
        message.add_answer(Record::from_rdata(
            self.instance.clone(),
            ttl,
            RData::TXT(TXT::new(vec![format!("peer={}", self.me)])),
        ));
        for interface in &self.config.interfaces {
            if !interface.is_unspecified() {
                message.add_additional(Record::from_rdata(
                    self.host.clone(),
                    ttl,
                    RData::A(A(*interface)),
                ));
            }
        }
        message
    }

    async fn announce(&mut self) {
        let message = self.announcement(self.config.ttl);
        self.send(&message).await;
        self.last_announce = Some(Instant::now());
        self.answer_due = None;
    }

    async fn send(&self, message: &Message) {
        let bytes = match message.to_vec() {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(%error, "mdns message did not encode");
                return;
            }
        };
        let to = SocketAddr::V4(self.config.group);
        if self.config.interfaces.is_empty() {
            if let Err(error) = self.socket.send_to(&bytes, to).await {
                debug!(%error, "mdns send failed");
            }
            return;
        }
        for interface in &self.config.interfaces {
            if let Err(error) = SockRef::from(&self.socket).set_multicast_if_v4(interface) {
                debug!(%error, %interface, "mdns: cannot send on interface");
                continue;
            }
            if let Err(error) = self.socket.send_to(&bytes, to).await {
                debug!(%error, %interface, "mdns send failed");
            }
        }
    }

    fn on_packet(&mut self, bytes: &[u8], from: SocketAddr) {
        if bytes.len() > MAX_PACKET {
            trace!(%from, "mdns: dropping oversized packet");
            return;
        }
        // RFC 6762 section 11: replies come from the mDNS port; we answer no legacy unicast.
        if from.port() != self.config.group.port() {
            trace!(%from, "mdns: dropping packet from another port");
            return;
        }
        if bytes.len() < 12 {
            return;
        }
        let count = |at: usize| usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        if count(4) + count(6) + count(8) + count(10) > MAX_RECORDS {
            trace!(%from, "mdns: dropping packet with too many records");
            return;
        }
        let message = match Message::from_vec(bytes) {
            Ok(message) => message,
            Err(error) => {
                trace!(%from, %error, "mdns: dropping packet that does not decode");
                return;
            }
        };
        if message.metadata.op_code != OpCode::Query {
            return;
        }
        match message.metadata.message_type {
            MessageType::Query => self.on_query(&message),
            MessageType::Response if message.metadata.response_code == ResponseCode::NoError => {
                self.on_response(&message, from.ip());
            }
            MessageType::Response => {}
        }
    }

    /// Answers a question about our service or instance, at most once a second; a query that
    /// already lists our PTR record with at least half its TTL left is not answered (known-answer
    /// suppression, RFC 6762 section 7.1).
    fn on_query(&mut self, message: &Message) {
        let asks = message.queries.iter().any(|query| {
            let kind = query.query_type();
            let name = query.name();
            (*name == self.service && matches!(kind, RecordType::PTR | RecordType::ANY))
                || (*name == self.instance
                    && matches!(kind, RecordType::SRV | RecordType::TXT | RecordType::ANY))
        });
        if !asks {
            return;
        }
        let known = message.answers.iter().any(|record| {
            record.name == self.service
                && record.ttl >= self.config.ttl / 2
                && matches!(&record.data, RData::PTR(PTR(target)) if *target == self.instance)
        });
        if known {
            return;
        }
        // Answered by the next tick, no sooner than a second after the last announcement.
        let now = Instant::now();
        let due = match self.last_announce {
            Some(last) if now < last + MIN_MULTICAST_GAP => last + MIN_MULTICAST_GAP,
            _ => now,
        };
        self.answer_due = Some(self.answer_due.map_or(due, |d| d.min(due)));
    }

    /// Takes every Kith instance that has a matching SRV and TXT in the packet.
    fn on_response(&mut self, message: &Message, source: IpAddr) {
        let records = || message.answers.iter().chain(&message.additionals);
        let in_class = |record: &Record| u16::from(record.dns_class) & 0x7fff == 1;
        for record in records() {
            let RData::TXT(txt) = &record.data else {
                continue;
            };
            if !in_class(record)
                || record.name.num_labels() != 4
                || !self.service.zone_of(&record.name)
            {
                continue;
            }
            let Some(peer) = txt_peer(txt) else {
                trace!(name = %record.name, "mdns: instance without a valid peer= entry");
                continue;
            };
            if record.name != instance_name(&peer) {
                trace!(name = %record.name, "mdns: instance name does not match its peer id");
                continue;
            }
            let port = records().find_map(|other| match &other.data {
                RData::SRV(srv) if in_class(other) && other.name == record.name => Some(srv.port),
                _ => None,
            });
            let Some(port) = port.filter(|port| *port != 0) else {
                continue;
            };
            if peer == self.me {
                continue;
            }
            if record.ttl == 0 {
                self.forget(&peer);
            } else {
                let ttl = Duration::from_secs(u64::from(record.ttl.min(MAX_TTL)));
                self.remember(peer, SocketAddr::new(source, port), ttl);
            }
        }
    }

    fn remember(&mut self, peer: PeerId, addr: SocketAddr, ttl: Duration) {
        let expires = Instant::now() + ttl;
        let mut peers = self.peers.lock().expect("mdns peers lock");
        if !peers.contains_key(&peer) && peers.len() >= self.config.max_peers {
            debug!(?peer, "mdns: peer limit reached; ignoring a new peer");
            return;
        }
        let known = peers.entry(peer).or_insert(Known {
            addrs: Vec::new(),
            expires,
        });
        known.expires = expires;
        if known.addrs.contains(&addr) || known.addrs.len() >= MAX_ADDRS_PER_PEER {
            return;
        }
        known.addrs.push(addr);
        let found = BootstrapPeer {
            peer,
            addrs: known.addrs.clone(),
        };
        drop(peers);
        debug!(?peer, %addr, "mdns: found peer");
        // No receiver is not an error: `peers()` still has it.
        let _ = self.events.send(found);
    }

    fn forget(&mut self, peer: &PeerId) {
        if self
            .peers
            .lock()
            .expect("mdns peers lock")
            .remove(peer)
            .is_some()
        {
            debug!(?peer, "mdns: peer said goodbye");
        }
    }

    fn expire(&mut self, now: Instant) {
        self.peers
            .lock()
            .expect("mdns peers lock")
            .retain(|_, known| known.expires > now);
    }
}

/// The peer id in a TXT record's `peer=` string (exactly one such string).
fn txt_peer(txt: &TXT) -> Option<PeerId> {
    let mut found = None;
    for string in txt.txt_data.iter().take(16) {
        if let Some(value) = string.strip_prefix(b"peer=") {
            if found.is_some() {
                return None;
            }
            found = Some(std::str::from_utf8(value).ok()?.parse().ok()?);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::SecretKey;

    #[test]
    fn instance_names_fit_a_label_and_carry_the_peer() {
        let peer = SecretKey::generate().peer_id();
        let label = instance_label(&peer);
        assert_eq!(label.len(), 25);
        assert!(peer.to_string().starts_with(&label[5..]));
        assert_eq!(instance_name(&peer).num_labels(), 4);
        let txt = TXT::new(vec!["v=1".into(), format!("peer={peer}")]);
        assert_eq!(txt_peer(&txt), Some(peer));
        let twice = TXT::new(vec![format!("peer={peer}"), format!("peer={peer}")]);
        assert_eq!(txt_peer(&twice), None);
        assert_eq!(txt_peer(&TXT::new(vec!["peer=abc".into()])), None);
    }
}
