//! The relay's side: who is registered where, and how much each may send.
//!
//! Any node with a public address can relay (see [`RelayConfig`]). A peer registers by sending
//! a [`RelayRegistration`] signed by its key from the socket it wants packets delivered to; the
//! relay checks the signature, that the registration names this relay, that its clock is within
//! [`RelayConfig::clock_skew`] and that it is newer than the peer's last one (so a captured
//! registration cannot be replayed to redirect the peer's packets). A registered peer may then
//! send `RelayForward` frames to another registered peer, within per-peer packet and byte
//! budgets (token buckets) and a total cap on registrations. The relay never decrypts anything:
//! the payload is a QUIC packet encrypted end to end between the two peers, and the relay only
//! checks that it looks like QUIC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::frame::{RelayRegistration, refusal};
use super::paths::canonical;
use crate::peer::PeerId;

/// Limits of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Whether this node relays for others at all.
    pub enabled: bool,
    /// Most peers registered at once.
    pub max_registrations: usize,
    /// How long a registration lasts unless renewed.
    pub lifetime: Duration,
    /// How far a registration's clock may be from ours.
    pub clock_skew: Duration,
    /// Packets per second one peer may have relayed (sustained; bursts up to one second's worth).
    pub packets_per_sec: u32,
    /// Bytes per second one peer may have relayed.
    pub bytes_per_sec: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_registrations: 1024,
            lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(60),
            packets_per_sec: 2_000,
            bytes_per_sec: 2 << 20,
        }
    }
}

#[derive(Debug)]
struct Registration {
    addr: SocketAddr,
    unix_ms: u64,
    expires: Instant,
    packets: TokenBucket,
    bytes: TokenBucket,
}

/// A token bucket: `rate` per second, holding at most one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            updated: now,
        }
    }

    fn take(&mut self, amount: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.updated = now;
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

/// Relay counters (for status and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Peers registered now.
    pub registered: usize,
    /// Packets forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded (payload).
    pub forwarded_bytes: u64,
    /// Frames refused (bad registration, unknown peer, over a limit).
    pub refused: u64,
}

/// The relay's registrations and limits.
#[derive(Debug)]
pub struct RelayServer {
    local: PeerId,
    config: RelayConfig,
    by_peer: HashMap<PeerId, Registration>,
    by_addr: HashMap<SocketAddr, PeerId>,
    stats: RelayStats,
}

impl RelayServer {
    /// A relay for the node `local` (registrations must name it).
    pub fn new(local: PeerId, config: RelayConfig) -> Self {
        Self {
            local,
            config,
            by_peer: HashMap::new(),
            by_addr: HashMap::new(),
            stats: RelayStats::default(),
        }
    }

    /// Whether this node relays.
    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The relay's limits.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            registered: self.by_peer.len(),
            ..self.stats
        }
    }

    /// Registers the peer at `from`; on success the lifetime to announce, else a [`refusal`].
    pub fn register(
        &mut self,
        from: SocketAddr,
        registration: &RelayRegistration,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Duration, u8> {
        let result = self.try_register(canonical(from), registration, now, unix_ms);
        if result.is_err() {
            self.stats.refused += 1;
        }
        result
    }

    fn try_register(
        &mut self,
        from: SocketAddr,
        registration: &RelayRegistration,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Duration, u8> {
        if !self.config.enabled {
            return Err(refusal::OVER_LIMIT);
        }
        let skew = self.config.clock_skew.as_millis() as u64;
        if registration.relay != self.local
            || registration.unix_ms.abs_diff(unix_ms) > skew
            || !registration.verify()
        {
            return Err(refusal::BAD_REGISTRATION);
        }
        self.expire(now);
        let peer = registration.peer;
        if let Some(existing) = self.by_peer.get_mut(&peer) {
            if registration.unix_ms <= existing.unix_ms {
                return Err(refusal::BAD_REGISTRATION);
            }
            if existing.addr != from {
                self.by_addr.remove(&existing.addr);
            }
            existing.addr = from;
            existing.unix_ms = registration.unix_ms;
            existing.expires = now + self.config.lifetime;
        } else {
            if self.by_peer.len() >= self.config.max_registrations {
                return Err(refusal::OVER_LIMIT);
            }
            self.by_peer.insert(
                peer,
                Registration {
                    addr: from,
                    unix_ms: registration.unix_ms,
                    expires: now + self.config.lifetime,
                    packets: TokenBucket::new(self.config.packets_per_sec as f64, now),
                    bytes: TokenBucket::new(self.config.bytes_per_sec as f64, now),
                },
            );
        }
        // Another peer registered from this address before is displaced: an address belongs to
        // one registration at a time.
        if let Some(previous) = self.by_addr.insert(from, peer)
            && previous != peer
        {
            self.by_peer.remove(&previous);
        }
        Ok(self.config.lifetime)
    }

    /// Decides where a forward of `len` payload bytes from `from` to `to` goes: the sender's
    /// peer id and the destination's address, or a [`refusal`].
    pub fn forward(
        &mut self,
        from: SocketAddr,
        to: &PeerId,
        len: usize,
        now: Instant,
    ) -> Result<(PeerId, SocketAddr), u8> {
        let result = self.try_forward(canonical(from), to, len, now);
        match result {
            Ok(_) => {
                self.stats.forwarded_packets += 1;
                self.stats.forwarded_bytes += len as u64;
            }
            Err(_) => self.stats.refused += 1,
        }
        result
    }

    fn try_forward(
        &mut self,
        from: SocketAddr,
        to: &PeerId,
        len: usize,
        now: Instant,
    ) -> Result<(PeerId, SocketAddr), u8> {
        if !self.config.enabled {
            return Err(refusal::OVER_LIMIT);
        }
        let sender = *self.by_addr.get(&from).ok_or(refusal::NOT_REGISTERED)?;
        let destination = match self.by_peer.get(to) {
            Some(r) if r.expires > now => r.addr,
            _ => return Err(refusal::UNKNOWN_DESTINATION),
        };
        let registration = self
            .by_peer
            .get_mut(&sender)
            .ok_or(refusal::NOT_REGISTERED)?;
        if registration.expires <= now {
            return Err(refusal::NOT_REGISTERED);
        }
        if !registration.packets.take(1.0, now) || !registration.bytes.take(len as f64, now) {
            return Err(refusal::OVER_LIMIT);
        }
        Ok((sender, destination))
    }

    /// Drops expired registrations.
    pub fn expire(&mut self, now: Instant) {
        let by_addr = &mut self.by_addr;
        self.by_peer.retain(|_, r| {
            let live = r.expires > now;
            if !live {
                by_addr.remove(&r.addr);
            }
            live
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::SecretKey;

    const T0: u64 = 1_700_000_000_000;

    fn relay() -> (PeerId, RelayServer) {
        let local = SecretKey::from_bytes([1; 32]).peer_id();
        let config = RelayConfig {
            enabled: true,
            max_registrations: 2,
            packets_per_sec: 10,
            ..RelayConfig::default()
        };
        (local, RelayServer::new(local, config))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], port))
    }

    #[test]
    fn registered_peers_reach_each_other_and_no_one_else_does() {
        let (local, mut relay) = relay();
        let now = Instant::now();
        let a = SecretKey::from_bytes([2; 32]);
        let b = SecretKey::from_bytes([3; 32]);
        relay
            .register(addr(1), &RelayRegistration::sign(&a, local, T0), now, T0)
            .unwrap();
        assert_eq!(
            relay.forward(addr(1), &b.peer_id(), 1200, now),
            Err(refusal::UNKNOWN_DESTINATION)
        );
        relay
            .register(addr(2), &RelayRegistration::sign(&b, local, T0), now, T0)
            .unwrap();
        assert_eq!(
            relay.forward(addr(1), &b.peer_id(), 1200, now),
            Ok((a.peer_id(), addr(2)))
        );
        assert_eq!(
            relay.forward(addr(3), &b.peer_id(), 1200, now),
            Err(refusal::NOT_REGISTERED)
        );
        // Full: a third peer is refused.
        let c = SecretKey::from_bytes([4; 32]);
        assert_eq!(
            relay.register(addr(3), &RelayRegistration::sign(&c, local, T0), now, T0),
            Err(refusal::OVER_LIMIT)
        );
        // Registrations expire.
        relay.expire(now + Duration::from_secs(61));
        assert_eq!(relay.stats().registered, 0);
    }

    #[test]
    fn bad_stale_foreign_and_replayed_registrations_are_refused() {
        let (local, mut relay) = relay();
        let now = Instant::now();
        let a = SecretKey::from_bytes([2; 32]);
        let other_relay = SecretKey::from_bytes([9; 32]).peer_id();
        let foreign = RelayRegistration::sign(&a, other_relay, T0);
        assert_eq!(
            relay.register(addr(1), &foreign, now, T0),
            Err(refusal::BAD_REGISTRATION)
        );
        let stale = RelayRegistration::sign(&a, local, T0 - 120_000);
        assert_eq!(
            relay.register(addr(1), &stale, now, T0),
            Err(refusal::BAD_REGISTRATION)
        );
        let mut forged = RelayRegistration::sign(&a, local, T0);
        forged.signature[0] ^= 1;
        assert_eq!(
            relay.register(addr(1), &forged, now, T0),
            Err(refusal::BAD_REGISTRATION)
        );
        let good = RelayRegistration::sign(&a, local, T0);
        relay.register(addr(1), &good, now, T0).unwrap();
        // Replayed from elsewhere: refused, and the peer stays where it registered.
        assert_eq!(
            relay.register(addr(5), &good, now, T0),
            Err(refusal::BAD_REGISTRATION)
        );
        let b = SecretKey::from_bytes([3; 32]);
        relay
            .register(addr(2), &RelayRegistration::sign(&b, local, T0), now, T0)
            .unwrap();
        assert_eq!(
            relay.forward(addr(2), &a.peer_id(), 100, now).unwrap().1,
            addr(1)
        );
        // A newer registration moves the peer.
        relay
            .register(
                addr(6),
                &RelayRegistration::sign(&a, local, T0 + 1),
                now,
                T0,
            )
            .unwrap();
        assert_eq!(
            relay.forward(addr(2), &a.peer_id(), 100, now).unwrap().1,
            addr(6)
        );
        assert_eq!(
            relay.forward(addr(1), &b.peer_id(), 100, now),
            Err(refusal::NOT_REGISTERED)
        );
    }

    #[test]
    fn each_peer_is_held_to_its_rate() {
        let (local, mut relay) = relay();
        let now = Instant::now();
        let a = SecretKey::from_bytes([2; 32]);
        let b = SecretKey::from_bytes([3; 32]);
        relay
            .register(addr(1), &RelayRegistration::sign(&a, local, T0), now, T0)
            .unwrap();
        relay
            .register(addr(2), &RelayRegistration::sign(&b, local, T0), now, T0)
            .unwrap();
        let sent = (0..25)
            .filter(|_| relay.forward(addr(1), &b.peer_id(), 100, now).is_ok())
            .count();
        assert_eq!(sent, 10, "one second's burst");
        // b's budget is its own.
        assert!(relay.forward(addr(2), &a.peer_id(), 100, now).is_ok());
        // Refilled over time.
        assert!(
            relay
                .forward(addr(1), &b.peer_id(), 100, now + Duration::from_millis(500))
                .is_ok()
        );
    }

    #[test]
    fn a_disabled_relay_refuses_everything() {
        let local = SecretKey::from_bytes([1; 32]).peer_id();
        let mut relay = RelayServer::new(local, RelayConfig::default());
        let a = SecretKey::from_bytes([2; 32]);
        assert_eq!(
            relay.register(
                addr(1),
                &RelayRegistration::sign(&a, local, T0),
                Instant::now(),
                T0
            ),
            Err(refusal::OVER_LIMIT)
        );
    }
}
