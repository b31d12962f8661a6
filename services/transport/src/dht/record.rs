//! Signed peer records and the bounded store that holds announced ones.
//!
//! A [`PeerRecord`] says where a peer can be reached: its key, up to [`MAX_ADDRS`] addresses,
//! up to [`MAX_RELAYS`] relays (by peer id), a sequence number and an expiry. The peer signs it
//! with its ed25519 key over `"kith-dht-record-v1\0" ‖ dht key ‖ record`, so a record is bound to
//! the DHT key it was announced under (a record for one topic cannot be replayed under another)
//! and can be checked by anyone who fetches it, without trusting the DHT node that served it.
//!
//! [`RecordStore`] holds the records announced to this node: a bounded number per key and in
//! total, dropped when they expire. A record with a bad signature, already expired, expiring too
//! far in the future, or with a sequence number lower than the one held for the same peer is
//! refused with a typed [`RecordError`].

use std::collections::HashMap;
use std::net::SocketAddr;

use ed25519_dalek::{Signature, Signer, SigningKey};

use super::id::NodeId;
use super::message::{Writer, put_addr};
use crate::peer::{PeerId, SecretKey};

/// The domain-separation prefix of record signatures.
pub const RECORD_CONTEXT: &[u8] = b"kith-dht-record-v1\0";
/// Most addresses one record may carry.
pub const MAX_ADDRS: usize = 4;
/// Most relays one record may name.
pub const MAX_RELAYS: usize = 3;

/// Where a peer can be reached, signed by that peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer the record is about, and whose key signed it.
    pub peer: PeerId,
    /// Its direct addresses, at most [`MAX_ADDRS`].
    pub addrs: Vec<SocketAddr>,
    /// Relays it can be reached through, at most [`MAX_RELAYS`].
    pub relays: Vec<PeerId>,
    /// Higher replaces lower.
    pub seq: u64,
    /// Unix time (seconds) after which the record is void.
    pub expires_at: u64,
    /// ed25519 signature by `peer` over the context, the DHT key and the fields above.
    pub signature: [u8; 64],
}

/// Why a record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// More addresses or relays than allowed.
    #[error("record carries too many {0}")]
    TooMany(&'static str),
    /// The signature does not verify for this peer and DHT key.
    #[error("record signature does not verify")]
    BadSignature,
    /// The record has expired.
    #[error("record expired")]
    Expired,
    /// The record claims to live longer than this node accepts.
    #[error("record expiry too far in the future")]
    ExpiryTooFar,
    /// A record with a higher (or the same, but different) sequence number is held.
    #[error("record sequence {got} is not newer than held {held}")]
    Stale {
        /// Sequence number held.
        held: u64,
        /// Sequence number offered.
        got: u64,
    },
    /// The key already holds as many records as allowed.
    #[error("no room for more records under this key")]
    KeyFull,
    /// The store holds as many records as allowed.
    #[error("record store full")]
    StoreFull,
}

impl PeerRecord {
    /// Signs a record for the peer of `secret`, announced under DHT key `key`.
    pub fn sign(
        secret: &SecretKey,
        key: &NodeId,
        addrs: Vec<SocketAddr>,
        relays: Vec<PeerId>,
        seq: u64,
        expires_at: u64,
    ) -> Result<Self, RecordError> {
        let mut record = Self {
            peer: secret.peer_id(),
            addrs,
            relays,
            seq,
            expires_at,
            signature: [0; 64],
        };
        record.check_bounds()?;
        let signing = SigningKey::from_bytes(&secret.to_bytes());
        record.signature = signing.sign(&record.signed_bytes(key)).to_bytes();
        Ok(record)
    }

    fn check_bounds(&self) -> Result<(), RecordError> {
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::TooMany("addresses"));
        }
        if self.relays.len() > MAX_RELAYS {
            return Err(RecordError::TooMany("relays"));
        }
        Ok(())
    }

    /// The fields in wire order, without the signature (shared with the message encoding).
    pub(crate) fn write_body(&self, w: &mut Writer) {
        w.bytes(self.peer.as_bytes());
        w.u64(self.seq);
        w.u64(self.expires_at);
        w.u8(self.addrs.len() as u8);
        for addr in &self.addrs {
            put_addr(w, addr);
        }
        w.u8(self.relays.len() as u8);
        for relay in &self.relays {
            w.bytes(relay.as_bytes());
        }
    }

    fn signed_bytes(&self, key: &NodeId) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(RECORD_CONTEXT);
        w.bytes(key.as_bytes());
        self.write_body(&mut w);
        w.into_bytes()
    }

    /// Checks the record as received for DHT key `key` at unix time `now_secs`: bounds,
    /// signature, not expired.
    pub fn verify(&self, key: &NodeId, now_secs: u64) -> Result<(), RecordError> {
        self.check_bounds()?;
        if self.expires_at <= now_secs {
            return Err(RecordError::Expired);
        }
        let signature = Signature::from_bytes(&self.signature);
        self.peer
            .verifying_key()
            .verify_strict(&self.signed_bytes(key), &signature)
            .map_err(|_| RecordError::BadSignature)
    }
}

/// Limits of a [`RecordStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Records per DHT key (peers per topic served by this node).
    pub max_per_key: usize,
    /// Records in total.
    pub max_total: usize,
    /// Longest lifetime accepted, in seconds from now.
    pub max_ttl_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_per_key: 20,
            max_total: 20_000,
            max_ttl_secs: 2 * 60 * 60,
        }
    }
}

/// What [`RecordStore::put`] did with an accepted record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// First record of this peer under this key.
    Added,
    /// Replaced an older record of the same peer.
    Replaced,
    /// Identical to the record held (a re-announce); nothing changed.
    Unchanged,
}

/// Records announced to this node, by DHT key.
#[derive(Clone, Debug, Default)]
pub struct RecordStore {
    config: StoreConfig,
    by_key: HashMap<NodeId, Vec<PeerRecord>>,
    total: usize,
}

impl RecordStore {
    /// An empty store with these limits.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            by_key: HashMap::new(),
            total: 0,
        }
    }

    /// Records held in total (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Verifies and stores `record` announced under `key` at unix time `now_secs`.
    pub fn put(
        &mut self,
        key: NodeId,
        record: PeerRecord,
        now_secs: u64,
    ) -> Result<Stored, RecordError> {
        record.verify(&key, now_secs)?;
        if record.expires_at > now_secs.saturating_add(self.config.max_ttl_secs) {
            return Err(RecordError::ExpiryTooFar);
        }
        self.purge_key(&key, now_secs);
        let held = self.by_key.get(&key).map_or(0, Vec::len);
        if let Some(records) = self.by_key.get_mut(&key)
            && let Some(old) = records.iter_mut().find(|r| r.peer == record.peer)
        {
            if *old == record {
                return Ok(Stored::Unchanged);
            }
            if record.seq <= old.seq {
                return Err(RecordError::Stale {
                    held: old.seq,
                    got: record.seq,
                });
            }
            *old = record;
            return Ok(Stored::Replaced);
        }
        if held >= self.config.max_per_key {
            return Err(RecordError::KeyFull);
        }
        if self.total >= self.config.max_total {
            self.purge_expired(now_secs);
            if self.total >= self.config.max_total {
                return Err(RecordError::StoreFull);
            }
        }
        self.by_key.entry(key).or_default().push(record);
        self.total += 1;
        Ok(Stored::Added)
    }

    /// Unexpired records under `key`, at most `max`.
    pub fn get(&self, key: &NodeId, now_secs: u64, max: usize) -> Vec<PeerRecord> {
        self.by_key
            .get(key)
            .map(|records| {
                records
                    .iter()
                    .filter(|r| r.expires_at > now_secs)
                    .take(max)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn purge_key(&mut self, key: &NodeId, now_secs: u64) {
        if let Some(records) = self.by_key.get_mut(key) {
            let before = records.len();
            records.retain(|r| r.expires_at > now_secs);
            self.total -= before - records.len();
            if records.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Drops every expired record (the driver calls this now and then).
    pub fn purge_expired(&mut self, now_secs: u64) {
        let keys: Vec<NodeId> = self.by_key.keys().copied().collect();
        for key in keys {
            self.purge_key(&key, now_secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::topic_key;

    fn key_pair(seed: u8) -> (SecretKey, PeerId) {
        let secret = SecretKey::from_bytes([seed; 32]);
        let peer = secret.peer_id();
        (secret, peer)
    }

    fn record(secret: &SecretKey, key: &NodeId, seq: u64, expires_at: u64) -> PeerRecord {
        PeerRecord::sign(
            secret,
            key,
            vec![
                "192.0.2.1:4000".parse().unwrap(),
                "[2001:db8::1]:4000".parse().unwrap(),
            ],
            vec![key_pair(99).1],
            seq,
            expires_at,
        )
        .unwrap()
    }

    #[test]
    fn signed_records_verify_only_under_their_key() {
        let (secret, _) = key_pair(1);
        let topic = topic_key(b"room");
        let r = record(&secret, &topic, 1, 1_000);
        r.verify(&topic, 10).unwrap();
        assert_eq!(
            r.verify(&topic_key(b"other room"), 10),
            Err(RecordError::BadSignature)
        );
        let mut forged = r.clone();
        forged.seq = 2;
        assert_eq!(forged.verify(&topic, 10), Err(RecordError::BadSignature));
        let mut forged = r.clone();
        forged.peer = key_pair(2).1;
        assert_eq!(forged.verify(&topic, 10), Err(RecordError::BadSignature));
        let mut forged = r.clone();
        forged.addrs[0] = "192.0.2.66:4000".parse().unwrap();
        assert_eq!(forged.verify(&topic, 10), Err(RecordError::BadSignature));
        assert_eq!(r.verify(&topic, 1_000), Err(RecordError::Expired));
    }

    #[test]
    fn bounds_are_enforced_when_signing() {
        let (secret, _) = key_pair(1);
        let topic = topic_key(b"room");
        let addrs = vec!["192.0.2.1:1".parse().unwrap(); MAX_ADDRS + 1];
        assert_eq!(
            PeerRecord::sign(&secret, &topic, addrs, vec![], 1, 10).unwrap_err(),
            RecordError::TooMany("addresses")
        );
        let relays = vec![key_pair(3).1; MAX_RELAYS + 1];
        assert_eq!(
            PeerRecord::sign(&secret, &topic, vec![], relays, 1, 10).unwrap_err(),
            RecordError::TooMany("relays")
        );
    }

    #[test]
    fn store_keeps_the_newest_sequence_and_refuses_older() {
        let mut store = RecordStore::new(StoreConfig::default());
        let (secret, _) = key_pair(1);
        let topic = topic_key(b"room");
        assert_eq!(
            store.put(topic, record(&secret, &topic, 5, 1_000), 0),
            Ok(Stored::Added)
        );
        assert_eq!(
            store.put(topic, record(&secret, &topic, 5, 1_000), 0),
            Ok(Stored::Unchanged)
        );
        assert_eq!(
            store.put(topic, record(&secret, &topic, 4, 2_000), 0),
            Err(RecordError::Stale { held: 5, got: 4 })
        );
        assert_eq!(
            store.put(topic, record(&secret, &topic, 5, 2_000), 0),
            Err(RecordError::Stale { held: 5, got: 5 })
        );
        assert_eq!(
            store.put(topic, record(&secret, &topic, 6, 2_000), 0),
            Ok(Stored::Replaced)
        );
        assert_eq!(store.get(&topic, 0, 10)[0].seq, 6);
        assert_eq!(store.len(), 1);
        let mut bad = record(&secret, &topic, 7, 2_000);
        bad.signature[0] ^= 1;
        assert_eq!(store.put(topic, bad, 0), Err(RecordError::BadSignature));
        assert_eq!(
            store.put(topic, record(&secret, &topic, 8, 100), 100),
            Err(RecordError::Expired)
        );
        assert_eq!(
            store.put(topic, record(&secret, &topic, 8, 1_000_000), 0),
            Err(RecordError::ExpiryTooFar)
        );
    }

    #[test]
    fn store_is_bounded_per_key_and_in_total_and_expires() {
        let mut store = RecordStore::new(StoreConfig {
            max_per_key: 3,
            max_total: 5,
            max_ttl_secs: 10_000,
        });
        let a = topic_key(b"a");
        let b = topic_key(b"b");
        for seed in 1..=3 {
            let (secret, _) = key_pair(seed);
            assert_eq!(
                store.put(a, record(&secret, &a, 1, 100), 0),
                Ok(Stored::Added)
            );
        }
        let (secret, _) = key_pair(4);
        assert_eq!(
            store.put(a, record(&secret, &a, 1, 100), 0),
            Err(RecordError::KeyFull)
        );
        for seed in 4..=5 {
            let (secret, _) = key_pair(seed);
            assert_eq!(
                store.put(b, record(&secret, &b, 1, 200), 0),
                Ok(Stored::Added)
            );
        }
        let (secret, _) = key_pair(6);
        assert_eq!(
            store.put(b, record(&secret, &b, 1, 200), 0),
            Err(RecordError::StoreFull)
        );
        // Once the records under `a` expire there is room again.
        assert_eq!(
            store.put(b, record(&secret, &b, 1, 200), 150),
            Ok(Stored::Added)
        );
        assert!(store.get(&a, 150, 10).is_empty());
        assert_eq!(store.len(), 3);
        store.purge_expired(500);
        assert!(store.is_empty());
    }
}
