//! An authenticated QUIC connection to one peer, speaking one protocol.
//!
//! A thin layer over `quinn::Connection` that adds what the handshake proved: the remote
//! [`PeerId`] and the negotiated ALPN. Streams are quinn's own types.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use quinn::{RecvStream, SendStream, VarInt};

use crate::error::TransportError;
use crate::peer::PeerId;

/// Application close codes the transport itself uses. Protocols pick their own codes for
/// [`Connection::close`]; these are reserved.
pub mod close_code {
    use quinn::VarInt;

    /// Closed normally by one side.
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The endpoint is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// The connection arrived for a protocol with no handler (should be refused earlier, in the
    /// handshake; this is the second line).
    pub const UNKNOWN_PROTOCOL: VarInt = VarInt::from_u32(2);
    /// A relayed connection proved another key than the one it was relayed for.
    pub const WRONG_PEER: VarInt = VarInt::from_u32(3);
}

/// A QUIC connection whose remote end proved it holds [`Connection::remote_peer`]'s key.
/// Cheap to clone; all clones are the same connection.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    remote_peer: PeerId,
    alpn: Arc<[u8]>,
}

impl Connection {
    pub(crate) fn new(inner: quinn::Connection, remote_peer: PeerId, alpn: Arc<[u8]>) -> Self {
        Self {
            inner,
            remote_peer,
            alpn,
        }
    }

    /// The peer at the other end, as proven in the handshake.
    pub fn remote_peer(&self) -> PeerId {
        self.remote_peer
    }

    /// The protocol (ALPN) both ends agreed on.
    pub fn alpn(&self) -> &[u8] {
        &self.alpn
    }

    /// The peer's current UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Current round-trip estimate.
    pub fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    /// Opens a bidirectional stream. The peer learns of it when the first bytes arrive.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        Ok(self.inner.open_bi().await?)
    }

    /// Waits for the peer to open a bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), TransportError> {
        Ok(self.inner.accept_bi().await?)
    }

    /// Opens a unidirectional (send-only) stream.
    pub async fn open_uni(&self) -> Result<SendStream, TransportError> {
        Ok(self.inner.open_uni().await?)
    }

    /// Waits for the peer to open a unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, TransportError> {
        Ok(self.inner.accept_uni().await?)
    }

    /// Closes the connection at once with an application code and reason; unfinished streams
    /// are abandoned. To let the peer read everything first, finish the streams and wait for
    /// them (or for the peer to close) before calling this.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.inner.close(code, reason);
    }

    /// Waits until the connection is closed, by either side or by a timeout, and says why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.inner.closed().await
    }

    /// Why the connection closed, if it has.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.inner.close_reason()
    }

    /// quinn's statistics for this connection (bytes, packets, congestion, path).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.inner.stats()
    }

    /// The underlying quinn connection, for what this layer does not wrap (datagrams, ...).
    pub fn quinn(&self) -> &quinn::Connection {
        &self.inner
    }
}
