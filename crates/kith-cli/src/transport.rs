//! `kith peer …`, `kith nat status`, `kith dht status`: talk to the running transport service;
//! and starting the transport for `kith serve transport` and `kith node up`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use kith_identity::IdentityApi;
use kith_service::ServerHandle;
use kith_transport::api::{Connected, PeerInfo, Target};
use kith_transport::daemon::{KEY_SCOPE, NodeArgs, RelayArg, SERVICE, ServeArgs};
use kith_transport::node::PeerAddrs;
use kith_transport::{Node, PeerId, SecretKey, TransportClient, TransportService};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output::emit;

#[derive(clap::Subcommand)]
pub enum PeerCommand {
    /// Connect to a peer by id (64 hex) or by name (alice.example.com), and ping it. Without
    /// --addr/--relay the node finds the peer in the DHT or on the LAN.
    Connect {
        /// The peer's id (hex) or a name whose DNS points to an identity (`_kith.<name>` TXT).
        target: String,
        /// An address to try directly, `IP:PORT`, repeatable.
        #[arg(long = "addr")]
        addrs: Vec<SocketAddr>,
        /// The peer's relay, `PEER@IP:PORT`.
        #[arg(long)]
        relay: Option<RelayArg>,
    },
    /// Peers this node has a path or a connection to.
    List,
}

#[derive(clap::Subcommand)]
pub enum NatCommand {
    /// How this node's NAT maps its socket, as other peers observed it.
    Status,
}

#[derive(clap::Subcommand)]
pub enum DhtCommand {
    /// The DHT's routing table and counters.
    Status,
}

/// The running transport service (the home's socket, or `--endpoint`).
fn client(ctx: &Ctx) -> anyhow::Result<TransportClient> {
    let connection = ctx.connection(SERVICE)?.with_context(|| {
        format!(
            "the transport is not running (no socket at {}; start it with `kith node up` or \
             `kith serve transport`)",
            ctx.home.socket(SERVICE).display()
        )
    })?;
    Ok(TransportClient::connect(connection))
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

fn peer_line(p: &PeerInfo) -> String {
    let via = match p.route.as_str() {
        "direct" => format!("direct {}", opt(p.direct_addr)),
        "relay" => format!("relay {}", opt(p.relay_addr)),
        other => other.to_owned(),
    };
    let rtt = p.rtt_us.map_or_else(String::new, |us| {
        format!(" rtt {:.1} ms", us as f64 / 1000.0)
    });
    let protocols = if p.protocols.is_empty() {
        String::new()
    } else {
        format!(" [{}]", p.protocols.join(", "))
    };
    format!("{}  {via}{rtt}{protocols}", p.peer_id)
}

fn connected_text(c: &Connected) -> String {
    format!(
        "connected to {} in {:.1} ms, ping {:.1} ms",
        peer_line(&c.peer),
        c.connect.as_secs_f64() * 1000.0,
        c.ping.as_secs_f64() * 1000.0
    )
}

pub async fn run_peer(ctx: &Ctx, cmd: PeerCommand) -> anyhow::Result<()> {
    match cmd {
        PeerCommand::Connect {
            target,
            addrs,
            relay,
        } => {
            let target = match PeerId::from_str(&target) {
                Ok(peer) => Target::Peer {
                    peer,
                    hints: (!addrs.is_empty() || relay.is_some()).then(|| PeerAddrs {
                        addrs,
                        relay: relay.map(|r| r.0),
                    }),
                },
                Err(_) if target.contains('.') => {
                    if !addrs.is_empty() || relay.is_some() {
                        anyhow::bail!("--addr and --relay go with a peer id, not a name");
                    }
                    Target::Name(target)
                }
                Err(error) => {
                    anyhow::bail!("{target:?} is neither a peer id (64 hex) nor a name: {error}")
                }
            };
            let connected = client(ctx)?.connect(target).await?;
            emit(ctx.json, serde_json::to_value(&connected)?, || {
                connected_text(&connected)
            });
        }
        PeerCommand::List => {
            let peers = client(ctx)?.peers().await?;
            emit(ctx.json, json!({ "peers": peers }), || {
                if peers.is_empty() {
                    "no peers".into()
                } else {
                    peers.iter().map(peer_line).collect::<Vec<_>>().join("\n")
                }
            });
        }
    }
    Ok(())
}

pub async fn run_status(ctx: &Ctx) -> anyhow::Result<()> {
    let status = client(ctx)?.status().await?;
    let value = serde_json::to_value(&status)?;
    emit(ctx.json, value.clone(), || {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.join(", ")
            }
        };
        let mut out = format!(
            "peer id:    {}\nudp:        {}\ncandidates: {}\nrelays:     {}\nrelaying:   {}\nnat:        {}",
            status.peer_id,
            status.local_addr,
            list(status.candidates.iter().map(ToString::to_string).collect()),
            list(
                status
                    .relays
                    .iter()
                    .map(|r| format!("{}@{}", r.peer, r.addr))
                    .collect()
            ),
            if status.relaying { "yes" } else { "no" },
            value["nat"]["mapping"].as_str().unwrap_or("?"),
        );
        match &status.dht {
            Some(dht) => out.push_str(&format!(
                "\ndht:        {} contacts, {} records",
                dht.routing_table_size, dht.records_stored
            )),
            None => out.push_str("\ndht:        off"),
        }
        out.push_str(&format!("\nprotocols:  {}", list(status.protocols.clone())));
        out
    });
    Ok(())
}

pub async fn run_nat(ctx: &Ctx, NatCommand::Status: NatCommand) -> anyhow::Result<()> {
    let nat = client(ctx)?.nat_status().await?;
    let value = serde_json::to_value(&nat)?;
    emit(ctx.json, value.clone(), || {
        let mut out = format!("mapping: {}", value["mapping"].as_str().unwrap_or("?"));
        for addr in &nat.public_addrs {
            out.push_str(&format!("\npublic address: {addr}"));
        }
        for o in &nat.observations {
            out.push_str(&format!("\n  {} saw {}", o.observer, o.observed));
        }
        out
    });
    Ok(())
}

pub async fn run_dht(ctx: &Ctx, DhtCommand::Status: DhtCommand) -> anyhow::Result<()> {
    let dht = client(ctx)?.dht_status().await?;
    emit(ctx.json, serde_json::to_value(&dht)?, || {
        format!(
            "node id: {}\ncontacts: {} in {} buckets\nrecords stored: {}\nrequests pending: {}, \
             operations: {}\nmessages in/out: {}/{}\ndropped: {} malformed, {} unmatched, {} \
             over rate",
            dht.node_id,
            dht.routing_table_size,
            dht.non_empty_buckets,
            dht.records_stored,
            dht.pending_requests,
            dht.operations,
            dht.messages_in,
            dht.messages_out,
            dht.dropped_malformed,
            dht.dropped_unmatched,
            dht.dropped_overload
        )
    });
    Ok(())
}

/// A running transport: its service (for shutdown) and its gRPC server.
pub struct RunningTransport {
    pub service: Arc<TransportService>,
    pub server: ServerHandle,
}

impl RunningTransport {
    /// What `node up` and `serve transport` print about it.
    pub fn describe(&self) -> Value {
        let node = self.service.node();
        json!({
            "peer_id": node.peer_id().to_string(),
            "udp": node.endpoint().local_addr().to_string(),
        })
    }

    /// Stops the gRPC server, then the node.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        self.service.shutdown().await;
    }
}

/// Starts the node with the identity's delegated transport key and serves the API.
pub async fn start(
    ctx: &Ctx,
    identity: &dyn IdentityApi,
    node_args: &NodeArgs,
    serve: &ServeArgs,
) -> anyhow::Result<RunningTransport> {
    let key = identity
        .delegate(KEY_SCOPE.into(), None)
        .await
        .context("get the transport key from the identity service")?;
    let secret = SecretKey::from_bytes(*key.secret);
    let config = node_args.config(&ctx.home)?;
    let node = Node::builder(secret, config)
        .context("bind the transport socket")?
        .spawn()
        .context("start the transport node")?;
    let service = Arc::new(TransportService::new(node)?);
    let listen = serve.listeners(&ctx.home)?;
    let server = match kith_transport::daemon::spawn(service.clone(), &listen).await {
        Ok(server) => server,
        Err(error) => {
            service.shutdown().await;
            return Err(error.into());
        }
    };
    Ok(RunningTransport { service, server })
}
