//! Signed append-only logs, sans IO: the tree, signed roots, proofs, held-entry sets and fork
//! evidence. Nothing here touches a disk, a socket or a clock; the [`crate::backend`] persists
//! what this module computes, and replication will carry it over the network.
//!
//! - [`tree`]: the flat-tree layout and hashing, and the [`tree::Appender`] a writer uses.
//! - [`root`]: [`LogKey`], [`SignedRoot`] and the [`RootSigner`] trait.
//! - [`proof`]: proofs of entries, ranges and nodes against a signed root.
//! - [`ranges`]: [`RangeSet`], the compact set of entries a holder has.
//! - [`fork`]: [`ForkEvidence`], two signed statements by one writer that cannot both be true.

pub mod fork;
pub mod proof;
pub mod ranges;
pub mod root;
pub mod tree;

pub use fork::{ForkEvidence, NodeClaim};
pub use proof::{Proof, Targets, Verified};
pub use ranges::RangeSet;
pub use root::{Ed25519Signer, LogKey, RootSigner, SignedRoot, UnsignedRoot};
pub use tree::{Hash, Node};

/// The largest entry the store accepts, in bytes. Entries are ciphertext of chat messages and
/// file chunks; anything bigger is refused before it touches the tree.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// The most entries one append or one received range may carry.
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// The longest log: 2^62 entries, so every flat-tree index (below `2 × length`) and every span
/// fits in a u64 with room to spare. A signed root claiming more is refused on decoding.
pub const MAX_LOG_LENGTH: u64 = 1 << 62;
