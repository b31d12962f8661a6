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
//! socket ([`dht::Dht`]). Not here yet: DNS/mDNS discovery, NAT traversal and relays, the gRPC API
//! and the CLI.

pub mod connection;
pub mod dht;
pub mod endpoint;
pub mod error;
pub mod net;
pub mod peer;
pub mod router;
pub mod socket;
pub mod tls;

pub use connection::{Connection, RecvStream, SendStream, VarInt, close_code};
pub use endpoint::{Endpoint, EndpointOptions};
pub use error::TransportError;
pub use peer::{PeerId, SecretKey};
pub use router::{ProtocolHandler, Router, RouterBuilder};
