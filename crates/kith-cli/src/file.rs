//! `kith file put|get|list`: encrypted files through the store service. The key never reaches
//! the store: `put` encrypts here (a fresh key per file) and streams the ciphertext to the
//! store; `get` has the store fetch the ciphertext (verified block by block) and decrypts here.
//! The `kithfile1…` ticket `put` prints carries the file's id, key and size: whoever holds it
//! can read the file.

use std::path::PathBuf;

use anyhow::Context as _;
use bytes::Bytes;
use kith_store::api::{DataStream, MAX_DATA_PIECE};
use kith_store::files::crypto::ciphertext_size;
use kith_store::files::{BLOCK_BYTES, EncryptReader, FileKey, Ticket, decrypt_block};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;

use crate::context::Ctx;
use crate::output::{Progress, emit};
use crate::store::StoreUrl;

#[derive(clap::Args)]
pub struct FileArgs {
    #[command(flatten)]
    url: StoreUrl,
    #[command(subcommand)]
    command: FileCommand,
}

#[derive(clap::Subcommand)]
pub enum FileCommand {
    /// Encrypt a file with a fresh key and store it; prints its ticket (`kithfile1…`: id, key
    /// and size — share it with whoever should read the file).
    Put { path: PathBuf },
    /// Fetch a file by its ticket (from `--from PEER`, else from peers announcing it), verify
    /// and decrypt it into `--output`.
    Get {
        ticket: String,
        /// Where to write the plaintext (created; an existing file is refused).
        #[arg(short, long)]
        output: PathBuf,
        /// A peer holding the file (64 hex); default: the peers announced under its topic.
        #[arg(long = "from")]
        from: Option<String>,
    },
    /// Fetch a file's ciphertext by its id alone (no key: a mirror hosting it for others),
    /// verified block by block; it is then served to peers and announced.
    Fetch {
        /// The file's id (64 hex).
        id: String,
        #[arg(long = "from")]
        from: Option<String>,
    },
    /// The files this store holds (ciphertext; whole or in part).
    List,
}

pub async fn run(ctx: &Ctx, args: FileArgs) -> anyhow::Result<()> {
    match args.command {
        FileCommand::Put { path } => put(ctx, &args.url, path).await,
        FileCommand::Get {
            ticket,
            output,
            from,
        } => get(ctx, &args.url, &ticket, output, from).await,
        FileCommand::Fetch { id, from } => {
            let id: kith_store::files::FileId = id.parse()?;
            let from = from.map(|p| crate::store::parse_peer(&p)).transpose()?;
            let store = crate::store_service::client(ctx, &args.url).await?;
            let info = fetch(ctx, &store, id, from, None).await?;
            emit(ctx.json, json!(info), || {
                format!("{}  {} bytes held", info.id, info.held_bytes)
            });
            Ok(())
        }
        FileCommand::List => {
            let store = crate::store_service::client(ctx, &args.url).await?;
            let files = store.list_files().await?;
            emit(ctx.json, json!({ "files": files }), || {
                if files.is_empty() {
                    return "no files".into();
                }
                files
                    .iter()
                    .map(|f| {
                        format!(
                            "{}  {} bytes  {}/{} blocks",
                            f.id, f.size, f.held_blocks, f.blocks
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
    }
}

async fn put(ctx: &Ctx, url: &StoreUrl, path: PathBuf) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let plain_size = file.metadata().await?.len();
    let store = crate::store_service::client(ctx, url).await?;
    let key = FileKey::generate();
    let mut reader = EncryptReader::new(file, key.clone());
    let mut progress = Progress::new("put", ciphertext_size(plain_size), ctx.json);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (size_tx, size_rx) = tokio::sync::oneshot::channel();
    // Reads and encrypts here, a piece at a time; the store receives only ciphertext.
    let encrypt = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            let mut piece = vec![0u8; MAX_DATA_PIECE];
            let mut filled = 0;
            while filled < piece.len() {
                match reader.read(&mut piece[filled..]).await {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) => {
                        let error =
                            kith_store::ApiError::InvalidArgument(format!("read the file: {e}"));
                        let _ = tx.send(Err(error)).await;
                        return;
                    }
                }
            }
            if filled == 0 {
                break;
            }
            piece.truncate(filled);
            sent += filled as u64;
            progress.set(sent);
            if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                return;
            }
            if filled < MAX_DATA_PIECE {
                break;
            }
        }
        let _ = size_tx.send(reader.plaintext_len());
        progress.finish();
    });
    let stream: DataStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    let info = store.put_file(stream).await?;
    encrypt.await.context("the encrypting task failed")?;
    let size = size_rx
        .await
        .context("the file's size is unknown (the upload ended early)")?;
    let ticket = Ticket {
        id: info.id,
        key,
        size,
    };
    emit(
        ctx.json,
        json!({
            "ticket": ticket.to_string(),
            "id": info.id.to_string(),
            "size": size,
            "ciphertext_size": info.size,
        }),
        || {
            format!(
                "{ticket}\n(file {} , {size} bytes; the ticket holds its key)",
                info.id
            )
        },
    );
    Ok(())
}

/// Has the store fetch a whole file, with a progress bar; the file as held afterwards.
async fn fetch(
    ctx: &Ctx,
    store: &kith_store::StoreClient,
    id: kith_store::files::FileId,
    from: Option<[u8; 32]>,
    size: Option<u64>,
) -> anyhow::Result<kith_store::files::FileInfo> {
    let mut updates = store.fetch_file(id, from, 0..u64::MAX).await?;
    let mut progress: Option<Progress> = size.map(|s| Progress::new("fetch", s, ctx.json));
    let mut done = None;
    while let Some(update) = updates.next().await {
        let update = update?;
        let bar =
            progress.get_or_insert_with(|| Progress::new("fetch", update.progress.total, ctx.json));
        bar.set(update.progress.held);
        if let Some(info) = update.done {
            done = Some(info);
        }
    }
    if let Some(bar) = progress {
        bar.finish();
    }
    done.context("the fetch ended without the whole file")
}

async fn get(
    ctx: &Ctx,
    url: &StoreUrl,
    ticket: &str,
    output: PathBuf,
    from: Option<String>,
) -> anyhow::Result<()> {
    let ticket: Ticket = ticket.parse()?;
    let from = from.map(|p| crate::store::parse_peer(&p)).transpose()?;
    if output.exists() {
        anyhow::bail!("{} exists; not overwriting it", output.display());
    }
    let store = crate::store_service::client(ctx, url).await?;
    let held = match store.get_file(ticket.id).await {
        Ok(info) => info.complete(),
        Err(kith_store::ApiError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if !held {
        let info = fetch(ctx, &store, ticket.id, from, Some(ticket.ciphertext_size())).await?;
        if info.size != ticket.ciphertext_size() {
            anyhow::bail!(
                "the file holds {} bytes of ciphertext, the ticket says {}",
                info.size,
                ticket.ciphertext_size()
            );
        }
    }
    // Decrypt into a temporary file beside the output, renamed once whole: a failed get leaves
    // nothing behind.
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kith-file-")
        .tempfile_in(dir)
        .with_context(|| format!("create a file in {}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(tmp.reopen()?);
    let mut data = store.read_file(ticket.id, 0, None).await?;
    let mut progress = Progress::new("decrypt", ticket.size, ctx.json);
    let mut block = Vec::with_capacity(BLOCK_BYTES as usize);
    let (mut index, mut written) = (0u64, 0u64);
    let mut pending: Option<Bytes> = None;
    loop {
        let piece = match pending.take() {
            Some(p) => Some(p),
            None => data.next().await.transpose()?,
        };
        let Some(mut piece) = piece else { break };
        while !piece.is_empty() {
            let take = (BLOCK_BYTES as usize - block.len()).min(piece.len());
            block.extend_from_slice(&piece.split_to(take));
            if block.len() == BLOCK_BYTES as usize {
                let plain = decrypt_block(&ticket.key, ticket.size, index, &block)?;
                out.write_all(&plain).await?;
                written += plain.len() as u64;
                progress.set(written);
                block.clear();
                index += 1;
            }
        }
    }
    if !block.is_empty() || (ticket.size == 0 && index == 0) {
        let plain = decrypt_block(&ticket.key, ticket.size, index, &block)?;
        out.write_all(&plain).await?;
        written += plain.len() as u64;
    }
    progress.finish();
    if written != ticket.size {
        anyhow::bail!("decrypted {written} bytes, the ticket says {}", ticket.size);
    }
    out.sync_all().await?;
    drop(out);
    tmp.persist_noclobber(&output)
        .map_err(|e| e.error)
        .with_context(|| format!("write {}", output.display()))?;
    emit(
        ctx.json,
        json!({ "id": ticket.id.to_string(), "size": written, "output": output }),
        || format!("{} bytes written to {}", written, output.display()),
    );
    Ok(())
}
