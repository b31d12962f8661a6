//! Running the store service: in `kith node up` (in-process, beside identity and transport) and
//! as `kith serve store` (its own process, talking to the identity and transport services over
//! gRPC). The store gets its keys from the identity service ([`IdentityKeys`]) and reaches peers
//! through the transport ([`crate::store_net::TransportNetwork`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use kith_identity::IdentityApi;
use kith_service::{Connection, Endpoint, ServerHandle, Token};
use kith_store::daemon::ServeArgs;
use kith_store::{NodeKeys, StoreConfig, StoreError, StoreService};
use kith_transport::TransportClient;
use kith_transport::api::TransportApi;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::context::Ctx;
use crate::store::StoreUrl;
use crate::store_net::TransportNetwork;

/// The store's keys: the identity service's delegated keys.
pub struct IdentityKeys(pub Arc<dyn IdentityApi>);

#[async_trait]
impl NodeKeys for IdentityKeys {
    async fn delegated_secret(&self, scope: &str) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        let key = self
            .0
            .delegate(scope.to_string(), None)
            .await
            .map_err(|e| StoreError::Network(format!("identity service: delegate {scope}: {e}")))?;
        Ok(Zeroizing::new(*key.secret))
    }
}

/// Options of the store service that `node up` and `serve store` share.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreOptions {
    #[command(flatten)]
    pub url: StoreUrl,
    /// Bytes of mailbox records kept for others, at most.
    #[arg(long, env = "KITH_MAILBOX_QUOTA", default_value_t = kith_store::mailbox::DEFAULT_TOTAL_QUOTA)]
    pub mailbox_quota: u64,
}

/// Where `serve store` finds the transport.
#[derive(Clone, Debug, clap::Args)]
pub struct TransportLink {
    /// The transport service (`unix:/path` or `tcp://host:port`). Default: the home's
    /// `run/transport.sock` when it answers; without one the store runs without a network.
    #[arg(long = "transport", env = "KITH_TRANSPORT_ENDPOINT")]
    pub transport_endpoint: Option<Endpoint>,
    /// Bearer-token cookie of a TCP transport endpoint (default: the home's
    /// run/transport.cookie).
    #[arg(long = "transport-token-file", env = "KITH_TRANSPORT_TOKEN_FILE")]
    pub transport_token_file: Option<PathBuf>,
    /// Run without a network, even if a transport is running.
    #[arg(long, conflicts_with = "transport_endpoint")]
    pub no_network: bool,
}

impl TransportLink {
    /// The transport client, if there is one to use.
    pub fn client(&self, ctx: &Ctx) -> anyhow::Result<Option<TransportClient>> {
        if self.no_network {
            return Ok(None);
        }
        let service = kith_transport::daemon::SERVICE;
        let connection = match &self.transport_endpoint {
            Some(endpoint @ Endpoint::Tcp(_)) => {
                let path = self
                    .transport_token_file
                    .clone()
                    .unwrap_or_else(|| ctx.home.cookie(service));
                let token = Token::read_cookie(&path)
                    .context("load the transport's credential (use --transport-token-file)")?;
                Connection::new(endpoint.clone(), Some(token))
            }
            Some(endpoint) => Connection::new(endpoint.clone(), None),
            None => {
                let socket = ctx.home.socket(service);
                if std::os::unix::net::UnixStream::connect(&socket).is_err() {
                    return Ok(None);
                }
                Connection::new(Endpoint::Unix(socket), None)
            }
        };
        Ok(Some(TransportClient::connect(connection)))
    }
}

/// A store service this process runs.
pub struct RunningStore {
    pub service: Arc<StoreService>,
    pub server: ServerHandle,
    backend: &'static str,
    network: bool,
}

impl RunningStore {
    /// What `node up` and `serve store` print about it.
    pub fn describe(&self) -> Value {
        json!({ "backend": self.backend, "network": self.network })
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.service.shutdown().await;
    }
}

/// Opens the database, starts the service (with the network when a transport is given) and
/// serves its API.
pub async fn start(
    ctx: &Ctx,
    identity: Arc<dyn IdentityApi>,
    transport: Option<Arc<dyn TransportApi>>,
    options: &StoreOptions,
    serve: &ServeArgs,
) -> anyhow::Result<RunningStore> {
    let store = Arc::new(crate::store::open_store(ctx, &options.url).await?);
    let backend = store.backend();
    let network = match transport {
        Some(transport) => {
            let status = transport
                .status()
                .await
                .context("ask the transport service for this node's peer id")?;
            let network = TransportNetwork::new(transport, *status.peer_id.as_bytes());
            Some(Arc::new(network) as Arc<dyn kith_store::net::Network>)
        }
        None => None,
    };
    let has_network = network.is_some();
    let config = StoreConfig {
        mailbox_quota: options.mailbox_quota,
        ..StoreConfig::default()
    };
    let service = StoreService::start(store, Arc::new(IdentityKeys(identity)), network, config)
        .await
        .context("start the store service")?;
    let listen = serve.listeners(&ctx.home)?;
    let server = match kith_store::daemon::spawn(service.clone(), &listen).await {
        Ok(server) => server,
        Err(error) => {
            service.shutdown().await;
            return Err(error.into());
        }
    };
    Ok(RunningStore {
        service,
        server,
        backend,
        network: has_network,
    })
}

/// The store service for a command: the running one (`--endpoint`, or the home's socket), else
/// one started in this process on the database `url` (without a network), whose keys come from
/// the identity service (running, or the keystore opened here).
pub async fn client(ctx: &Ctx, url: &StoreUrl) -> anyhow::Result<kith_store::StoreClient> {
    if let Some(connection) = ctx.connection(kith_store::daemon::SERVICE)? {
        return Ok(kith_store::StoreClient::connect(connection));
    }
    let store = Arc::new(crate::store::open_store(ctx, url).await?);
    let identity = ctx.identity().await?.api();
    let service = StoreService::start(
        store,
        Arc::new(IdentityKeys(identity)),
        None,
        StoreConfig::default(),
    )
    .await
    .context("start the store in-process")?;
    Ok(kith_store::StoreClient::local(service))
}
