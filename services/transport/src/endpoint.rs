//! The node's QUIC endpoint: one UDP socket, the node key, and outgoing connections to peers
//! named by their keys.
//!
//! An endpoint dials with [`Endpoint::connect`]. It accepts nothing until a
//! [`Router`](crate::Router) is spawned on it with the protocols to serve; until then (and after
//! shutdown) quinn answers an incoming Initial with at most a stateless reset, which is no
//! larger than the request, so the dialler simply times out. [`Endpoint::close`] shuts it down
//! in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use tracing::{debug, warn};

use crate::connection::{Connection, close_code};
use crate::error::TransportError;
use crate::net::frame::MAX_RELAY_PAYLOAD;
use crate::net::paths::{canonical, is_virtual};
use crate::net::{Impairment, MuxSocket, RelayConfig};
use crate::peer::{PeerId, SecretKey};
use crate::socket::bind_udp_socket;
use crate::tls::{SERVER_NAME, TlsIdentity, peer_from_identity};

/// `[::]:port`: the dual-stack wildcard.
pub fn dual_stack(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))
}

/// Largest UDP payload QUIC may use: a relayed packet (plus the relay's header) must fit a
/// 1500-byte Ethernet frame over IPv6 (1452 bytes of UDP payload).
pub const QUIC_MAX_UDP_PAYLOAD: u16 = 1400;
const _: () = assert!(QUIC_MAX_UDP_PAYLOAD as usize + 33 <= 1452);
const _: () = assert!(QUIC_MAX_UDP_PAYLOAD as usize <= MAX_RELAY_PAYLOAD);

/// How an endpoint binds and what its connections are allowed to do.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// Where to bind the UDP socket (`[::]:0` by default: dual-stack, every interface of both
    /// families, ephemeral port; IPv4 only on a host without IPv6).
    pub bind_addr: SocketAddr,
    /// How often to send a keep-alive on an otherwise quiet connection. Below the UDP timeouts of
    /// common NATs (often 30 s, sometimes less) so that their mappings stay open.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead (keep-alives count as traffic).
    pub idle_timeout: Duration,
    /// Let quinn use Generic Segmentation Offload (one syscall for many packets). Some virtual
    /// interfaces (veth in network namespaces) mishandle it: set to `false` there.
    pub segmentation_offload: bool,
    /// Send and receive buffer size to ask the kernel for on the UDP socket (0: leave default).
    pub socket_buffer_bytes: usize,
    /// How long [`Endpoint::close`] waits for connections to drain before giving up.
    pub shutdown_timeout: Duration,
    /// How many streams of each direction a peer may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Whether and how much this node relays for others (off by default; public nodes turn
    /// it on).
    pub relay: RelayConfig,
    /// Delay and loss applied to everything sent (tests and the NAT lab; none by default).
    pub impairment: Impairment,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        Self {
            bind_addr: dual_stack(0),
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            segmentation_offload: true,
            socket_buffer_bytes: 4 << 20,
            shutdown_timeout: Duration::from_secs(3),
            max_concurrent_streams: 128,
            relay: RelayConfig::default(),
            impairment: Impairment::default(),
        }
    }
}

impl EndpointOptions {
    /// Options for tests and local tools: bind `127.0.0.1` on an ephemeral port.
    pub fn localhost() -> Self {
        Self {
            bind_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// The quinn transport settings these options stand for. Public so that benchmarks can give
    /// raw quinn exactly the same settings.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut config = quinn::TransportConfig::default();
        config
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(self.idle_timeout)
                    .unwrap_or_else(|_| quinn::IdleTimeout::from(quinn::VarInt::MAX)),
            ))
            .max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            .max_concurrent_uni_streams(self.max_concurrent_streams.into())
            .enable_segmentation_offload(self.segmentation_offload);
        // Packets must still fit one Ethernet frame after a relay adds its header, whichever
        // path they take: cap what MTU discovery may grow to (quinn's default cap is 1452).
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(QUIC_MAX_UDP_PAYLOAD);
        config.mtu_discovery_config(Some(mtu));
        config
    }
}

/// A QUIC endpoint that is a peer: it proves its node key to everyone it talks to and talks only
/// to the keys it means to. Cheap to clone; clones share the endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    quinn: quinn::Endpoint,
    net: Arc<MuxSocket>,
    tls: TlsIdentity,
    transport: Arc<quinn::TransportConfig>,
    options: EndpointOptions,
    local_addr: SocketAddr,
}

impl Endpoint {
    /// Binds the endpoint's UDP socket and starts quinn on it. Must be called inside a Tokio
    /// runtime (quinn's I/O driver is spawned on it).
    pub fn bind(secret: SecretKey, options: EndpointOptions) -> Result<Self, TransportError> {
        let socket = match bind_udp_socket(options.bind_addr, options.socket_buffer_bytes) {
            // A host without IPv6: the dual-stack default falls back to IPv4 on the same port.
            Err(TransportError::Bind { .. })
                if options.bind_addr == dual_stack(options.bind_addr.port()) =>
            {
                let v4 = SocketAddr::from(([0, 0, 0, 0], options.bind_addr.port()));
                debug!("no IPv6 here; binding {v4}");
                bind_udp_socket(v4, options.socket_buffer_bytes)?
            }
            other => other?,
        };
        let local_addr = socket.local_addr().map_err(|source| TransportError::Bind {
            addr: options.bind_addr,
            source,
        })?;
        let tls = TlsIdentity::new(&secret)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Config("no tokio runtime".into()))?;
        let bind_error = |source| TransportError::Bind {
            addr: options.bind_addr,
            source,
        };
        let net = Arc::new(
            MuxSocket::new(
                socket,
                tls.peer_id(),
                options.relay.clone(),
                options.impairment,
            )
            .map_err(bind_error)?,
        );
        let mut config = quinn::EndpointConfig::default();
        // Never invite peers to clear QUIC's fixed bit: the socket tells QUIC from Kith's own
        // datagrams by it (see `net::frame`).
        config.grease_quic_bit(false);
        // No server config yet: nothing is accepted until a router serves protocols.
        let quinn = quinn::Endpoint::new_with_abstract_socket(config, None, net.clone(), runtime)
            .map_err(bind_error)?;
        debug!(peer = %tls.peer_id(), %local_addr, "endpoint bound");
        Ok(Self {
            inner: Arc::new(Inner {
                quinn,
                net,
                transport: Arc::new(options.transport_config()),
                tls,
                options,
                local_addr,
            }),
        })
    }

    /// This node's peer id (its public key).
    pub fn peer_id(&self) -> PeerId {
        self.inner.tls.peer_id()
    }

    /// The address the UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The shared socket underneath: paths, probes, relaying, DHT datagrams.
    pub fn net(&self) -> &Arc<MuxSocket> {
        &self.inner.net
    }

    /// The options the endpoint was bound with.
    pub fn options(&self) -> &EndpointOptions {
        &self.inner.options
    }

    /// Connects to `peer` at `addr` for protocol `alpn`. The handshake fails, and no stream can
    /// be opened, unless the other end proves it holds `peer`'s key and serves `alpn`.
    ///
    /// In TLS 1.3 the dialler finishes before the acceptor has checked the dialler's key, so a
    /// peer that refuses *us* shows up as a connection that closes right after `connect`
    /// returns (its streams fail with [`TransportError::Connection`]).
    pub async fn connect(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        if is_virtual(&addr) {
            return Err(TransportError::Config(format!(
                "{addr} is a virtual peer address; use connect_peer"
            )));
        }
        self.connect_at(peer, addr, alpn).await
    }

    /// Connects to `peer` along the path the socket layer manages for it (direct once proven,
    /// else through its relay; see [`crate::net::paths`]), whichever way packets reach it now
    /// or later. The caller (the node) sets the path up first: a relay, candidate addresses.
    pub async fn connect_peer(
        &self,
        peer: PeerId,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        let addr = self
            .inner
            .net
            .with_paths(|paths| paths.ensure(peer).map(|p| p.virtual_addr))
            .ok_or_else(|| TransportError::Config("too many peers with managed paths".into()))?;
        self.connect_at(peer, addr, alpn).await
    }

    async fn connect_at(
        &self,
        peer: PeerId,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<Connection, TransportError> {
        check_alpn(alpn)?;
        let (tls, verifier) = self.inner.tls.client_config(peer, alpn)?;
        let quic =
            QuicClientConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(self.inner.transport.clone());
        let connecting = self
            .inner
            .quinn
            .connect_with(config, addr, SERVER_NAME)
            .map_err(|source| match source {
                quinn::ConnectError::EndpointStopping => TransportError::Closed,
                source => TransportError::Connect { addr, source },
            })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(source) => {
                return Err(if let Some(actual) = verifier.wrong_peer() {
                    TransportError::WrongPeer {
                        addr,
                        expected: peer,
                        actual,
                    }
                } else if is_no_application_protocol(&source) {
                    TransportError::ProtocolRefused {
                        addr,
                        alpn: String::from_utf8_lossy(alpn).into_owned(),
                    }
                } else {
                    TransportError::Handshake { addr, source }
                });
            }
        };
        // The verifier already insisted on both; checking the finished handshake as well costs
        // nothing and guards against a misconfigured TLS stack.
        let proven = peer_from_identity(conn.peer_identity());
        let agreed = negotiated_alpn(&conn);
        if proven != Some(peer) || agreed.as_deref() != Some(alpn) {
            conn.close(close_code::UNKNOWN_PROTOCOL, b"handshake mismatch");
            return Err(TransportError::Config(format!(
                "handshake with {addr} finished with key {proven:?} and alpn {agreed:?}"
            )));
        }
        debug!(%peer, %addr, alpn = %String::from_utf8_lossy(alpn), "connected");
        Ok(Connection::new(conn, peer, alpn.into()))
    }

    /// Starts accepting handshakes for exactly these protocols (replacing any earlier list).
    pub(crate) fn serve_protocols(&self, alpns: Vec<Vec<u8>>) -> Result<(), TransportError> {
        let tls = self.inner.tls.server_config(alpns)?;
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| TransportError::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(self.inner.transport.clone());
        self.inner.quinn.set_server_config(Some(config));
        Ok(())
    }

    /// Refuses new incoming handshakes from now on; established connections are untouched.
    pub(crate) fn stop_accepting(&self) {
        self.inner.quinn.set_server_config(None);
    }

    /// The next incoming connection attempt, or `None` once the endpoint is closed.
    pub(crate) async fn accept(&self) -> Option<quinn::Incoming> {
        self.inner.quinn.accept().await
    }

    /// Closes the endpoint in order: refuse new handshakes, close every connection with
    /// [`close_code::SHUTDOWN`], then wait (at most `shutdown_timeout`) until the peers have been
    /// told and the endpoint is idle. Calling it again is harmless.
    pub async fn close(&self) {
        self.stop_accepting();
        self.inner
            .quinn
            .close(close_code::SHUTDOWN, b"endpoint shutting down");
        let timeout = self.inner.options.shutdown_timeout;
        if tokio::time::timeout(timeout, self.inner.quinn.wait_idle())
            .await
            .is_err()
        {
            warn!(
                peer = %self.peer_id(),
                timeout_ms = timeout.as_millis() as u64,
                "endpoint not idle after shutdown timeout"
            );
        }
    }
}

/// Completes an incoming handshake and reads what it proved: the client's key and the protocol.
/// A connection that came through a relay (or a managed path) in one peer's name must have
/// proven that peer's key.
pub(crate) async fn accept_incoming(
    endpoint: &Endpoint,
    incoming: quinn::Incoming,
) -> Result<Connection, quinn::ConnectionError> {
    let conn = incoming.await?;
    let (Some(peer), Some(alpn)) = (
        peer_from_identity(conn.peer_identity()),
        negotiated_alpn(&conn),
    ) else {
        // Unreachable with our TLS config (client auth and ALPN are mandatory); refuse anyway.
        conn.close(close_code::UNKNOWN_PROTOCOL, b"handshake incomplete");
        return Err(quinn::ConnectionError::LocallyClosed);
    };
    let remote = canonical(conn.remote_address());
    if is_virtual(&remote) {
        let claimed = endpoint
            .net()
            .with_paths(|paths| paths.peer_of_virtual(&remote).map(|p| p.peer));
        if claimed != Some(peer) {
            warn!(%peer, ?claimed, "relayed connection proved another key than it was relayed for");
            conn.close(
                close_code::WRONG_PEER,
                b"key does not match the relayed peer",
            );
            return Err(quinn::ConnectionError::LocallyClosed);
        }
    }
    Ok(Connection::new(conn, peer, alpn.into()))
}

fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// ALPN protocol ids are 1 to 255 bytes (RFC 7301).
pub(crate) fn check_alpn(alpn: &[u8]) -> Result<(), TransportError> {
    if alpn.is_empty() || alpn.len() > 255 {
        return Err(TransportError::InvalidAlpn);
    }
    Ok(())
}

/// Whether the peer refused our ALPN: TLS alert `no_application_protocol` (120), which QUIC
/// carries as the crypto error 0x100 + 120.
fn is_no_application_protocol(error: &quinn::ConnectionError) -> bool {
    const NO_APPLICATION_PROTOCOL: u8 = 120;
    matches!(
        error,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::crypto(NO_APPLICATION_PROTOCOL)
    )
}
