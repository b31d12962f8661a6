//! `kith mailbox key|put|fetch|stats`: mailboxes through the store service. A mailbox is named
//! by its owner's key (this node's is the identity's delegated key for `store/mailbox`); anyone
//! may deposit a small sealed record in it at some keeping node, and only the owner may read and
//! remove what is kept there. The records are opaque to the store: sealing them for the owner is
//! the depositor's business, done before `put`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kith_store::mailbox::{MAX_FETCH_RECORDS, MAX_RECORD_BYTES, MAX_TTL, MailboxKey, Record};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output::{emit, time};
use crate::store::{StoreUrl, parse_peer};

#[derive(clap::Args)]
pub struct MailboxArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: MailboxCommand,
}

#[derive(clap::Subcommand)]
pub enum MailboxCommand {
    /// This node's mailbox key (64 hex): give it to whoever should be able to leave you records.
    Key,
    /// Deposit a sealed record in mailbox KEY, kept at --peer (default: this node).
    ///
    /// The record is kept and handed to the mailbox's owner exactly as given, and the keeper
    /// (and whoever can reach it) sees it: seal (encrypt) it for the owner first. 1 to 16384
    /// bytes. Prints the record's id and when the keeper will drop it.
    Put {
        /// The mailbox: its owner's mailbox key (64 hex, from `kith mailbox key`).
        key: String,
        /// The sealed record: a file, or `-` for stdin.
        input: PathBuf,
        /// The node to keep it (peer id, 64 hex); default: this node.
        #[arg(long)]
        peer: Option<String>,
        /// How long the keeper keeps it: seconds, or a number with s, m, h or d (default 48h,
        /// at most 7d).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// The records in this node's mailbox kept at --peer (default: this node).
    ///
    /// Oldest first, at most 64 per fetch: id, size, received and expiry times, and with --json
    /// the record's bytes as hex. Only the mailbox's owner can fetch (the request is signed with
    /// its key); the records are as the depositors sealed them.
    Fetch {
        /// The node keeping them (peer id, 64 hex); default: this node.
        #[arg(long)]
        peer: Option<String>,
        /// Remove the records returned from the keeper (with --out, once they are written).
        #[arg(long)]
        ack: bool,
        /// Write each record to DIR/<id> (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The mailbox records this node keeps (for others and itself): count and bytes.
    Stats,
}

/// A `--ttl`: a positive number of seconds, or of minutes, hours or days with `m`, `h`, `d`
/// (`s` for seconds), at most [`MAX_TTL`].
fn parse_ttl(text: &str) -> anyhow::Result<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!(
            "--ttl {text:?}: expected seconds, or a number followed by s, m, h or d (e.g. 48h)"
        ),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl {text:?}: expected a number before the unit"))?;
    let seconds = n.saturating_mul(scale);
    if seconds == 0 {
        anyhow::bail!("--ttl must be more than 0 seconds");
    }
    if seconds > MAX_TTL.as_secs() {
        anyhow::bail!(
            "--ttl {text}: longer than the maximum of 7d ({} seconds)",
            MAX_TTL.as_secs()
        );
    }
    Ok(seconds)
}

/// A mailbox key: 64 hex digits naming a usable ed25519 key.
fn parse_mailbox_key(text: &str) -> anyhow::Result<MailboxKey> {
    let bytes =
        hex::decode(text).map_err(|e| anyhow::anyhow!("mailbox key {text:?} is not hex: {e}"))?;
    if bytes.len() != 32 {
        anyhow::bail!(
            "mailbox key {text:?} must be 64 hex digits (32 bytes), not {}",
            text.len()
        );
    }
    MailboxKey::from_slice(&bytes).with_context(|| format!("mailbox key {text:?}"))
}

/// Reads a record of 1 to [`MAX_RECORD_BYTES`] bytes from `reader` (`what` names it in errors),
/// never holding more than one byte over the limit.
fn read_record(reader: impl Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    reader
        .take(MAX_RECORD_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("read {what}"))?;
    if data.is_empty() {
        anyhow::bail!("{what} is empty: a mailbox record holds 1 to {MAX_RECORD_BYTES} bytes");
    }
    if data.len() > MAX_RECORD_BYTES {
        anyhow::bail!(
            "{what} is larger than a mailbox record may be ({MAX_RECORD_BYTES} bytes at most)"
        );
    }
    Ok(data)
}

fn read_input(input: &Path) -> anyhow::Result<Vec<u8>> {
    if input == Path::new("-") {
        return read_record(std::io::stdin().lock(), "stdin");
    }
    let what = input.display().to_string();
    let file = std::fs::File::open(input).with_context(|| format!("open {what}"))?;
    read_record(file, &what)
}

/// Writes `record` to `dir/<id>`, whole or not at all. A file already there with the same bytes
/// is this record written before (the id binds mailbox and data); anything else is refused.
fn write_record(dir: &Path, record: &Record) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    let path = dir.join(hex::encode(record.id));
    match std::fs::read(&path) {
        Ok(existing) if existing == record.data => return Ok(path),
        Ok(_) => anyhow::bail!(
            "{} exists with other bytes; not overwriting it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".kith-mailbox-")
        .tempfile_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    tmp.write_all(&record.data)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn keeper_json(peer: Option<[u8; 32]>) -> Value {
    peer.map_or(Value::Null, |p| Value::String(hex::encode(p)))
}

fn keeper_text(peer: Option<[u8; 32]>) -> String {
    peer.map_or_else(|| "this node".into(), hex::encode)
}

pub async fn run(ctx: &Ctx, args: MailboxArgs) -> anyhow::Result<()> {
    match args.command {
        MailboxCommand::Key => {
            let store = crate::store_service::client(ctx, &args.url).await?;
            let key = store.mailbox_key().await?;
            emit(ctx.json, json!({ "key": key.to_string() }), || {
                key.to_string()
            });
        }
        MailboxCommand::Put {
            key,
            input,
            peer,
            ttl,
        } => {
            // Everything is checked, and the record read, before the store is reached: bad
            // input deposits nothing anywhere.
            let mailbox = parse_mailbox_key(&key)?;
            let peer = peer.map(|p| parse_peer(&p)).transpose()?;
            let ttl_seconds = ttl.as_deref().map(parse_ttl).transpose()?.unwrap_or(0);
            let data = read_input(&input)?;
            let store = crate::store_service::client(ctx, &args.url).await?;
            let deposited = store
                .mailbox_put(peer, mailbox, data.clone(), ttl_seconds)
                .await
                .with_context(|| format!("deposit at {}", keeper_text(peer)))?;
            let id = hex::encode(deposited.id);
            emit(
                ctx.json,
                json!({
                    "id": id,
                    "mailbox": mailbox.to_string(),
                    "keeper": keeper_json(peer),
                    "size": data.len(),
                    "expires_at": deposited.expires_at,
                }),
                || {
                    format!(
                        "{id}  {} bytes in mailbox {mailbox} at {}, kept until {}",
                        data.len(),
                        keeper_text(peer),
                        time(deposited.expires_at)
                    )
                },
            );
        }
        MailboxCommand::Fetch { peer, ack, out } => {
            let peer = peer.map(|p| parse_peer(&p)).transpose()?;
            if let Some(dir) = &out {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let store = crate::store_service::client(ctx, &args.url).await?;
            fetch(ctx, &store, peer, ack, out.as_deref()).await?;
        }
        MailboxCommand::Stats => {
            let store = crate::store_service::client(ctx, &args.url).await?;
            let kept = store.status().await?.mailboxes;
            emit(ctx.json, json!(kept), || {
                format!(
                    "{} mailbox records kept here, {} bytes",
                    kept.records, kept.bytes
                )
            });
        }
    }
    Ok(())
}

async fn fetch(
    ctx: &Ctx,
    store: &kith_store::StoreClient,
    peer: Option<[u8; 32]>,
    ack: bool,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let from = || format!("fetch from {}", keeper_text(peer));
    // With --out, records are removed only once written: fetch, write, then acknowledge. The
    // acknowledging fetch answers what it removed, which may include records deposited in
    // between; those are written too.
    let mut records = store
        .mailbox_fetch(peer, ack && out.is_none())
        .await
        .with_context(from)?;
    let mut files = Vec::new();
    if let Some(dir) = out {
        for record in &records {
            files.push(write_record(dir, record)?);
        }
        if ack {
            let removed = store.mailbox_fetch(peer, true).await.with_context(from)?;
            for record in removed {
                if !records.iter().any(|r| r.id == record.id) {
                    files.push(write_record(dir, &record)?);
                    records.push(record);
                }
            }
        }
    }
    let more = records.len() >= MAX_FETCH_RECORDS;
    let record_json = |(i, r): (usize, &Record)| {
        let mut v = json!({
            "id": hex::encode(r.id),
            "size": r.data.len(),
            "received_at": r.received_at,
            "expires_at": r.expires_at,
            "data": hex::encode(&r.data),
        });
        if let Some(path) = files.get(i) {
            v["file"] = json!(path);
        }
        v
    };
    emit(
        ctx.json,
        json!({
            "keeper": keeper_json(peer),
            "records": records.iter().enumerate().map(record_json).collect::<Vec<_>>(),
            "acknowledged": ack,
            "more_may_wait": more,
        }),
        || {
            if records.is_empty() {
                return format!("no records at {}", keeper_text(peer));
            }
            let mut lines: Vec<String> = records
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "{}  {} bytes  received {}  expires {}{}",
                        hex::encode(r.id),
                        r.data.len(),
                        time(r.received_at),
                        time(r.expires_at),
                        files
                            .get(i)
                            .map(|p| format!("  -> {}", p.display()))
                            .unwrap_or_default()
                    )
                })
                .collect();
            if ack {
                lines.push(format!("removed from {}", keeper_text(peer)));
            }
            if more {
                lines.push(format!(
                    "(a fetch returns at most {MAX_FETCH_RECORDS} records: more may be waiting)"
                ));
            }
            lines.join("\n")
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_units_and_stay_within_the_maximum() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("48h").unwrap(), 48 * 3600);
        assert_eq!(parse_ttl("7d").unwrap(), MAX_TTL.as_secs());
        for bad in [
            "",
            "h",
            "0",
            "0h",
            "1.5h",
            "-1",
            "1w",
            "1 h",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
        let over = parse_ttl("8d").unwrap_err().to_string();
        assert!(over.contains("maximum of 7d"), "{over}");
        assert!(parse_ttl(&(MAX_TTL.as_secs() + 1).to_string()).is_err());
    }

    #[test]
    fn mailbox_keys_are_64_hex_of_a_usable_key() {
        let owner = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let key = MailboxKey::of(&owner).to_string();
        assert_eq!(parse_mailbox_key(&key).unwrap().to_string(), key);
        assert_eq!(
            parse_mailbox_key(&key.to_uppercase()).unwrap().to_string(),
            key
        );
        let not_hex = parse_mailbox_key("zz").unwrap_err().to_string();
        assert!(not_hex.contains("is not hex"), "{not_hex}");
        let short = parse_mailbox_key(&key[..62]).unwrap_err().to_string();
        assert!(short.contains("must be 64 hex digits"), "{short}");
        // The identity point has small order: not a key anyone could own.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = format!(
            "{:#}",
            parse_mailbox_key(&hex::encode(identity)).unwrap_err()
        );
        assert!(weak.contains("not a usable ed25519 key"), "{weak}");
    }

    #[test]
    fn records_are_read_within_the_limit() {
        let max = vec![1u8; MAX_RECORD_BYTES];
        assert_eq!(read_record(&max[..], "x").unwrap(), max);
        assert_eq!(read_record(&b"a"[..], "x").unwrap(), b"a");
        let empty = read_record(&b""[..], "x").unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        // A huge input is refused after one byte over the limit, not read whole.
        let huge = std::io::repeat(0).take(1 << 40);
        let over = read_record(huge, "stdin").unwrap_err().to_string();
        assert!(over.contains("16384 bytes at most"), "{over}");
    }

    #[test]
    fn records_are_written_once_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record {
            id: [3; 32],
            data: b"sealed".to_vec(),
            received_at: 1,
            expires_at: 2,
        };
        let path = write_record(dir.path(), &record).unwrap();
        assert_eq!(path, dir.path().join(hex::encode([3u8; 32])));
        assert_eq!(std::fs::read(&path).unwrap(), b"sealed");
        // The same record again: already there, fine.
        assert_eq!(write_record(dir.path(), &record).unwrap(), path);
        // Other bytes under that name: refused, the file untouched.
        std::fs::write(&path, b"other").unwrap();
        assert!(write_record(dir.path(), &record).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"other");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
