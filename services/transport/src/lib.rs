//! Kith's transport: QUIC connections between ed25519 public keys.
//!
//! A peer *is* its key. Every [`Endpoint`] holds a node key ([`SecretKey`], the scoped key the
//! identity service delegates for scope `transport`) and proves it in every TLS 1.3 handshake;
//! it dials others by [`PeerId`] and address, and the handshake fails unless the far end proves
//! exactly that key. Both ends are authenticated: whoever accepts learns the dialler's
//! [`PeerId`] from the handshake. See [`tls`] for how (RFC 7250 raw public keys).
//!
//! Protocols are told apart by ALPN. A [`Router`] accepts connections on an endpoint and hands
//! each to the [`ProtocolHandler`] registered for its ALPN; unknown ALPNs are refused in the
//! handshake. A [`Connection`] gives the proven peer, the protocol and quinn's streams.
//!
//! Read in this order: [`peer`], [`tls`], [`endpoint`], [`router`], [`connection`]. The
//! UDP socket is made in one place, [`socket`], because later slices (the DHT, hole punching)
//! share it with QUIC.
//!
//! The Kademlia DHT lives in [`dht`]: sans-IO routing table, lookups, signed peer records, the
//! wire messages and an in-process simulator, and the driver that runs them on the shared UDP
//! socket ([`dht::Dht`]).
//!
//! [`net`] is the layer under QUIC: the one UDP socket shared by QUIC, the DHT, probes and
//! relaying, and per-peer paths (direct or relayed) that QUIC rides on unawares. [`node`] puts it
//! together: relay client, NAT classification, hole punching and the path monitor.
//!
//! [`discovery`] finds peers without the DHT: bootstrap peers published in DNS (SRV + TXT under
//! `_kith._udp.<domain>`, or TXT `kith-bootstrap=<peer>@<ip:port>` under
//! `_kith-bootstrap.<domain>`), names such as `alice.example.com` that point to an identity
//! through TXT `kith=kith1…` under `_kith.<name>` (hickory-resolver), and Kith nodes on the LAN
//! by mDNS (`_kith._udp.local`, no internet needed). What it finds is a hint; the QUIC handshake
//! proves the key.
//!
//! As a service: [`api`] is the [`TransportApi`] trait (status, NAT, DHT, connect, peers, and
//! streams to peers by protocol), [`service`] implements it over a [`Node`], [`grpc`] serves it
//! and calls it remotely (streams ride gRPC bidirectional streams), [`daemon`] holds the
//! options `kith serve transport` and `kith node up` share.

pub mod api;
pub mod connection;
pub mod daemon;
pub mod dht;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod grpc;
pub mod net;
pub mod node;
pub mod peer;
pub mod router;
pub mod service;
pub mod socket;
pub mod tls;
mod wire;

pub use api::{ApiError, PeerStream, TransportApi, TransportClient};
pub use connection::{Connection, RecvStream, SendStream, VarInt, close_code};
pub use endpoint::{Endpoint, EndpointOptions};
pub use error::TransportError;
pub use node::{Node, NodeBuilder, NodeConfig, PeerAddrs, RelayAddr};
pub use peer::{PeerId, SecretKey};
pub use router::{ProtocolHandler, Router, RouterBuilder};
pub use service::TransportService;
