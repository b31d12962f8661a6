//! `kith mirror add|list|remove`: blind mirrors through the store service. A mirror replicates
//! and serves a log by its public key alone — it holds ciphertext it cannot read — and keeps
//! following it, within a quota.

use kith_store::replicate::{MirrorInfo, MirrorPolicy};
use serde_json::json;

use crate::context::Ctx;
use crate::output::emit;
use crate::store::{StoreUrl, parse_key};

#[derive(clap::Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: MirrorCommand,
}

#[derive(clap::Subcommand)]
pub enum MirrorCommand {
    /// Mirror a log by its key (64 hex): replicate it from the peers announcing it, serve it,
    /// follow its appends.
    Add {
        key: String,
        /// The most entry bytes to hold for this log (its oldest entries go first).
        #[arg(long)]
        quota: Option<u64>,
        /// Over the node's total mirror quota, lower priorities lose entries first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// The mirrored logs: policy, length, entries and bytes held, peers, last sync.
    List,
    /// Stop mirroring a log and drop what is held of it.
    Remove { key: String },
}

fn mirror_json(m: &MirrorInfo) -> serde_json::Value {
    json!({
        "key": m.key.to_string(),
        "quota_bytes": m.policy.quota_bytes,
        "priority": m.policy.priority,
        "length": m.length,
        "held_entries": m.held_entries,
        "bytes_held": m.bytes_held,
        "evicted_below": m.evicted_below,
        "peers_seen": m.peers_seen,
        "last_sync_ms": m.last_sync_ms,
        "forked": m.forked,
    })
}

fn mirror_line(m: &MirrorInfo) -> String {
    format!(
        "{}  length {}  held {} entries, {} bytes{}{}",
        m.key,
        m.length,
        m.held_entries,
        m.bytes_held,
        m.policy
            .quota_bytes
            .map(|q| format!("  quota {q}"))
            .unwrap_or_default(),
        if m.forked { "  FORKED" } else { "" }
    )
}

pub async fn run(ctx: &Ctx, args: MirrorArgs) -> anyhow::Result<()> {
    // Keys are checked before anything is opened.
    let key = match &args.command {
        MirrorCommand::Add { key, .. } | MirrorCommand::Remove { key } => Some(parse_key(key)?),
        MirrorCommand::List => None,
    };
    let store = crate::store_service::client(ctx, &args.url).await?;
    match (args.command, key) {
        (
            MirrorCommand::Add {
                quota, priority, ..
            },
            Some(key),
        ) => {
            if quota == Some(0) {
                anyhow::bail!("--quota must be more than 0 bytes");
            }
            let policy = MirrorPolicy {
                quota_bytes: quota,
                priority,
            };
            let info = store.add_mirror(key, policy).await?;
            emit(ctx.json, mirror_json(&info), || mirror_line(&info));
        }
        (MirrorCommand::Remove { .. }, Some(key)) => {
            if !store.remove_mirror(key).await? {
                anyhow::bail!("log {key} is not mirrored here");
            }
            emit(ctx.json, json!({ "removed": key.to_string() }), || {
                format!("no longer mirroring {key}")
            });
        }
        _ => {
            let mirrors = store.list_mirrors().await?;
            emit(
                ctx.json,
                json!({ "mirrors": mirrors.iter().map(mirror_json).collect::<Vec<_>>() }),
                || {
                    if mirrors.is_empty() {
                        "no mirrors".into()
                    } else {
                        mirrors
                            .iter()
                            .map(mirror_line)
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            );
        }
    }
    Ok(())
}
