//! `kith-identity`: the identity service as its own process (same as `kith serve identity`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kith_identity::daemon::{ServeArgs, spawn};
use kith_identity::{IdentityService, passphrase::read_passphrase};
use kith_service::Home;

/// Serve the Kith identity service.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Data dir (default: $KITH_HOME, else the platform data dir).
    #[arg(long)]
    home: Option<PathBuf>,
    /// Read the keystore passphrase from this file (also KITH_PASSPHRASE_FILE / KITH_PASSPHRASE).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kith_service::init_tracing("info");
    let args = Args::parse();
    let home = Home::resolve(args.home.as_deref());
    let passphrase =
        read_passphrase(args.passphrase_file.as_deref(), false).map_err(anyhow::Error::msg)?;
    let service = IdentityService::open(&home, &passphrase).context("open identity")?;
    drop(passphrase);
    let listen = args.serve.listeners(&home)?;
    let server = spawn(Arc::new(service), &listen).await?;
    kith_service::shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}
