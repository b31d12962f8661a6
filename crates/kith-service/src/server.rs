//! The gRPC server every service runs: its API plus health, reflection and `/metrics`, a tracing
//! span and metrics per RPC, authenticated listeners and ordered shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tracing::Instrument;

use crate::auth::Token;
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;

/// Largest gRPC message a Kith server decodes; larger requests are refused before any work.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// One listener of a server.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A Unix socket, created owner-only; only the owner (or root) may connect.
    Unix(PathBuf),
    /// A TCP address; every request must carry `token` as a bearer credential.
    Tcp { addr: SocketAddr, token: Token },
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind {endpoint}: {source}")]
    Bind {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("socket {path} is in use by a running server")]
    SocketInUse { path: String },
}

/// Collects the gRPC services of one Kith service before it is started.
pub struct ServiceServer {
    name: &'static str,
    routes: Routes,
    service_names: Vec<&'static str>,
    metrics: Arc<Metrics>,
}

impl ServiceServer {
    /// `name` is the Kith service (e.g. "identity"); it labels logs and metrics.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            routes: Routes::default(),
            service_names: Vec::new(),
            metrics: Arc::new(Metrics::new(name)),
        }
    }

    /// Adds a generated tonic service; its name is reported as serving by gRPC health.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Error = Infallible,
                Response = http::Response<tonic::body::Body>,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Binds every listener and starts serving. Returns once all listeners are bound.
    pub async fn spawn(self, listen: &[Listen]) -> Result<ServerHandle, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.service_names {
            health
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kith_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("kith descriptor set is valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kith_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("kith descriptor set is valid");
        let metrics = self.metrics.clone();
        let base = self
            .routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .into_axum_router()
            .route(
                "/metrics",
                axum::routing::get({
                    let metrics = metrics.clone();
                    move || async move { metrics.render() }
                }),
            )
            .layer(from_fn_with_state(metrics.clone(), observe_rpc));

        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut endpoints = Vec::new();
        let mut sockets = Vec::new();
        let bound = Self::bind_all(
            self.name,
            &base,
            listen,
            &cancel,
            &mut tasks,
            &mut endpoints,
            &mut sockets,
        )
        .await;
        if let Err(err) = bound {
            // Do not leave the listeners that did bind running.
            cancel.cancel();
            tasks.abort_all();
            for path in &sockets {
                let _ = std::fs::remove_file(path);
            }
            return Err(err);
        }
        for endpoint in &endpoints {
            tracing::info!(service = self.name, %endpoint, "serving");
        }
        Ok(ServerHandle {
            name: self.name,
            endpoints,
            sockets,
            cancel,
            tasks,
            health,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn bind_all(
        name: &'static str,
        base: &axum::Router,
        listen: &[Listen],
        cancel: &CancellationToken,
        tasks: &mut JoinSet<()>,
        endpoints: &mut Vec<Endpoint>,
        sockets: &mut Vec<PathBuf>,
    ) -> Result<(), ServeError> {
        for listener in listen {
            match listener {
                Listen::Unix(path) => {
                    let unix = bind_unix(path)?;
                    let owner = std::fs::metadata(path).map(|m| m.uid()).unwrap_or(0);
                    let incoming = UnixListenerStream::new(unix).filter(move |conn| match conn {
                        Ok(stream) => peer_allowed(stream, owner),
                        Err(_) => true,
                    });
                    sockets.push(path.clone());
                    serve_on(tasks, name, base.clone(), incoming, cancel);
                    endpoints.push(Endpoint::Unix(path.clone()));
                }
                Listen::Tcp { addr, token } => {
                    let tcp = TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServeError::Bind {
                            endpoint: format!("tcp://{addr}"),
                            source,
                        })?;
                    let local = tcp.local_addr().map_err(|source| ServeError::Bind {
                        endpoint: format!("tcp://{addr}"),
                        source,
                    })?;
                    let router = base
                        .clone()
                        .layer(from_fn_with_state(token.clone(), require_token));
                    let incoming = TcpListenerStream::new(tcp).map(|conn| {
                        if let Ok(stream) = &conn {
                            let _ = stream.set_nodelay(true);
                        }
                        conn
                    });
                    serve_on(tasks, name, router, incoming, cancel);
                    endpoints.push(Endpoint::Tcp(local));
                }
            }
        }
        Ok(())
    }
}

/// Serves `router` on the connections of `incoming` until `cancel` fires, as a task in `tasks`.
fn serve_on<I, IO, IE>(
    tasks: &mut JoinSet<()>,
    service: &'static str,
    router: axum::Router,
    incoming: I,
    cancel: &CancellationToken,
) where
    I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let server = tonic_server().add_routes(Routes::from(router));
    let shutdown = cancel.clone().cancelled_owned();
    tasks.spawn(async move {
        if let Err(err) = server
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(service, error = %err, "listener failed");
        }
    });
}

fn tonic_server() -> tonic::transport::Server {
    // HTTP/1 is accepted too so Prometheus (and curl) can scrape `/metrics`.
    tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(256))
}

/// Binds a Unix socket owner-only. A stale socket file left by a crashed server is replaced; a
/// socket a live server still answers on is not.
fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind {
        endpoint: format!("unix:{}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(bind_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Only the socket's owner, or root, may talk to a Unix listener (defence in depth beside 0600).
fn peer_allowed(stream: &tokio::net::UnixStream, owner: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == owner || cred.uid() == 0 => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "refused unix connection from another user"
            );
            false
        }
        Err(err) => {
            tracing::warn!(error = %err, "refused unix connection without peer credentials");
            false
        }
    }
}

/// Refuses any request without the right bearer token: `UNAUTHENTICATED` for gRPC, 401 otherwise.
async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if presented.is_some_and(|p| token.matches_header(p)) {
        return next.run(request).await;
    }
    let why = if presented.is_some() {
        "wrong credential: the bearer token does not match the service cookie"
    } else {
        "missing credential: send the token from the service cookie as `authorization: Bearer <token>`"
    };
    tracing::warn!(
        path = request.uri().path(),
        why,
        "refused unauthenticated request"
    );
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        tonic::Status::unauthenticated(why).into_http()
    } else {
        (StatusCode::UNAUTHORIZED, why).into_response()
    }
}

/// One tracing span and one metrics observation per RPC, named `service.method`.
async fn observe_rpc(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(method) = rpc_name(request.uri().path()) else {
        return next.run(request).await;
    };
    let span = tracing::info_span!("rpc", method = %method);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    // Errors from unary handlers come back trailers-only, so the status is in the headers; a
    // response without one succeeded (its status travels in the trailers).
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0);
    let elapsed = started.elapsed();
    // Unknown paths all count as one label, so callers cannot grow the metrics without bound.
    const UNIMPLEMENTED: i32 = 12;
    let method = if code == UNIMPLEMENTED {
        "unknown".to_owned()
    } else {
        method
    };
    metrics.observe_rpc(&method, code, elapsed);
    span.in_scope(|| tracing::debug!(code, micros = elapsed.as_micros() as u64, "rpc done"));
    response
}

/// `/kith.identity.v1.Identity/SignBatch` → `identity.sign_batch`.
fn rpc_name(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next()?.rsplit('.').next()?;
    let method = parts.next()?;
    let mut name = service.to_ascii_lowercase();
    name.push('.');
    for (i, ch) in method.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                name.push('_');
            }
            name.push(ch.to_ascii_lowercase());
        } else {
            name.push(ch);
        }
    }
    Some(name)
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    name: &'static str,
    endpoints: Vec<Endpoint>,
    sockets: Vec<PathBuf>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    health: tonic_health::server::HealthReporter,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("service", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound endpoints, with real ports for `tcp://…:0` listeners.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// A token that is cancelled when shutdown begins.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Ordered shutdown: report NOT_SERVING, stop accepting, drain in-flight calls (bounded),
    /// then remove the socket files.
    pub async fn shutdown(mut self) {
        tracing::info!(service = self.name, "shutting down");
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.name,
                "drain timed out; aborting remaining calls"
            );
            self.tasks.abort_all();
        }
        for path in &self.sockets {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(service = self.name, "stopped");
    }

    /// Waits until the server stops (after [`ServerHandle::shutdown`] from elsewhere via the
    /// cancellation token, or a listener failure).
    pub async fn join(&mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_names() {
        assert_eq!(
            rpc_name("/kith.identity.v1.Identity/SignBatch").as_deref(),
            Some("identity.sign_batch")
        );
        assert_eq!(rpc_name("/metrics"), None);
    }
}
