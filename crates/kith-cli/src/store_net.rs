//! The store's [`Network`] over the transport service: the one place the two meet (the store
//! depends on no transport). Works on any [`TransportApi`]: the in-process service of
//! `kith node up` or the gRPC client of `kith serve store`. The replication and file
//! benchmarks include this file too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kith_store::StoreError;
use kith_store::net::{Incoming, Network, PeerChannel, PeerId, Topic};
use kith_transport::api::TransportApi;
use kith_transport::dht::NodeId;
use kith_transport::{PeerAddrs, PeerId as TransportPeer};
use tokio::sync::mpsc;

/// The store's network, over a transport.
pub struct TransportNetwork {
    transport: Arc<dyn TransportApi>,
    me: PeerId,
    /// Addresses known for peers without the DHT (set by the caller: tests, `--peer` hints).
    hints: Mutex<HashMap<PeerId, PeerAddrs>>,
}

impl TransportNetwork {
    /// `me` is the transport's own peer id (its status tells it).
    pub fn new(transport: Arc<dyn TransportApi>, me: PeerId) -> Self {
        TransportNetwork {
            transport,
            me,
            hints: Mutex::default(),
        }
    }

    /// Connects to `peer` through `addrs` instead of looking it up (the benchmarks that include
    /// this file use it; the binary finds peers through the DHT).
    #[allow(dead_code)]
    pub fn add_hint(&self, peer: PeerId, addrs: PeerAddrs) {
        self.hints.lock().unwrap().insert(peer, addrs);
    }
}

fn network_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Network(e.to_string())
}

#[async_trait]
impl Network for TransportNetwork {
    fn local_peer(&self) -> PeerId {
        self.me
    }

    async fn open(&self, peer: PeerId, alpn: &str) -> Result<PeerChannel, StoreError> {
        let id = TransportPeer::from_bytes(&peer).map_err(network_error)?;
        let hints = self.hints.lock().unwrap().get(&peer).cloned();
        let stream = self
            .transport
            .open_stream(id, alpn.to_string(), hints)
            .await
            .map_err(network_error)?;
        Ok(PeerChannel {
            peer,
            send: stream.send,
            recv: stream.recv,
        })
    }

    async fn listen(&self, alpn: &str) -> Result<Incoming, StoreError> {
        let mut listener = self
            .transport
            .listen(alpn.to_string())
            .await
            .map_err(network_error)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // Ends (dropping the listener, which stops serving) when the store drops its end.
            loop {
                tokio::select! {
                    stream = listener.accept() => {
                        let Some(stream) = stream else { break };
                        let channel = PeerChannel {
                            peer: *stream.peer.as_bytes(),
                            send: stream.send,
                            recv: stream.recv,
                        };
                        if tx.send(channel).await.is_err() {
                            break;
                        }
                    }
                    () = tx.closed() => break,
                }
            }
        });
        Ok(rx)
    }

    async fn announce(&self, topic: Topic) -> Result<(), StoreError> {
        self.transport
            .announce(NodeId::from_bytes(topic))
            .await
            .map(drop)
            .map_err(network_error)
    }

    async fn lookup(&self, topic: Topic) -> Result<Vec<PeerId>, StoreError> {
        let peers = self
            .transport
            .lookup(NodeId::from_bytes(topic))
            .await
            .map_err(network_error)?;
        Ok(peers
            .into_iter()
            .map(|p| *p.peer_id.as_bytes())
            .filter(|p| *p != self.me)
            .collect())
    }
}
