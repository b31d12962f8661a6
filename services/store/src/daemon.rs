//! Running the store service as a server: the options shared by `kith serve store` and
//! `kith node up`.

use std::path::PathBuf;
use std::sync::Arc;

use kith_service::{Endpoint, Home, Listen, ServeError, ServerHandle, ServiceServer};

use crate::api::StoreApi;
use crate::grpc::grpc_service;

/// The service name: its socket is `run/store.sock`, its cookie `run/store.cookie`.
pub const SERVICE: &str = "store";

/// Listener and database options of the store server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Where to listen for gRPC: `unix:/path` or `tcp://host:port`, repeatable. Default: the
    /// home's `run/store.sock`. TCP listeners require the bearer token from the cookie file.
    #[arg(long = "listen", env = "KITH_STORE_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Endpoint>,
    /// Bearer-token cookie for TCP listeners; created (0600) if missing.
    /// Default: the home's `run/store.cookie`.
    #[arg(long, env = "KITH_STORE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Resolves the listeners, creating the TCP cookie if needed.
    pub fn listeners(&self, home: &Home) -> Result<Vec<Listen>, kith_service::CookieError> {
        home.listeners(SERVICE, &self.listen, self.token_file.as_deref())
    }
}

/// The default database: `sqlite://<home>/store/store.db`.
pub fn default_url(home: &Home) -> String {
    format!(
        "sqlite://{}",
        home.service_dir(SERVICE).join("store.db").display()
    )
}

/// Starts serving `api` on `listen`.
pub async fn spawn(api: Arc<dyn StoreApi>, listen: &[Listen]) -> Result<ServerHandle, ServeError> {
    ServiceServer::new(SERVICE)
        .add_service(grpc_service(api))
        .spawn(listen)
        .await
}
