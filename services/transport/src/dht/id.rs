//! Identifiers in the DHT's key space and the XOR metric over them.
//!
//! Every node and every stored key is a 256-bit [`NodeId`]. A node's id is the BLAKE3 hash of
//! its ed25519 public key ([`NodeId::of_peer`]), so ids are uniformly spread even when someone
//! grinds keys with chosen bytes: positions in the key space cannot be picked, only hashed into.
//! A topic's key is derived from the topic secret with a BLAKE3 key derivation ([`topic_key`]),
//! so a DHT node that stores or serves a topic learns nothing about which room it belongs to.

use std::cmp::Ordering;
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::peer::PeerId;

/// A point in the DHT's 256-bit key space: a node's id or a stored key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Length in bytes.
    pub const LENGTH: usize = 32;

    /// Wraps raw bytes (any 32 bytes are a valid point in the key space).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The DHT id of a peer: BLAKE3 of its ed25519 public key.
    pub fn of_peer(peer: &PeerId) -> Self {
        Self(*blake3::hash(peer.as_bytes()).as_bytes())
    }

    /// A uniformly random id (for bucket refreshes and tests).
    pub fn random(rng: &mut impl Rng) -> Self {
        Self(rng.r#gen())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// XOR distance to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; 32];
        for (i, byte) in d.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// The index of the k-bucket `other` falls in, seen from `self`: the number of leading bits
    /// the two ids share (0 = the far half of the key space, 255 = the nearest neighbour slot).
    /// `None` when the ids are equal.
    pub fn bucket_index(&self, other: &NodeId) -> Option<usize> {
        self.distance(other).leading_zeros()
    }

    /// A random id that falls in bucket `index` seen from `self`: it shares exactly `index`
    /// leading bits with `self`. Used to refresh a bucket by looking that id up.
    pub fn random_in_bucket(&self, index: usize, rng: &mut impl Rng) -> NodeId {
        assert!(index < 256, "bucket index out of range");
        let mut out: [u8; 32] = rng.r#gen();
        let byte = index / 8;
        let bit = index % 8;
        // Copy the shared prefix, flip the bit at `index`, keep the rest random.
        out[..byte].copy_from_slice(&self.0[..byte]);
        let keep_mask: u8 = if bit == 0 { 0 } else { 0xff << (8 - bit) };
        let flip: u8 = 0x80 >> bit;
        let own = self.0[byte];
        out[byte] = (own & keep_mask) | ((own ^ flip) & flip) | (out[byte] & !(keep_mask | flip));
        NodeId(out)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({}…)", &hex::encode(&self.0[..8]))
    }
}

/// The XOR distance between two ids, ordered as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Distance([u8; 32]);

impl Distance {
    /// Number of leading zero bits, or `None` for the zero distance.
    pub fn leading_zeros(&self) -> Option<usize> {
        for (i, byte) in self.0.iter().enumerate() {
            if *byte != 0 {
                return Some(i * 8 + byte.leading_zeros() as usize);
            }
        }
        None
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Ord for Distance {
    fn cmp(&self, other: &Self) -> Ordering {
        // The first 8 bytes decide almost every comparison between random ids; this is the
        // innermost loop of lookups and of the simulator.
        let head = |d: &Distance| u64::from_be_bytes(d.0[..8].try_into().expect("8 bytes"));
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for Distance {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A hasher for maps keyed by [`NodeId`]: ids are uniformly random (BLAKE3 outputs), so their
/// first 8 bytes already are a good hash. Only for ids computed by us from keys or chosen by us;
/// a map keyed by ids an attacker picks freely should keep the default SipHash.
#[derive(Clone, Copy, Default, Debug)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut head = [0u8; 8];
        let n = bytes.len().min(8);
        head[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(17) ^ u64::from_le_bytes(head);
    }
}

/// Builds [`IdHasher`]s.
pub type IdHashBuilder = std::hash::BuildHasherDefault<IdHasher>;

/// The context string of the topic key derivation; changing it moves every topic.
pub const TOPIC_KEY_CONTEXT: &str = "kith dht topic v1";

/// The DHT key under which peers announce themselves for a topic.
///
/// `topic_secret` is known only to the room's members (for example derived from the room key).
/// The DHT sees only this derived key: without the secret it cannot tell which room a key is,
/// nor link the keys of two rooms. Derivation is BLAKE3's `derive_key` with a fixed context.
pub fn topic_key(topic_secret: &[u8]) -> NodeId {
    NodeId(blake3::derive_key(TOPIC_KEY_CONTEXT, topic_secret))
}

/// Serialises a value by its `Display` form (a [`NodeId`] as hex in JSON).
pub(crate) fn serialize_display<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn distance_is_symmetric_and_zero_only_to_self() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = NodeId::random(&mut rng);
        let b = NodeId::random(&mut rng);
        assert_eq!(a.distance(&b), b.distance(&a));
        assert_eq!(a.distance(&a).leading_zeros(), None);
        assert!(a.distance(&b).leading_zeros().is_some());
    }

    #[test]
    fn bucket_index_counts_shared_prefix_bits() {
        let a = NodeId::from_bytes([0u8; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(a.bucket_index(&NodeId::from_bytes(b)), Some(0));
        b[0] = 0x01;
        assert_eq!(a.bucket_index(&NodeId::from_bytes(b)), Some(7));
        let mut c = [0u8; 32];
        c[31] = 1;
        assert_eq!(a.bucket_index(&NodeId::from_bytes(c)), Some(255));
    }

    #[test]
    fn random_in_bucket_lands_in_that_bucket() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..50 {
            let me = NodeId::random(&mut rng);
            for index in [0, 1, 7, 8, 9, 15, 100, 254, 255] {
                let id = me.random_in_bucket(index, &mut rng);
                assert_eq!(me.bucket_index(&id), Some(index));
            }
        }
    }

    #[test]
    fn node_id_of_peer_is_blake3_of_the_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let peer = PeerId::from_bytes(key.verifying_key().as_bytes()).unwrap();
        let id = NodeId::of_peer(&peer);
        assert_eq!(id.as_bytes(), blake3::hash(peer.as_bytes()).as_bytes());
    }

    #[test]
    fn different_topics_give_unrelated_keys() {
        let a = topic_key(b"room secret a");
        let b = topic_key(b"room secret b");
        assert_ne!(a, b);
        assert_eq!(a, topic_key(b"room secret a"));
        // Unrelated: about half the bits differ, and the key is neither the secret's plain hash
        // nor a keyed hash with another context.
        let differing: u32 = a
            .distance(&b)
            .as_bytes()
            .iter()
            .map(|x| x.count_ones())
            .sum();
        assert!((80..=176).contains(&differing), "{differing} bits differ");
        assert_ne!(a.as_bytes(), blake3::hash(b"room secret a").as_bytes());
        assert_ne!(
            *a.as_bytes(),
            blake3::derive_key("kith dht topic v2", b"room secret a")
        );
    }
}
