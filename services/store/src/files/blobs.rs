//! File block data on disk: one data file per file row, `<blob dir>/<row>.data`, each block's
//! ciphertext at its natural offset (block `i` at `i × 64 KiB`), written with positioned writes,
//! so a file held in part is a sparse file with holes where blocks are not held.
//!
//! The data file holds bytes only; which blocks are held is the database's `file_blocks` rows.
//! A block is recorded there only after its bytes are durable (written, then `fdatasync`), so a
//! crash in between leaves bytes nobody reads (the block is not held: it is fetched again and
//! overwritten). Every block read is verified against the outboard by the caller, so a damaged
//! or missing data file is reported as corrupt, never served.
//!
//! Everything here is blocking I/O; callers run it under `spawn_blocking`.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::BLOCK_BYTES;
use crate::error::StoreError;

/// A store's blob directory.
#[derive(Clone, Debug)]
pub(crate) struct BlobDir {
    dir: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl BlobDir {
    /// Creates `dir` (and its parents, mode 0700) if missing.
    pub(crate) fn open(dir: PathBuf) -> Result<BlobDir, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("create the blob dir", &dir, e))?;
        if !dir.is_dir() {
            return Err(StoreError::Io(format!(
                "blob dir {} is not a directory",
                dir.display()
            )));
        }
        Ok(BlobDir { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file rows that have a data file here (names `<row>.data`; anything else is left
    /// alone).
    pub(crate) fn rows(&self) -> Result<Vec<i64>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io("list", &self.dir, e))?;
        let mut rows = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io("list", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(row) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".data"))
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|&r| self.path(r).file_name() == Some(name.as_os_str()))
            {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// The data file of file row `row`.
    pub(crate) fn path(&self, row: i64) -> PathBuf {
        self.dir.join(format!("{row}.data"))
    }

    /// Writes `blocks` (index, ciphertext) into row `row`'s data file and makes them durable
    /// (`fdatasync`; and the directory's `fsync` if the file was created).
    pub(crate) fn write(&self, row: i64, blocks: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let path = self.path(row);
        let (file, created) = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| io("create", &path, e))?;
                (f, true)
            }
            Err(e) => return Err(io("open", &path, e)),
        };
        for (index, data) in blocks {
            let offset = index
                .checked_mul(BLOCK_BYTES)
                .ok_or(StoreError::OutOfRange)?;
            file.write_all_at(data, offset)
                .map_err(|e| io("write", &path, e))?;
        }
        file.sync_data().map_err(|e| io("sync", &path, e))?;
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the blob dir", &self.dir, e))?;
        }
        Ok(())
    }

    /// Reads blocks `(index, length)` of row `row`'s data file, unverified. A missing or short
    /// data file is [`StoreError::Corrupt`] (the database says those blocks are held).
    pub(crate) fn read(
        &self,
        row: i64,
        blocks: &[(u64, usize)],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let path = self.path(row);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "data file {} of held blocks is missing",
                    path.display()
                )));
            }
            Err(e) => return Err(io("open", &path, e)),
        };
        // Each block is read into a buffer of its size that is not zeroed first; contiguous
        // blocks need no seek between them.
        let mut out = Vec::with_capacity(blocks.len());
        let mut reader = &file;
        let mut at = None;
        for &(index, len) in blocks {
            let offset = index
                .checked_mul(BLOCK_BYTES)
                .ok_or(StoreError::OutOfRange)?;
            if at != Some(offset) {
                reader
                    .seek(SeekFrom::Start(offset))
                    .map_err(|e| io("seek", &path, e))?;
            }
            let mut data = Vec::with_capacity(len);
            reader
                .take(len as u64)
                .read_to_end(&mut data)
                .map_err(|e| io("read", &path, e))?;
            if data.len() != len {
                return Err(StoreError::Corrupt(format!(
                    "block {index} is past the end of data file {}",
                    path.display()
                )));
            }
            at = Some(offset + len as u64);
            out.push(data);
        }
        Ok(out)
    }

    /// Removes row `row`'s data file (nothing if there is none).
    pub(crate) fn remove(&self, row: i64) -> Result<(), StoreError> {
        let path = self.path(row);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path, e)),
        }
    }
}

/// Runs blocking blob I/O off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("blob I/O task: {e}")))?
}
