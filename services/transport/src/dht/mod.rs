//! Kith's Kademlia DHT, independent of the network.
//!
//! Everything but [`driver`] is sans-IO: no sockets, no clock, no tasks. A driver (the in-process
//! [`sim`], or [`driver`] on the UDP socket shared with QUIC) owns time, transaction ids and
//! datagrams, and feeds them to these state machines, so the same code is tested at scale in the
//! simulator and runs unchanged on the wire.
//!
//! Read in this order:
//! - [`id`]: 256-bit ids (BLAKE3 of a node's key), the XOR metric, topic keys.
//! - [`routing`]: the k-bucket routing table with ping-the-oldest eviction, refresh bookkeeping,
//!   prefix diversity limits against eclipse attacks, and snapshots that survive restarts.
//! - [`lookup`]: the parallel iterative lookup as a state machine.
//! - [`record`]: signed peer records and the bounded store of announced records.
//! - [`message`]: the wire messages and their bounded binary encoding.
//! - [`rpc`]: the responder side (answers, address tokens and the no-amplification rule) and
//!   matching responses to requests.
//! - [`sim`]: the virtual network the simulation benchmark and tests run on.
//! - [`driver`]: the DHT on the wire: one task running all of the above on the node's shared
//!   socket, and the [`Dht`] handle (bootstrap, lookups, announce, get_peers, publish_self).

pub mod driver;
pub mod id;
pub mod lookup;
pub mod message;
pub mod record;
pub mod routing;
pub mod rpc;
pub mod sim;

pub use driver::{Dht, DhtConfig, DhtError, DhtStatus};
pub use id::{Distance, NodeId, topic_key};
pub use lookup::{LookupConfig, LookupOutcome, LookupState};
pub use message::{DecodeError, DhtMessage, EncodeError, MessageBody, Token};
pub use record::{PeerRecord, RecordError, RecordStore, StoreConfig};
pub use routing::{
    Contact, InsertOutcome, Refusal, RestoreReport, RoutingConfig, RoutingSnapshot, RoutingTable,
    SnapshotError,
};
pub use rpc::{PendingRequests, Responder, TokenIssuer};
