//! The Kith service framework, written once and used by every service.
//!
//! - [`ServiceError`] and [`service_error!`]: one typed error enum per service that survives gRPC.
//! - [`Client`]: one client type per service, in-process or remote, same API, same errors.
//! - [`ServiceServer`]: serves a service's gRPC API with health, reflection, `/metrics`, a span
//!   per RPC, authenticated listeners ([`Listen`]) and ordered shutdown ([`ServerHandle`]).
//! - [`Token`]: the bearer credential TCP listeners demand, kept in a 0600 cookie file.
//! - [`stream::ChunkWrite`]: a peer stream's sending half, which QUIC lets take owned chunks
//!   without a copy.

mod auth;
mod client;
mod endpoint;
mod error;
mod home;
mod metrics;
mod server;
pub mod stream;
mod telemetry;

pub use auth::{CookieError, Token};
pub use client::{
    AuthChannel, BearerAuth, Client, Connection, RemoteApi, call_with_reconnect, health_check,
    unary,
};
pub use endpoint::{Endpoint, EndpointParseError};
pub use error::{ErrorCode, ServiceError, error_chain};
pub use home::Home;
pub use metrics::Metrics;
pub use server::{Listen, MAX_MESSAGE_BYTES, ServeError, ServerHandle, ServiceServer};
pub use telemetry::{init_tracing, shutdown_signal};

#[doc(hidden)]
pub use tonic as __tonic;
