//! `kith`: the command a person uses to create and manage a Kith identity, run a node and talk to
//! its services. Every command takes `--json` (one JSON document on stdout) and `--home DIR`;
//! errors are one line on stderr and a non-zero exit.

mod context;
mod device;
mod file;
mod id;
mod mailbox;
mod mirror;
mod node;
mod output;
mod profile;
mod setup;
mod store;
mod store_net;
mod store_service;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than the system allocator: a node moves data through many short-lived
/// buffers (QUIC packets and stream chunks, file blocks), and glibc's malloc keeps handing their
/// memory back to the kernel and faulting it in again. The file benchmark measured 0.64× raw
/// quinn with glibc and 0.71× with mimalloc (BENCHMARKS.md); it runs under the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use kith_service::Endpoint;

/// Kith: peer-to-peer, end-to-end-encrypted chat.
#[derive(Parser)]
#[command(name = "kith", version, propagate_version = true)]
pub struct Cli {
    /// Data dir (default: $KITH_HOME, else the platform data dir).
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a running service here (`unix:/path` or `tcp://host:port`) instead of the home's
    /// socket or an in-process service.
    #[arg(long, global = true, env = "KITH_ENDPOINT")]
    endpoint: Option<Endpoint>,
    /// Bearer-token cookie for a TCP endpoint (default: the home's run/<service>.cookie).
    #[arg(long, global = true, env = "KITH_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Read the keystore passphrase from this file (also KITH_PASSPHRASE_FILE, KITH_PASSPHRASE).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new identity and this device; prints the 24 words once.
    Init(setup::InitArgs),
    /// Restore an identity from its 24 words, read from stdin.
    Restore(setup::RestoreArgs),
    /// Show, sign and verify with this identity.
    #[command(subcommand)]
    Id(id::IdCommand),
    /// Link, approve, list and revoke devices.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Set and show signed profiles.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Run a node.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Run one service as its own process.
    #[command(subcommand)]
    Serve(node::ServeCommand),
    /// Check that a service is up and serving.
    Health(node::HealthArgs),
    /// Connect to peers and list them (the transport service).
    #[command(subcommand)]
    Peer(transport::PeerCommand),
    /// This node's NAT, as other peers see it.
    #[command(subcommand)]
    Nat(transport::NatCommand),
    /// This node's DHT.
    #[command(subcommand)]
    Dht(transport::DhtCommand),
    /// The store's database: totals, and moving it between SQLite and PostgreSQL.
    Store(store::StoreArgs),
    /// Inspect, verify, append to, read and sync the signed logs in the store; put writer logs
    /// in rooms (by their discovery topic).
    Log(store::LogArgs),
    /// Mirror logs by their keys or rooms by their topics (blind: ciphertext only), list and
    /// remove mirrors.
    Mirror(mirror::MirrorArgs),
    /// Put and get encrypted files (a `kithfile1…` ticket carries the key).
    File(file::FileArgs),
    /// Leave sealed records for offline peers in mailboxes kept by any node; fetch your own.
    Mailbox(mailbox::MailboxArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start tokio runtime");
    let ctx = context::Ctx::new(&cli);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Init(args) => setup::init(&ctx, args).await,
            Command::Restore(args) => setup::restore(&ctx, args).await,
            Command::Id(cmd) => id::run(&ctx, cmd).await,
            Command::Device(cmd) => device::run(&ctx, cmd).await,
            Command::Profile(cmd) => profile::run(&ctx, cmd).await,
            Command::Node(cmd) => node::run_node(&ctx, cmd).await,
            Command::Serve(cmd) => node::run_serve(&ctx, cmd).await,
            Command::Health(args) => node::health(&ctx, args).await,
            Command::Peer(cmd) => transport::run_peer(&ctx, cmd).await,
            Command::Nat(cmd) => transport::run_nat(&ctx, cmd).await,
            Command::Dht(cmd) => transport::run_dht(&ctx, cmd).await,
            Command::Store(args) => store::run_store(&ctx, args).await,
            Command::Log(args) => store::run_log(&ctx, args).await,
            Command::Mirror(args) => mirror::run(&ctx, args).await,
            Command::File(args) => file::run(&ctx, args).await,
            Command::Mailbox(args) => mailbox::run(&ctx, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// Clap's own consistency checks over every command (unique argument ids, valid
    /// `conflicts_with` targets, ...), which otherwise only fire when a command is run.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
