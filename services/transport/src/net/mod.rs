//! The node's network layer under QUIC: one UDP socket shared by QUIC, the DHT, probes and
//! relaying, and the per-peer paths (direct or relayed) that QUIC rides on unawares.
//!
//! Read in this order: [`frame`] (what shares the socket and how it is told apart), [`paths`]
//! (virtual peer addresses and routes), [`relay`] (relaying for others, with limits), [`mux`]
//! (the socket quinn sees).

pub mod frame;
pub mod mux;
pub mod paths;
pub mod relay;

pub use frame::{Frame, RelayRegistration};
pub use mux::{Impairment, MuxSocket, MuxStats, NetEvent};
pub use paths::{DirectPath, PathTable, PeerPath, Route};
pub use relay::{RelayConfig, RelayServer, RelayStats};
