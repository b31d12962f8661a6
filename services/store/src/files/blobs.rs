//! File block data on disk: one data file per file row, `<blob dir>/<row>.data`, each block's
//! ciphertext at its natural offset (block `i` at `i × 64 KiB`), written with positioned writes,
//! so a file held in part is a sparse file with holes where blocks are not held.
//!
//! The data file holds bytes only; which blocks are held is the database's `file_blocks` rows.
//! A block is recorded there only after its bytes are durable (written, then `fdatasync`), so a
//! crash in between leaves bytes nobody reads (the block is not held: it is fetched again and
//! overwritten). Blocks read here are unverified: a local read verifies them against the
//! outboard, and a fetcher verifies every block a holder serves, so damaged bytes are refused
//! wherever they go; a missing or short data file is reported as corrupt.
//!
//! Blocks whose buffers are aligned (see [`block_buf`]) are written with direct I/O
//! (`O_DIRECT`): a contiguous run of them in one `pwritev`, straight from their buffers to the
//! disk, with no copy into the page cache and no write-back later (BENCHMARKS.md has what that
//! saved a fetch on this project's machine). Other blocks (a file's
//! short last block, unaligned buffers) and file systems without direct I/O (tmpfs) take the
//! buffered path; `fdatasync` follows either way.
//!
//! Everything here is blocking I/O that callers run under `spawn_blocking`, except
//! [`BlockReader::read`], which reads what the page cache holds on the caller's thread and
//! only the rest on the blocking pool.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use rustix::io::ReadWriteFlags;

use super::BLOCK_BYTES;
use crate::error::StoreError;

/// The alignment of block buffers, and of the offsets and lengths of direct writes.
pub(crate) const ALIGN: usize = 4096;

/// Block buffers put back after use, for the next block: a transfer takes and frees 64 KiB
/// buffers at a high rate, and fresh ones from the allocator cost a page fault per 4 KiB each
/// time it has given their memory back to the kernel. Process-wide, at most
/// [`POOL_BUFFERS`] kept.
static POOL: Mutex<Vec<BytesMut>> = Mutex::new(Vec::new());

/// Buffers the pool keeps (16 MiB).
const POOL_BUFFERS: usize = 256;

fn pooled() -> Option<BytesMut> {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).pop()
}

/// An empty buffer with room for `len` bytes, its start aligned for direct I/O: from the pool
/// for up to a block, else new.
pub(crate) fn block_buf(len: usize) -> BytesMut {
    if len <= BLOCK_BYTES as usize
        && let Some(mut buf) = pooled()
    {
        buf.clear();
        return buf;
    }
    let mut buf = BytesMut::with_capacity(len.max(BLOCK_BYTES as usize) + ALIGN);
    let skip = buf.as_ptr().align_offset(ALIGN);
    buf.put_bytes(0, skip);
    buf.advance(skip);
    buf
}

/// A buffer of `len` bytes to read into (what they hold before is unspecified: earlier bytes
/// of a pooled buffer, or zeros).
fn filled_buf(len: usize) -> BytesMut {
    let mut buf = (len <= BLOCK_BYTES as usize)
        .then(pooled)
        .flatten()
        .unwrap_or_else(|| block_buf(len));
    buf.resize(len, 0);
    buf
}

/// Puts block buffers back in the pool (those that can hold a block, aligned, while it has
/// room); the rest are freed.
pub(crate) fn recycle(bufs: impl IntoIterator<Item = BytesMut>) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    for buf in bufs {
        if pool.len() >= POOL_BUFFERS {
            break;
        }
        if buf.capacity() >= BLOCK_BYTES as usize && buf.as_ptr().align_offset(ALIGN) == 0 {
            pool.push(buf);
        }
    }
}

/// A block buffer that goes back to the pool when the last [`Bytes`] made of it is dropped.
struct Pooled(BytesMut);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        recycle([std::mem::take(&mut self.0)]);
    }
}

/// `buf` as [`Bytes`] to hand over (to a stream that keeps it until the peer acknowledges it),
/// its buffer back in the pool after.
pub(crate) fn pooled_bytes(buf: BytesMut) -> Bytes {
    Bytes::from_owner(Pooled(buf))
}

/// Whether `data` can be written directly: its start and length aligned.
fn direct_ok(data: &[u8]) -> bool {
    data.as_ptr().align_offset(ALIGN) == 0 && data.len().is_multiple_of(ALIGN) && !data.is_empty()
}

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
    /// (`fdatasync`; and the directory's `fsync` if the file was created). Runs of contiguous
    /// aligned blocks go with direct I/O where the file system has it.
    #[cfg(test)]
    pub(crate) fn write<B: AsRef<[u8]>>(
        &self,
        row: i64,
        blocks: &[(u64, B)],
    ) -> Result<(), StoreError> {
        let created = self.write_unsynced(row, blocks)?;
        self.sync(row, created)
    }

    /// Makes what was written to row `row`'s data file durable: `fdatasync`, and the
    /// directory's `fsync` too if `created` (one of those writes created the file).
    pub(crate) fn sync(&self, row: i64, created: bool) -> Result<(), StoreError> {
        let path = self.path(row);
        File::open(&path)
            .and_then(|f| f.sync_data())
            .map_err(|e| io("sync", &path, e))?;
        if created {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("sync the blob dir", &self.dir, e))?;
        }
        Ok(())
    }

    /// [`Self::write`] without the sync: whether it created the data file (a later
    /// [`Self::sync`] must then sync the directory too).
    pub(crate) fn write_unsynced<B: AsRef<[u8]>>(
        &self,
        row: i64,
        blocks: &[(u64, B)],
    ) -> Result<bool, StoreError> {
        if blocks.is_empty() {
            return Ok(false);
        }
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
        // A second descriptor for direct writes, where the file system allows them.
        let direct = if blocks.iter().any(|(_, d)| direct_ok(d.as_ref())) {
            OpenOptions::new()
                .write(true)
                .custom_flags(OFlag::O_DIRECT.bits())
                .open(&path)
                .ok()
        } else {
            None
        };
        let mut at = 0;
        while at < blocks.len() {
            let (index, data) = (blocks[at].0, blocks[at].1.as_ref());
            let offset = index
                .checked_mul(BLOCK_BYTES)
                .ok_or(StoreError::OutOfRange)?;
            // The run of aligned blocks that starts here, each at the offset after the last.
            let mut run = 0;
            if direct.is_some() {
                while at + run < blocks.len()
                    && blocks[at + run].0 == index + run as u64
                    && direct_ok(blocks[at + run].1.as_ref())
                    && (run == 0 || blocks[at + run - 1].1.as_ref().len() == BLOCK_BYTES as usize)
                {
                    run += 1;
                }
            }
            match (&direct, run) {
                (Some(direct), 1..) => {
                    let parts: Vec<&[u8]> = blocks[at..at + run]
                        .iter()
                        .map(|(_, d)| d.as_ref())
                        .collect();
                    write_direct(direct, &file, &parts, offset)
                        .map_err(|e| io("write", &path, e))?;
                    at += run;
                }
                _ => {
                    file.write_all_at(data, offset)
                        .map_err(|e| io("write", &path, e))?;
                    at += 1;
                }
            }
        }
        Ok(created)
    }

    /// Opens row `row`'s data file to read blocks from. A missing one is
    /// [`StoreError::Corrupt`] (the database says blocks of it are held).
    pub(crate) fn reader(&self, row: i64) -> Result<BlockReader, StoreError> {
        let path = self.path(row);
        match File::open(&path) {
            Ok(file) => Ok(BlockReader {
                file: Arc::new(file),
                path: path.into(),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::Corrupt(format!(
                "data file {} of held blocks is missing",
                path.display()
            ))),
            Err(e) => Err(io("open", &path, e)),
        }
    }

    /// Reads blocks `(index, length)` of row `row`'s data file, unverified, into pooled
    /// buffers. A missing or short data file is [`StoreError::Corrupt`] (the database says
    /// those blocks are held).
    pub(crate) fn read(
        &self,
        row: i64,
        blocks: &[(u64, usize)],
    ) -> Result<Vec<BytesMut>, StoreError> {
        let reader = self.reader(row)?;
        blocks
            .iter()
            .map(|&(index, len)| {
                let mut data = filled_buf(len);
                reader.read_at(&mut data, index, 0)?;
                Ok(data)
            })
            .collect()
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

/// A data file open to read blocks from one at a time (see [`BlobDir::reader`]). Cheap to
/// clone; clones share the descriptor.
#[derive(Clone, Debug)]
pub(crate) struct BlockReader {
    file: Arc<File>,
    path: Arc<Path>,
}

impl BlockReader {
    /// Reads block `index` (`len` bytes), unverified, into a pooled buffer, without making
    /// the caller wait for the disk: what the page cache holds is read here at once
    /// (`preadv2` with `RWF_NOWAIT`), and only what it lacks is read on the blocking pool. A
    /// holder reads each block this way just before it sends it, so the bytes are still in
    /// the CPU's cache when QUIC copies them into packets. Past the file's end is
    /// [`StoreError::Corrupt`].
    pub(crate) async fn read(&self, index: u64, len: usize) -> Result<BytesMut, StoreError> {
        let mut data = filled_buf(len);
        let offset = block_offset(index)?;
        let mut got = 0;
        while got < len {
            let mut buf = [IoSliceMut::new(&mut data[got..])];
            match rustix::io::preadv2(
                &*self.file,
                &mut buf,
                offset + got as u64,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => return Err(self.past_end(index)),
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                // Not in the page cache (`EAGAIN`), no such reads on this file system, or an
                // error the blocking read below meets again and reports.
                Err(_) => break,
            }
        }
        if got == len {
            return Ok(data);
        }
        let reader = self.clone();
        blocking(move || {
            reader.read_at(&mut data, index, got)?;
            Ok(data)
        })
        .await
    }

    /// Fills `data[from..]` with block `index`'s bytes from `from` on, waiting for the disk.
    fn read_at(&self, data: &mut [u8], index: u64, from: usize) -> Result<(), StoreError> {
        let offset = block_offset(index)? + from as u64;
        match self.file.read_exact_at(&mut data[from..], offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(self.past_end(index)),
            Err(e) => Err(io("read", &self.path, e)),
        }
    }

    fn past_end(&self, index: u64) -> StoreError {
        StoreError::Corrupt(format!(
            "block {index} is past the end of data file {}",
            self.path.display()
        ))
    }
}

fn block_offset(index: u64) -> Result<u64, StoreError> {
    index.checked_mul(BLOCK_BYTES).ok_or(StoreError::OutOfRange)
}

/// Writes `parts` contiguously from `offset`: with direct I/O (`pwritev` on `direct`) while the
/// kernel takes whole aligned pieces; what a short or refused direct write leaves goes through
/// the buffered descriptor `file`.
fn write_direct(
    direct: &File,
    file: &File,
    parts: &[&[u8]],
    mut offset: u64,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let aligned = rest
            .iter()
            .all(|s| s.as_ptr().align_offset(ALIGN) == 0 && s.len().is_multiple_of(ALIGN));
        let at =
            i64::try_from(offset).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
        let written = if aligned && offset.is_multiple_of(ALIGN as u64) {
            match nix::sys::uio::pwritev(direct, &rest[..rest.len().min(1024)], at) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => Some(n),
                Err(Errno::EINTR) => continue,
                // The file system wants another alignment: buffered writes do it.
                Err(Errno::EINVAL) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        match written {
            Some(n) => {
                IoSlice::advance_slices(&mut rest, n);
                offset += n as u64;
            }
            None => {
                for s in rest.iter() {
                    file.write_all_at(s, offset)?;
                    offset += s.len() as u64;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs blocking blob I/O off the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("blob I/O task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, seed: u8, aligned: bool) -> BytesMut {
        let mut buf = if aligned {
            block_buf(len)
        } else {
            // One byte in, so the start is not aligned.
            let mut b = BytesMut::with_capacity(len + 1);
            b.put_u8(0);
            b.advance(1);
            b
        };
        buf.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        buf
    }

    #[test]
    fn block_buffers_are_aligned_and_hold_a_block() {
        for len in [1, 4096, BLOCK_BYTES as usize] {
            let buf = block_buf(len);
            assert_eq!(buf.as_ptr().align_offset(ALIGN), 0);
            assert!(buf.capacity() >= len);
            assert!(buf.is_empty());
        }
    }

    /// Direct runs, a gap, an unaligned buffer and a short last block, in one batch and then
    /// over again: everything reads back as written, wherever the dir is (tmpfs has no direct
    /// I/O and takes the buffered path).
    fn writes_read_back(dir: &Path) {
        let blobs = BlobDir::open(dir.join("blobs")).unwrap();
        let full = BLOCK_BYTES as usize;
        let blocks: Vec<(u64, BytesMut)> = vec![
            (0, filled(full, 1, true)),
            (1, filled(full, 2, true)),
            (2, filled(full, 3, true)),
            (4, filled(full, 4, true)),
            (5, filled(full, 5, false)),
            (6, filled(full, 6, true)),
            (7, filled(1000, 7, true)),
        ];
        blobs.write(3, &blocks).unwrap();
        let want: Vec<(u64, usize)> = blocks.iter().map(|(i, d)| (*i, d.len())).collect();
        let read = blobs.read(3, &want).unwrap();
        for ((_, wrote), got) in blocks.iter().zip(&read) {
            assert_eq!(&wrote[..], &got[..]);
        }
        let len = std::fs::metadata(blobs.path(3)).unwrap().len();
        assert_eq!(len, 7 * BLOCK_BYTES + 1000);
        // The hole reads as zeros; the data file holds bytes only, the rows say what is held.
        assert!(
            blobs.read(3, &[(3, full)]).unwrap()[0]
                .iter()
                .all(|&b| b == 0)
        );
        // Over again, with other bytes, filling the hole: the new bytes win.
        let again: Vec<(u64, BytesMut)> = (1..4)
            .map(|i| (i, filled(full, 40 + i as u8, true)))
            .collect();
        blobs.write(3, &again).unwrap();
        let got = blobs.read(3, &[(1, full), (2, full), (3, full)]).unwrap();
        for ((_, wrote), got) in again.iter().zip(&got) {
            assert_eq!(&wrote[..], &got[..]);
        }
        // A data file cut short in block 2: reading through it is corrupt, naming that block;
        // the blocks before it still read.
        let file = OpenOptions::new().write(true).open(blobs.path(3)).unwrap();
        file.set_len(2 * BLOCK_BYTES + 5).unwrap();
        let err = blobs
            .read(3, &[(0, full), (1, full), (2, full), (3, full)])
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains("block 2 ")),
            "{err:?}"
        );
        assert_eq!(
            &blobs.read(3, &[(1, full)]).unwrap()[0][..],
            &again[0].1[..]
        );
        // And gone.
        blobs.remove(3).unwrap();
        let err = blobs.read(3, &[(0, full)]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }

    /// The runtime-side reader: from the page cache at once, and from the disk (through the
    /// blocking pool) once the file's pages are dropped; a short file is corrupt.
    async fn reader_reads_cached_and_cold(dir: &Path) {
        let blobs = BlobDir::open(dir.join("blobs")).unwrap();
        let full = BLOCK_BYTES as usize;
        let blocks: Vec<(u64, BytesMut)> = (0..4)
            .map(|i| (i, filled(full, i as u8 + 1, true)))
            .chain([(4, filled(100, 9, false))])
            .collect();
        blobs.write(5, &blocks).unwrap();
        let reader = blobs.reader(5).unwrap();
        let read_all = || async {
            let mut out = Vec::new();
            for (i, data) in &blocks {
                out.push((*i, reader.read(*i, data.len()).await.unwrap()));
            }
            out
        };
        assert_eq!(read_all().await, blocks);
        // Dropped from the page cache (clean after the sync), so the reads go to the disk.
        nix::fcntl::posix_fadvise(
            &*reader.file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .unwrap();
        assert_eq!(read_all().await, blocks);
        // Cut short in block 3: it is corrupt, named; block 2 still reads.
        let file = OpenOptions::new().write(true).open(blobs.path(5)).unwrap();
        file.set_len(3 * BLOCK_BYTES + 7).unwrap();
        let err = reader.read(3, full).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(why) if why.contains("block 3 ")),
            "{err:?}"
        );
        assert_eq!(reader.read(2, full).await.unwrap(), blocks[2].1);
        blobs.remove(5).unwrap();
        assert!(matches!(blobs.reader(5), Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn the_reader_reads_from_the_page_cache_and_from_disk() {
        reader_reads_cached_and_cold(tempfile::tempdir().unwrap().path()).await;
        reader_reads_cached_and_cold(tempfile::tempdir_in("/dev/shm").unwrap().path()).await;
    }

    #[test]
    fn direct_and_buffered_writes_read_back_on_disk() {
        writes_read_back(tempfile::tempdir().unwrap().path());
    }

    #[test]
    fn writes_read_back_on_tmpfs_without_direct_io() {
        writes_read_back(tempfile::tempdir_in("/dev/shm").unwrap().path());
    }
}
