//! Serving protocols: the accept loop that hands each incoming connection to the handler
//! registered for its ALPN (iroh's `Router` pattern).
//!
//! ```no_run
//! # use kith_transport::{Connection, Endpoint, EndpointOptions, ProtocolHandler, Router, SecretKey};
//! #[derive(Debug)]
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl ProtocolHandler for Echo {
//!     async fn accept(&self, conn: Connection) {
//!         while let Ok((mut send, mut recv)) = conn.accept_bi().await {
//!             let _ = tokio::io::copy(&mut recv, &mut send).await;
//!             let _ = send.finish();
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), kith_transport::TransportError> {
//! let endpoint = Endpoint::bind(SecretKey::generate(), EndpointOptions::default())?;
//! let router = Router::builder(endpoint).accept(b"kith/echo/1", Echo).spawn()?;
//! // ... later, in order: stop accepting, close connections, wait for handlers and the socket.
//! router.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Only the registered protocols are offered in the TLS handshake, so a peer asking for any
//! other ALPN is refused there (`no_application_protocol`) before a connection exists.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::connection::{Connection, close_code};
use crate::endpoint::{Endpoint, accept_incoming, check_alpn};
use crate::error::TransportError;

/// A protocol served over the transport: it gets every authenticated connection that asked for
/// its ALPN. `accept` runs in its own task for as long as it likes; returning drops the
/// router's handle on the connection (it stays open while the handler keeps clones).
#[async_trait]
pub trait ProtocolHandler: Send + Sync + 'static {
    /// Serves one connection. Its peer is `conn.remote_peer()`, already authenticated.
    async fn accept(&self, conn: Connection);

    /// Called once when the router shuts down, after it stopped accepting and before it closes
    /// the connections: the place to finish in-flight work politely.
    async fn shutdown(&self) {}
}

type Protocols = BTreeMap<Vec<u8>, Arc<dyn ProtocolHandler>>;

/// The protocols a running router serves; [`Router::add_protocol`] and
/// [`Router::remove_protocol`] change it (and the ALPNs offered in the handshake).
type SharedProtocols = Arc<RwLock<Protocols>>;

fn read(protocols: &SharedProtocols) -> std::sync::RwLockReadGuard<'_, Protocols> {
    protocols.read().unwrap_or_else(|e| e.into_inner())
}

/// Collects the protocols to serve; [`RouterBuilder::spawn`] starts serving them.
pub struct RouterBuilder {
    endpoint: Endpoint,
    protocols: Protocols,
    invalid_alpn: bool,
}

impl RouterBuilder {
    /// Serves `alpn` with `handler` (replacing an earlier handler for the same ALPN).
    pub fn accept(mut self, alpn: impl AsRef<[u8]>, handler: impl ProtocolHandler) -> Self {
        let alpn = alpn.as_ref();
        self.invalid_alpn |= check_alpn(alpn).is_err();
        self.protocols.insert(alpn.to_vec(), Arc::new(handler));
        self
    }

    /// Starts accepting connections for the registered protocols. Must be called inside a Tokio
    /// runtime.
    pub fn spawn(self) -> Result<Router, TransportError> {
        if self.invalid_alpn {
            return Err(TransportError::InvalidAlpn);
        }
        self.endpoint
            .serve_protocols(self.protocols.keys().cloned().collect())?;
        let protocols = Arc::new(RwLock::new(self.protocols));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(
            accept_loop(self.endpoint.clone(), protocols.clone(), cancel.clone())
                .instrument(info_span!("transport.router", peer = %self.endpoint.peer_id())),
        );
        Ok(Router {
            endpoint: self.endpoint,
            protocols,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }
}

/// Accepts connections on an endpoint and routes them by ALPN. Dropping it starts the same
/// ordered shutdown as [`Router::shutdown`] in the background; call `shutdown` to wait for it.
pub struct Router {
    endpoint: Endpoint,
    protocols: SharedProtocols,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Router {
    /// Starts describing what `endpoint` will serve.
    pub fn builder(endpoint: Endpoint) -> RouterBuilder {
        RouterBuilder {
            endpoint,
            protocols: BTreeMap::new(),
            invalid_alpn: false,
        }
    }

    /// The endpoint this router serves on (for dialling out from the same socket and key).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Shuts down in order: stop accepting handshakes, let every handler's
    /// [`ProtocolHandler::shutdown`] run, close every connection with [`close_code::SHUTDOWN`],
    /// wait for the handlers' tasks (aborting any still running after the endpoint's
    /// `shutdown_timeout`), and wait for the endpoint to go idle (bounded by the same timeout).
    /// Returns when all of that is done; later calls return at once.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let mut task = self.task.lock().await;
        if let Some(task) = task.take()
            && let Err(error) = task.await
        {
            warn!(%error, "router task failed");
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Starts serving `alpn` with `handler` on the running router. Refused if the ALPN is
    /// invalid, already served, or the router is shutting down. Handshakes that began before
    /// this call still see the old list.
    pub fn add_protocol(
        &self,
        alpn: impl AsRef<[u8]>,
        handler: impl ProtocolHandler,
    ) -> Result<(), TransportError> {
        let alpn = alpn.as_ref();
        check_alpn(alpn)?;
        let mut protocols = self.protocols.write().unwrap_or_else(|e| e.into_inner());
        if self.is_shutdown() {
            return Err(TransportError::Closed);
        }
        if protocols.contains_key(alpn) {
            return Err(TransportError::ProtocolTaken(
                String::from_utf8_lossy(alpn).into_owned(),
            ));
        }
        let mut alpns: Vec<Vec<u8>> = protocols.keys().cloned().collect();
        alpns.push(alpn.to_vec());
        self.endpoint.serve_protocols(alpns)?;
        protocols.insert(alpn.to_vec(), Arc::new(handler));
        Ok(())
    }

    /// Stops offering `alpn` to new handshakes; connections already routed to its handler stay
    /// with it. Returns whether it was served.
    pub fn remove_protocol(&self, alpn: &[u8]) -> bool {
        let mut protocols = self.protocols.write().unwrap_or_else(|e| e.into_inner());
        if protocols.remove(alpn).is_none() {
            return false;
        }
        if !self.is_shutdown()
            && let Err(error) = self
                .endpoint
                .serve_protocols(protocols.keys().cloned().collect())
        {
            warn!(%error, "could not update the served protocols");
        }
        true
    }

    /// The protocols served now.
    pub fn protocols(&self) -> Vec<Vec<u8>> {
        read(&self.protocols).keys().cloned().collect()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alpns: Vec<_> = read(&self.protocols)
            .keys()
            .map(|alpn| String::from_utf8_lossy(alpn).into_owned())
            .collect();
        f.debug_struct("Router")
            .field("endpoint", &self.endpoint)
            .field("protocols", &alpns)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("endpoint", &self.endpoint)
            .field("protocols", &self.protocols.len())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(endpoint: Endpoint, protocols: SharedProtocols, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    warn!(%error, "protocol handler task failed");
                }
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(serve_connection(endpoint.clone(), incoming, protocols.clone()));
                }
                // The endpoint was closed directly: shut the rest down the same way.
                None => break,
            },
        }
    }

    debug!(connections = connections.len(), "router shutting down");
    endpoint.stop_accepting();
    let handlers: Vec<_> = read(&protocols).values().cloned().collect();
    for handler in handlers {
        handler.shutdown().await;
    }
    endpoint.close().await;
    let timeout = endpoint.options().shutdown_timeout;
    let drained = tokio::time::timeout(timeout, async {
        while let Some(finished) = connections.join_next().await {
            if let Err(error) = finished {
                warn!(%error, "protocol handler task failed");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            remaining = connections.len(),
            "protocol handlers still running after shutdown timeout, aborting them"
        );
        connections.shutdown().await;
    }
    debug!("router stopped");
}

async fn serve_connection(
    endpoint: Endpoint,
    incoming: quinn::Incoming,
    protocols: SharedProtocols,
) {
    let remote = incoming.remote_address();
    let conn = match accept_incoming(&endpoint, incoming).await {
        Ok(conn) => conn,
        Err(error) => {
            // Failed handshakes are the peer's problem (wrong key type, refused ALPN, gone).
            debug!(%remote, %error, "incoming handshake failed");
            return;
        }
    };
    let alpn = String::from_utf8_lossy(conn.alpn()).into_owned();
    let handler = read(&protocols).get(conn.alpn()).cloned();
    let Some(handler) = handler else {
        debug!(%remote, %alpn, "no handler for protocol");
        conn.close(close_code::UNKNOWN_PROTOCOL, b"unknown protocol");
        return;
    };
    let span = info_span!("transport.accept", peer = %conn.remote_peer(), %alpn, %remote);
    handler.accept(conn).instrument(span).await;
}
