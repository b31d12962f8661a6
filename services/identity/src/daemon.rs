//! Running the identity service as a server: listener configuration shared by the
//! `kith-identity` binary and `kith serve identity`.

use std::path::PathBuf;
use std::sync::Arc;

use kith_service::{Endpoint, Home, Listen, ServeError, ServerHandle, ServiceServer};

use crate::api::IdentityApi;
use crate::grpc::grpc_service;

/// The service name: its socket is `run/identity.sock`, its cookie `run/identity.cookie`.
pub const SERVICE: &str = "identity";

/// Listener options of the identity server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: `unix:/path` or `tcp://host:port`, repeatable. Default: the home's
    /// `run/identity.sock`. TCP listeners require the bearer token from the cookie file.
    #[arg(long = "listen", env = "KITH_IDENTITY_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Endpoint>,
    /// Bearer-token cookie for TCP listeners; created (0600) if missing.
    /// Default: the home's `run/identity.cookie`.
    #[arg(long, env = "KITH_IDENTITY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Resolves the listeners, creating the TCP cookie if needed.
    pub fn listeners(&self, home: &Home) -> Result<Vec<Listen>, kith_service::CookieError> {
        home.listeners(SERVICE, &self.listen, self.token_file.as_deref())
    }
}

/// Starts serving `api` on `listen`.
pub async fn spawn(
    api: Arc<dyn IdentityApi>,
    listen: &[Listen],
) -> Result<ServerHandle, ServeError> {
    ServiceServer::new(SERVICE)
        .add_service(grpc_service(api))
        .spawn(listen)
        .await
}
