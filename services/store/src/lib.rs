//! Kith's store: signed, append-only logs of ciphertext that anyone holding only the writer's
//! public key can verify.
//!
//! Module map, in reading order:
//!
//! - [`log`]: sans IO. One log per writer, keyed by the writer's ed25519 public key
//!   ([`log::LogKey`]). Entries are opaque bytes (ciphertext: the store never decrypts). A Merkle
//!   tree in hypercore's flat-tree layout with domain-separated BLAKE3 ([`log::tree`]); roots
//!   signed by the writer through a [`log::RootSigner`] ([`log::root`]); proofs of entries,
//!   ranges and nodes ([`log::proof`]); the set of entries a sparse holder has
//!   ([`log::RangeSet`]); fork evidence ([`log::ForkEvidence`]).
//! - [`backend`]: persistence with sqlx on SQLite (the embedded default) or PostgreSQL, chosen by
//!   URL. Appends are one transaction each (entries, tree nodes and the new signed root), and are
//!   acknowledged only after commit. Remote entries are stored only after their proof verified.
//!   [`backend::copy_store`] moves everything from one store to another, verifying on the way.
//!   Mirrored logs (policy, quota, eviction mark) are a table of their own; eviction drops the
//!   oldest entry bytes of a mirrored log and keeps its tree nodes. [`Store::subscribe`]
//!   reports every committed change.
//! - [`mailbox`]: small encrypted records kept for an offline recipient (48 h by default), read
//!   and removed only with the recipient's signature; their protocol `kith/mailbox/1`.
//! - [`files`]: large files. The client's side, sans IO: a per-file key, chunked
//!   ChaCha20-Poly1305 ([`files::EncryptReader`], [`files::decrypt_block`]) and the
//!   `kithfile1…` [`files::Ticket`]. The store's side: the id is the BLAKE3 hash of the
//!   ciphertext, every 64 KiB block verifiable against the outboard ([`files::hash`]); files whole
//!   or in part, their blocks' bytes in data files in a blob dir and the rest in the database
//!   ([`Store::open_with_blob_dir`], [`Store::import_file`], [`Store::read_file_blocks`], …); and
//!   `kith/file/1` ([`files::serve`], [`files::fetch`]): verified on arrival, stored as it
//!   streams, resumed from what is held.
//! - [`net`]: what the store needs from the network ([`net::Network`]: open a stream to a peer
//!   by protocol, listen, announce and look up topics), so it depends on no transport; the
//!   `kith` binary implements it over the transport service.
//! - [`replicate`]: replication between peers over `kith/store/1` ([`replicate::wire`]: the
//!   messages; [`replicate::session`]: one symmetric, pipelined session), and the
//!   [`replicate::Replicator`] a node runs: serving, syncing and following logs by their DHT
//!   topics, and blind mirrors within quotas.
//! - [`topic`]: rooms' discovery topics — what is derived from a room's secret topic (never
//!   stored or sent itself): its key, public id, DHT key and capabilities, and the writers'
//!   signed tags putting logs in a room. Replication finds, serves and mirrors logs by topic.
//! - [`api`], [`service`], [`grpc`], [`daemon`]: the service — [`StoreApi`] in-process
//!   ([`StoreService`]: writer logs signed with the identity's delegated keys through
//!   [`NodeKeys`], mailboxes served on the network) and over gRPC (`kith.store.v1.Store`), and
//!   the server options of `kith serve store`.
//! - [`error`]: the one error type, [`StoreError`].

pub mod api;
pub mod backend;
pub mod daemon;
pub mod error;
pub mod files;
pub mod grpc;
pub mod log;
pub mod mailbox;
pub mod net;
pub mod replicate;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod topic;

pub use api::{ApiError, StoreApi, StoreClient};
pub use backend::{LogInfo, LogUpdate, PutOutcome, Stats, Store};
pub use error::StoreError;
pub use service::{NodeKeys, StoreConfig, StoreService};
