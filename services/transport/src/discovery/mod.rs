//! Finding peers without the DHT: bootstrap records and names in DNS, and Kith nodes on the LAN.
//!
//! - [`dns`]: bootstrap peers published under a domain (SRV + TXT, or a TXT-only static form),
//!   and names (`alice.example.com`) that point to a Kith identity and the nodes that serve it,
//!   like Bluesky handles. Lookups go through hickory-resolver over plain UDP/TCP DNS.
//! - Configured peers: [`BootstrapPeer`] parses `<peer id>@<ip>:<port>`, the same syntax as the
//!   TXT-only DNS form.
//! - [`mdns`]: multicast DNS-SD on the local link (`_kith._udp.local`), so two nodes on one
//!   network find each other with no internet and no configuration.
//!
//! Everything found here is a *hint*: a [`BootstrapPeer`] names a key and where it may be
//! reached, and the QUIC handshake then proves the key (a dial fails unless the far end holds
//! it). DNS and mDNS are unauthenticated, so a forged record can at worst waste a dial; it
//! can never make the transport accept the wrong peer.
//!
//! Every input is bounded: at most [`MAX_PEERS`] peers and [`MAX_ADDRS_PER_PEER`] addresses per
//! peer from one lookup, TXT records of at most [`MAX_TXT_BYTES`] bytes, mDNS packets of at most
//! [`mdns::MAX_PACKET`] bytes and [`mdns::MAX_RECORDS`] records. Malformed entries are skipped
//! with a warning; a lookup whose every entry is malformed is an error.
//!
//! # Record formats
//!
//! | where | type | value |
//! |---|---|---|
//! | `_kith._udp.<domain>` | SRV | `<prio> <weight> <port> <host>`: a bootstrap node |
//! | `<host>` (an SRV target) | TXT | `kith-peer=<peer id>` (64 hex characters) |
//! | `<host>` | A / AAAA | the node's addresses (dialled on the SRV port) |
//! | `_kith-bootstrap.<domain>` | TXT | `kith-bootstrap=<peer id>@<ip>:<port>` (IPv6 as `[v6]:port`) |
//! | `_kith.<name>` | TXT | `kith=<identity id>` (`kith1…`, bech32m), exactly one value |
//! | `_kith.<name>` | TXT | `node=<peer id>`, zero or more: node keys that serve the identity |
//! | `_kith._udp.local` (mDNS) | PTR → SRV, TXT, A | instance `kith-<first 20 hex of the peer id>`, TXT `peer=<peer id>` |

pub mod dns;
pub mod mdns;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32m, Hrp};

use crate::peer::PeerId;

pub use dns::{DnsConfig, DnsResolver, NameRecord, resolve_bootstrap, resolve_name};
pub use mdns::{Mdns, MdnsConfig};

/// Most peers one bootstrap lookup returns (and most nodes one name lists).
pub const MAX_PEERS: usize = 32;
/// Most addresses kept for one peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Longest TXT record accepted, all its strings joined (one DNS character-string holds 255).
pub const MAX_TXT_BYTES: usize = 255;

/// A peer found by discovery: a key, and addresses where it may be reached. The key is proven
/// only when a QUIC handshake to one of the addresses succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// The node key to dial.
    pub peer: PeerId,
    /// Where to dial it (at least one, at most [`MAX_ADDRS_PER_PEER`]).
    pub addrs: Vec<SocketAddr>,
}

impl FromStr for BootstrapPeer {
    type Err = DiscoveryError;

    /// Parses one configured bootstrap peer, `<peer id>@<ip>:<port>` (IPv6 as `[v6]:port`): the
    /// same form as a `kith-bootstrap=` TXT value, so a config file and DNS share one syntax.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (peer, addr) =
            dns::parse_bootstrap_entry(s).map_err(|reason| DiscoveryError::Malformed {
                name: "bootstrap peer".into(),
                reason: reason.into(),
            })?;
        Ok(Self {
            peer,
            addrs: vec![addr],
        })
    }
}

/// A Kith identity id as printed by the identity service: bech32m with prefix `kith` over the
/// 32-byte ed25519 identity key (`kith1…`).
///
/// The transport must not depend on the identity service, so this is a validated copy of the
/// printable form only: the checksum is bech32m, the prefix is `kith`, and the payload is a valid
/// ed25519 key that is not of small order (the same check as [`PeerId`]). What the key may sign
/// (devices, profiles) is the identity service's business.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityId([u8; 32]);

const IDENTITY_HRP: Hrp = Hrp::parse_unchecked("kith");

impl IdentityId {
    /// Validates 32 bytes as an identity key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, DiscoveryError> {
        PeerId::from_bytes(bytes).map_err(|_| malformed_id("not a usable ed25519 key"))?;
        Ok(Self(*bytes))
    }

    /// The identity's ed25519 public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn malformed_id(reason: &str) -> DiscoveryError {
    DiscoveryError::Malformed {
        name: "identity id".into(),
        reason: reason.into(),
    }
}

impl FromStr for IdentityId {
    type Err = DiscoveryError;

    /// Parses the `kith1…` form (either case, not mixed; bech32m only).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 90 {
            return Err(malformed_id("too long"));
        }
        let checked = CheckedHrpstring::new::<Bech32m>(s)
            .map_err(|_| malformed_id("not a bech32m string"))?;
        if checked.hrp() != IDENTITY_HRP {
            return Err(malformed_id("prefix is not kith"));
        }
        let data: Vec<u8> = checked.byte_iter().collect();
        let bytes: [u8; 32] = data
            .try_into()
            .map_err(|_| malformed_id("payload is not 32 bytes"))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = bech32::encode::<Bech32m>(IDENTITY_HRP, &self.0).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl fmt::Debug for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityId({self})")
    }
}

/// What can go wrong while discovering peers.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The name is not a valid DNS host name; nothing was sent.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// The name does not exist, or holds no Kith record.
    #[error("no kith record at {name}")]
    NotFound { name: String },

    /// Records exist but none of them is usable.
    #[error("malformed record at {name}: {reason}")]
    Malformed { name: String, reason: String },

    /// The name holds several different values where one is allowed.
    #[error("ambiguous record at {name}: {reason}")]
    Ambiguous { name: String, reason: String },

    /// No answer in time.
    #[error("dns lookup of {name} timed out")]
    Timeout { name: String },

    /// The resolver failed for another reason (server failure, refused, no connection, ...).
    #[error("dns lookup of {name} failed")]
    Resolve {
        name: String,
        #[source]
        source: Box<hickory_resolver::net::NetError>,
    },

    /// The resolver could not be configured (unreadable resolv.conf, no name servers, ...).
    #[error("dns configuration: {0}")]
    Config(String),

    /// A socket could not be created, configured or used.
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::SecretKey;

    #[test]
    fn configured_bootstrap_peers_parse() {
        let peer = SecretKey::generate().peer_id();
        let parsed: BootstrapPeer = format!("{peer}@[2001:db8::1]:4433").parse().unwrap();
        assert_eq!(parsed.peer, peer);
        assert_eq!(parsed.addrs, vec!["[2001:db8::1]:4433".parse().unwrap()]);
        assert!(matches!(
            format!("{peer}@nowhere").parse::<BootstrapPeer>(),
            Err(DiscoveryError::Malformed { .. })
        ));
    }

    #[test]
    fn identity_ids_round_trip_and_refuse_bad_forms() {
        let key = SecretKey::generate().peer_id();
        let id = IdentityId::from_bytes(key.as_bytes()).unwrap();
        let text = id.to_string();
        assert!(text.starts_with("kith1"));
        assert_eq!(text.parse::<IdentityId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<IdentityId>().unwrap(), id);

        // Bech32 (not m) checksum, another prefix, a typo, hex, a weak key.
        let bech32_plain = bech32::encode::<bech32::Bech32>(IDENTITY_HRP, key.as_bytes()).unwrap();
        let other_prefix =
            bech32::encode::<Bech32m>(Hrp::parse_unchecked("kath"), key.as_bytes()).unwrap();
        let mut typo = text.clone().into_bytes();
        typo[10] = if typo[10] == b'q' { b'p' } else { b'q' };
        let weak = bech32::encode::<Bech32m>(IDENTITY_HRP, &{
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        })
        .unwrap();
        for bad in [
            bech32_plain,
            other_prefix,
            String::from_utf8(typo).unwrap(),
            key.to_string(),
            weak,
            String::new(),
            "kith1".repeat(30),
        ] {
            assert!(bad.parse::<IdentityId>().is_err(), "{bad} accepted");
        }
    }
}
