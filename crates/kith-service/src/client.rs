//! The client side: one client type per service that is either in-process or remote.
//!
//! A service's API is a trait (say `IdentityApi`). `Client<dyn IdentityApi>` derefs to that trait:
//! built with [`Client::local`] it calls the implementation directly (no serialisation); built
//! with [`Client::connect`] it calls a remote implementation that speaks gRPC. Both return the
//! service's own typed errors.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Uri};

use crate::auth::Token;
use crate::endpoint::Endpoint;

/// Implemented for `dyn ServiceApi` by each service: how to make the remote implementation.
pub trait RemoteApi: Send + Sync + 'static {
    fn remote(connection: Connection) -> Arc<Self>;
}

/// A handle on a service, in-process or remote; cheap to clone.
pub struct Client<A: ?Sized> {
    inner: Arc<A>,
    remote: bool,
}

impl<A: ?Sized> Clone for Client<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            remote: self.remote,
        }
    }
}

impl<A: ?Sized> std::fmt::Debug for Client<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("remote", &self.remote)
            .finish()
    }
}

impl<A: ?Sized + RemoteApi> Client<A> {
    /// Calls `implementation` directly, in this process.
    pub fn local(implementation: Arc<A>) -> Self {
        Self {
            inner: implementation,
            remote: false,
        }
    }

    /// Calls the service over gRPC.
    pub fn connect(connection: Connection) -> Self {
        Self {
            inner: A::remote(connection),
            remote: true,
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// The implementation behind the client, to hand to code that takes an `Arc<dyn …Api>`.
    pub fn api(&self) -> Arc<A> {
        self.inner.clone()
    }
}

impl<A: ?Sized> Deref for Client<A> {
    type Target = A;
    fn deref(&self) -> &A {
        &self.inner
    }
}

/// Adds the bearer token, if any, to every outgoing request.
#[derive(Clone, Debug)]
pub struct BearerAuth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel type generated tonic clients are built on.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// A lazily connected channel to a service. It connects on first use and reconnects on its own
/// after the service restarts.
#[derive(Clone, Debug)]
pub struct Connection {
    channel: Channel,
    auth: BearerAuth,
    endpoint: Endpoint,
}

impl Connection {
    pub fn new(endpoint: Endpoint, token: Option<Token>) -> Self {
        let channel = match &endpoint {
            Endpoint::Tcp(addr) => {
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid uri")
                    .connect_timeout(Duration::from_secs(3))
                    .tcp_nodelay(true)
                    .connect_lazy()
            }
            Endpoint::Unix(path) => {
                let path = path.clone();
                tonic::transport::Endpoint::from_static("http://localhost")
                    .connect_timeout(Duration::from_secs(3))
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
            }
        };
        let auth = BearerAuth(token.map(|t| {
            format!("Bearer {}", t.as_str())
                .parse()
                .expect("a hex token is valid metadata")
        }));
        Self {
            channel,
            auth,
            endpoint,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The authenticated channel to build a generated tonic client on.
    pub fn channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }
}

/// Runs a remote call, retrying briefly when the connection itself failed (the server is
/// restarting): the request never reached a handler, so it is safe to send again. A status from a
/// handler is returned as is.
pub async fn call_with_reconnect<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(25);
    for _ in 0..6 {
        match call().await {
            Err(status) if is_connection_failure(&status) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    call().await
}

/// One unary call of a remote service client: `method` is called on a clone of the generated
/// tonic `client` with a clone of `request` (again if the connection itself failed, see
/// [`call_with_reconnect`]); a status becomes the service's own error `E`, the variant the
/// handler returned. Every remote client (`RemoteIdentity`, `RemoteTransport`, `RemoteStore`)
/// makes its calls through this.
pub async fn unary<C, Q, R, E, F, Fut>(client: &C, request: Q, method: F) -> Result<R, E>
where
    C: Clone,
    Q: Clone,
    E: crate::ServiceError,
    F: Fn(C, Q) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    call_with_reconnect(|| method(client.clone(), request.clone()))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| E::from_status(&s))
}

/// A status made by the client's transport because it could not connect: the request cannot
/// have reached a handler. (A connection that broke mid-call is not retried: the call may have
/// been handled.)
fn is_connection_failure(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable || !status.details().is_empty() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        source = err.source();
    }
    false
}

/// Asks the server's `grpc.health.v1` service whether `service` (a full gRPC service name such
/// as `kith.identity.v1.Identity`, or "" for the whole server) is serving.
pub async fn health_check(connection: &Connection, service: &str) -> Result<bool, tonic::Status> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut client = HealthClient::new(connection.channel());
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(response.status == ServingStatus::Serving as i32)
}
