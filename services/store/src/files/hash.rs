//! Content addressing of a file's ciphertext: its id is the plain BLAKE3 hash of the ciphertext
//! (the same root bao computes), and every 64 KiB block can be checked on its own against the
//! file's *outboard*, the list of the blocks' BLAKE3 chaining values.
//!
//! A block is 64 BLAKE3 chunks, so every full block is a complete subtree of the BLAKE3 tree and
//! the last (possibly short) block is the right edge of the tree. The tree above the blocks is
//! BLAKE3's own (left subtrees are the largest power of two of chunks), rebuilt from the chaining
//! values with `blake3::hazmat` and checked against the root — so an outboard either reproduces
//! the id exactly or is refused, and then each block is verified by hashing it (SIMD-wide) and
//! comparing with its chaining value. This is bao's verified streaming with a 64 KiB chunk group
//! and the parents sent as their leaves: 32 bytes per 64 KiB (0.05 %) instead of bao's 64 bytes
//! per 1 KiB, and each received block costs one hash call.
//!
//! A file of one block has no interior tree: its outboard is the root itself and the block is
//! verified by hashing it as the root.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use super::{BLOCK_BYTES, FileId, MAX_FILE_BYTES};
use crate::error::StoreError;

/// The number of blocks of a file of `size` ciphertext bytes (`size > 0`).
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_BYTES)
}

/// The length of block `index` of a file of `size` bytes (0 if past the end).
pub fn block_len(size: u64, index: u64) -> usize {
    let start = index.saturating_mul(BLOCK_BYTES);
    size.saturating_sub(start).min(BLOCK_BYTES) as usize
}

/// Block `index`'s chaining value (its subtree's non-root hash), or, for a file of one block,
/// the root.
pub fn block_cv(size: u64, index: u64, data: &[u8]) -> ChainingValue {
    if block_count(size) == 1 {
        return *blake3::hash(data).as_bytes();
    }
    blake3::Hasher::new()
        .set_input_offset(index * BLOCK_BYTES)
        .update(data)
        .finalize_non_root()
}

/// The root (the file id) from the blocks' chaining values of a file of `size` bytes.
pub fn root_from_cvs(size: u64, cvs: &[ChainingValue]) -> Result<FileId, StoreError> {
    if size == 0 || size > MAX_FILE_BYTES {
        return Err(StoreError::Malformed("file size out of range"));
    }
    if cvs.len() as u64 != block_count(size) {
        return Err(StoreError::Malformed(
            "outboard length does not match the file size",
        ));
    }
    if cvs.len() == 1 {
        return Ok(FileId(cvs[0]));
    }
    Ok(FileId(subtree(cvs, size, true)))
}

/// The chaining value (or root) of the subtree made of `cvs`, covering `bytes` bytes.
fn subtree(cvs: &[ChainingValue], bytes: u64, root: bool) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    // More than one block, so more than 64 chunks: the left subtree is a power of two of at
    // least 64 chunks, a whole number of blocks.
    let left_bytes = blake3::hazmat::left_subtree_len(bytes);
    let left_blocks = (left_bytes / BLOCK_BYTES) as usize;
    let left = subtree(&cvs[..left_blocks], left_bytes, false);
    let right = subtree(&cvs[left_blocks..], bytes - left_bytes, false);
    if root {
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

/// Builds a file's outboard and id from its ciphertext, block by block.
#[derive(Default)]
pub struct OutboardBuilder {
    cvs: Vec<ChainingValue>,
    size: u64,
    /// A one-block file's block is hashed as the root, which is only known to be right once no
    /// second block follows: the first block is kept until then.
    first: Option<Vec<u8>>,
}

impl OutboardBuilder {
    /// Adds the next block: every block but the last must be [`BLOCK_BYTES`] long.
    pub fn push(&mut self, block: &[u8]) -> Result<(), StoreError> {
        if block.is_empty() || block.len() as u64 > BLOCK_BYTES {
            return Err(StoreError::Malformed("block length out of range"));
        }
        if !self.size.is_multiple_of(BLOCK_BYTES) {
            return Err(StoreError::Malformed("a short block before the last"));
        }
        let index = self.cvs.len() as u64 + u64::from(self.first.is_some());
        self.size += block.len() as u64;
        if self.size > MAX_FILE_BYTES {
            return Err(StoreError::FileTooLarge);
        }
        if index == 0 {
            self.first = Some(block.to_vec());
            return Ok(());
        }
        if let Some(first) = self.first.take() {
            self.cvs
                .push(blake3::Hasher::new().update(&first).finalize_non_root());
        }
        self.cvs.push(
            blake3::Hasher::new()
                .set_input_offset(index * BLOCK_BYTES)
                .update(block)
                .finalize_non_root(),
        );
        Ok(())
    }

    /// The id, the ciphertext size and the outboard. Fails on an empty file.
    pub fn finish(mut self) -> Result<(FileId, u64, Vec<ChainingValue>), StoreError> {
        if let Some(first) = self.first.take() {
            self.cvs.push(*blake3::hash(&first).as_bytes());
        }
        let id = root_from_cvs(self.size, &self.cvs)?;
        Ok((id, self.size, self.cvs))
    }
}

/// The outboard as stored and sent: the chaining values back to back.
pub fn encode_cvs(cvs: &[ChainingValue]) -> Vec<u8> {
    cvs.concat()
}

/// The inverse of [`encode_cvs`].
pub fn decode_cvs(bytes: &[u8]) -> Result<Vec<ChainingValue>, StoreError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(StoreError::Malformed(
            "outboard is not a whole number of hashes",
        ));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn outboard(bytes: &[u8]) -> (FileId, u64, Vec<ChainingValue>) {
        let mut b = OutboardBuilder::default();
        for block in bytes.chunks(BLOCK_BYTES as usize) {
            b.push(block).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn the_id_is_the_blake3_hash_of_the_ciphertext() {
        let b = BLOCK_BYTES as usize;
        for len in [
            1,
            1023,
            1024,
            1025,
            b - 1,
            b,
            b + 1,
            2 * b,
            2 * b + 1,
            3 * b - 1,
            3 * b,
            5 * b + 17,
            8 * b,
            8 * b + 1,
            13 * b + 1000,
            33 * b,
        ] {
            let bytes = data(len);
            let (id, size, cvs) = outboard(&bytes);
            assert_eq!(size, len as u64);
            assert_eq!(id.0, *blake3::hash(&bytes).as_bytes(), "len {len}");
            assert_eq!(cvs.len() as u64, block_count(size));
            for (i, block) in bytes.chunks(b).enumerate() {
                assert_eq!(
                    block_cv(size, i as u64, block),
                    cvs[i],
                    "len {len} block {i}"
                );
                assert_eq!(block_len(size, i as u64), block.len());
            }
        }
    }

    #[test]
    fn altered_outboards_and_blocks_are_refused() {
        let bytes = data(5 * BLOCK_BYTES as usize + 3);
        let (id, size, cvs) = outboard(&bytes);
        for i in 0..cvs.len() {
            let mut bad = cvs.clone();
            bad[i][5] ^= 1;
            assert_ne!(root_from_cvs(size, &bad).unwrap(), id);
        }
        let mut swapped = cvs.clone();
        swapped.swap(0, 1);
        assert_ne!(root_from_cvs(size, &swapped).unwrap(), id);
        assert!(root_from_cvs(size, &cvs[1..]).is_err());
        assert!(root_from_cvs(size + BLOCK_BYTES, &cvs).is_err());
        // A block moved to another index does not verify there.
        let b0 = &bytes[..BLOCK_BYTES as usize];
        assert_ne!(block_cv(size, 1, b0), cvs[1]);
        let mut flipped = b0.to_vec();
        flipped[100] ^= 0x80;
        assert_ne!(block_cv(size, 0, &flipped), cvs[0]);
    }

    #[test]
    fn short_blocks_before_the_last_and_empty_files_are_refused() {
        let mut b = OutboardBuilder::default();
        b.push(&[1; 10]).unwrap();
        assert!(b.push(&[1; 10]).is_err());
        assert!(OutboardBuilder::default().finish().is_err());
        assert!(OutboardBuilder::default().push(&[]).is_err());
    }
}
