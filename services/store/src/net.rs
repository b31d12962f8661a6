//! What the store needs from the network, as a trait, so the store depends on no transport.
//!
//! Replication, mailboxes and files speak their own protocols (by ALPN) over bidirectional byte
//! streams between authenticated peers. The `kith` binary implements [`Network`] over the
//! transport service (in-process or over gRPC); tests use [`MemoryNetwork`] (behind the
//! `testing` feature), whose streams are in-memory pipes.

#[cfg(feature = "testing")]
use std::collections::HashMap;
#[cfg(feature = "testing")]
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kith_service::stream::BoxChunkWrite;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::error::StoreError;

/// A peer: the transport's public key (its node id).
pub type PeerId = [u8; 32];

/// A DHT topic key (the caller derives it; see [`log_topic`]).
pub type Topic = [u8; 32];

/// A bidirectional stream to an authenticated peer, split in halves. Shutting `send` down
/// finishes our direction; `recv` ends when the peer finished its. `send` takes owned chunks
/// without a copy where the stream is QUIC ([`kith_service::stream::ChunkWrite`]).
pub struct PeerChannel {
    pub peer: PeerId,
    pub send: BoxChunkWrite,
    pub recv: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel")
            .field("peer", &hex::encode(self.peer))
            .finish_non_exhaustive()
    }
}

/// Streams peers open on a protocol this node serves; dropping it stops serving.
pub type Incoming = mpsc::Receiver<PeerChannel>;

/// The network as the store sees it.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// This node's own peer id.
    fn local_peer(&self) -> PeerId;
    /// Opens a stream to `peer` speaking `alpn` (connecting first if needed).
    async fn open(&self, peer: PeerId, alpn: &str) -> Result<PeerChannel, StoreError>;
    /// Serves `alpn`: every stream a peer opens on it arrives on the returned receiver.
    async fn listen(&self, alpn: &str) -> Result<Incoming, StoreError>;
    /// Announces this node under `topic`.
    async fn announce(&self, topic: Topic) -> Result<(), StoreError>;
    /// The peers announced under `topic` (without this node).
    async fn lookup(&self, topic: Topic) -> Result<Vec<PeerId>, StoreError>;
}

/// The DHT topic under which holders of a log announce themselves: a keyed hash of the log's
/// key, so the DHT learns neither the key nor which log a topic is for without knowing the key.
pub fn log_topic(key: &crate::log::LogKey) -> Topic {
    blake3::derive_key("kith-store log topic v1", key.as_bytes())
}

/// The DHT topic under which holders of a room's logs announce themselves: derived from what the
/// store keeps of the room's discovery topic ([`crate::topic::TopicKey`], itself one-way derived
/// from the topic) under a context of its own, so the DHT sees neither the topic nor anything
/// that proves knowledge of it.
pub fn room_topic(topic: &crate::topic::TopicKey) -> Topic {
    blake3::derive_key("kith-store room topic v1", topic.as_bytes())
}

/// The DHT topic under which holders of a file announce themselves (a keyed hash of its id).
pub fn file_topic(id: &crate::files::FileId) -> Topic {
    blake3::derive_key("kith-store file topic v1", id.as_bytes())
}

/// An in-memory network for tests: peers are registered on a shared hub; streams are
/// `tokio::io::duplex` pipes; topics are a shared map.
#[cfg(feature = "testing")]
#[derive(Clone)]
pub struct MemoryNetwork {
    me: PeerId,
    hub: Arc<Mutex<Hub>>,
}

#[cfg(feature = "testing")]
#[derive(Default)]
struct Hub {
    listeners: HashMap<(PeerId, String), mpsc::Sender<PeerChannel>>,
    topics: HashMap<Topic, Vec<PeerId>>,
    /// Peers cut off from the network (tests of an offline writer).
    offline: std::collections::HashSet<PeerId>,
}

#[cfg(feature = "testing")]
impl MemoryNetwork {
    /// A new, empty network with one peer on it.
    pub fn new(me: PeerId) -> Self {
        MemoryNetwork {
            me,
            hub: Arc::default(),
        }
    }

    /// Another peer on the same network.
    pub fn join(&self, me: PeerId) -> Self {
        MemoryNetwork {
            me,
            hub: self.hub.clone(),
        }
    }

    /// Takes a peer off the network (or back on): streams to or from it fail to open.
    pub fn set_offline(&self, peer: PeerId, offline: bool) {
        let mut hub = self.hub.lock().unwrap();
        if offline {
            hub.offline.insert(peer);
        } else {
            hub.offline.remove(&peer);
        }
    }
}

#[cfg(feature = "testing")]
#[async_trait]
impl Network for MemoryNetwork {
    fn local_peer(&self) -> PeerId {
        self.me
    }

    async fn open(&self, peer: PeerId, alpn: &str) -> Result<PeerChannel, StoreError> {
        let sender = {
            let hub = self.hub.lock().unwrap();
            if hub.offline.contains(&peer) || hub.offline.contains(&self.me) {
                return Err(StoreError::Network(format!(
                    "peer {} unreachable",
                    hex::encode(peer)
                )));
            }
            hub.listeners.get(&(peer, alpn.to_string())).cloned()
        };
        let sender = sender.ok_or_else(|| {
            StoreError::Network(format!("peer {} does not serve {alpn}", hex::encode(peer)))
        })?;
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let (their_recv, their_send) = tokio::io::split(theirs);
        sender
            .send(PeerChannel {
                peer: self.me,
                send: Box::new(their_send),
                recv: Box::new(their_recv),
            })
            .await
            .map_err(|_| StoreError::Network(format!("peer stopped serving {alpn}")))?;
        let (recv, send) = tokio::io::split(ours);
        Ok(PeerChannel {
            peer,
            send: Box::new(send),
            recv: Box::new(recv),
        })
    }

    async fn listen(&self, alpn: &str) -> Result<Incoming, StoreError> {
        let (tx, rx) = mpsc::channel(64);
        let mut hub = self.hub.lock().unwrap();
        let slot = (self.me, alpn.to_string());
        if hub.listeners.get(&slot).is_some_and(|s| !s.is_closed()) {
            return Err(StoreError::Network(format!("{alpn} is already served")));
        }
        hub.listeners.insert(slot, tx);
        Ok(rx)
    }

    async fn announce(&self, topic: Topic) -> Result<(), StoreError> {
        let mut hub = self.hub.lock().unwrap();
        let peers = hub.topics.entry(topic).or_default();
        if !peers.contains(&self.me) {
            peers.push(self.me);
        }
        Ok(())
    }

    async fn lookup(&self, topic: Topic) -> Result<Vec<PeerId>, StoreError> {
        let hub = self.hub.lock().unwrap();
        Ok(hub
            .topics
            .get(&topic)
            .map(|peers| {
                peers
                    .iter()
                    .copied()
                    .filter(|p| *p != self.me && !hub.offline.contains(p))
                    .collect()
            })
            .unwrap_or_default())
    }
}
