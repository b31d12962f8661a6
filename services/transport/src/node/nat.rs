//! What kind of NAT the node is behind, learnt from what others see.
//!
//! Every observer that answers us (a relay confirming a registration, an observer answering a
//! probe, a DHT node's `Pong`) reports the address our packets came from. With at least two
//! observers at different IP addresses the mapping can be classified:
//!
//! - every observer saw our own socket address: **no NAT** (a public address);
//! - every observer saw the same public address and port: **endpoint-independent mapping**
//!   (full cone, restricted or port-restricted; what hole punching needs on at least one side);
//! - observers saw different ports (or addresses): **endpoint-dependent mapping** (symmetric),
//!   where a peer can only reach us at the mapping made for it.
//!
//! Fewer than two observers leave it **unknown**. Observations are kept per observer (the most
//! recent wins) and are bounded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Instant;

use serde::Serialize;

/// Most observers remembered.
const MAX_OBSERVERS: usize = 32;

/// How the NAT in front of the node maps its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// Fewer than two observers have answered.
    Unknown,
    /// Observers see the socket's own address.
    NoNat,
    /// One public address for every destination.
    EndpointIndependent,
    /// A different public address or port per destination.
    EndpointDependent,
}

impl Mapping {
    /// Whether a peer can reach us at an address some other observer saw.
    pub fn is_predictable(self) -> bool {
        matches!(self, Self::NoNat | Self::EndpointIndependent)
    }
}

/// One observation: `observer` saw our packets come from `observed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// Who looked.
    pub observer: SocketAddr,
    /// What it saw.
    pub observed: SocketAddr,
}

/// The NAT as far as the node knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NatStatus {
    /// The classification.
    pub mapping: Mapping,
    /// Distinct public addresses observers saw (a single one under endpoint-independent mapping).
    pub public_addrs: Vec<SocketAddr>,
    /// The observations behind it.
    pub observations: Vec<Observation>,
}

/// Observations collected so far.
#[derive(Debug, Default)]
pub struct NatObservations {
    by_observer: HashMap<SocketAddr, (SocketAddr, Instant)>,
}

impl NatObservations {
    /// Records what `observer` saw; returns whether it differs from what it saw before (a sign
    /// that our network changed).
    pub fn record(&mut self, observer: SocketAddr, observed: SocketAddr, now: Instant) -> bool {
        if !self.by_observer.contains_key(&observer) && self.by_observer.len() >= MAX_OBSERVERS {
            // Forget the stalest observer to make room.
            if let Some(oldest) = self
                .by_observer
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k)
            {
                self.by_observer.remove(&oldest);
            }
        }
        let previous = self.by_observer.insert(observer, (observed, now));
        previous.is_some_and(|(before, _)| before != observed)
    }

    /// What `observer` saw last.
    pub fn get(&self, observer: &SocketAddr) -> Option<SocketAddr> {
        self.by_observer
            .get(observer)
            .map(|(observed, _)| *observed)
    }

    /// Forgets everything (after a network change, before observing again).
    pub fn clear(&mut self) {
        self.by_observer.clear();
    }

    /// Classifies the mapping. `local` is the socket's own address as other hosts on its
    /// network would see it (see [`local_addr_towards`]).
    pub fn status(&self, local: &[SocketAddr]) -> NatStatus {
        let mut observations: Vec<Observation> = self
            .by_observer
            .iter()
            .map(|(observer, (observed, _))| Observation {
                observer: *observer,
                observed: *observed,
            })
            .collect();
        observations.sort_by_key(|o| (o.observer, o.observed));
        let mut public_addrs: Vec<SocketAddr> = observations.iter().map(|o| o.observed).collect();
        public_addrs.sort();
        public_addrs.dedup();
        let mut observer_ips: Vec<IpAddr> = observations.iter().map(|o| o.observer.ip()).collect();
        observer_ips.sort();
        observer_ips.dedup();
        let mapping = if observer_ips.len() < 2 {
            Mapping::Unknown
        } else if public_addrs.len() > 1 {
            Mapping::EndpointDependent
        } else if local.contains(&public_addrs[0]) {
            Mapping::NoNat
        } else {
            Mapping::EndpointIndependent
        };
        NatStatus {
            mapping,
            public_addrs,
            observations,
        }
    }
}

/// The address a socket bound to `bound` has on the way to `remote`: the bound address itself
/// if it names an IP, else the source IP the kernel would pick for `remote` (found by
/// connecting a throwaway UDP socket, which sends nothing) with the bound port.
pub fn local_addr_towards(bound: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let probe = UdpSocket::bind(SocketAddr::new(
        if remote.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    ))
    .ok()?;
    probe.connect(remote).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), bound.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_from_two_or_more_observers() {
        let now = Instant::now();
        let local = [addr("10.0.0.2:5000")];
        let mut nat = NatObservations::default();
        assert_eq!(nat.status(&local).mapping, Mapping::Unknown);
        nat.record(addr("198.51.100.1:7000"), addr("203.0.113.5:5000"), now);
        assert_eq!(nat.status(&local).mapping, Mapping::Unknown);
        // A second port on the same observer host is not a second observer.
        nat.record(addr("198.51.100.1:7001"), addr("203.0.113.5:5000"), now);
        assert_eq!(nat.status(&local).mapping, Mapping::Unknown);
        nat.record(addr("198.51.100.2:7000"), addr("203.0.113.5:5000"), now);
        let status = nat.status(&local);
        assert_eq!(status.mapping, Mapping::EndpointIndependent);
        assert_eq!(status.public_addrs, vec![addr("203.0.113.5:5000")]);

        let mut symmetric = NatObservations::default();
        symmetric.record(addr("198.51.100.1:7000"), addr("203.0.113.5:40001"), now);
        symmetric.record(addr("198.51.100.2:7000"), addr("203.0.113.5:52113"), now);
        assert_eq!(symmetric.status(&local).mapping, Mapping::EndpointDependent);

        let public = [addr("198.51.100.9:5000")];
        let mut open = NatObservations::default();
        open.record(addr("198.51.100.1:7000"), public[0], now);
        open.record(addr("198.51.100.2:7000"), public[0], now);
        assert_eq!(open.status(&public).mapping, Mapping::NoNat);
    }

    #[test]
    fn a_changed_observation_signals_a_network_change_and_memory_is_bounded() {
        let now = Instant::now();
        let mut nat = NatObservations::default();
        assert!(!nat.record(addr("198.51.100.1:1"), addr("203.0.113.5:1"), now));
        assert!(!nat.record(addr("198.51.100.1:1"), addr("203.0.113.5:1"), now));
        assert!(nat.record(addr("198.51.100.1:1"), addr("203.0.113.6:1"), now));
        for i in 0..100u16 {
            nat.record(
                SocketAddr::new(IpAddr::from([192, 0, 2, (i % 250) as u8]), i),
                addr("203.0.113.5:1"),
                now,
            );
        }
        assert!(nat.status(&[]).observations.len() <= MAX_OBSERVERS);
    }

    #[test]
    fn the_local_address_towards_a_remote_is_concrete() {
        let local = local_addr_towards(addr("0.0.0.0:4242"), addr("127.0.0.1:9")).unwrap();
        assert_eq!(local, addr("127.0.0.1:4242"));
        assert_eq!(
            local_addr_towards(addr("127.0.0.1:1"), addr("192.0.2.1:9")),
            Some(addr("127.0.0.1:1"))
        );
    }
}
