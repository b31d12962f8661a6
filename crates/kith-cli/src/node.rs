//! `kith node up` (every service in one process), `kith serve <service>` (one service as its own
//! process) and `kith health`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kith_identity::daemon::{SERVICE as IDENTITY, ServeArgs};
use kith_identity::{IdentityApi, IdentityService};
use kith_service::ServerHandle;
use kith_store::daemon::{SERVICE as STORE, ServeArgs as StoreServeArgs};
use kith_transport::TransportClient;
use kith_transport::daemon::{NodeArgs, SERVICE as TRANSPORT, ServeArgs as TransportServeArgs};
use serde_json::json;

use crate::context::Ctx;
use crate::output::emit;
use crate::setup::{options, print_created};
use crate::store_service::{RunningStore, StoreOptions, TransportLink};
use crate::transport::RunningTransport;

// Parsed once per process: the size of `Up` costs nothing worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// Run every service in this process on the home's Unix sockets (creates an identity first
    /// if this home has none).
    Up {
        #[command(flatten)]
        identity: ServeArgs,
        #[command(flatten)]
        transport: NodeArgs,
        #[command(flatten)]
        store: StoreOptions,
    },
    /// The running node's transport: peer id, addresses, relays, NAT, DHT, protocols.
    Status,
}

#[derive(clap::Subcommand)]
pub enum ServeCommand {
    /// The identity service.
    Identity {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// The transport service: the node's QUIC socket, DHT, NAT traversal and relaying. Its key
    /// is the identity service's delegated `transport` key: from the identity service at
    /// `--endpoint` or the home's socket, else from the keystore opened here.
    Transport {
        #[command(flatten)]
        args: TransportServeArgs,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The store service: signed logs, mirrors, mailboxes and files in SQLite (the default) or
    /// PostgreSQL (`--store postgres://…`). Its keys are the identity service's delegated keys;
    /// it reaches peers through the transport service (`--transport`, or the home's socket).
    Store {
        #[command(flatten)]
        args: StoreServeArgs,
        #[command(flatten)]
        options: StoreOptions,
        #[command(flatten)]
        transport: TransportLink,
    },
}

/// A service this process runs.
enum Running {
    Identity(ServerHandle),
    Transport(RunningTransport),
    Store(RunningStore),
}

impl Running {
    fn endpoints(&self) -> Vec<String> {
        let server = match self {
            Running::Identity(server) => server,
            Running::Transport(t) => &t.server,
            Running::Store(s) => &s.server,
        };
        server.endpoints().iter().map(ToString::to_string).collect()
    }

    async fn shutdown(self) {
        match self {
            Running::Identity(server) => server.shutdown().await,
            Running::Transport(t) => t.shutdown().await,
            Running::Store(s) => s.shutdown().await,
        }
    }
}

#[derive(clap::Args)]
pub struct HealthArgs {
    /// The service to check.
    #[arg(long, default_value = IDENTITY)]
    service: String,
}

/// Opens the identity, creating it first when the home has none and `create` is set.
async fn open_identity(ctx: &Ctx, create: bool) -> anyhow::Result<IdentityService> {
    let keystore = ctx.home.service_dir(IDENTITY).join("keystore.json");
    if create && !keystore.exists() {
        eprintln!(
            "no identity in {} yet: creating one",
            ctx.home.root().display()
        );
        let passphrase = ctx.passphrase(true)?;
        let created = IdentityService::init(&ctx.home, &passphrase, options(None, false))?;
        let info = created.service.show().await?;
        if !ctx.json {
            print_created(ctx, &info, Some(&created.mnemonic));
        } else {
            // In JSON mode the words go to stderr so stdout stays one machine-readable stream.
            eprintln!(
                "your 24 words (write them down; they are not shown again): {}",
                created.mnemonic.as_str()
            );
        }
        return Ok(created.service);
    }
    let passphrase = ctx.passphrase(false)?;
    Ok(IdentityService::open(&ctx.home, &passphrase)?)
}

async fn serve_until_signal(ctx: &Ctx, running: Vec<(&'static str, Running)>, id: String) {
    let services: serde_json::Map<String, serde_json::Value> = running
        .iter()
        .map(|(name, service)| (name.to_string(), json!(service.endpoints())))
        .collect();
    let mut ready = json!({ "event": "ready", "id": id, "services": services });
    let transport = running.iter().find_map(|(_, service)| match service {
        Running::Transport(t) => Some(t.describe()),
        _ => None,
    });
    if let Some(store) = running.iter().find_map(|(_, service)| match service {
        Running::Store(s) => Some(s.describe()),
        _ => None,
    }) {
        ready["store"] = store;
    }
    if let Some(transport) = &transport {
        ready["transport"] = transport.clone();
    }
    emit(ctx.json, ready, || {
        let mut out = format!("node up: {id}\n");
        for (name, endpoints) in &services {
            out.push_str(&format!("  {name:<10} {}\n", endpoints));
        }
        if let Some(t) = &transport {
            out.push_str(&format!(
                "  peer id    {}\n  udp        {}\n",
                t["peer_id"].as_str().unwrap_or("?"),
                t["udp"].as_str().unwrap_or("?")
            ));
        }
        out.push_str("press Ctrl-C to stop");
        out
    });
    kith_service::shutdown_signal().await;
    // Shut down in reverse start order: dependants before what they depend on.
    for (_, service) in running.into_iter().rev() {
        service.shutdown().await;
    }
}

pub async fn run_node(ctx: &Ctx, cmd: NodeCommand) -> anyhow::Result<()> {
    let (identity_args, node_args, store_options) = match cmd {
        NodeCommand::Status => return crate::transport::run_status(ctx).await,
        NodeCommand::Up {
            identity,
            transport,
            store,
        } => (identity, transport, store),
    };
    kith_service::init_tracing("warn");
    let identity = Arc::new(open_identity(ctx, true).await?);
    let id = identity.show().await?.id;
    let listen = identity_args.listeners(&ctx.home)?;
    let identity_server = kith_identity::daemon::spawn(identity.clone(), &listen).await?;
    let transport = match crate::transport::start(
        ctx,
        identity.as_ref(),
        &node_args,
        &TransportServeArgs::default(),
    )
    .await
    {
        Ok(transport) => transport,
        Err(error) => {
            identity_server.shutdown().await;
            return Err(error);
        }
    };
    let local_transport = TransportClient::local(transport.service.clone());
    let store = match crate::store_service::start(
        ctx,
        identity.clone(),
        Some(local_transport.api()),
        &store_options,
        &StoreServeArgs::default(),
    )
    .await
    {
        Ok(store) => store,
        Err(error) => {
            transport.shutdown().await;
            identity_server.shutdown().await;
            return Err(error);
        }
    };
    serve_until_signal(
        ctx,
        vec![
            (IDENTITY, Running::Identity(identity_server)),
            (TRANSPORT, Running::Transport(transport)),
            (STORE, Running::Store(store)),
        ],
        id,
    )
    .await;
    Ok(())
}

/// Opens (or, with `create`, first creates) the identity and serves it; returns the server and
/// the printable id.
async fn start_identity(
    ctx: &Ctx,
    args: &ServeArgs,
    create: bool,
) -> anyhow::Result<(ServerHandle, String)> {
    let identity = Arc::new(open_identity(ctx, create).await?);
    let id = identity.show().await?.id;
    let listen = args.listeners(&ctx.home)?;
    Ok((kith_identity::daemon::spawn(identity, &listen).await?, id))
}

pub async fn run_serve(ctx: &Ctx, cmd: ServeCommand) -> anyhow::Result<()> {
    kith_service::init_tracing("info");
    match cmd {
        ServeCommand::Identity { args } => {
            let (server, id) = start_identity(ctx, &args, false).await?;
            serve_until_signal(ctx, vec![(IDENTITY, Running::Identity(server))], id).await;
        }
        ServeCommand::Transport { args, node } => {
            let identity = ctx.identity().await?;
            let id = identity.show().await?.id;
            let transport = crate::transport::start(ctx, &*identity, &node, &args).await?;
            serve_until_signal(ctx, vec![(TRANSPORT, Running::Transport(transport))], id).await;
        }
        ServeCommand::Store {
            args,
            options,
            transport,
        } => {
            let identity = ctx.identity().await?;
            let id = identity.show().await?.id;
            let transport = transport.client(ctx)?.map(|t| t.api());
            let identity: Arc<dyn IdentityApi> = identity.api();
            let store =
                crate::store_service::start(ctx, identity, transport, &options, &args).await?;
            serve_until_signal(ctx, vec![(STORE, Running::Store(store))], id).await;
        }
    }
    Ok(())
}

/// The full gRPC service name health reports for a Kith service.
fn grpc_service_name(service: &str) -> anyhow::Result<&'static str> {
    match service {
        IDENTITY => Ok("kith.identity.v1.Identity"),
        TRANSPORT => Ok("kith.transport.v1.Transport"),
        STORE => Ok("kith.store.v1.Store"),
        other => anyhow::bail!("unknown service {other:?}"),
    }
}

pub async fn health(ctx: &Ctx, args: HealthArgs) -> anyhow::Result<()> {
    let name = grpc_service_name(&args.service)?;
    let connection = ctx.connection(&args.service)?.with_context(|| {
        format!(
            "{} is not running (no socket at {})",
            args.service,
            ctx.home.socket(&args.service).display()
        )
    })?;
    let serving = tokio::time::timeout(
        Duration::from_secs(5),
        kith_service::health_check(&connection, name),
    )
    .await
    .context("health check timed out")?
    .map_err(|s| {
        anyhow::anyhow!(
            "{}: {}",
            format!("{:?}", s.code()).to_lowercase(),
            s.message()
        )
    })?;
    emit(
        ctx.json,
        json!({ "service": args.service, "serving": serving }),
        || {
            format!(
                "{}: {}",
                args.service,
                if serving { "serving" } else { "not serving" }
            )
        },
    );
    if !serving {
        anyhow::bail!("{} is not serving", args.service);
    }
    Ok(())
}
