//! The node's one UDP socket, shared by QUIC, the DHT, probes and relaying.
//!
//! [`MuxSocket`] is what quinn sees as its socket ([`quinn::AsyncUdpSocket`]). Underneath it is
//! a single kernel socket driven exactly as quinn's own (quinn-udp: GSO, GRO, ECN), plus:
//!
//! - **Demultiplexing** on the first byte ([`super::frame`]): QUIC goes up to quinn; DHT messages
//!   go to the node as [`NetEvent::Dht`]; probes are answered here at once (their timing matters
//!   for hole punching and round-trip measurement); relay frames are handled here, in the
//!   receive path, without a task hop.
//! - **Paths**: packets quinn sends to a virtual peer address ([`super::paths`]) go along that
//!   peer's current route, direct or through its relay, and packets from the peer's proven
//!   address or relayed on its behalf come up as from the virtual address.
//! - **Relaying for others** when enabled ([`super::relay`]): a forward from a registered peer is
//!   re-sent as a deliver to the destination's registered address, within its limits.
//! - **Impairment** for tests and the NAT lab (tc netem is not available there): a fixed delay and
//!   a random loss rate applied to everything the socket sends.
//!
//! Everything runs in quinn's endpoint driver (`poll_recv`, `try_send`) or in the caller of
//! [`MuxSocket::send_frame`]; shared state sits behind one short-held mutex.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::Rng;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::trace;

use super::frame::{
    Frame, KIND_DHT, KIND_PROBE, KIND_PROBE_ACK, KIND_RELAY_DELIVER, KIND_RELAY_FORWARD,
    KIND_RELAY_REFUSED, KIND_RELAY_REGISTER, KIND_RELAY_REGISTERED, is_quic, relay_frame,
    split_relay_frame,
};
use super::paths::{PathTable, Route, canonical, is_virtual};
use super::relay::{RelayConfig, RelayServer, RelayStats};
use crate::peer::PeerId;

/// Most events queued for the node before new ones are dropped.
const EVENT_QUEUE: usize = 4096;
/// Most relayed packets waiting to be handed to quinn.
const INJECT_QUEUE: usize = 1024;
/// Most probes waiting for an answer.
const MAX_PENDING_PROBES: usize = 4096;
/// A probe unanswered for this long is forgotten.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most extra sockets open at once (the birthday strategy opens them per peer).
pub const MAX_AUX_SOCKETS: usize = 512;

/// An extra socket opened for one peer by the birthday strategy (see
/// [`crate::node::punch`]): many mappings on our endpoint-dependent NAT towards the peer, one
/// of which the peer's random-port probes may hit. Only probes and QUIC for that peer use it.
#[derive(Debug)]
struct Aux {
    io: tokio::net::UdpSocket,
    peer: PeerId,
    /// Something reached it from outside: the peer's probes found this mapping, so the peer
    /// may be sending to it (whatever path *we* picked). Such a socket is kept.
    hit: AtomicBool,
}

/// Network impairment applied to everything the socket sends (tests and the NAT lab).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added to every datagram's departure.
    pub delay: Duration,
    /// Probability in `[0, 1]` that a datagram is dropped.
    pub loss: f64,
}

impl Impairment {
    fn is_none(&self) -> bool {
        self.delay.is_zero() && self.loss <= 0.0
    }
}

/// What the socket tells the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A DHT datagram arrived.
    Dht {
        /// Its source.
        from: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A peer probed us from `from` (already answered).
    Probed {
        /// The probe's source address.
        from: SocketAddr,
        /// Who says it probed.
        peer: PeerId,
        /// The extra socket it arrived on, if not the main one.
        via: Option<u16>,
    },
    /// A probe we sent was answered.
    ProbeAnswered {
        /// Where the probe went and the answer came from.
        from: SocketAddr,
        /// Who answered.
        peer: PeerId,
        /// Our address as the answerer saw it.
        observed: SocketAddr,
        /// The round trip.
        rtt: Duration,
        /// The probe's nonce.
        nonce: u64,
        /// The extra socket it went out on, if not the main one.
        via: Option<u16>,
    },
    /// A relay accepted our registration.
    RelayRegistered {
        /// The relay's address.
        relay: SocketAddr,
        /// Our address as the relay saw it.
        observed: SocketAddr,
        /// When to renew by.
        lifetime: Duration,
    },
    /// A relay refused something we sent.
    RelayRefused {
        /// The relay's address.
        relay: SocketAddr,
        /// One of [`super::frame::refusal`].
        reason: u8,
    },
}

/// Socket counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Non-QUIC datagrams that were malformed or unexpected and dropped.
    pub dropped_frames: u64,
    /// Events dropped because the node was not keeping up.
    pub dropped_events: u64,
    /// Packets for a peer with no route yet (dropped, as if lost).
    pub unrouted_packets: u64,
    /// QUIC packets sent through a relay.
    pub relayed_out: u64,
    /// QUIC packets received through a relay.
    pub relayed_in: u64,
}

#[derive(Debug)]
struct PendingProbe {
    to: SocketAddr,
    expect: Option<PeerId>,
    sent_at: Instant,
    via: Option<u16>,
}

#[derive(Debug)]
struct Shared {
    paths: PathTable,
    relay: RelayServer,
    /// Relays we are registered with, by address.
    relays: HashMap<SocketAddr, PeerId>,
    probes: HashMap<u64, PendingProbe>,
    injected: VecDeque<(SocketAddr, Vec<u8>)>,
    aux: HashMap<u16, Arc<Aux>>,
    next_aux: u16,
}

/// The shared UDP socket. See the module docs.
pub struct MuxSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local_peer: PeerId,
    local_addr: SocketAddr,
    ipv6: bool,
    impairment: Impairment,
    shared: Mutex<Shared>,
    events: mpsc::Sender<NetEvent>,
    receiver: Mutex<Option<mpsc::Receiver<NetEvent>>>,
    /// Relayed packets queued for quinn (read without the lock on every receive).
    injected_len: AtomicUsize,
    /// Whether any real address maps to a peer yet (until then received QUIC needs no lookup).
    maps_sources: AtomicBool,
    /// Extra sockets open (read without the lock on every receive).
    aux_len: AtomicUsize,
    dropped_frames: AtomicU64,
    dropped_events: AtomicU64,
    unrouted_packets: AtomicU64,
    relayed_out: AtomicU64,
    relayed_in: AtomicU64,
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket")
            .field("local_addr", &self.local_addr)
            .field("peer", &self.local_peer)
            .finish_non_exhaustive()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MuxSocket {
    /// Wraps a bound UDP socket. Must be called inside a Tokio runtime.
    pub fn new(
        socket: std::net::UdpSocket,
        local_peer: PeerId,
        relay: RelayConfig,
        impairment: Impairment,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let local_addr = io.local_addr()?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        Ok(Self {
            io,
            state,
            local_peer,
            local_addr,
            ipv6: local_addr.is_ipv6(),
            impairment,
            shared: Mutex::new(Shared {
                paths: PathTable::default(),
                relay: RelayServer::new(local_peer, relay),
                relays: HashMap::new(),
                probes: HashMap::new(),
                injected: VecDeque::new(),
                aux: HashMap::new(),
                next_aux: 0,
            }),
            events,
            receiver: Mutex::new(Some(receiver)),
            injected_len: AtomicUsize::new(0),
            maps_sources: AtomicBool::new(false),
            aux_len: AtomicUsize::new(0),
            dropped_frames: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            unrouted_packets: AtomicU64::new(0),
            relayed_out: AtomicU64::new(0),
            relayed_in: AtomicU64::new(0),
        })
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node's events; the first caller gets the receiver, later callers `None`.
    pub fn take_events(&self) -> Option<mpsc::Receiver<NetEvent>> {
        self.receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The bound address.
    pub fn bound_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters.
    pub fn stats(&self) -> MuxStats {
        MuxStats {
            dropped_frames: self.dropped_frames.load(Ordering::Relaxed),
            dropped_events: self.dropped_events.load(Ordering::Relaxed),
            unrouted_packets: self.unrouted_packets.load(Ordering::Relaxed),
            relayed_out: self.relayed_out.load(Ordering::Relaxed),
            relayed_in: self.relayed_in.load(Ordering::Relaxed),
        }
    }

    /// The relay's counters (zero when this node does not relay).
    pub fn relay_stats(&self) -> RelayStats {
        self.shared().relay.stats()
    }

    /// Runs `f` on the path table.
    pub fn with_paths<R>(&self, f: impl FnOnce(&mut PathTable) -> R) -> R {
        let mut shared = self.shared();
        let result = f(&mut shared.paths);
        self.note_sources(&shared.paths);
        result
    }

    fn note_sources(&self, paths: &PathTable) {
        if paths.maps_sources() {
            self.maps_sources.store(true, Ordering::Relaxed);
        }
    }

    /// Accepts relayed packets from the relay `relay` at `addr` (we registered with it).
    pub fn add_relay(&self, addr: SocketAddr, relay: PeerId) {
        self.shared().relays.insert(canonical(addr), relay);
    }

    /// Stops accepting relayed packets from `addr`.
    pub fn remove_relay(&self, addr: &SocketAddr) {
        self.shared().relays.remove(&canonical(*addr));
    }

    /// The address in the socket's family (IPv4 becomes IPv4-mapped IPv6 on an IPv6 socket).
    fn socket_family(&self, addr: SocketAddr) -> SocketAddr {
        match (self.ipv6, addr.ip()) {
            (true, IpAddr::V4(ip)) => SocketAddr::new(ip.to_ipv6_mapped().into(), addr.port()),
            _ => addr,
        }
    }

    /// Sends one of Kith's frames (or a DHT message) to `to`, waiting for the socket if needed.
    pub async fn send_frame(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let to = self.socket_family(to);
        loop {
            self.io.writable().await?;
            match self.send_now(to, bytes, None) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    /// Sends a probe to `to` and remembers it; `expect` is the peer that should answer (any,
    /// for an address-discovery probe to a server). With `ttl`, the probe is sent with that IP
    /// TTL (hop limit) so that it opens our own NAT's mapping but dies before the far NAT:
    /// *priming*. Returns the probe's nonce.
    pub async fn send_probe(
        &self,
        to: SocketAddr,
        expect: Option<PeerId>,
        ttl: Option<u32>,
    ) -> io::Result<u64> {
        self.send_probe_via(None, to, expect, ttl).await
    }

    /// [`MuxSocket::send_probe`] from one of the extra sockets (`via`), or the main one.
    pub async fn send_probe_via(
        &self,
        via: Option<u16>,
        to: SocketAddr,
        expect: Option<PeerId>,
        ttl: Option<u32>,
    ) -> io::Result<u64> {
        let to = canonical(to);
        let aux = match via {
            None => None,
            Some(id) => Some(
                self.shared()
                    .aux
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| io::Error::other("no such extra socket"))?,
            ),
        };
        let nonce = {
            let mut shared = self.shared();
            let now = Instant::now();
            shared
                .probes
                .retain(|_, p| now.duration_since(p.sent_at) < PROBE_TIMEOUT);
            if shared.probes.len() >= MAX_PENDING_PROBES {
                return Err(io::Error::other("too many probes in flight"));
            }
            let nonce = loop {
                let nonce: u64 = rand::thread_rng().r#gen();
                if !shared.probes.contains_key(&nonce) {
                    break nonce;
                }
            };
            shared.probes.insert(
                nonce,
                PendingProbe {
                    to,
                    expect,
                    sent_at: now,
                    via,
                },
            );
            nonce
        };
        let bytes = Frame::Probe {
            nonce,
            sender: self.local_peer,
        }
        .encode();
        match (aux, ttl) {
            (Some(aux), None) => {
                aux.io.send_to(&bytes, family_of(&aux.io, to)).await?;
            }
            (Some(aux), Some(ttl)) => {
                let to = family_of(&aux.io, to);
                let previous = set_ttl(&aux.io, to, ttl)?;
                let sent = aux.io.try_send_to(&bytes, to);
                set_ttl(&aux.io, to, previous)?;
                sent?;
            }
            (None, None) => self.send_frame(to, &bytes).await?,
            (None, Some(ttl)) => self.send_with_ttl(to, &bytes, ttl).await?,
        }
        Ok(nonce)
    }

    /// Opens `count` extra sockets for `peer` (the birthday strategy), within
    /// [`MAX_AUX_SOCKETS`] in all; returns their ids.
    pub fn open_aux(&self, peer: PeerId, count: usize) -> io::Result<Vec<u16>> {
        let mut shared = self.shared();
        let room = MAX_AUX_SOCKETS.saturating_sub(shared.aux.len());
        let wildcard = SocketAddr::new(
            if self.local_addr.is_ipv6() {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
            },
            0,
        );
        let mut ids = Vec::new();
        for _ in 0..count.min(room) {
            let socket = crate::socket::bind_udp_socket(wildcard, 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            socket.set_nonblocking(true)?;
            let io = tokio::net::UdpSocket::from_std(socket)?;
            let id = loop {
                shared.next_aux = shared.next_aux.wrapping_add(1);
                if !shared.aux.contains_key(&shared.next_aux) {
                    break shared.next_aux;
                }
            };
            shared.aux.insert(
                id,
                Arc::new(Aux {
                    io,
                    peer,
                    hit: AtomicBool::new(false),
                }),
            );
            ids.push(id);
        }
        self.aux_len.store(shared.aux.len(), Ordering::Relaxed);
        Ok(ids)
    }

    /// Closes `peer`'s extra sockets, except the one our direct path runs over and those the
    /// peer reached (its path may run over them even if ours does not).
    pub fn close_aux(&self, peer: &PeerId) {
        let mut shared = self.shared();
        let keep = shared
            .paths
            .get(peer)
            .and_then(|p| p.direct.and_then(|d| d.via));
        shared.aux.retain(|id, aux| {
            aux.peer != *peer || Some(*id) == keep || aux.hit.load(Ordering::Relaxed)
        });
        self.aux_len.store(shared.aux.len(), Ordering::Relaxed);
    }

    /// Extra sockets open now.
    pub fn aux_count(&self) -> usize {
        self.aux_len.load(Ordering::Relaxed)
    }

    async fn send_with_ttl(&self, to: SocketAddr, bytes: &[u8], ttl: u32) -> io::Result<()> {
        let sock = socket2::SockRef::from(&self.io);
        let v4 = to.is_ipv4();
        let previous = if v4 {
            sock.ttl_v4()?
        } else {
            sock.unicast_hops_v6()?
        };
        let set = |value| {
            if v4 {
                sock.set_ttl_v4(value)
            } else {
                sock.set_unicast_hops_v6(value)
            }
        };
        set(ttl)?;
        // Sent without waiting so that the short TTL applies to this datagram alone (a QUIC
        // packet sent in the same instant would share it: a loss QUIC recovers from).
        let result = self
            .io
            .try_io(Interest::WRITABLE, || {
                self.io.try_send_to(bytes, self.socket_family(to))
            })
            .map(|_| ());
        set(previous)?;
        result
    }

    /// Sends now or fails with `WouldBlock`, applying the impairment.
    fn send_now(&self, to: SocketAddr, bytes: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: segment,
            src_ip: None,
        };
        self.send_transmit(&transmit)
    }

    fn send_transmit(&self, transmit: &Transmit) -> io::Result<()> {
        if !self.impairment.is_none() {
            return self.send_impaired(transmit);
        }
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn send_impaired(&self, transmit: &Transmit) -> io::Result<()> {
        let Impairment { delay, loss } = self.impairment;
        // Loss and delay apply per datagram, so a GSO batch is split.
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for segment in transmit.contents.chunks(size) {
            if loss > 0.0 && rand::thread_rng().r#gen::<f64>() < loss {
                continue;
            }
            let single = Transmit {
                contents: segment,
                segment_size: None,
                ..transmit.clone()
            };
            if delay.is_zero() {
                let _ = self.io.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.io).into(), &single)
                });
                continue;
            }
            let to = single.destination;
            let bytes = segment.to_vec();
            let socket = self.io_clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Some(socket) = socket {
                    let _ = socket.send_to(&bytes, to).await;
                }
            });
        }
        Ok(())
    }

    /// A second handle on the socket for delayed sends.
    fn io_clone(&self) -> Option<Arc<tokio::net::UdpSocket>> {
        let std = socket2::SockRef::from(&self.io).try_clone().ok()?;
        let std: std::net::UdpSocket = std.into();
        tokio::net::UdpSocket::from_std(std).ok().map(Arc::new)
    }

    /// Best-effort immediate send from the receive path (answers, relayed packets).
    fn reply(&self, to: SocketAddr, bytes: &[u8]) {
        let _ = self.send_now(self.socket_family(to), bytes, None);
    }

    /// Best-effort immediate send from the socket a datagram came in on.
    fn reply_via(&self, via: Option<u16>, to: SocketAddr, bytes: &[u8]) {
        match via {
            None => self.reply(to, bytes),
            Some(id) => {
                let aux = self.shared().aux.get(&id).cloned();
                if let Some(aux) = aux {
                    let _ = aux.io.try_send_to(bytes, family_of(&aux.io, to));
                }
            }
        }
    }

    fn emit(&self, event: NetEvent) {
        if self.events.try_send(event).is_err() {
            self.dropped_events.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dropped(&self, why: &str, from: SocketAddr) {
        trace!(%from, why, "frame dropped");
        self.dropped_frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Handles one non-QUIC datagram from `from` (canonical) that arrived on the main socket or
    /// on extra socket `via` (which carries probes only).
    fn handle_frame(&self, from: SocketAddr, bytes: &[u8], now: Instant, via: Option<u16>) {
        let Some(&kind) = bytes.first() else {
            return self.dropped("empty", from);
        };
        if via.is_some() && !matches!(kind, KIND_PROBE | KIND_PROBE_ACK) {
            return self.dropped("not a probe on an extra socket", from);
        }
        match kind {
            KIND_DHT => self.emit(NetEvent::Dht {
                from,
                bytes: bytes.to_vec(),
            }),
            KIND_RELAY_DELIVER => {
                let Ok((peer, payload)) = split_relay_frame(bytes) else {
                    return self.dropped("bad deliver", from);
                };
                let mut shared = self.shared();
                if !shared.relays.contains_key(&from) {
                    drop(shared);
                    return self.dropped("deliver from a relay we did not register with", from);
                }
                if shared.injected.len() >= INJECT_QUEUE {
                    drop(shared);
                    return self.dropped("inject queue full", from);
                }
                let Some(path) = shared.paths.ensure(peer) else {
                    drop(shared);
                    return self.dropped("path table full", from);
                };
                if path.relay.is_none() {
                    path.relay = Some(from);
                }
                let virtual_addr = path.virtual_addr;
                shared.injected.push_back((virtual_addr, payload.to_vec()));
                self.injected_len.fetch_add(1, Ordering::Relaxed);
                self.relayed_in.fetch_add(1, Ordering::Relaxed);
            }
            KIND_RELAY_FORWARD => {
                let Ok((to, payload)) = split_relay_frame(bytes) else {
                    return self.dropped("bad forward", from);
                };
                let outcome = self.shared().relay.forward(from, &to, payload.len(), now);
                match outcome {
                    Ok((sender, destination)) => {
                        self.reply(
                            destination,
                            &relay_frame(KIND_RELAY_DELIVER, &sender, payload),
                        );
                    }
                    Err(reason) => self.reply(from, &Frame::RelayRefused { reason }.encode()),
                }
            }
            KIND_PROBE
            | KIND_PROBE_ACK
            | KIND_RELAY_REGISTER
            | KIND_RELAY_REGISTERED
            | KIND_RELAY_REFUSED => match Frame::decode(bytes) {
                Ok(frame) => self.handle_control(from, frame, now, via),
                Err(_) => self.dropped("malformed", from),
            },
            _ => self.dropped("unknown kind", from),
        }
    }

    fn handle_control(&self, from: SocketAddr, frame: Frame, now: Instant, via: Option<u16>) {
        match frame {
            Frame::Probe { nonce, sender } => {
                if sender == self.local_peer {
                    return self.dropped("own probe", from);
                }
                self.reply_via(
                    via,
                    from,
                    &Frame::ProbeAck {
                        nonce,
                        sender: self.local_peer,
                        observed: from,
                    }
                    .encode(),
                );
                {
                    let mut shared = self.shared();
                    shared.paths.learn_source(sender, from);
                    self.note_sources(&shared.paths);
                }
                self.emit(NetEvent::Probed {
                    from,
                    peer: sender,
                    via,
                });
            }
            Frame::ProbeAck {
                nonce,
                sender,
                observed,
            } => {
                let rtt = {
                    let mut shared = self.shared();
                    let Some(pending) = shared.probes.get(&nonce) else {
                        drop(shared);
                        return self.dropped("unsolicited probe answer", from);
                    };
                    if pending.to != from
                        || pending.via != via
                        || pending.expect.is_some_and(|p| p != sender)
                    {
                        drop(shared);
                        return self.dropped("probe answer from the wrong peer", from);
                    }
                    let rtt = now.saturating_duration_since(pending.sent_at);
                    shared.probes.remove(&nonce);
                    if shared.paths.get(&sender).is_some() {
                        shared.paths.prove_direct(sender, from, rtt, now, via);
                        self.note_sources(&shared.paths);
                    }
                    rtt
                };
                self.emit(NetEvent::ProbeAnswered {
                    from,
                    peer: sender,
                    observed: canonical(observed),
                    rtt,
                    nonce,
                    via,
                });
            }
            Frame::RelayRegister(registration) => {
                let outcome = self
                    .shared()
                    .relay
                    .register(from, &registration, now, unix_ms());
                let answer = match outcome {
                    Ok(lifetime) => Frame::RelayRegistered {
                        observed: from,
                        lifetime_secs: lifetime.as_secs().min(u16::MAX.into()) as u16,
                    },
                    Err(reason) => Frame::RelayRefused { reason },
                };
                self.reply(from, &answer.encode());
            }
            Frame::RelayRegistered {
                observed,
                lifetime_secs,
            } => self.emit(NetEvent::RelayRegistered {
                relay: from,
                observed: canonical(observed),
                lifetime: Duration::from_secs(lifetime_secs.into()),
            }),
            Frame::RelayRefused { reason } => self.emit(NetEvent::RelayRefused {
                relay: from,
                reason,
            }),
            Frame::RelayForward { .. } | Frame::RelayDeliver { .. } => {
                unreachable!("handled on the fast path")
            }
        }
    }

    /// The address quinn should see for a virtual or real source.
    fn for_quinn(&self, addr: SocketAddr) -> SocketAddr {
        self.socket_family(addr)
    }

    /// Sorts one received buffer (one or more GRO segments from one source): Kith frames are
    /// handled, QUIC segments are kept, compacted in place. Returns the bytes kept.
    fn sort_received(&self, buf: &mut [u8], meta: &mut RecvMeta, now: Instant) -> usize {
        let from = canonical(meta.addr);
        let stride = meta.stride.max(1).min(meta.len.max(1));
        let len = meta.len;
        let all_quic = buf[..len].chunks(stride).all(is_quic);
        let kept = if all_quic {
            len
        } else {
            let mut write = 0;
            let mut read = 0;
            while read < len {
                let end = (read + stride).min(len);
                if is_quic(&buf[read..end]) {
                    buf.copy_within(read..end, write);
                    write += end - read;
                } else {
                    self.handle_frame(from, &buf[read..end], now, None);
                }
                read = end;
            }
            write
        };
        if kept > 0
            && self.maps_sources.load(Ordering::Relaxed)
            && let Some(virtual_addr) = self.shared().paths.virtual_for_source(&from, now)
        {
            meta.addr = self.for_quinn(virtual_addr);
            meta.dst_ip = None;
        }
        meta.len = kept;
        kept
    }

    /// Reads what the extra sockets received: probes are handled, QUIC from a peer's proven
    /// address goes to quinn as from its virtual address, anything else is dropped. Registers
    /// the task to be woken by every extra socket that has nothing to read.
    fn poll_aux(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> usize {
        let auxes: Vec<(u16, Arc<Aux>)> = self
            .shared()
            .aux
            .iter()
            .map(|(id, aux)| (*id, aux.clone()))
            .collect();
        let now = Instant::now();
        let mut n = 0;
        for (id, aux) in auxes {
            while n < bufs.len().min(meta.len()) {
                let mut read = tokio::io::ReadBuf::new(&mut bufs[n]);
                let from = match aux.io.poll_recv_from(cx, &mut read) {
                    Poll::Ready(Ok(from)) => canonical(from),
                    // Errors (an ICMP unreachable for a probe) and nothing to read.
                    Poll::Ready(Err(_)) | Poll::Pending => break,
                };
                let len = read.filled().len();
                aux.hit.store(true, Ordering::Relaxed);
                if !is_quic(&bufs[n][..len]) {
                    let bytes = bufs[n][..len].to_vec();
                    self.handle_frame(from, &bytes, now, Some(id));
                    continue;
                }
                let mapped = self.shared().paths.virtual_for_source(&from, now);
                match mapped {
                    Some(virtual_addr) => {
                        meta[n] = RecvMeta {
                            addr: self.for_quinn(virtual_addr),
                            len,
                            stride: len,
                            ecn: None,
                            dst_ip: None,
                        };
                        n += 1;
                    }
                    None => self.dropped("quic from a stranger on an extra socket", from),
                }
            }
        }
        n
    }

    /// Hands queued relayed packets to quinn.
    fn drain_injected(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        if self.injected_len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let mut shared = self.shared();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            let Some((from, payload)) = shared.injected.pop_front() else {
                break;
            };
            self.injected_len.fetch_sub(1, Ordering::Relaxed);
            if payload.len() > bufs[n].len() {
                continue;
            }
            bufs[n][..payload.len()].copy_from_slice(&payload);
            meta[n] = RecvMeta {
                addr: self.for_quinn(from),
                len: payload.len(),
                stride: payload.len(),
                ecn: None,
                dst_ip: None,
            };
            n += 1;
        }
        n
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Poller {
            socket: self,
            fut: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !is_virtual(&transmit.destination) {
            return self.send_transmit(transmit);
        }
        let (route, aux) = {
            let shared = self.shared();
            let route = shared
                .paths
                .peer_of_virtual(&transmit.destination)
                .map(|p| (p.peer, p.route(), p.direct.and_then(|d| d.via)));
            let aux = route
                .and_then(|(_, _, via)| via)
                .and_then(|id| shared.aux.get(&id).cloned());
            (route.map(|(peer, route, _)| (peer, route)), aux)
        };
        match route {
            Some((_, Route::Direct(addr))) if aux.is_some() => {
                let aux = aux.expect("checked");
                let to = family_of(&aux.io, addr);
                let size = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                for packet in transmit.contents.chunks(size) {
                    let _ = aux.io.try_send_to(packet, to);
                }
                Ok(())
            }
            Some((_, Route::Direct(addr))) => self.send_transmit(&Transmit {
                destination: self.socket_family(addr),
                ..transmit.clone()
            }),
            Some((peer, Route::Relay(relay))) => {
                let size = transmit
                    .segment_size
                    .unwrap_or(transmit.contents.len())
                    .max(1);
                let relay = self.socket_family(relay);
                for (i, packet) in transmit.contents.chunks(size).enumerate() {
                    let framed = relay_frame(KIND_RELAY_FORWARD, &peer, packet);
                    match self.send_now(relay, &framed, None) {
                        // Nothing went out yet: let quinn wait and retry the whole transmit.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && i == 0 => return Err(e),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                        Ok(()) => {
                            self.relayed_out.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(())
            }
            Some((_, Route::None)) | None => {
                self.unrouted_packets.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let injected = self.drain_injected(bufs, meta);
            if injected > 0 {
                return Poll::Ready(Ok(injected));
            }
            if self.aux_len.load(Ordering::Relaxed) > 0 {
                let received = self.poll_aux(cx, bufs, meta);
                if received > 0 {
                    return Poll::Ready(Ok(received));
                }
            }
            ready!(self.io.poll_recv_ready(cx))?;
            let Ok(received) = self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) else {
                continue;
            };
            let now = Instant::now();
            let mut kept = 0;
            for i in 0..received {
                if self.sort_received(&mut bufs[i], &mut meta[i], now) == 0 {
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

type WritableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to be writable (one per quinn task that sends).
struct Poller {
    socket: Arc<MuxSocket>,
    fut: Option<WritableFuture>,
}

impl fmt::Debug for Poller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Poller")
    }
}

impl UdpPoller for Poller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let fut = this.fut.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let result = fut.as_mut().poll(cx);
        if result.is_ready() {
            this.fut = None;
        }
        result
    }
}

/// `to` in the family of `socket` (IPv4 becomes IPv4-mapped on an IPv6 socket).
fn family_of(socket: &tokio::net::UdpSocket, to: SocketAddr) -> SocketAddr {
    match (socket.local_addr().map(|a| a.is_ipv6()), to.ip()) {
        (Ok(true), IpAddr::V4(ip)) => SocketAddr::new(ip.to_ipv6_mapped().into(), to.port()),
        _ => to,
    }
}

/// Sets the TTL (hop limit) for datagrams to `to` on `socket`; returns the previous one.
fn set_ttl(socket: &tokio::net::UdpSocket, to: SocketAddr, ttl: u32) -> io::Result<u32> {
    let sock = socket2::SockRef::from(socket);
    if to.ip().to_canonical().is_ipv4() {
        let previous = sock.ttl_v4()?;
        sock.set_ttl_v4(ttl)?;
        Ok(previous)
    } else {
        let previous = sock.unicast_hops_v6()?;
        sock.set_unicast_hops_v6(ttl)?;
        Ok(previous)
    }
}
