//! `kith mirror add|list|remove`: blind mirrors through the store service. A mirror replicates
//! and serves a log by its public key alone — it holds ciphertext it cannot read — and keeps
//! following it, within a quota. A room is mirrored by its discovery topic (`--topic`): every
//! log found under the topic is mirrored (each under the mirror's policy, the quota per log),
//! and logs of new members as they appear.

use kith_store::replicate::{MirrorInfo, MirrorPolicy, TopicMirrorInfo};
use kith_store::topic::{RoomTopic, TopicId};
use serde_json::json;

use crate::context::Ctx;
use crate::output::emit;
use crate::store::{StoreUrl, parse_key, parse_topic};

#[derive(clap::Args)]
pub struct MirrorArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: MirrorCommand,
}

#[derive(clap::Subcommand)]
pub enum MirrorCommand {
    /// Mirror a log by its key (64 hex), or a room by its topic (--topic): replicate from the
    /// peers announcing it, serve it, follow its appends (and, for a room, its new members).
    Add {
        #[arg(required_unless_present = "topic", conflicts_with = "topic")]
        key: Option<String>,
        /// The room's discovery topic (64 hex, or `-` to read it from stdin): mirror every log
        /// found under it. Never stored itself: the node keeps a key derived from it.
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// The most entry bytes to hold for this log — for a room, for each of its logs (its
        /// oldest entries go first).
        #[arg(long)]
        quota: Option<u64>,
        /// Over the node's total mirror quota, lower priorities lose entries first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// The mirrored rooms (with the logs found under each) and the mirrored logs: policy,
    /// length, entries and bytes held, peers, last sync.
    List,
    /// Stop mirroring a log and drop what is held of it (a log a mirrored room lists comes back
    /// at the room's next check: remove the room instead); or stop mirroring a room (--topic,
    /// or --topic-id as listed) and drop the logs mirrored only because it listed them (a log
    /// also mirrored by key or by another room stays).
    Remove {
        #[arg(required_unless_present_any = ["topic", "topic_id"], conflicts_with_all = ["topic", "topic_id"])]
        key: Option<String>,
        /// The room's discovery topic (64 hex, or `-` for stdin).
        #[arg(long, value_name = "TOPIC", conflicts_with = "topic_id")]
        topic: Option<String>,
        /// The topic's id, as `mirror list` shows it (64 hex).
        #[arg(long, value_name = "ID")]
        topic_id: Option<String>,
    },
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
        "by_key": m.by_key,
        "topics": m.topics.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn mirror_line(m: &MirrorInfo) -> String {
    format!(
        "{}  length {}  held {} entries, {} bytes{}{}{}",
        m.key,
        m.length,
        m.held_entries,
        m.bytes_held,
        m.policy
            .quota_bytes
            .map(|q| format!("  quota {q}"))
            .unwrap_or_default(),
        if m.by_key { "" } else { "  (by topic)" },
        if m.forked { "  FORKED" } else { "" }
    )
}

fn topic_json(t: &TopicMirrorInfo) -> serde_json::Value {
    json!({
        "topic_id": t.id.to_string(),
        "quota_bytes_per_log": t.policy.quota_bytes,
        "priority": t.policy.priority,
        "logs": t.logs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "peers_seen": t.peers_seen,
        "added_ms": t.added_ms,
        "last_check_ms": t.last_check_ms,
    })
}

fn topic_lines(t: &TopicMirrorInfo) -> String {
    let mut out = format!(
        "topic {}  {} logs{}",
        t.id,
        t.logs.len(),
        t.policy
            .quota_bytes
            .map(|q| format!("  quota {q} per log"))
            .unwrap_or_default(),
    );
    for key in &t.logs {
        out.push_str(&format!("\n  {key}"));
    }
    out
}

/// What a `mirror` command names, checked before anything is opened.
enum Target {
    Log(kith_store::log::LogKey),
    Topic(RoomTopic),
    TopicId(TopicId),
    None,
}

fn target(
    key: Option<&str>,
    topic: Option<&str>,
    topic_id: Option<&str>,
) -> anyhow::Result<Target> {
    Ok(match (key, topic, topic_id) {
        (Some(key), _, _) => Target::Log(parse_key(key)?),
        (_, Some(topic), _) => Target::Topic(parse_topic(topic)?),
        (_, _, Some(id)) => {
            let bytes = hex::decode(id)
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| anyhow::anyhow!("topic id {id:?} is not 64 hex digits"))?;
            Target::TopicId(TopicId::from_slice(&bytes)?)
        }
        _ => Target::None,
    })
}

pub async fn run(ctx: &Ctx, args: MirrorArgs) -> anyhow::Result<()> {
    // Keys and topics are checked before anything is opened.
    let target = match &args.command {
        MirrorCommand::Add { key, topic, .. } => target(key.as_deref(), topic.as_deref(), None)?,
        MirrorCommand::Remove {
            key,
            topic,
            topic_id,
        } => target(key.as_deref(), topic.as_deref(), topic_id.as_deref())?,
        MirrorCommand::List => Target::None,
    };
    if let MirrorCommand::Add { quota: Some(0), .. } = args.command {
        anyhow::bail!("--quota must be more than 0 bytes");
    }
    let store = crate::store_service::client(ctx, &args.url).await?;
    match (args.command, target) {
        (
            MirrorCommand::Add {
                quota, priority, ..
            },
            target,
        ) => {
            let policy = MirrorPolicy {
                quota_bytes: quota,
                priority,
            };
            match target {
                Target::Log(key) => {
                    let info = store.add_mirror(key, policy).await?;
                    emit(ctx.json, mirror_json(&info), || mirror_line(&info));
                }
                Target::Topic(topic) => {
                    let info = store.add_topic_mirror(topic, policy).await?;
                    emit(ctx.json, topic_json(&info), || {
                        format!(
                            "mirroring topic {} (logs found so far: {}; new ones are looked for \
                             in the background)",
                            info.id,
                            info.logs.len()
                        )
                    });
                }
                Target::TopicId(_) | Target::None => unreachable!("clap requires a key or topic"),
            }
        }
        (MirrorCommand::Remove { .. }, Target::Log(key)) => {
            if !store.remove_mirror(key).await? {
                anyhow::bail!("log {key} is not mirrored here");
            }
            emit(ctx.json, json!({ "removed": key.to_string() }), || {
                format!("no longer mirroring {key}")
            });
        }
        (MirrorCommand::Remove { .. }, target @ (Target::Topic(_) | Target::TopicId(_))) => {
            let id = match target {
                Target::Topic(topic) => topic.key().id(),
                Target::TopicId(id) => id,
                _ => unreachable!(),
            };
            if !store.remove_topic_mirror(id).await? {
                anyhow::bail!("topic {id} is not mirrored here");
            }
            emit(ctx.json, json!({ "removed_topic": id.to_string() }), || {
                format!("no longer mirroring topic {id}")
            });
        }
        _ => {
            let topics = store.list_topic_mirrors().await?;
            let mirrors = store.list_mirrors().await?;
            emit(
                ctx.json,
                json!({
                    "topics": topics.iter().map(topic_json).collect::<Vec<_>>(),
                    "mirrors": mirrors.iter().map(mirror_json).collect::<Vec<_>>(),
                }),
                || {
                    if mirrors.is_empty() && topics.is_empty() {
                        "no mirrors".into()
                    } else {
                        topics
                            .iter()
                            .map(topic_lines)
                            .chain(mirrors.iter().map(mirror_line))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            );
        }
    }
    Ok(())
}
