//! Room discovery topics: how a node finds, serves and mirrors the logs of a room it knows only
//! by the room's secret 32-byte *discovery topic*.
//!
//! A room (the chat layer, above the store) is a set of writer logs, one per member device,
//! whose members share a secret topic. The topic itself is never stored, sent, announced or
//! printed by the store: everything it uses is derived from it one way, each value under a BLAKE3
//! context of its own, so no value reveals another that sits above it.
//!
//! ```text
//! topic ──derive_key("kith-store topic key v1")──▶ TopicKey      (kept in the database)
//!   TopicKey ──derive_key("kith-store topic id v1")──▶ TopicId   (its name on the wire and in the database)
//!   TopicKey ──derive_key("kith-store room topic v1")──▶ DHT key (net::room_topic: announced, looked up)
//!   TopicKey ──derive_key("kith-store topic capability v1")──▶ MAC key (proofs of knowledge, below)
//! ```
//!
//! So a store's database, its logs and the DHT hold nothing from which the topic follows; a
//! database does hold the [`TopicKey`], which is all discovery needs (whoever reads the database
//! can find and list the room's logs, as its owner can, but not recover the topic itself).
//!
//! A peer proves it knows a topic with a *capability*: a MAC, under the topic's MAC key, of the
//! receiver's random session nonce, the direction (query or answer) and both peers' ids (the
//! transport authenticates them), so a capability is good for one receiver in one session and
//! cannot be relayed to a third peer.
//!
//! That a log belongs to a topic is its writer's word: a [`TopicTag`] is the writer's ed25519
//! signature, by the log's key, over `"kith-store-topic-member-v1\0" ‖ topic id ‖ log key`. A
//! holder hands tags only to peers that proved the topic, and a receiver checks every one, so a
//! peer that knows the topic still cannot make a mirror take a log whose writer did not put it
//! in the room. A tag cannot be withdrawn: untagging stops this node from listing the log, not
//! copies of the tag handed out before.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::error::StoreError;
use crate::log::{Ed25519Signer, LogKey};

/// The most logs listed under one topic: in one wire answer, and held per topic.
pub const MAX_TOPIC_LOGS: usize = 1024;

/// The most topics one log carries.
pub const MAX_LOG_TOPICS: usize = 16;

/// The domain prefix of a [`TopicTag`]'s signature.
pub const TOPIC_TAG_DOMAIN: &[u8] = b"kith-store-topic-member-v1\0";

/// A room's secret discovery topic, as the chat layer holds it. Its `Debug` shows nothing.
#[derive(Clone)]
pub struct RoomTopic(zeroize::Zeroizing<[u8; 32]>);

impl RoomTopic {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RoomTopic(zeroize::Zeroizing::new(bytes))
    }

    /// 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(StoreError::Malformed("a topic is 64 hex digits (32 bytes)"));
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, bytes.as_mut_slice())
            .map_err(|_| StoreError::Malformed("a topic is 64 hex digits (32 bytes)"))?;
        Ok(RoomTopic(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// What the store keeps of this topic.
    pub fn key(&self) -> TopicKey {
        TopicKey(blake3::derive_key(
            "kith-store topic key v1",
            self.as_bytes(),
        ))
    }
}

impl fmt::Debug for RoomTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomTopic(..)")
    }
}

/// A topic as the store keeps it: one-way derived from the room's topic, and enough to announce
/// it, look it up and prove knowledge of it. Its `Debug` shows only the [`TopicId`].
#[derive(Clone, PartialEq, Eq)]
pub struct TopicKey([u8; 32]);

/// Which way a capability goes (so a query's proof is never accepted as an answer's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Query = 1,
    Answer = 2,
}

impl TopicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TopicKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The topic's public name.
    pub fn id(&self) -> TopicId {
        TopicId(blake3::derive_key("kith-store topic id v1", &self.0))
    }

    /// The DHT key under which the topic's holders announce themselves.
    pub fn dht_topic(&self) -> crate::net::Topic {
        crate::net::room_topic(self)
    }

    /// Proof that `sender` knows this topic, for `receiver` in the session where the receiver
    /// chose `receiver_nonce`.
    pub fn capability(
        &self,
        direction: Direction,
        receiver_nonce: &[u8; 32],
        sender: &[u8; 32],
        receiver: &[u8; 32],
    ) -> [u8; 32] {
        let mac_key = blake3::derive_key("kith-store topic capability v1", &self.0);
        let mut mac = blake3::Hasher::new_keyed(&mac_key);
        mac.update(&[direction as u8]);
        mac.update(receiver_nonce);
        mac.update(sender);
        mac.update(receiver);
        *mac.finalize().as_bytes()
    }

    /// Whether `capability` is [`Self::capability`] (compared in constant time).
    pub fn check(
        &self,
        capability: &[u8; 32],
        direction: Direction,
        receiver_nonce: &[u8; 32],
        sender: &[u8; 32],
        receiver: &[u8; 32],
    ) -> bool {
        blake3::Hash::from(*capability)
            == blake3::Hash::from(self.capability(direction, receiver_nonce, sender, receiver))
    }
}

impl fmt::Debug for TopicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicKey(id {})", self.id())
    }
}

/// A topic's public name (hex when printed): what a query names and what listings show. It
/// reveals neither the topic nor its key, and proves nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 32]);

impl TopicId {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, StoreError> {
        Ok(TopicId(bytes.try_into().map_err(|_| {
            StoreError::Malformed("a topic id is 32 bytes")
        })?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({self})")
    }
}

impl Serialize for TopicId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A writer's signed word that its log belongs to a topic.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TopicTag {
    pub key: LogKey,
    pub signature: [u8; 64],
}

impl fmt::Debug for TopicTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicTag({})", self.key)
    }
}

impl TopicTag {
    /// What the writer signs.
    pub fn signed_bytes(topic: &TopicId, key: &LogKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOPIC_TAG_DOMAIN.len() + 64);
        out.extend_from_slice(TOPIC_TAG_DOMAIN);
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// The writer of `signer`'s log puts it under `topic`.
    pub fn sign(signer: &Ed25519Signer, topic: &TopicId) -> TopicTag {
        let key = signer.log_key();
        TopicTag {
            key,
            signature: signer.sign_statement(&Self::signed_bytes(topic, &key)),
        }
    }

    /// Checks the writer's signature ([`StoreError::BadSignature`] if it is not).
    pub fn verify(&self, topic: &TopicId) -> Result<(), StoreError> {
        self.key
            .verify(&Self::signed_bytes(topic, &self.key), &self.signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_are_separate_and_the_topic_shows_nowhere() {
        let topic = RoomTopic::from_bytes([7; 32]);
        let key = topic.key();
        let values = [
            *topic.as_bytes(),
            *key.as_bytes(),
            *key.id().as_bytes(),
            key.dht_topic(),
        ];
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(format!("{topic:?}"), "RoomTopic(..)");
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode(topic.as_bytes())));
        assert!(!shown.contains(&hex::encode(key.as_bytes())));
        assert_eq!(
            RoomTopic::from_hex(&hex::encode([7; 32])).unwrap().key(),
            key
        );
        for bad in ["", "00", &"zz".repeat(32), &"00".repeat(33)] {
            assert!(RoomTopic::from_hex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capabilities_bind_direction_nonce_and_both_peers() {
        let key = RoomTopic::from_bytes([1; 32]).key();
        let (n, a, b) = ([2; 32], [3; 32], [4; 32]);
        let cap = key.capability(Direction::Query, &n, &a, &b);
        assert!(key.check(&cap, Direction::Query, &n, &a, &b));
        assert!(!key.check(&cap, Direction::Answer, &n, &a, &b));
        assert!(!key.check(&cap, Direction::Query, &[9; 32], &a, &b));
        assert!(!key.check(&cap, Direction::Query, &n, &b, &a));
        assert!(!key.check(&cap, Direction::Query, &n, &a, &[5; 32]));
        let other = RoomTopic::from_bytes([6; 32]).key();
        assert!(!other.check(&cap, Direction::Query, &n, &a, &b));
    }

    #[test]
    fn tags_verify_only_for_their_topic_and_log() {
        let signer = Ed25519Signer::from_seed([8; 32]);
        let id = RoomTopic::from_bytes([1; 32]).key().id();
        let tag = TopicTag::sign(&signer, &id);
        tag.verify(&id).unwrap();
        let other = RoomTopic::from_bytes([2; 32]).key().id();
        assert!(matches!(tag.verify(&other), Err(StoreError::BadSignature)));
        let mut forged = tag;
        forged.key = Ed25519Signer::from_seed([9; 32]).log_key();
        assert!(forged.verify(&id).is_err());
        let mut bent = tag;
        bent.signature[3] ^= 1;
        assert!(bent.verify(&id).is_err());
    }
}
