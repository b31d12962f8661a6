//! `kith store stats|migrate` and `kith log list|show|verify`: the store's database, opened
//! in-process. `kith log append|read|sync|tag|untag` go through the store service (the running
//! one, else one in this process). The database is `--store URL` (`KITH_STORE_URL`), by default
//! `sqlite://<home>/store/store.db`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kith_store::backend::{CopyReport, copy_store};
use kith_store::log::{LogKey, RangeSet};
use kith_store::topic::RoomTopic;
use kith_store::{LogInfo, Store};
use serde_json::{Value, json};

use crate::context::Ctx;
use crate::output::emit;

/// The store database to open.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreUrl {
    /// The store's database: `sqlite://PATH` or `postgres://…` (default:
    /// sqlite://<home>/store/store.db).
    #[arg(
        long = "store",
        global = true,
        env = "KITH_STORE_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,
    /// A file holding the PostgreSQL password, for a `postgres://` URL without one (so the
    /// password is in neither the command line nor the environment).
    #[arg(
        long = "store-password-file",
        global = true,
        env = "KITH_STORE_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Where file blocks are kept, as files (default: beside a SQLite database, `<db>-blobs/`;
    /// for PostgreSQL none: blocks stay in the database). Always the same dir for a database.
    #[arg(
        long = "blob-dir",
        global = true,
        env = "KITH_STORE_BLOB_DIR",
        value_name = "DIR"
    )]
    pub blob_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Totals over the whole store.
    Stats,
    /// Copy every log from one database to another (e.g. SQLite to PostgreSQL), verifying every
    /// entry on the way in and every log afterwards.
    Migrate {
        /// The database to copy from (it must exist).
        #[arg(long, value_name = "URL")]
        from: String,
        /// The database to copy into (a SQLite file is created if missing).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

#[derive(clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(clap::Subcommand)]
pub enum LogCommand {
    /// Every log: key, length, bytes, held entries, forked (with --topic, only the logs held
    /// under a room's topic).
    List {
        /// A room's discovery topic (64 hex, or `-` to read it from stdin).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
    /// One log: its signed root, held ranges and fork evidence.
    Show {
        /// The log's key (its writer's public key, 64 hex).
        key: String,
    },
    /// Check logs against their signed roots (every held entry through a proof); fails naming
    /// the first log that does not verify.
    Verify {
        /// Only this log (64 hex); default every log.
        key: Option<String>,
    },
    /// Append entries to this node's writer log NAME through the store service (the running
    /// one, else in-process): each argument is one entry, or each line of stdin with `-`.
    /// Entries should be ciphertext: the store keeps them as given. Prints the log once the
    /// entries are durable.
    Append {
        /// The writer log's name (a-z 0-9 . _ -); its key is this device's delegated key for it.
        name: String,
        /// The entries (UTF-8 text), or `-` to read one entry per line from stdin.
        #[arg(required = true)]
        entries: Vec<String>,
    },
    /// Bring a log up to date from the peers announcing it (or `--peer`), once, through the
    /// store service; or, with --topic, every log of a room: the peers announced under the
    /// room's topic are asked for its logs, then each is synced.
    Sync {
        /// The log's key (64 hex).
        #[arg(required_unless_present = "topic", conflicts_with = "topic")]
        key: Option<String>,
        /// A peer to sync with (64 hex); default: the peers announced under the log's topic.
        #[arg(long, conflicts_with = "topic")]
        peer: Option<String>,
        /// A room's discovery topic (64 hex, or `-` to read it from stdin).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
    },
    /// Put this node's writer log NAME in a room: sign the tag that puts it under the room's
    /// discovery TOPIC and announce the topic, so peers that prove they know the topic (members,
    /// the room's mirrors) are given the log.
    Tag {
        /// The writer log's name.
        name: String,
        /// The room's discovery topic: 64 hex, or `-` to read it from stdin (a secret: stdin
        /// keeps it out of the process list).
        topic: String,
    },
    /// Take this node's writer log NAME out of a room here (tags handed out before stay valid).
    Untag {
        name: String,
        /// 64 hex, or `-` for stdin.
        topic: String,
    },
    /// Print entries [START, END) of a log through the store service, one per line (hex with
    /// --hex, else text).
    Read {
        /// The log's key (64 hex).
        key: String,
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Default: the log's length.
        #[arg(long)]
        end: Option<u64>,
        #[arg(long)]
        hex: bool,
    },
}

/// What kind of database a URL names, checked before anything is opened or created.
enum Kind {
    Sqlite(PathBuf),
    Postgres,
}

fn kind(url: &str) -> anyhow::Result<Kind> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.contains(":memory:") {
            anyhow::bail!("{url}: expected sqlite://PATH to a database file");
        }
        Ok(Kind::Sqlite(PathBuf::from(path)))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Kind::Postgres)
    } else {
        anyhow::bail!("unsupported store URL {url:?}: expected sqlite://PATH or postgres://…")
    }
}

/// `url` (`postgres://user@host/db`) with the password read from `file` (first line, URL-encoded).
fn with_password(url: &str, file: &Path) -> anyhow::Result<String> {
    let Some((scheme, rest)) = url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
    else {
        anyhow::bail!("--store-password-file needs a postgres:// store URL");
    };
    let Some((user, host)) = rest.split_once('@') else {
        anyhow::bail!(
            "{url}: name the user (postgres://USER@HOST/DB) to use --store-password-file"
        );
    };
    if user.contains(':') {
        anyhow::bail!("{}: the URL has a password already", redact(url));
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read the store password from {}", file.display()))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        anyhow::bail!("{} holds no password", file.display());
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

/// `url` without a password, for messages.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// Opens `url`. With `must_exist`, a SQLite file that is not there is an error rather than a new
/// empty database.
pub(crate) async fn open(url: &str, must_exist: bool) -> anyhow::Result<Store> {
    open_in(url, None, must_exist).await
}

/// The store the commands use: `--store` (default the home's SQLite database) with its blob
/// dir (`--blob-dir`).
pub(crate) async fn open_store(ctx: &Ctx, arg: &StoreUrl) -> anyhow::Result<Store> {
    let url = url(ctx, arg)?;
    open_in(&url, arg.blob_dir.clone(), false).await
}

async fn open_in(url: &str, blob_dir: Option<PathBuf>, must_exist: bool) -> anyhow::Result<Store> {
    match kind(url)? {
        Kind::Sqlite(path) if must_exist && !path.is_file() => {
            anyhow::bail!("no store database at {}", path.display());
        }
        Kind::Sqlite(_) => {}
        Kind::Postgres => {
            // One plain connection first: the pool retries a refused connection until its
            // 30 s acquire timeout, and then reports the timeout instead of the reason.
            use sqlx::Connection as _;
            let conn = sqlx::PgConnection::connect(url)
                .await
                .with_context(|| format!("connect to {}", redact(url)))?;
            conn.close().await.ok();
        }
    }
    Store::open_with_blob_dir(url, blob_dir)
        .await
        .with_context(|| format!("open the store at {}", redact(url)))
}

/// The URL the commands use: `--store`, else the home's SQLite database (its dir created 0700).
pub(crate) fn url(ctx: &Ctx, arg: &StoreUrl) -> anyhow::Result<String> {
    if let Some(url) = &arg.url {
        return match &arg.password_file {
            Some(file) => with_password(url, file),
            None => Ok(url.clone()),
        };
    }
    let dir =
        std::path::absolute(ctx.home.service_dir("store")).context("resolve the home directory")?;
    create_private_dir(&dir)?;
    Ok(format!("sqlite://{}", dir.join("store.db").display()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", dir.display()))
}

/// A peer id, 64 hex.
pub(crate) fn parse_peer(text: &str) -> anyhow::Result<[u8; 32]> {
    let key = parse_key(text).with_context(|| format!("peer id {text:?}"))?;
    Ok(*key.as_bytes())
}

/// A room's discovery topic: 64 hex, or `-` for the first line of stdin. Never echoed (it is a
/// secret).
pub(crate) fn parse_topic(text: &str) -> anyhow::Result<RoomTopic> {
    let topic = if text == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("read the topic from stdin")?;
        RoomTopic::from_hex(&line)
    } else {
        RoomTopic::from_hex(text)
    };
    topic.context("topic")
}

pub(crate) fn parse_key(hex_key: &str) -> anyhow::Result<LogKey> {
    let bytes =
        hex::decode(hex_key).map_err(|e| anyhow::anyhow!("log key {hex_key:?} is not hex: {e}"))?;
    LogKey::from_slice(&bytes).with_context(|| format!("log key {hex_key:?}"))
}

fn ranges_json(held: &RangeSet) -> Value {
    Value::Array(held.iter().map(|(s, e)| json!([s, e])).collect())
}

fn ranges_text(held: &RangeSet) -> String {
    let parts: Vec<String> = held.iter().map(|(s, e)| format!("{s}..{e}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn log_json(info: &LogInfo, held: &RangeSet) -> Value {
    json!({
        "key": info.key.to_string(),
        "length": info.length,
        "byte_length": info.byte_length,
        "held_entries": info.held_entries,
        "held": ranges_json(held),
        "forked": info.forked,
        "root_hash": info.root.map(|r| hex::encode(r.hash())),
    })
}

fn log_line(info: &LogInfo, held: &RangeSet) -> String {
    format!(
        "{}  length {}  {} bytes  held {}{}",
        info.key,
        info.length,
        info.byte_length,
        ranges_text(held),
        if info.forked { "  FORKED" } else { "" }
    )
}

pub async fn run_store(ctx: &Ctx, args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Stats => {
            let store = open_store(ctx, &args.url).await?;
            let stats = store.stats().await?;
            store.close().await;
            emit(ctx.json, serde_json::to_value(&stats)?, || {
                format!(
                    "backend: {}\nlogs: {} ({} forked)\nentries: {} ({} bytes)\ntree nodes: {}\n\
                     fork evidence: {}",
                    stats.backend,
                    stats.logs,
                    stats.forked_logs,
                    stats.entries,
                    stats.entry_bytes,
                    stats.nodes,
                    stats.fork_evidence
                )
            });
        }
        StoreCommand::Migrate { from, to } => migrate(ctx, &from, &to).await?,
    }
    Ok(())
}

/// Whether two URLs name the same database (same string, or the same SQLite file).
fn same_database(a: &str, b: &str) -> anyhow::Result<bool> {
    Ok(match (kind(a)?, kind(b)?) {
        (Kind::Sqlite(pa), Kind::Sqlite(pb)) => {
            // The file may not exist yet: resolve its directory.
            let canon = |p: &Path| match (p.parent(), p.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
                .map_or_else(|_| p.to_path_buf(), |d| d.join(name)),
                _ => p.to_path_buf(),
            };
            canon(&pa) == canon(&pb)
        }
        _ => a.trim_end_matches('/') == b.trim_end_matches('/'),
    })
}

async fn migrate(ctx: &Ctx, from: &str, to: &str) -> anyhow::Result<()> {
    if same_database(from, to)? {
        anyhow::bail!("--from and --to are the same database ({})", redact(from));
    }
    let source = open(from, true).await?;
    let dest = match open(to, false).await {
        Ok(dest) => dest,
        Err(e) => {
            source.close().await;
            return Err(e);
        }
    };
    let copied: anyhow::Result<(CopyReport, u64)> = async {
        let report = copy_store(&source, &dest)
            .await
            .with_context(|| format!("copy {} to {}", redact(from), redact(to)))?;
        let mut verified = 0;
        for info in dest.list_logs().await? {
            dest.verify_log(&info.key)
                .await
                .with_context(|| format!("log {} does not verify after the copy", info.key))?;
            verified += 1;
        }
        Ok((report, verified))
    }
    .await;
    source.close().await;
    dest.close().await;
    let (report, verified) = copied?;
    emit(
        ctx.json,
        json!({
            "from": redact(from),
            "to": redact(to),
            "logs": report.logs,
            "entries": report.entries,
            "entry_bytes": report.entry_bytes,
            "fork_evidence": report.fork_evidence,
            "verified_logs": verified,
        }),
        || {
            format!(
                "copied {} logs, {} entries ({} bytes), {} fork evidence\nverified {} logs in {}",
                report.logs,
                report.entries,
                report.entry_bytes,
                report.fork_evidence,
                verified,
                redact(to)
            )
        },
    );
    Ok(())
}

pub async fn run_log(ctx: &Ctx, args: LogArgs) -> anyhow::Result<()> {
    // Keys are checked before the database is opened: a typo creates nothing.
    run_log_service(ctx, args).await
}

/// `log list|show|verify`: on the database, in-process.
async fn run_log_db(ctx: &Ctx, store_url: &StoreUrl, command: LogCommand) -> anyhow::Result<()> {
    let key = match &command {
        LogCommand::Show { key } => Some(parse_key(key)?),
        LogCommand::Verify { key } => key.as_deref().map(parse_key).transpose()?,
        _ => None,
    };
    let topic = match &command {
        LogCommand::List { topic: Some(topic) } => Some(parse_topic(topic)?),
        _ => None,
    };
    let store = open_store(ctx, store_url).await?;
    let result = run_log_on(ctx, &store, command, key, topic).await;
    store.close().await;
    result
}

/// `log append` and `log read`: through the store service.
async fn run_log_service(ctx: &Ctx, args: LogArgs) -> anyhow::Result<()> {
    let tagging = matches!(args.command, LogCommand::Tag { .. });
    match args.command {
        LogCommand::Append { name, entries } => {
            kith_store::api::check_log_name(&name)?;
            let entries: Vec<Vec<u8>> = if entries == ["-"] {
                use std::io::BufRead as _;
                std::io::stdin()
                    .lock()
                    .lines()
                    .map(|l| l.map(String::into_bytes))
                    .collect::<Result<_, _>>()
                    .context("read entries from stdin")?
            } else {
                entries.into_iter().map(String::into_bytes).collect()
            };
            let store = crate::store_service::client(ctx, &args.url).await?;
            let mut info = None;
            for batch in entries.chunks(kith_store::log::MAX_BATCH_ENTRIES) {
                info = Some(store.append(name.clone(), batch.to_vec()).await?);
            }
            let info = info.context("no entries to append")?;
            let mut held = RangeSet::new();
            held.insert(0, info.held_entries);
            emit(ctx.json, log_json(&info, &held), || log_line(&info, &held));
        }
        LogCommand::Read {
            key,
            start,
            end,
            hex,
        } => {
            let key = parse_key(&key)?;
            let store = crate::store_service::client(ctx, &args.url).await?;
            let end = match end {
                Some(end) => end,
                None => store.get_log(key).await?.length,
            };
            let mut entries = Vec::new();
            let mut at = start;
            while at < end {
                let to = end.min(at + kith_store::log::MAX_BATCH_ENTRIES as u64);
                entries.extend(store.get_entries(key, at, to).await?);
                at = to;
            }
            let show = |e: &Vec<u8>| {
                if hex {
                    hex::encode(e)
                } else {
                    String::from_utf8_lossy(e).into_owned()
                }
            };
            emit(
                ctx.json,
                json!({ "start": start, "entries": entries.iter().map(hex::encode).collect::<Vec<_>>() }),
                || entries.iter().map(show).collect::<Vec<_>>().join("\n"),
            );
        }
        LogCommand::Sync {
            key: Some(key),
            peer,
            ..
        } => {
            let key = parse_key(&key)?;
            let peer = peer.map(|p| parse_peer(&p)).transpose()?;
            let store = crate::store_service::client(ctx, &args.url).await?;
            let report = store.sync_log(key, peer).await?;
            emit(ctx.json, json!(report), || {
                format!(
                    "{key}: {} entries received from {} of {} peers; length {}",
                    report.entries_received, report.peers_synced, report.peers_found, report.length
                )
            });
        }
        LogCommand::Sync {
            key: None,
            topic: Some(topic),
            ..
        } => {
            let topic = parse_topic(&topic)?;
            let store = crate::store_service::client(ctx, &args.url).await?;
            let report = store.sync_topic(topic).await?;
            let value = json!({
                "topic_id": report.topic.to_string(),
                "peers_found": report.peers_found,
                "peers_answered": report.peers_answered,
                "logs": report.logs.iter().map(|l| json!({
                    "key": l.key.to_string(),
                    "length": l.length,
                    "entries_received": l.entries_received,
                    "error": l.error,
                })).collect::<Vec<_>>(),
            });
            emit(ctx.json, value, || {
                let mut out = format!(
                    "topic {}: {} logs from {} of {} peers",
                    report.topic,
                    report.logs.len(),
                    report.peers_answered,
                    report.peers_found
                );
                for l in &report.logs {
                    out.push_str(&match &l.error {
                        None => format!(
                            "\n  {}  length {}  ({} entries received)",
                            l.key, l.length, l.entries_received
                        ),
                        Some(e) => format!("\n  {}  length {}  not synced: {e}", l.key, l.length),
                    });
                }
                out
            });
        }
        LogCommand::Sync { .. } => unreachable!("clap requires a key or a topic"),
        LogCommand::Tag { name, topic } | LogCommand::Untag { name, topic } => {
            kith_store::api::check_log_name(&name)?;
            let topic = parse_topic(&topic)?;
            let id = topic.key().id();
            let store = crate::store_service::client(ctx, &args.url).await?;
            if tagging {
                let tagged = store.tag_log(name, topic).await?;
                let value = json!({
                    "key": tagged.key.to_string(),
                    "topics": tagged.topics.iter().map(ToString::to_string).collect::<Vec<_>>(),
                });
                emit(ctx.json, value, || {
                    format!("log {} is under topic {id}", tagged.key)
                });
            } else {
                if !store.untag_log(name.clone(), topic).await? {
                    anyhow::bail!("log {name:?} is not under topic {id}");
                }
                emit(
                    ctx.json,
                    json!({ "name": name, "removed_topic": id.to_string() }),
                    || format!("log {name:?} is no longer under topic {id}"),
                );
            }
        }
        LogCommand::List { .. } | LogCommand::Show { .. } | LogCommand::Verify { .. } => {
            run_log_db(ctx, &args.url, args.command).await?;
        }
    }
    Ok(())
}

async fn run_log_on(
    ctx: &Ctx,
    store: &Store,
    command: LogCommand,
    key: Option<LogKey>,
    topic: Option<RoomTopic>,
) -> anyhow::Result<()> {
    match command {
        LogCommand::List { .. } => {
            let infos = match &topic {
                None => store.list_logs().await?,
                Some(topic) => {
                    let mut infos = Vec::new();
                    for tag in store.topic_tags(&topic.key().id()).await? {
                        infos.push(store.log_info(&tag.key).await?);
                    }
                    infos
                }
            };
            let mut logs = Vec::new();
            for info in infos {
                let held = store.held(&info.key).await?;
                logs.push((info, held));
            }
            emit(
                ctx.json,
                json!({ "logs": logs.iter().map(|(i, h)| log_json(i, h)).collect::<Vec<_>>() }),
                || {
                    if logs.is_empty() {
                        "no logs".into()
                    } else {
                        logs.iter()
                            .map(|(i, h)| log_line(i, h))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            );
        }
        LogCommand::Show { .. } => {
            let key = key.expect("parsed above");
            let info = store.log_info(&key).await?;
            let held = store.held(&key).await?;
            let evidence = store.fork_evidence(&key).await?.len();
            let mut value = log_json(&info, &held);
            value["fork_evidence"] = json!(evidence);
            emit(ctx.json, value, || {
                format!(
                    "log: {}\nlength: {} ({} bytes)\nroot: {}\nheld: {} entries: {}\nforked: {}\n\
                     fork evidence: {}",
                    info.key,
                    info.length,
                    info.byte_length,
                    info.root
                        .map_or_else(|| "none".into(), |r| hex::encode(r.hash())),
                    info.held_entries,
                    ranges_text(&held),
                    if info.forked { "yes" } else { "no" },
                    evidence
                )
            });
        }
        LogCommand::Verify { .. } => {
            let keys = match key {
                Some(key) => {
                    // A log that is not there is an error, not a vacuous success.
                    store.log_info(&key).await?;
                    vec![key]
                }
                None => store
                    .list_logs()
                    .await?
                    .into_iter()
                    .map(|i| i.key)
                    .collect(),
            };
            let mut results = Vec::new();
            let mut failed = Vec::new();
            for key in keys {
                match store.verify_log(&key).await {
                    Ok(report) => results.push(json!({
                        "key": key.to_string(),
                        "ok": true,
                        "length": report.length,
                        "held_entries": report.held_entries,
                    })),
                    Err(e) => {
                        results.push(json!({
                            "key": key.to_string(),
                            "ok": false,
                            "error": e.to_string(),
                        }));
                        failed.push((key, e));
                    }
                }
            }
            emit(ctx.json, json!({ "logs": results }), || {
                results
                    .iter()
                    .map(|r| match r["ok"].as_bool() {
                        Some(true) => format!(
                            "ok      {}  {} of {} entries",
                            r["key"].as_str().unwrap_or_default(),
                            r["held_entries"],
                            r["length"]
                        ),
                        _ => format!(
                            "FAILED  {}  {}",
                            r["key"].as_str().unwrap_or_default(),
                            r["error"].as_str().unwrap_or_default()
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            if let Some((key, error)) = failed.first() {
                let others = match failed.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                anyhow::bail!("log {key} failed verification{others}: {error}");
            }
        }
        LogCommand::Append { .. }
        | LogCommand::Read { .. }
        | LogCommand::Sync { .. }
        | LogCommand::Tag { .. }
        | LogCommand::Untag { .. } => {
            unreachable!("these go through the store service (run_log_service)")
        }
    }
    Ok(())
}
