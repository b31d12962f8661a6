//! Where packets to each peer go: the direct path, the relay, or nowhere yet.
//!
//! quinn never sees a peer's real addresses when the node manages the path. A connection made
//! with [`crate::Endpoint::connect_peer`] is addressed to the peer's *virtual address*, a fixed
//! placeholder in 240.0.0.0/4 (reserved, never routed), and the socket layer sends each packet
//! for it along the peer's current path: the direct address once a probe round trip has proven
//! it, else the relay. Packets arriving from the peer's proven address, or delivered by a relay
//! on its behalf, are handed to quinn as coming from the virtual address. Switching between
//! relay and direct is therefore invisible to QUIC: no migration, no path validation, no
//! stateless reset for an address it does not know.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::peer::PeerId;

/// First octet of virtual addresses (240.0.0.0/4 is reserved "for future use" and not routed).
const VIRTUAL_OCTET: u8 = 240;
/// Port of every virtual address (quinn refuses port 0).
const VIRTUAL_PORT: u16 = 1;
/// Most peers with a managed path at once.
pub const MAX_PATHS: usize = 4096;

/// Whether `addr` is a virtual peer address (in either family's spelling).
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => ip.octets()[0] == VIRTUAL_OCTET,
        IpAddr::V6(_) => false,
    }
}

/// The canonical spelling of an address: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A direct path proven by a probe round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectPath {
    /// The peer's address as we send to it.
    pub addr: SocketAddr,
    /// The probe round trip that proved it.
    pub rtt: Duration,
    /// When it was proven (or last re-proven).
    pub proven_at: Instant,
    /// The extra socket it runs over (the birthday strategy), if not the main one.
    pub via: Option<u16>,
}

/// Everything the socket layer knows about reaching one peer.
#[derive(Clone, Debug)]
pub struct PeerPath {
    /// The peer.
    pub peer: PeerId,
    /// The address quinn uses for it.
    pub virtual_addr: SocketAddr,
    /// The proven direct path, if any.
    pub direct: Option<DirectPath>,
    /// The relay to send through while there is no direct path (and to fall back to).
    pub relay: Option<SocketAddr>,
    /// When a packet last arrived on the direct path.
    pub last_direct_rx: Option<Instant>,
}

impl PeerPath {
    /// Where a packet for this peer goes now.
    pub fn route(&self) -> Route {
        match (self.direct, self.relay) {
            (Some(direct), _) => Route::Direct(direct.addr),
            (None, Some(relay)) => Route::Relay(relay),
            (None, None) => Route::None,
        }
    }
}

/// Where a packet for a peer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight to the peer's address.
    Direct(SocketAddr),
    /// Through the relay at this address.
    Relay(SocketAddr),
    /// Nowhere yet (the packet is dropped, as if lost; QUIC retransmits).
    None,
}

/// The paths of all managed peers.
#[derive(Debug, Default)]
pub struct PathTable {
    next_virtual: u32,
    by_peer: HashMap<PeerId, PeerPath>,
    by_virtual: HashMap<SocketAddr, PeerId>,
    /// Real addresses known to belong to a peer: packets from them are the peer's.
    by_source: HashMap<SocketAddr, PeerId>,
    /// Addresses peers probed us from before we managed a path for them (a dialler punches
    /// before its connection reaches us through the relay); applied when the path is made.
    early_sources: HashMap<PeerId, SocketAddr>,
}

/// Most early sources remembered (probes are unauthenticated: the table must stay bounded).
const MAX_EARLY_SOURCES: usize = 1024;

impl PathTable {
    /// The peer's path, created (with a fresh virtual address) if it has none. `None` when the
    /// table is full.
    pub fn ensure(&mut self, peer: PeerId) -> Option<&mut PeerPath> {
        if !self.by_peer.contains_key(&peer) {
            if self.by_peer.len() >= MAX_PATHS {
                return None;
            }
            self.next_virtual = self.next_virtual.wrapping_add(1) & 0x00ff_ffff;
            let [_, b, c, d] = self.next_virtual.to_be_bytes();
            let virtual_addr =
                SocketAddr::new(Ipv4Addr::new(VIRTUAL_OCTET, b, c, d).into(), VIRTUAL_PORT);
            self.by_virtual.insert(virtual_addr, peer);
            if let Some(source) = self.early_sources.remove(&peer) {
                self.by_source.insert(source, peer);
            }
            self.by_peer.insert(
                peer,
                PeerPath {
                    peer,
                    virtual_addr,
                    direct: None,
                    relay: None,
                    last_direct_rx: None,
                },
            );
        }
        self.by_peer.get_mut(&peer)
    }

    /// The peer's path, if it has one.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerPath> {
        self.by_peer.get(peer)
    }

    /// Every managed path.
    pub fn iter(&self) -> impl Iterator<Item = &PeerPath> {
        self.by_peer.values()
    }

    /// The peer a virtual address stands for.
    pub fn peer_of_virtual(&self, addr: &SocketAddr) -> Option<&PeerPath> {
        self.by_peer.get(self.by_virtual.get(&canonical(*addr))?)
    }

    /// If `source` is a known address of a managed peer: that peer's virtual address (and the
    /// arrival is noted as traffic on its direct path).
    pub fn virtual_for_source(&mut self, source: &SocketAddr, now: Instant) -> Option<SocketAddr> {
        let peer = self.by_source.get(source)?;
        let path = self.by_peer.get_mut(peer)?;
        if path.direct.is_some_and(|d| d.addr == *source) {
            path.last_direct_rx = Some(now);
        }
        Some(path.virtual_addr)
    }

    /// Notes that packets from `source` are `peer`'s (a probe from it named the peer). For a
    /// peer without a path yet it is remembered, boundedly, until the path is made.
    pub fn learn_source(&mut self, peer: PeerId, source: SocketAddr) {
        let source = canonical(source);
        if self.by_peer.contains_key(&peer) {
            self.by_source.insert(source, peer);
            return;
        }
        if self.early_sources.len() >= MAX_EARLY_SOURCES
            && !self.early_sources.contains_key(&peer)
            && let Some(evicted) = self.early_sources.keys().next().copied()
        {
            self.early_sources.remove(&evicted);
        }
        self.early_sources.insert(peer, source);
    }

    /// Makes `addr` the peer's direct path (a probe to it was answered after `rtt`).
    pub fn prove_direct(
        &mut self,
        peer: PeerId,
        addr: SocketAddr,
        rtt: Duration,
        now: Instant,
        via: Option<u16>,
    ) {
        let addr = canonical(addr);
        let Some(path) = self.by_peer.get_mut(&peer) else {
            return;
        };
        // Keep the first proven address unless the new one is clearly faster: flapping between
        // two working addresses would reorder packets for nothing.
        let replace = match path.direct {
            None => true,
            Some(current) if current.addr == addr && current.via == via => true,
            Some(current) => rtt * 2 < current.rtt,
        };
        if replace {
            path.direct = Some(DirectPath {
                addr,
                rtt,
                proven_at: now,
                via,
            });
            path.last_direct_rx = Some(now);
        }
        self.by_source.insert(addr, peer);
    }

    /// Gives up the peer's direct path (it stopped answering); traffic falls back to the relay.
    pub fn drop_direct(&mut self, peer: &PeerId) -> Option<DirectPath> {
        self.by_peer.get_mut(peer)?.direct.take()
    }

    /// Sets the relay through which the peer is reached.
    pub fn set_relay(&mut self, peer: PeerId, relay: Option<SocketAddr>) {
        if let Some(path) = self.ensure(peer) {
            path.relay = relay.map(canonical);
        }
    }

    /// Forgets a peer's path entirely.
    pub fn remove(&mut self, peer: &PeerId) {
        if let Some(path) = self.by_peer.remove(peer) {
            self.by_virtual.remove(&path.virtual_addr);
            self.by_source.retain(|_, p| p != peer);
        }
    }

    /// Whether any real address maps to a peer (or will, once its path exists).
    pub fn maps_sources(&self) -> bool {
        !self.by_source.is_empty() || !self.early_sources.is_empty()
    }

    /// Number of managed peers.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// Whether no peer is managed.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::SecretKey;

    #[test]
    fn virtual_addresses_are_distinct_reserved_and_recognised_in_both_spellings() {
        let mut table = PathTable::default();
        let a = SecretKey::from_bytes([1; 32]).peer_id();
        let b = SecretKey::from_bytes([2; 32]).peer_id();
        let va = table.ensure(a).unwrap().virtual_addr;
        let vb = table.ensure(b).unwrap().virtual_addr;
        assert_ne!(va, vb);
        assert!(is_virtual(&va));
        let mapped = SocketAddr::new(
            match va.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped().into(),
                IpAddr::V6(_) => unreachable!(),
            },
            va.port(),
        );
        assert!(is_virtual(&mapped));
        assert_eq!(table.peer_of_virtual(&mapped).unwrap().peer, a);
        assert!(!is_virtual(&"127.0.0.1:1".parse().unwrap()));
        assert_eq!(table.ensure(a).unwrap().virtual_addr, va, "stable per peer");
    }

    #[test]
    fn routes_prefer_a_proven_direct_path_and_fall_back_to_the_relay() {
        let mut table = PathTable::default();
        let peer = SecretKey::from_bytes([3; 32]).peer_id();
        let relay: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let direct: SocketAddr = "198.51.100.2:5000".parse().unwrap();
        assert_eq!(table.ensure(peer).unwrap().route(), Route::None);
        table.set_relay(peer, Some(relay));
        assert_eq!(table.get(&peer).unwrap().route(), Route::Relay(relay));
        let now = Instant::now();
        assert_eq!(table.virtual_for_source(&direct, now), None);
        table.prove_direct(peer, direct, Duration::from_millis(20), now, None);
        assert_eq!(table.get(&peer).unwrap().route(), Route::Direct(direct));
        let virtual_addr = table.get(&peer).unwrap().virtual_addr;
        assert_eq!(table.virtual_for_source(&direct, now), Some(virtual_addr));
        // A slower second address does not displace the first; a much faster one does.
        let other: SocketAddr = "198.51.100.3:5000".parse().unwrap();
        table.prove_direct(peer, other, Duration::from_millis(15), now, None);
        assert_eq!(table.get(&peer).unwrap().route(), Route::Direct(direct));
        table.prove_direct(peer, other, Duration::from_millis(5), now, None);
        assert_eq!(table.get(&peer).unwrap().route(), Route::Direct(other));
        table.drop_direct(&peer);
        assert_eq!(table.get(&peer).unwrap().route(), Route::Relay(relay));
        table.remove(&peer);
        assert!(table.is_empty());
        assert_eq!(table.virtual_for_source(&direct, now), None);
    }

    #[test]
    fn sources_learnt_before_the_path_apply_when_it_is_made_and_stay_bounded() {
        let mut table = PathTable::default();
        let peer = SecretKey::from_bytes([4; 32]).peer_id();
        let source: SocketAddr = "203.0.113.1:1".parse().unwrap();
        table.learn_source(peer, source);
        assert_eq!(table.virtual_for_source(&source, Instant::now()), None);
        let virtual_addr = table.ensure(peer).unwrap().virtual_addr;
        assert_eq!(
            table.virtual_for_source(&source, Instant::now()),
            Some(virtual_addr)
        );
        for i in 0..(MAX_EARLY_SOURCES as u32 + 100) {
            let mut seed = [5u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            table.learn_source(SecretKey::from_bytes(seed).peer_id(), source);
        }
        assert!(table.early_sources.len() <= MAX_EARLY_SOURCES);
    }
}
