//! The client's side of a file, sans IO: the per-file key, chunked encryption and decryption,
//! and the ticket that names a file and carries its key. Nothing here touches a store or the
//! network; the store only ever sees what [`EncryptReader`] produces.
//!
//! A file of `n` plaintext bytes is cut into chunks of [`PLAIN_CHUNK_BYTES`] (the last one
//! shorter, possibly empty: an empty file is one empty chunk), and each chunk is sealed with
//! ChaCha20-Poly1305 under the file's fresh random key. The nonce is the chunk's index (u64 LE)
//! and a flag byte that is 1 on the last chunk only, so chunks cannot be reordered, and a file cut
//! short or extended fails to decrypt at its end. With the 16-byte tag each sealed chunk is
//! exactly one 64 KiB block of ciphertext ([`super::BLOCK_BYTES`]), so plaintext chunk `i` is
//! ciphertext block `i` and a plaintext range maps to the blocks that cover it.

use std::ops::Range;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};

use bech32::{Bech32m, Hrp};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use tokio::io::{AsyncRead, ReadBuf};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{BLOCK_BYTES, FileId, MAX_FILE_BYTES};
use crate::error::StoreError;

/// The AEAD tag on every chunk.
pub const TAG_BYTES: u64 = 16;
/// Plaintext bytes per chunk: a sealed chunk is one ciphertext block.
pub const PLAIN_CHUNK_BYTES: u64 = BLOCK_BYTES - TAG_BYTES;
/// The largest plaintext a file may have (its ciphertext is at most [`MAX_FILE_BYTES`]).
pub const MAX_PLAINTEXT_BYTES: u64 = MAX_FILE_BYTES / BLOCK_BYTES * PLAIN_CHUNK_BYTES;
/// Bound into every chunk's tag, so a chunk means nothing outside a Kith file of this version.
const AAD: &[u8] = b"kith-file-v1";

/// A file's symmetric key: fresh and random for every file, held by the client and the ticket
/// only (never by a store). Zeroed on drop; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; 32]);

impl FileKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
        FileKey(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        FileKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(…)")
    }
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_le_bytes());
    n[8] = u8::from(last);
    *Nonce::from_slice(&n)
}

/// The number of chunks (= ciphertext blocks) of a plaintext of `plain` bytes.
pub fn chunk_count(plain: u64) -> u64 {
    plain.div_ceil(PLAIN_CHUNK_BYTES).max(1)
}

/// The ciphertext size of a plaintext of `plain` bytes.
pub fn ciphertext_size(plain: u64) -> u64 {
    plain + TAG_BYTES * chunk_count(plain)
}

/// The ciphertext blocks that hold plaintext `range` (clamped to a file of `plain` bytes). An
/// empty range needs no block.
pub fn blocks_for_plaintext(plain: u64, range: Range<u64>) -> Range<u64> {
    let end = range.end.min(plain);
    if range.start >= end {
        return 0..0;
    }
    range.start / PLAIN_CHUNK_BYTES..end.div_ceil(PLAIN_CHUNK_BYTES)
}

/// Seals chunk `index` of a file of `chunks` chunks.
pub fn encrypt_chunk(key: &FileKey, index: u64, last: bool, plaintext: &[u8]) -> Vec<u8> {
    debug_assert!(plaintext.len() as u64 <= PLAIN_CHUNK_BYTES);
    key.cipher()
        .encrypt(
            &nonce(index, last),
            Payload {
                msg: plaintext,
                aad: AAD,
            },
        )
        .expect("ChaCha20-Poly1305 seals any chunk of at most 64 KiB")
}

/// Opens block `index` of a file whose plaintext is `plain` bytes long.
pub fn decrypt_block(
    key: &FileKey,
    plain: u64,
    index: u64,
    block: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let chunks = chunk_count(plain);
    if index >= chunks {
        return Err(StoreError::OutOfRange);
    }
    let last = index + 1 == chunks;
    let expected = if last {
        plain - index * PLAIN_CHUNK_BYTES + TAG_BYTES
    } else {
        BLOCK_BYTES
    };
    if block.len() as u64 != expected {
        return Err(StoreError::Decrypt { index });
    }
    key.cipher()
        .decrypt(
            &nonce(index, last),
            Payload {
                msg: block,
                aad: AAD,
            },
        )
        .map_err(|_| StoreError::Decrypt { index })
}

/// Encrypts a plaintext stream as it is read: an [`AsyncRead`] of the file's ciphertext, with
/// at most one chunk of each in memory. [`EncryptReader::plaintext_len`] is the plaintext's
/// size once the reader is exhausted.
pub struct EncryptReader<R> {
    inner: R,
    key: FileKey,
    next_index: u64,
    /// Plaintext read ahead: one byte more than a chunk tells a chunk is not the last.
    plain: Box<[u8]>,
    filled: usize,
    eof: bool,
    /// Sealed bytes not yet handed out.
    out: Vec<u8>,
    out_pos: usize,
    done: bool,
    plaintext_len: u64,
}

impl<R> std::fmt::Debug for EncryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptReader")
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> EncryptReader<R> {
    pub fn new(inner: R, key: FileKey) -> Self {
        EncryptReader {
            inner,
            key,
            next_index: 0,
            plain: vec![0; PLAIN_CHUNK_BYTES as usize + 1].into_boxed_slice(),
            filled: 0,
            eof: false,
            out: Vec::new(),
            out_pos: 0,
            done: false,
            plaintext_len: 0,
        }
    }

    /// Plaintext bytes read so far (the file's size once the reader returned end of file).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    fn seal(&mut self, len: usize, last: bool) -> Result<(), std::io::Error> {
        if self.plaintext_len + len as u64 > MAX_PLAINTEXT_BYTES {
            return Err(std::io::Error::other(StoreError::FileTooLarge));
        }
        self.out = encrypt_chunk(&self.key, self.next_index, last, &self.plain[..len]);
        self.out_pos = 0;
        self.plaintext_len += len as u64;
        self.next_index += 1;
        // Keep the byte read ahead as the start of the next chunk.
        self.plain.copy_within(len..self.filled, 0);
        self.filled -= len;
        self.done = last;
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for EncryptReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            let chunk = PLAIN_CHUNK_BYTES as usize;
            if !this.eof && this.filled <= chunk {
                let mut read = ReadBuf::new(&mut this.plain[this.filled..]);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                let n = read.filled().len();
                if n == 0 {
                    this.eof = true;
                }
                this.filled += n;
                continue;
            }
            if this.eof {
                this.seal(this.filled, true)?;
            } else {
                this.seal(chunk, false)?;
            }
        }
    }
}

/// What a recipient needs to fetch and read a file: its id (the ciphertext's BLAKE3 root), its
/// key and its plaintext size. Printed as `kithfile1…` (bech32m, so a mistyped or truncated
/// ticket is caught). Its `Debug` hides the key; `Display` is the ticket itself, a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: FileId,
    pub key: FileKey,
    /// The plaintext's size in bytes.
    pub size: u64,
}

const TICKET_HRP: Hrp = Hrp::parse_unchecked("kithfile");
const TICKET_VERSION: u8 = 1;
const TICKET_BYTES: usize = 1 + 32 + 32 + 8;

impl Ticket {
    /// The ciphertext's size.
    pub fn ciphertext_size(&self) -> u64 {
        ciphertext_size(self.size)
    }

    /// The ciphertext blocks that hold plaintext `range`.
    pub fn blocks_for(&self, range: Range<u64>) -> Range<u64> {
        blocks_for_plaintext(self.size, range)
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut data = Vec::with_capacity(TICKET_BYTES);
        data.push(TICKET_VERSION);
        data.extend_from_slice(&self.id.0);
        data.extend_from_slice(self.key.as_bytes());
        data.extend_from_slice(&self.size.to_le_bytes());
        let s = bech32::encode::<Bech32m>(TICKET_HRP, &data).expect("a ticket fits bech32m");
        data.zeroize();
        f.write_str(&s)
    }
}

impl FromStr for Ticket {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let s = s.trim();
        if s.len() > 200 {
            return Err(StoreError::InvalidTicket(
                "too long to be a file ticket".into(),
            ));
        }
        let (hrp, mut data) = bech32::decode(s)
            .map_err(|e| StoreError::InvalidTicket(format!("not a kithfile1… ticket: {e}")))?;
        if hrp != TICKET_HRP {
            return Err(StoreError::InvalidTicket(format!(
                "it starts with {hrp}1, expected kithfile1"
            )));
        }
        let parsed = (|| {
            if data.first() != Some(&TICKET_VERSION) {
                return Err("unknown ticket version".to_string());
            }
            if data.len() != TICKET_BYTES {
                return Err(format!("{} bytes, expected {TICKET_BYTES}", data.len()));
            }
            let id = FileId(data[1..33].try_into().expect("32 bytes"));
            let key = FileKey(data[33..65].try_into().expect("32 bytes"));
            let size = u64::from_le_bytes(data[65..73].try_into().expect("8 bytes"));
            if size > MAX_PLAINTEXT_BYTES {
                return Err(format!("file size {size} is larger than the maximum"));
            }
            Ok(Ticket { id, key, size })
        })();
        data.zeroize();
        parsed.map_err(StoreError::InvalidTicket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn encrypt_all(key: &FileKey, plain: &[u8]) -> Vec<u8> {
        let mut r = EncryptReader::new(plain, key.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(r.plaintext_len(), plain.len() as u64);
        out
    }

    fn decrypt_all(key: &FileKey, plain: u64, cipher: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for (i, block) in cipher.chunks(BLOCK_BYTES as usize).enumerate() {
            out.extend(decrypt_block(key, plain, i as u64, block)?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn round_trips_at_every_boundary() {
        let key = FileKey::generate();
        let c = PLAIN_CHUNK_BYTES as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let cipher = encrypt_all(&key, &plain).await;
            assert_eq!(
                cipher.len() as u64,
                ciphertext_size(len as u64),
                "len {len}"
            );
            assert_eq!(
                cipher.len().div_ceil(BLOCK_BYTES as usize) as u64,
                chunk_count(len as u64)
            );
            assert_eq!(decrypt_all(&key, len as u64, &cipher).unwrap(), plain);
        }
    }

    #[tokio::test]
    async fn wrong_key_tampering_truncation_and_reordering_fail() {
        let key = FileKey::generate();
        let c = PLAIN_CHUNK_BYTES as usize;
        let plain = vec![7u8; 3 * c];
        let cipher = encrypt_all(&key, &plain).await;
        let size = plain.len() as u64;
        assert!(matches!(
            decrypt_all(&FileKey::generate(), size, &cipher),
            Err(StoreError::Decrypt { index: 0 })
        ));
        let mut bad = cipher.clone();
        bad[BLOCK_BYTES as usize + 9] ^= 1;
        assert!(matches!(
            decrypt_all(&key, size, &bad),
            Err(StoreError::Decrypt { index: 1 })
        ));
        // Cut after two chunks and claimed to be two chunks long: the second is not the last.
        let two = &cipher[..2 * BLOCK_BYTES as usize];
        assert!(matches!(
            decrypt_all(&key, 2 * c as u64, two),
            Err(StoreError::Decrypt { index: 1 })
        ));
        // A block at another index.
        assert!(decrypt_block(&key, size, 1, &cipher[..BLOCK_BYTES as usize]).is_err());
        let err = decrypt_all(&FileKey::generate(), size, &cipher).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot decrypt block 0: wrong key or altered ciphertext"
        );
    }

    #[test]
    fn plaintext_ranges_map_to_the_blocks_that_hold_them() {
        let c = PLAIN_CHUNK_BYTES;
        assert_eq!(blocks_for_plaintext(10 * c, 0..1), 0..1);
        assert_eq!(blocks_for_plaintext(10 * c, c - 1..c + 1), 0..2);
        assert_eq!(blocks_for_plaintext(10 * c, c..2 * c), 1..2);
        assert_eq!(blocks_for_plaintext(10 * c, 5..5), 0..0);
        assert_eq!(blocks_for_plaintext(3, 0..100), 0..1);
        assert_eq!(blocks_for_plaintext(3, 5..100), 0..0);
    }

    #[test]
    fn tickets_round_trip_and_bad_ones_are_clear_errors() {
        let t = Ticket {
            id: FileId([9; 32]),
            key: FileKey::generate(),
            size: 123_456_789,
        };
        let s = t.to_string();
        assert!(s.starts_with("kithfile1"), "{s}");
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        assert_eq!(format!(" {s}\n").parse::<Ticket>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&hex::encode(t.key.as_bytes())));
        let mut typo = s.clone().into_bytes();
        let at = typo.len() - 5;
        typo[at] = if typo[at] == b'q' { b'p' } else { b'q' };
        let err = String::from_utf8(typo)
            .unwrap()
            .parse::<Ticket>()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid file ticket: not a kithfile1"),
            "{err}"
        );
        let truncated = s[..s.len() - 3].parse::<Ticket>().unwrap_err();
        assert_eq!(truncated.reason(), "invalid_ticket");
        let other = bech32::encode::<Bech32m>(Hrp::parse("kithlink").unwrap(), &[1; 73]).unwrap();
        let err = other.parse::<Ticket>().unwrap_err();
        assert!(err.to_string().contains("expected kithfile1"), "{err}");
        let short = bech32::encode::<Bech32m>(TICKET_HRP, &[1; 10]).unwrap();
        assert!(
            short
                .parse::<Ticket>()
                .unwrap_err()
                .to_string()
                .contains("expected 73")
        );
        assert!("x".repeat(500).parse::<Ticket>().is_err());
    }
}
