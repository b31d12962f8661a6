//! Running the transport service as a server: listener and node options shared by
//! `kith serve transport` and `kith node up`.
//!
//! The node key is not read here: the caller gets it from the identity service (the delegated
//! key for scope [`KEY_SCOPE`]), so this crate never depends on the identity service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use kith_service::{Endpoint, Home, Listen, ServeError, ServerHandle, ServiceServer};

use crate::api::TransportApi;
use crate::discovery::{DnsConfig, MdnsConfig};
use crate::error::TransportError;
use crate::grpc::grpc_service;
use crate::node::{NodeConfig, RelayAddr};
use crate::peer::PeerId;

/// The service name: its socket is `run/transport.sock`, its cookie `run/transport.cookie`.
pub const SERVICE: &str = "transport";
/// The scope of the identity service's delegated key that is the node key.
pub const KEY_SCOPE: &str = "transport";
/// The routing table kept across restarts, in the service's dir.
pub const ROUTING_SNAPSHOT: &str = "routing.json";

/// Listener options of the transport server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Where to listen for gRPC: `unix:/path` or `tcp://host:port`, repeatable. Default: the
    /// home's `run/transport.sock`. TCP listeners require the bearer token from the cookie file.
    #[arg(long = "listen", env = "KITH_TRANSPORT_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Endpoint>,
    /// Bearer-token cookie for TCP listeners; created (0600) if missing.
    /// Default: the home's `run/transport.cookie`.
    #[arg(long, env = "KITH_TRANSPORT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// Resolves the listeners, creating the TCP cookie if needed.
    pub fn listeners(&self, home: &Home) -> Result<Vec<Listen>, kith_service::CookieError> {
        home.listeners(SERVICE, &self.listen, self.token_file.as_deref())
    }
}

/// A relay given as `PEER@IP:PORT` (the peer id in hex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayArg(pub RelayAddr);

impl FromStr for RelayArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (peer, addr) = s
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: expected PEER@IP:PORT"))?;
        let peer = PeerId::from_str(peer).map_err(|e| format!("{s:?}: {e}"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP:PORT address"))?;
        Ok(Self(RelayAddr { peer, addr }))
    }
}

/// How the node runs: its socket, relays, discovery.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's UDP socket (QUIC, DHT, punching and relaying share it). The default is
    /// dual-stack on a random port; a fixed port (e.g. `[::]:7702`) suits a public node.
    #[arg(long = "bind", env = "KITH_TRANSPORT_BIND", default_value = "[::]:0")]
    pub bind: SocketAddr,
    /// A relay to register with, so peers behind NATs can reach this node: `PEER@IP:PORT`,
    /// repeatable.
    #[arg(long = "relay", env = "KITH_RELAYS", value_delimiter = ',')]
    pub relays: Vec<RelayArg>,
    /// Relay encrypted QUIC packets for others (rate-limited per peer); for public nodes.
    #[arg(long, env = "KITH_RELAY_FOR_OTHERS")]
    pub relay_for_others: bool,
    /// A public node to learn this node's address from (relays count too), repeatable.
    #[arg(long = "observer", env = "KITH_OBSERVERS", value_delimiter = ',')]
    pub observers: Vec<SocketAddr>,
    /// A DHT node to bootstrap from, `IP:PORT`, repeatable.
    #[arg(long = "bootstrap", env = "KITH_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<SocketAddr>,
    /// A domain whose DNS lists bootstrap nodes (`_kith._udp.<domain>` SRV or
    /// `_kith-bootstrap.<domain>` TXT), repeatable.
    #[arg(
        long = "dns-bootstrap",
        env = "KITH_DNS_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub dns_bootstrap: Vec<String>,
    /// DNS servers to ask instead of the system's (`IP:PORT`), repeatable.
    #[arg(long = "dns-server", env = "KITH_DNS_SERVERS", value_delimiter = ',')]
    pub dns_servers: Vec<SocketAddr>,
    /// Do not find or announce Kith nodes on the LAN (mDNS).
    #[arg(long, env = "KITH_NO_MDNS")]
    pub no_mdns: bool,
    /// Run without the DHT.
    #[arg(long, env = "KITH_NO_DHT")]
    pub no_dht: bool,
}

impl Default for NodeArgs {
    fn default() -> Self {
        Self {
            bind: "[::]:0".parse().expect("valid address"),
            relays: Vec::new(),
            relay_for_others: false,
            observers: Vec::new(),
            bootstrap: Vec::new(),
            dns_bootstrap: Vec::new(),
            dns_servers: Vec::new(),
            no_mdns: false,
            no_dht: false,
        }
    }
}

impl NodeArgs {
    /// The node's configuration; the routing table is kept in the home's `transport/` dir
    /// (created 0700 if missing).
    pub fn config(&self, home: &Home) -> Result<NodeConfig, TransportError> {
        let mut config = NodeConfig::default();
        config.endpoint.bind_addr = self.bind;
        config.endpoint.relay.enabled = self.relay_for_others;
        config.relays = self.relays.iter().map(|r| r.0).collect();
        config.observers = self.observers.clone();
        config.bootstrap = self.bootstrap.clone();
        config.dns_bootstrap = self.dns_bootstrap.clone();
        if !self.dns_servers.is_empty() {
            config.dns = DnsConfig {
                nameservers: self.dns_servers.clone(),
                ..DnsConfig::default()
            };
        }
        config.mdns = (!self.no_mdns).then(MdnsConfig::default);
        if self.no_dht {
            config.dht = None;
        } else if let Some(dht) = config.dht.as_mut() {
            let dir = home.service_dir(SERVICE);
            create_private_dir(&dir)
                .map_err(|e| TransportError::Config(format!("create {}: {e}", dir.display())))?;
            dht.snapshot_path = Some(dir.join(ROUTING_SNAPSHOT));
        }
        Ok(config)
    }
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Starts serving `api` on `listen`.
pub async fn spawn(
    api: Arc<dyn TransportApi>,
    listen: &[Listen],
) -> Result<ServerHandle, ServeError> {
    ServiceServer::new(SERVICE)
        .add_service(grpc_service(api))
        .spawn(listen)
        .await
}
