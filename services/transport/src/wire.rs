//! Conversions between the transport's domain types and `kith.transport.v1` wire types. Every
//! field received is validated here: a malformed one is an [`ApiError::InvalidArgument`] that
//! names it.

use std::net::SocketAddr;
use std::str::FromStr;

use kith_proto::transport::v1 as pb;

use crate::api::{ApiError, NodeStatus, PeerInfo, Result, TopicPeer};
use crate::dht::{DhtStatus, NodeId};
use crate::discovery::{IdentityId, NameRecord};
use crate::node::nat::{Mapping, NatStatus, Observation};
use crate::node::{PeerAddrs, RelayAddr};
use crate::peer::PeerId;

/// Most addresses accepted in hints or lists from the wire.
pub const MAX_WIRE_ADDRS: usize = 64;

fn invalid(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(format!("{field}: {why}"))
}

pub fn peer_from_wire(bytes: &[u8], field: &str) -> Result<PeerId> {
    PeerId::from_slice(bytes).map_err(|e| invalid(field, e))
}

pub fn addr_from_wire(text: &str, field: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an ip:port address")))
}

fn opt_addr_from_wire(text: &str, field: &str) -> Result<Option<SocketAddr>> {
    if text.is_empty() {
        Ok(None)
    } else {
        addr_from_wire(text, field).map(Some)
    }
}

fn addrs_from_wire(list: &[String], field: &str) -> Result<Vec<SocketAddr>> {
    if list.len() > MAX_WIRE_ADDRS {
        return Err(invalid(
            field,
            format!("{} addresses; at most {MAX_WIRE_ADDRS}", list.len()),
        ));
    }
    list.iter().map(|a| addr_from_wire(a, field)).collect()
}

fn addrs_to_wire(list: &[SocketAddr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn opt_addr_to_wire(addr: Option<SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_default()
}

impl From<&RelayAddr> for pb::RelayAddr {
    fn from(relay: &RelayAddr) -> Self {
        Self {
            peer_id: relay.peer.as_bytes().to_vec().into(),
            addr: relay.addr.to_string(),
        }
    }
}

impl TryFrom<pb::RelayAddr> for RelayAddr {
    type Error = ApiError;
    fn try_from(relay: pb::RelayAddr) -> Result<Self> {
        Ok(Self {
            peer: peer_from_wire(&relay.peer_id, "relay.peer_id")?,
            addr: addr_from_wire(&relay.addr, "relay.addr")?,
        })
    }
}

impl From<&PeerAddrs> for pb::PeerHints {
    fn from(addrs: &PeerAddrs) -> Self {
        Self {
            addrs: addrs_to_wire(&addrs.addrs),
            relay: addrs.relay.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::PeerHints> for PeerAddrs {
    type Error = ApiError;
    fn try_from(hints: pb::PeerHints) -> Result<Self> {
        Ok(Self {
            addrs: addrs_from_wire(&hints.addrs, "hints.addrs")?,
            relay: hints.relay.map(TryInto::try_into).transpose()?,
        })
    }
}

fn mapping_to_wire(mapping: Mapping) -> pb::Mapping {
    match mapping {
        Mapping::Unknown => pb::Mapping::Unknown,
        Mapping::NoNat => pb::Mapping::NoNat,
        Mapping::EndpointIndependent => pb::Mapping::EndpointIndependent,
        Mapping::EndpointDependent => pb::Mapping::EndpointDependent,
    }
}

impl From<&NatStatus> for pb::NatStatusResponse {
    fn from(nat: &NatStatus) -> Self {
        Self {
            mapping: mapping_to_wire(nat.mapping) as i32,
            public_addrs: addrs_to_wire(&nat.public_addrs),
            observations: nat
                .observations
                .iter()
                .map(|o| pb::Observation {
                    observer: o.observer.to_string(),
                    observed: o.observed.to_string(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::NatStatusResponse> for NatStatus {
    type Error = ApiError;
    fn try_from(nat: pb::NatStatusResponse) -> Result<Self> {
        let mapping = match pb::Mapping::try_from(nat.mapping) {
            Ok(pb::Mapping::Unknown) => Mapping::Unknown,
            Ok(pb::Mapping::NoNat) => Mapping::NoNat,
            Ok(pb::Mapping::EndpointIndependent) => Mapping::EndpointIndependent,
            Ok(pb::Mapping::EndpointDependent) => Mapping::EndpointDependent,
            Ok(pb::Mapping::Unspecified) | Err(_) => {
                return Err(invalid(
                    "nat.mapping",
                    format!("unknown value {}", nat.mapping),
                ));
            }
        };
        if nat.observations.len() > MAX_WIRE_ADDRS {
            return Err(invalid("nat.observations", "too many"));
        }
        Ok(Self {
            mapping,
            public_addrs: addrs_from_wire(&nat.public_addrs, "nat.public_addrs")?,
            observations: nat
                .observations
                .iter()
                .map(|o| {
                    Ok(Observation {
                        observer: addr_from_wire(&o.observer, "nat.observations.observer")?,
                        observed: addr_from_wire(&o.observed, "nat.observations.observed")?,
                    })
                })
                .collect::<Result<_>>()?,
        })
    }
}

impl From<&DhtStatus> for pb::DhtStatusResponse {
    fn from(d: &DhtStatus) -> Self {
        Self {
            node_id: d.node_id.as_bytes().to_vec().into(),
            routing_table_size: d.routing_table_size as u64,
            non_empty_buckets: d.non_empty_buckets as u64,
            records_stored: d.records_stored as u64,
            pending_requests: d.pending_requests as u64,
            operations: d.operations as u64,
            messages_in: d.messages_in,
            messages_out: d.messages_out,
            dropped_malformed: d.dropped_malformed,
            dropped_unmatched: d.dropped_unmatched,
            dropped_overload: d.dropped_overload,
        }
    }
}

fn count(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

impl TryFrom<pb::DhtStatusResponse> for DhtStatus {
    type Error = ApiError;
    fn try_from(d: pb::DhtStatusResponse) -> Result<Self> {
        let id: [u8; 32] = d
            .node_id
            .as_ref()
            .try_into()
            .map_err(|_| invalid("dht.node_id", "must be 32 bytes"))?;
        Ok(Self {
            node_id: NodeId::from_bytes(id),
            routing_table_size: count(d.routing_table_size),
            non_empty_buckets: count(d.non_empty_buckets),
            records_stored: count(d.records_stored),
            pending_requests: count(d.pending_requests),
            operations: count(d.operations),
            messages_in: d.messages_in,
            messages_out: d.messages_out,
            dropped_malformed: d.dropped_malformed,
            dropped_unmatched: d.dropped_unmatched,
            dropped_overload: d.dropped_overload,
        })
    }
}

impl From<&PeerInfo> for pb::PeerInfo {
    fn from(p: &PeerInfo) -> Self {
        Self {
            peer_id: p.peer_id.as_bytes().to_vec().into(),
            route: p.route.clone(),
            direct_addr: opt_addr_to_wire(p.direct_addr),
            direct_rtt_us: p.direct_rtt_us.unwrap_or(0),
            relay_addr: opt_addr_to_wire(p.relay_addr),
            protocols: p.protocols.clone(),
            rtt_us: p.rtt_us.unwrap_or(0),
        }
    }
}

impl TryFrom<pb::PeerInfo> for PeerInfo {
    type Error = ApiError;
    fn try_from(p: pb::PeerInfo) -> Result<Self> {
        if !matches!(p.route.as_str(), "direct" | "relay" | "none") {
            return Err(invalid(
                "peer.route",
                format!("unknown route {:?}", p.route),
            ));
        }
        let direct_addr = opt_addr_from_wire(&p.direct_addr, "peer.direct_addr")?;
        Ok(Self {
            peer_id: peer_from_wire(&p.peer_id, "peer.peer_id")?,
            route: p.route,
            direct_addr,
            direct_rtt_us: direct_addr.map(|_| p.direct_rtt_us),
            relay_addr: opt_addr_from_wire(&p.relay_addr, "peer.relay_addr")?,
            protocols: p.protocols,
            rtt_us: (p.rtt_us > 0).then_some(p.rtt_us),
        })
    }
}

impl From<&NodeStatus> for pb::StatusResponse {
    fn from(s: &NodeStatus) -> Self {
        Self {
            peer_id: s.peer_id.as_bytes().to_vec().into(),
            local_addr: s.local_addr.to_string(),
            candidates: addrs_to_wire(&s.candidates),
            relays: s.relays.iter().map(Into::into).collect(),
            relaying: s.relaying,
            nat: Some((&s.nat).into()),
            dht: s.dht.as_ref().map(Into::into),
            protocols: s.protocols.clone(),
        }
    }
}

impl TryFrom<pb::StatusResponse> for NodeStatus {
    type Error = ApiError;
    fn try_from(s: pb::StatusResponse) -> Result<Self> {
        Ok(Self {
            peer_id: peer_from_wire(&s.peer_id, "peer_id")?,
            local_addr: addr_from_wire(&s.local_addr, "local_addr")?,
            candidates: addrs_from_wire(&s.candidates, "candidates")?,
            relays: s
                .relays
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_>>()?,
            relaying: s.relaying,
            nat: s
                .nat
                .ok_or_else(|| invalid("nat", "is required"))?
                .try_into()?,
            dht: s.dht.map(TryInto::try_into).transpose()?,
            protocols: s.protocols,
        })
    }
}

impl From<&NameRecord> for pb::ResolveNameResponse {
    fn from(r: &NameRecord) -> Self {
        Self {
            name: r.name.clone(),
            identity: r.identity.to_string(),
            nodes: r
                .nodes
                .iter()
                .map(|p| p.as_bytes().to_vec().into())
                .collect(),
        }
    }
}

impl TryFrom<pb::ResolveNameResponse> for NameRecord {
    type Error = ApiError;
    fn try_from(r: pb::ResolveNameResponse) -> Result<Self> {
        if r.nodes.len() > MAX_WIRE_ADDRS {
            return Err(invalid("nodes", "too many"));
        }
        Ok(Self {
            name: r.name,
            identity: IdentityId::from_str(&r.identity).map_err(|e| invalid("identity", e))?,
            nodes: r
                .nodes
                .iter()
                .map(|n| peer_from_wire(n, "nodes"))
                .collect::<Result<_>>()?,
        })
    }
}

pub fn topic_from_wire(bytes: &[u8]) -> Result<NodeId> {
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid("topic", "must be a 32-byte DHT key"))?;
    Ok(NodeId::from_bytes(key))
}

impl From<&TopicPeer> for pb::TopicPeer {
    fn from(p: &TopicPeer) -> Self {
        Self {
            peer_id: p.peer_id.as_bytes().to_vec().into(),
            addrs: addrs_to_wire(&p.addrs),
            relays: p
                .relays
                .iter()
                .map(|r| r.as_bytes().to_vec().into())
                .collect(),
        }
    }
}

impl TryFrom<pb::TopicPeer> for TopicPeer {
    type Error = ApiError;
    fn try_from(p: pb::TopicPeer) -> Result<Self> {
        if p.relays.len() > MAX_WIRE_ADDRS {
            return Err(invalid("peers.relays", "too many"));
        }
        Ok(Self {
            peer_id: peer_from_wire(&p.peer_id, "peers.peer_id")?,
            addrs: addrs_from_wire(&p.addrs, "peers.addrs")?,
            relays: p
                .relays
                .iter()
                .map(|r| peer_from_wire(r, "peers.relays"))
                .collect::<Result<_>>()?,
        })
    }
}
