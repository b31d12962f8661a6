//! Large files: chunked, encrypted by the client with a per-file key, content-addressed by the
//! BLAKE3 root of their ciphertext, stored (whole or in part: block data in a data file per file
//! in the store's blob dir, the rest in its database), and moved
//! between stores over `kith/file/1` with every 64 KiB block verified on arrival.
//!
//! - [`crypto`]: the client's side, sans IO: [`FileKey`], [`EncryptReader`] (plaintext stream →
//!   ciphertext stream), [`decrypt_block`], and the [`Ticket`] (`kithfile1…`: id, key, size).
//!   The store never sees a key.
//! - [`hash`]: the file id (`blake3::hash` of the ciphertext) and the outboard (the blocks'
//!   chaining values) that lets each block be verified on its own.
//! - `blobs`: the data files (one sparse file per file, synced before blocks are recorded).
//! - [`store`]: files in the [`Store`](crate::Store): import a ciphertext stream,
//!   read verified blocks, held blocks (sparse), list, delete, stats.
//! - [`protocol`]: [`serve`] a peer's request, [`fetch`] from a peer (resuming from what is held).
//!
//! For a client: [`put_plaintext`] encrypts a plaintext stream under a fresh key into the store
//! and returns the [`Ticket`] to print; a recipient parses the ticket, [`fetch`]es the file from
//! a holder (`0..u64::MAX`, or [`Ticket::blocks_for`] a plaintext range) into its own store, and
//! [`read_plaintext`] writes the plaintext, or a range of it. Both take a progress callback
//! (`put`: plaintext bytes read; `fetch`: [`FetchProgress`]). A holder runs [`serve`] on every
//! stream that arrives on [`ALPN`]; a mirror hosts a file by fetching it.

pub(crate) mod blobs;
pub mod crypto;
pub mod hash;
pub mod protocol;
pub mod store;

pub use crypto::{EncryptReader, FileKey, Ticket, decrypt_block};
pub use protocol::{ALPN, FetchProgress, FetchReport, fetch, serve};
pub use store::{FileInfo, FileStats, put_plaintext, read_plaintext};

/// Ciphertext bytes per block: the unit of storage, verification and transfer. 64 BLAKE3 chunks,
/// and one sealed plaintext chunk ([`crypto::PLAIN_CHUNK_BYTES`] + the tag).
pub const BLOCK_BYTES: u64 = 64 * 1024;

/// The largest ciphertext a file may have: 16 GiB (an outboard of at most 8 MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 30;

/// A file's id: the BLAKE3 hash of its whole ciphertext. Printed as hex.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileId(pub [u8; 32]);

impl FileId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl std::str::FromStr for FileId {
    type Err = crate::StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut id)
            .map_err(|_| crate::StoreError::Malformed("a file id is 64 hex digits"))?;
        Ok(FileId(id))
    }
}
