//! The transport's one error type. Every failure a caller can act on has its own variant; the
//! quinn and rustls errors underneath are kept as sources for logs, not for matching.

use std::io;
use std::net::SocketAddr;

use crate::peer::PeerId;

/// What can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Bytes that were supposed to be a peer id are not a usable ed25519 public key.
    #[error("invalid peer id: {0}")]
    InvalidPeerId(&'static str),

    /// An ALPN protocol name is empty or longer than TLS allows (255 bytes).
    #[error("invalid alpn: must be 1 to 255 bytes")]
    InvalidAlpn,

    /// The UDP socket could not be created, configured or bound.
    #[error("bind udp socket on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The TLS or QUIC configuration could not be built (a bug or an unusable crypto provider).
    #[error("build tls config: {0}")]
    Config(String),

    /// The connection attempt could not start (bad address, endpoint closed, ...).
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },

    /// The peer at the address proved a key other than the one dialled; refused during the
    /// handshake.
    #[error("peer at {addr} is {actual}, not {expected}")]
    WrongPeer {
        addr: SocketAddr,
        expected: PeerId,
        actual: PeerId,
    },

    /// The peer does not serve the requested protocol; it refused the handshake.
    #[error("peer at {addr} does not speak {alpn}")]
    ProtocolRefused { addr: SocketAddr, alpn: String },

    /// The handshake failed for another reason: no answer, bad key type or signature,
    /// refused by the peer, ...
    #[error("handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },

    /// An established connection was lost or closed while opening or accepting a stream.
    #[error("connection lost")]
    Connection(#[from] quinn::ConnectionError),

    /// A peer broke one of the transport's own protocols (punch coordination, ...).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// No way to reach the peer: no relay, and no direct address answered.
    #[error("peer {peer} unreachable: {reason}")]
    Unreachable { peer: PeerId, reason: String },

    /// A name (`alice.example.com`) could not be resolved to an identity and its nodes.
    #[error("cannot resolve {name}: {reason}")]
    Name { name: String, reason: String },

    /// The node runs without a DHT.
    #[error("this node runs without a DHT")]
    NoDht,

    /// A DHT operation failed (no contacts, a record that cannot be signed, ...).
    #[error("dht: {0}")]
    Dht(#[from] crate::dht::DhtError),

    /// The protocol is already served on this node.
    #[error("protocol {0} is already served")]
    ProtocolTaken(String),

    /// The endpoint has been closed.
    #[error("endpoint closed")]
    Closed,
}
