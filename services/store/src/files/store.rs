//! Files in the store: a `files` row per file (its id, ciphertext size and outboard) and a
//! `file_blocks` row per held 64 KiB block, whose bytes are in the file's data file in the blob
//! dir (see `files::blobs`; written and synced before the row is committed) or, for a store
//! without a blob dir, in the row. A holder may hold any subset of a file's
//! blocks (a mirror that fetched a range, an interrupted transfer); every stored block was
//! verified against the outboard, and the outboard against the id, before it was written, and
//! blocks are verified again when read here (`read_file_blocks`, and so a local `file get`), so a
//! damaged database or data file is reported, never decrypted. Blocks served to a peer go as
//! stored: the fetcher verifies every one before it keeps it (`files::protocol`).
//!
//! An import hashes the ciphertext as it streams in, so its id is known only at the end: the
//! blocks go under a provisional row (no id yet) in batches, and the row gets its id and outboard
//! in the last transaction — or is merged into the file's existing row if the store already had
//! (part of) the same file. A failed import removes what it wrote.

use std::ops::Range;

use blake3::hazmat::ChainingValue;
use bytes::BytesMut;
use serde::Serialize;
use sqlx::{QueryBuilder, Row};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::blobs::{BlockReader, block_buf, recycle};
use super::crypto::{EncryptReader, FileKey, PLAIN_CHUNK_BYTES, Ticket, decrypt_block};
use super::hash::{
    OutboardBuilder, block_count, block_cv, block_len, decode_cvs, encode_cvs, root_from_cvs,
};
use super::{BLOCK_BYTES, FileId, MAX_FILE_BYTES};
use crate::Store;
use crate::backend::{Db, in_write_tx, on_db, release_writer, take_writer, to_i64, to_u64};
use crate::error::StoreError;
use crate::log::RangeSet;

/// Where a held block's bytes are.
#[derive(Debug)]
pub(crate) enum BlockSource {
    /// In its row (a store without a blob dir).
    Row(BytesMut),
    /// In the file's data file: this many bytes at the block's offset.
    DataFile(usize),
}

/// Block data written by [`Store::write_block_data_part`] and not yet made durable.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PartWrites {
    /// Something was written since the last sync.
    unsynced: bool,
    /// One of those writes created the data file (its directory needs a sync too).
    created: bool,
}

/// How long an unfinished import may run before [`Store::sweep_stale_imports`] takes it for
/// one a crash or a cancellation left behind.
pub const STALE_IMPORT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Now less [`STALE_IMPORT`]: imports begun before it are left over.
pub(crate) fn stale_import_cutoff() -> u64 {
    crate::mailbox::unix_now().saturating_sub(STALE_IMPORT.as_secs())
}

/// Blocks per write transaction (4 MiB) and at most per read.
pub const BATCH_BLOCKS: u64 = 64;
/// Blocks per multi-row insert (3 binds each: a whole batch is one statement).
const INSERT_ROWS: usize = BATCH_BLOCKS as usize;

/// The bytes of held block `b` of file `f` (0 for no block: a `LEFT JOIN` without a match), from
/// the file's size, since a block's data may be in a data file rather than the row.
macro_rules! held_len {
    () => {
        "CASE WHEN b.idx IS NULL THEN 0 WHEN (b.idx + 1) * 65536 > f.size THEN f.size - b.idx * 65536 ELSE 65536 END"
    };
}

/// A file as this store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileInfo {
    pub id: FileId,
    /// Ciphertext bytes.
    pub size: u64,
    /// Blocks in the file.
    pub blocks: u64,
    /// Blocks held here.
    pub held_blocks: u64,
    /// Ciphertext bytes held here.
    pub held_bytes: u64,
}

impl FileInfo {
    /// Whether every block is held.
    pub fn complete(&self) -> bool {
        self.held_blocks == self.blocks
    }
}

/// Totals over the store's files (files still being imported are not counted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileStats {
    pub files: u64,
    pub complete_files: u64,
    pub blocks: u64,
    pub bytes: u64,
}

/// A file's row: its database id and ciphertext size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileRow {
    pub row: i64,
    pub size: u64,
}

impl Store {
    /// Imports a file's ciphertext (for a client: an [`super::EncryptReader`] over the
    /// plaintext), hashing it as it streams in, with bounded memory. Importing a file the store
    /// already has (in part) completes it. Fails with [`StoreError::Malformed`] on an empty
    /// stream, [`StoreError::FileTooLarge`] past [`MAX_FILE_BYTES`]; then nothing is kept.
    pub async fn import_file<R: AsyncRead + Unpin>(
        &self,
        reader: R,
    ) -> Result<FileInfo, StoreError> {
        let started = to_i64(crate::mailbox::unix_now())?;
        let row: i64 = on_db!(&self.db, pool, DB => {
            sqlx::query("INSERT INTO files (root, size, outboard, import_started) VALUES (NULL, 0, $1, $2) RETURNING id")
                .bind(Vec::<u8>::new())
                .bind(started)
                .fetch_one(pool)
                .await?
                .try_get(0)?
        });
        match self.import_blocks(row, reader).await {
            Ok(info) => Ok(info),
            Err(error) => {
                if let Err(cleanup) = self.remove_file_row(row).await {
                    tracing::warn!(%cleanup, "remove a failed import");
                }
                Err(error)
            }
        }
    }

    async fn import_blocks<R: AsyncRead + Unpin>(
        &self,
        row: i64,
        mut reader: R,
    ) -> Result<FileInfo, StoreError> {
        let (batches, mut batch_rx) = tokio::sync::mpsc::channel::<Vec<(u64, BytesMut)>>(2);
        // Reading (and so encrypting) and hashing overlap with the database writes.
        let read = async move {
            let mut builder = OutboardBuilder::default();
            let mut index = 0u64;
            let mut batch = Vec::with_capacity(BATCH_BLOCKS as usize);
            loop {
                // Aligned, so the data file takes it with direct I/O.
                let mut block = block_buf(BLOCK_BYTES as usize);
                while block.len() < BLOCK_BYTES as usize {
                    let want = BLOCK_BYTES - block.len() as u64;
                    let n = (&mut reader)
                        .take(want)
                        .read_buf(&mut block)
                        .await
                        .map_err(|e| match e.downcast::<StoreError>() {
                            Ok(store) => store,
                            Err(e) => StoreError::Io(format!("read the file: {e}")),
                        })?;
                    if n == 0 {
                        break;
                    }
                }
                let filled = block.len();
                if filled == 0 {
                    break;
                }
                builder.push(&block)?;
                batch.push((index, block));
                index += 1;
                if batch.len() as u64 == BATCH_BLOCKS {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BLOCKS as usize));
                    if batches.send(full).await.is_err() {
                        break;
                    }
                }
                if filled < BLOCK_BYTES as usize {
                    break;
                }
            }
            if !batch.is_empty() {
                let _ = batches.send(batch).await;
            }
            drop(batches);
            builder.finish()
        };
        let write = async {
            while let Some(batch) = batch_rx.recv().await {
                let batch = self.write_block_data(row, batch).await?;
                self.record_blocks(row, &batch).await?;
                recycle(batch.into_iter().map(|(_, data)| data));
            }
            Ok::<_, StoreError>(())
        };
        let (built, written) = tokio::join!(read, write);
        written?;
        let (id, size, cvs) = built?;
        if let Some(existing) = self.finish_import(row, id, size, &cvs).await? {
            // The store had (part of) this file already: what it lacks moves over, then the
            // provisional row goes.
            let imported = FileRow { row, size };
            let have = self.held_blocks(existing).await?;
            for (s, e) in have.missing(block_count(size)).iter() {
                let mut at = s;
                while at < e {
                    let end = (at + BATCH_BLOCKS).min(e);
                    let batch = self.block_rows(imported, at..end).await?;
                    self.put_blocks(existing, batch).await?;
                    at = end;
                }
            }
            self.remove_file_row(row).await?;
        }
        self.file_info(&id).await
    }

    /// Gives a provisional row its id; or, if the file has a row already, returns that row
    /// (the caller merges the provisional row into it).
    async fn finish_import(
        &self,
        row: i64,
        id: FileId,
        size: u64,
        cvs: &[ChainingValue],
    ) -> Result<Option<i64>, StoreError> {
        let outboard = encode_cvs(cvs);
        in_write_tx!(&self.db, tx, DB => {
            let existing: Option<i64> = sqlx::query("SELECT id FROM files WHERE root = $1")
                .bind(id.0.as_slice())
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            match existing {
                Some(existing) => return Ok(Some(existing)),
                None => {
                    sqlx::query("UPDATE files SET root = $1, size = $2, outboard = $3 WHERE id = $4")
                        .bind(id.0.as_slice())
                        .bind(to_i64(size)?)
                        .bind(outboard.as_slice())
                        .bind(row)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok(None)
        })
    }

    /// Deletes a file row and its blocks, then (once that is committed) its data file.
    /// Removes a file row, its block rows and its data file. The data file goes while the
    /// write transaction is open: SQLite may give the next new file the same row id once this
    /// one is gone, and that file's data must not be the one removed. (A crash between the
    /// two leaves the row claiming blocks its data file lacks: they read as corrupt.)
    async fn remove_file_row(&self, row: i64) -> Result<(), StoreError> {
        let blobs = self.blobs.clone();
        in_write_tx!(&self.db, tx, DB => {
            sqlx::query("DELETE FROM file_blocks WHERE file_id = $1").bind(row).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM files WHERE id = $1").bind(row).execute(&mut *tx).await?;
            if let Some(blobs) = blobs {
                super::blobs::blocking(move || blobs.remove(row)).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Removes imports that began before `cutoff` (Unix seconds) and never finished: the
    /// provisional rows, their blocks and data files, left by a crash or a cancelled import
    /// (a failed one removes its own). A store does this when it opens and then from time to
    /// time (see [`STALE_IMPORT`]); an import still running on another store that shares the
    /// database is older than that only if it has run for as long, and then it fails cleanly.
    /// Returns how many were removed.
    pub async fn sweep_stale_imports(&self, cutoff: u64) -> Result<usize, StoreError> {
        let cutoff = to_i64(cutoff)?;
        let rows: Vec<i64> = on_db!(&self.db, pool, DB => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM files WHERE root IS NULL AND import_started < $1")
                .bind(cutoff)
                .fetch_all(pool)
                .await?
        });
        for &row in &rows {
            self.remove_file_row(row).await?;
        }
        if !rows.is_empty() {
            tracing::info!(removed = rows.len(), "removed imports that never finished");
        }
        Ok(rows.len())
    }

    /// Removes data files in the blob dir whose file row is gone (left by a crash between a
    /// row's deletion and its data file's, before data files were removed inside the
    /// deleting transaction). A data file is created only for a row that exists, so one
    /// without a row is never read again. Returns how many were removed.
    pub(crate) async fn sweep_orphan_data_files(&self) -> Result<usize, StoreError> {
        let Some(blobs) = self.blobs.clone() else {
            return Ok(0);
        };
        let on_disk = {
            let blobs = blobs.clone();
            super::blobs::blocking(move || blobs.rows()).await?
        };
        if on_disk.is_empty() {
            return Ok(0);
        }
        let rows: std::collections::HashSet<i64> = on_db!(&self.db, pool, DB => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM files")
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
        });
        let orphans: Vec<i64> = on_disk.into_iter().filter(|r| !rows.contains(r)).collect();
        let removed = orphans.len();
        if removed > 0 {
            tracing::info!(removed, dir = %blobs.dir().display(), "removed data files of deleted files");
            super::blobs::blocking(move || orphans.iter().try_for_each(|&r| blobs.remove(r)))
                .await?;
        }
        Ok(removed)
    }

    /// Stores blocks that were verified already (blocks held already are kept):
    /// [`Self::write_block_data`], then [`Self::record_blocks`].
    pub(crate) async fn put_blocks<B: AsRef<[u8]> + Send + Sync + 'static>(
        &self,
        row: i64,
        blocks: Vec<(u64, B)>,
    ) -> Result<(), StoreError> {
        let blocks = self.write_block_data(row, blocks).await?;
        self.record_blocks(row, &blocks).await
    }

    /// The first half of storing verified blocks: with a blob dir, their bytes go to the file's
    /// data file and are made durable (nothing happens without one). The blocks come back for
    /// [`Self::record_blocks`]. A fetch runs the halves of consecutive batches side by side.
    pub(crate) async fn write_block_data<B: AsRef<[u8]> + Send + Sync + 'static>(
        &self,
        row: i64,
        blocks: Vec<(u64, B)>,
    ) -> Result<Vec<(u64, B)>, StoreError> {
        self.write_block_data_part(row, blocks, &mut PartWrites::default(), true)
            .await
    }

    /// [`Self::write_block_data`] in parts, for a batch written as its blocks arrive: `blocks`
    /// go to the data file, and only with `sync` is everything written since the last sync
    /// made durable. `parts` carries what that sync needs between the calls.
    pub(crate) async fn write_block_data_part<B: AsRef<[u8]> + Send + Sync + 'static>(
        &self,
        row: i64,
        blocks: Vec<(u64, B)>,
        parts: &mut PartWrites,
        sync: bool,
    ) -> Result<Vec<(u64, B)>, StoreError> {
        let Some(blobs) = self.blobs.clone() else {
            return Ok(blocks);
        };
        let before = *parts;
        if blocks.is_empty() && !(sync && before.unsynced) {
            return Ok(blocks);
        }
        let (blocks, after) = super::blobs::blocking(move || {
            let created = blobs.write_unsynced(row, &blocks)? || before.created;
            if sync {
                blobs.sync(row, created)?;
                return Ok((blocks, PartWrites::default()));
            }
            Ok((
                blocks,
                PartWrites {
                    unsynced: true,
                    created,
                },
            ))
        })
        .await?;
        *parts = after;
        Ok(blocks)
    }

    /// The second half: one transaction records `blocks` as held — only after
    /// [`Self::write_block_data`] made their bytes durable; without a blob dir the rows hold
    /// the bytes.
    pub(crate) async fn record_blocks<B: AsRef<[u8]> + Send + Sync + 'static>(
        &self,
        row: i64,
        blocks: &[(u64, B)],
    ) -> Result<(), StoreError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let in_file = self.blobs.is_some();
        in_write_tx!(&self.db, tx, DB => {
            for chunk in blocks.chunks(INSERT_ROWS) {
                let mut qb = QueryBuilder::<DB>::new("INSERT INTO file_blocks (file_id, idx, data) ");
                let mut bad = None;
                qb.push_values(chunk, |mut b, (i, data)| {
                    let idx = to_i64(*i).unwrap_or_else(|e| { bad = Some(e); 0 });
                    let data = (!in_file).then_some(data.as_ref());
                    b.push_bind(row).push_bind(idx).push_bind(data);
                });
                if let Some(e) = bad {
                    return Err(e);
                }
                qb.push(" ON CONFLICT (file_id, idx) DO NOTHING");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records a file whose outboard was received from a peer, after checking it against the
    /// id. Returns its row (an existing one if the file is known).
    pub(crate) async fn add_file(
        &self,
        id: &FileId,
        size: u64,
        cvs: &[ChainingValue],
    ) -> Result<FileRow, StoreError> {
        if root_from_cvs(size, cvs)? != *id {
            return Err(StoreError::BadProof);
        }
        let outboard = encode_cvs(cvs);
        on_db!(&self.db, pool, DB => {
            sqlx::query("INSERT INTO files (root, size, outboard) VALUES ($1, $2, $3) ON CONFLICT (root) DO NOTHING")
                .bind(id.0.as_slice())
                .bind(to_i64(size)?)
                .bind(outboard.as_slice())
                .execute(pool)
                .await?;
        });
        let row = self
            .file_row(id)
            .await?
            .ok_or(StoreError::FileNotFound { id: *id })?;
        if row.size != size {
            return Err(StoreError::Corrupt(format!(
                "file {id} is held with another size"
            )));
        }
        Ok(row)
    }

    pub(crate) async fn file_row(&self, id: &FileId) -> Result<Option<FileRow>, StoreError> {
        let row = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT id, size FROM files WHERE root = $1")
                .bind(id.0.as_slice())
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)) })
                .transpose()?
        });
        let Some((row, size)) = row else {
            return Ok(None);
        };
        let size = to_u64(size)?;
        if size == 0 || size > MAX_FILE_BYTES {
            return Err(StoreError::Corrupt(format!("file {id} has size {size}")));
        }
        Ok(Some(FileRow { row, size }))
    }

    /// The chaining values of blocks `blocks` of a file.
    pub(crate) async fn file_cvs(
        &self,
        id: &FileId,
        file: FileRow,
        blocks: Range<u64>,
    ) -> Result<Vec<ChainingValue>, StoreError> {
        let count = block_count(file.size);
        let blocks = blocks.start.min(count)..blocks.end.min(count);
        // Offsets within an outboard of at most 8 MiB fit an i32 (PostgreSQL's substr takes int4).
        let start = i32::try_from(blocks.start * 32 + 1).map_err(|_| StoreError::OutOfRange)?;
        let len =
            i32::try_from((blocks.end - blocks.start) * 32).map_err(|_| StoreError::OutOfRange)?;
        let bytes: Vec<u8> = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT substr(outboard, $1, $2) FROM files WHERE id = $3")
                .bind(start)
                .bind(len)
                .bind(file.row)
                .fetch_one(pool)
                .await?
                .try_get(0)?
        });
        let cvs = decode_cvs(&bytes)?;
        if cvs.len() as u64 != blocks.end - blocks.start {
            return Err(StoreError::Corrupt(format!(
                "outboard of file {id} is short"
            )));
        }
        Ok(cvs)
    }

    /// The whole outboard of a file.
    pub(crate) async fn file_outboard(
        &self,
        id: &FileId,
        file: FileRow,
    ) -> Result<Vec<ChainingValue>, StoreError> {
        let cvs = self.file_cvs(id, file, 0..u64::MAX).await?;
        if root_from_cvs(file.size, &cvs)? != *id {
            return Err(StoreError::Corrupt(format!(
                "outboard of file {id} does not match its id"
            )));
        }
        Ok(cvs)
    }

    /// A file as held here, or [`StoreError::FileNotFound`].
    pub async fn file_info(&self, id: &FileId) -> Result<FileInfo, StoreError> {
        let file = self
            .file_row(id)
            .await?
            .ok_or(StoreError::FileNotFound { id: *id })?;
        let (held, bytes) = on_db!(&self.db, pool, DB => {
            let r = sqlx::query(concat!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(", held_len!(), "), 0) AS BIGINT) \
                 FROM file_blocks b JOIN files f ON f.id = b.file_id WHERE b.file_id = $1",
            ))
            .bind(file.row)
            .fetch_one(pool)
            .await?;
            (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)
        });
        Ok(FileInfo {
            id: *id,
            size: file.size,
            blocks: block_count(file.size),
            held_blocks: to_u64(held)?,
            held_bytes: to_u64(bytes)?,
        })
    }

    /// Every file held (in part or whole), by id.
    pub async fn list_files(&self) -> Result<Vec<FileInfo>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(concat!(
                "SELECT f.root, f.size, COUNT(b.idx), CAST(COALESCE(SUM(", held_len!(), "), 0) AS BIGINT) \
                 FROM files f LEFT JOIN file_blocks b ON b.file_id = f.id \
                 WHERE f.root IS NOT NULL GROUP BY f.id, f.root, f.size ORDER BY f.root",
            ))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((r.try_get::<Vec<u8>, _>(0)?, r.try_get::<i64, _>(1)?, r.try_get::<i64, _>(2)?, r.try_get::<i64, _>(3)?))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(root, size, held, bytes)| {
                let id = FileId(
                    root.try_into()
                        .map_err(|_| StoreError::Corrupt("file id is not 32 bytes".into()))?,
                );
                let size = to_u64(size)?;
                Ok(FileInfo {
                    id,
                    size,
                    blocks: block_count(size),
                    held_blocks: to_u64(held)?,
                    held_bytes: to_u64(bytes)?,
                })
            })
            .collect()
    }

    /// The blocks of a file held here, as ranges of block indices.
    pub async fn file_held(&self, id: &FileId) -> Result<RangeSet, StoreError> {
        let file = self
            .file_row(id)
            .await?
            .ok_or(StoreError::FileNotFound { id: *id })?;
        self.held_blocks(file.row).await
    }

    pub(crate) async fn held_blocks(&self, row: i64) -> Result<RangeSet, StoreError> {
        // Gaps and islands: consecutive indices share `idx - row_number`.
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT MIN(idx), MAX(idx) FROM \
                 (SELECT idx, idx - ROW_NUMBER() OVER (ORDER BY idx) AS grp FROM file_blocks WHERE file_id = $1) runs \
                 GROUP BY grp ORDER BY 1",
            )
            .bind(row)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut set = RangeSet::new();
        for (lo, hi) in rows {
            set.insert(to_u64(lo)?, to_u64(hi)? + 1);
        }
        Ok(set)
    }

    /// Blocks `blocks` of a file (at most [`BATCH_BLOCKS`]), each verified against the outboard.
    /// [`StoreError::BlockNotHeld`] names the first one missing; a block that fails verification
    /// is [`StoreError::Corrupt`].
    pub async fn read_file_blocks(
        &self,
        id: &FileId,
        blocks: Range<u64>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let file = self
            .file_row(id)
            .await?
            .ok_or(StoreError::FileNotFound { id: *id })?;
        if blocks.end > block_count(file.size) || blocks.start > blocks.end {
            return Err(StoreError::OutOfRange);
        }
        if blocks.end - blocks.start > BATCH_BLOCKS {
            return Err(StoreError::Malformed("at most 64 blocks per read"));
        }
        let cvs = self.file_cvs(id, file, blocks.clone()).await?;
        let rows = self.block_rows(file, blocks.clone()).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut want = blocks.start;
        for (idx, data) in rows {
            if idx != want {
                return Err(StoreError::BlockNotHeld { index: want });
            }
            check_block(
                id,
                file.size,
                idx,
                &data,
                &cvs[(idx - blocks.start) as usize],
            )?;
            out.push(Vec::from(data));
            want += 1;
        }
        if want != blocks.end {
            return Err(StoreError::BlockNotHeld { index: want });
        }
        Ok(out)
    }

    /// The held blocks among `blocks`, in order, unverified: from the rows, or (a row without
    /// data) from the data file.
    pub(crate) async fn block_rows(
        &self,
        file: FileRow,
        blocks: Range<u64>,
    ) -> Result<Vec<(u64, BytesMut)>, StoreError> {
        let limit = blocks.end.saturating_sub(blocks.start);
        let sources = self.block_sources(file, blocks, limit).await?;
        let from_file: Vec<(u64, usize)> = sources
            .iter()
            .filter_map(|(i, source)| match source {
                BlockSource::DataFile(len) => Some((*i, *len)),
                BlockSource::Row(_) => None,
            })
            .collect();
        let mut read = if from_file.is_empty() {
            Vec::new()
        } else {
            let blobs = self.blobs_of(file.row)?;
            let row = file.row;
            super::blobs::blocking(move || blobs.read(row, &from_file)).await?
        }
        .into_iter();
        sources
            .into_iter()
            .map(|(i, source)| match source {
                BlockSource::Row(data) => Ok((i, data)),
                BlockSource::DataFile(_) => read
                    .next()
                    .map(|d| (i, d))
                    .ok_or_else(|| StoreError::Io("blob read came back short".into())),
            })
            .collect()
    }

    /// Where the first `limit` held blocks among `blocks` are, in order: each block's bytes
    /// from its row, or its length in the data file (read them with [`Self::block_reader`]).
    pub(crate) async fn block_sources(
        &self,
        file: FileRow,
        blocks: Range<u64>,
        limit: u64,
    ) -> Result<Vec<(u64, BlockSource)>, StoreError> {
        let row = file.row;
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT idx, data FROM file_blocks WHERE file_id = $1 AND idx >= $2 AND idx < $3 ORDER BY idx LIMIT $4")
                .bind(row)
                .bind(to_i64(blocks.start)?)
                .bind(to_i64(blocks.end)?)
                .bind(to_i64(limit)?)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> { Ok((r.try_get::<i64, _>(0)?, r.try_get::<Option<Vec<u8>>, _>(1)?)) })
                .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(i, data)| {
                let i = to_u64(i)?;
                match data {
                    Some(data) => Ok((
                        i,
                        BlockSource::Row(BytesMut::from(bytes::Bytes::from(data))),
                    )),
                    None if i >= block_count(file.size) => Err(StoreError::Corrupt(format!(
                        "block {i} of file row {row} is past its end"
                    ))),
                    None => Ok((i, BlockSource::DataFile(block_len(file.size, i)))),
                }
            })
            .collect()
    }

    /// File row `row`'s data file, open to read blocks from.
    pub(crate) async fn block_reader(&self, row: i64) -> Result<BlockReader, StoreError> {
        let blobs = self.blobs_of(row)?;
        super::blobs::blocking(move || blobs.reader(row)).await
    }

    /// The blob dir that holds row `row`'s data file: a store opened without one cannot read
    /// blocks kept in one.
    fn blobs_of(&self, row: i64) -> Result<super::blobs::BlobDir, StoreError> {
        self.blobs.clone().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "blocks of file row {row} are kept in a blob dir, and this store was opened without one"
            ))
        })
    }

    /// Deletes a file and every block of it held here; whether it was held.
    pub async fn delete_file(&self, id: &FileId) -> Result<bool, StoreError> {
        let Some(file) = self.file_row(id).await? else {
            return Ok(false);
        };
        self.remove_file_row(file.row).await?;
        Ok(true)
    }

    /// Totals over the files held.
    pub async fn file_stats(&self) -> Result<FileStats, StoreError> {
        let (files, complete, blocks, bytes) = on_db!(&self.db, pool, DB => {
            let r = sqlx::query(concat!(
                "SELECT \
                 (SELECT COUNT(*) FROM files WHERE root IS NOT NULL), \
                 (SELECT COUNT(*) FROM files f WHERE root IS NOT NULL AND \
                    (SELECT COUNT(*) FROM file_blocks b WHERE b.file_id = f.id) * 65536 >= f.size), \
                 (SELECT COUNT(*) FROM file_blocks b JOIN files f ON f.id = b.file_id WHERE f.root IS NOT NULL), \
                 (SELECT CAST(COALESCE(SUM(", held_len!(), "), 0) AS BIGINT) FROM file_blocks b JOIN files f ON f.id = b.file_id WHERE f.root IS NOT NULL)",
            ))
            .fetch_one(pool)
            .await?;
            (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?, r.try_get::<i64, _>(2)?, r.try_get::<i64, _>(3)?)
        });
        Ok(FileStats {
            files: to_u64(files)?,
            complete_files: to_u64(complete)?,
            blocks: to_u64(blocks)?,
            bytes: to_u64(bytes)?,
        })
    }
}

/// Copies file `id` (its outboard and every block `from` holds) into `to`; the blocks and
/// bytes copied. Used by [`crate::backend::copy_store`].
pub(crate) async fn copy_file(
    from: &Store,
    to: &Store,
    id: &FileId,
) -> Result<(u64, u64), StoreError> {
    let file = from
        .file_row(id)
        .await?
        .ok_or(StoreError::FileNotFound { id: *id })?;
    let cvs = from.file_outboard(id, file).await?;
    let dest = to.add_file(id, file.size, &cvs).await?;
    let (mut blocks, mut bytes) = (0, 0);
    for (s, e) in from.held_blocks(file.row).await?.iter() {
        let mut at = s;
        while at < e {
            let end = (at + BATCH_BLOCKS).min(e);
            let batch: Vec<(u64, Vec<u8>)> = (at..end)
                .zip(from.read_file_blocks(id, at..end).await?)
                .collect();
            blocks += batch.len() as u64;
            bytes += batch.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            to.put_blocks(dest.row, batch).await?;
            at = end;
        }
    }
    Ok((blocks, bytes))
}

/// Checks a block read from the database.
pub(crate) fn check_block(
    id: &FileId,
    size: u64,
    index: u64,
    data: &[u8],
    cv: &ChainingValue,
) -> Result<(), StoreError> {
    if data.len() != block_len(size, index) || block_cv(size, index, data) != *cv {
        return Err(StoreError::Corrupt(format!(
            "block {index} of file {id} does not match its hash"
        )));
    }
    Ok(())
}

/// The client's put: encrypts `plaintext` under a fresh [`FileKey`] as it is read, imports the
/// ciphertext, and returns the file's [`Ticket`]. `progress` is called with the plaintext bytes
/// read so far, as they are read. Memory is bounded (a few batches of blocks).
pub async fn put_plaintext<R: AsyncRead + Unpin>(
    store: &Store,
    plaintext: R,
    progress: impl FnMut(u64) + Send + Unpin,
) -> Result<Ticket, StoreError> {
    let key = FileKey::generate();
    let counted = Counting {
        inner: plaintext,
        read: 0,
        progress,
    };
    let mut reader = EncryptReader::new(counted, key.clone());
    let info = store.import_file(&mut reader).await?;
    Ok(Ticket {
        id: info.id,
        key,
        size: reader.plaintext_len(),
    })
}

/// Reports how much of a reader has been read.
struct Counting<R, F> {
    inner: R,
    read: u64,
    progress: F,
}

impl<R: AsyncRead + Unpin, F: FnMut(u64) + Unpin> AsyncRead for Counting<R, F> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.read += n;
            (this.progress)(this.read);
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// The client's read: decrypts plaintext `range` (clamped to the file) of the file `ticket`
/// names from the blocks held in `store`, verified and then opened with the ticket's key, and
/// writes it to `out`. Memory is bounded by one batch of blocks. Returns the bytes written.
/// A block missing is [`StoreError::BlockNotHeld`] (fetch it first); a wrong key or altered
/// ciphertext is [`StoreError::Decrypt`], with nothing of that block written.
pub async fn read_plaintext<W: AsyncWrite + Unpin>(
    store: &Store,
    ticket: &Ticket,
    range: Range<u64>,
    out: &mut W,
) -> Result<u64, StoreError> {
    let info = store.file_info(&ticket.id).await?;
    if info.size != ticket.ciphertext_size() {
        return Err(StoreError::InvalidTicket(format!(
            "the ticket says {} plaintext bytes, the file holds {} ciphertext bytes",
            ticket.size, info.size
        )));
    }
    let end = range.end.min(ticket.size);
    let blocks = ticket.blocks_for(range.start..end);
    let mut written = 0u64;
    let mut at = blocks.start;
    while at < blocks.end {
        let batch_end = (at + BATCH_BLOCKS).min(blocks.end);
        let ciphertext = store.read_file_blocks(&ticket.id, at..batch_end).await?;
        for (k, block) in ciphertext.iter().enumerate() {
            let index = at + k as u64;
            let plain = decrypt_block(&ticket.key, ticket.size, index, block)?;
            let block_start = index * PLAIN_CHUNK_BYTES;
            let from = range.start.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(plain.len());
            out.write_all(&plain[from..to])
                .await
                .map_err(|e| StoreError::Io(format!("write the file: {e}")))?;
            written += (to - from) as u64;
        }
        at = batch_end;
    }
    out.flush()
        .await
        .map_err(|e| StoreError::Io(format!("write the file: {e}")))?;
    Ok(written)
}
