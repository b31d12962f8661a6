//! Who a peer is: its ed25519 public key ([`PeerId`]), and the node's own secret key
//! ([`SecretKey`]) that proves it.
//!
//! A `PeerId` is validated when it is made: the bytes must decode to a point on the curve that is
//! not of small order, so a weak key can never be dialled or accepted. The secret key is the node
//! key the identity service delegates for scope `transport`; this crate only ever sees its 32
//! bytes and zeroises them when dropped.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::TransportError;

/// A peer's address in Kith: its 32-byte ed25519 public key, known to be a valid, non-weak point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Length of a peer id in bytes.
    pub const LENGTH: usize = 32;

    /// Validates `bytes` as an ed25519 public key: it must decompress to a curve point, and that
    /// point must not be of small order (such keys admit signatures that verify for many
    /// messages, so they can identify no one).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, TransportError> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| TransportError::InvalidPeerId("not a point on the ed25519 curve"))?;
        if key.is_weak() {
            return Err(TransportError::InvalidPeerId("ed25519 key of small order"));
        }
        Ok(Self(*bytes))
    }

    /// Like [`PeerId::from_bytes`], for a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, TransportError> {
        let bytes: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| TransportError::InvalidPeerId("not 32 bytes"))?;
        Self::from_bytes(bytes)
    }

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as an ed25519-dalek verifying key (cannot fail: it was validated on creation).
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("peer id was validated when it was made")
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are plenty to tell peers apart in logs and test failures.
        write!(f, "PeerId({}…)", &hex::encode(&self.0[..8]))
    }
}

impl serde::Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for PeerId {
    type Err = TransportError;

    /// Parses the 64-character hex form that `Display` writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|_| TransportError::InvalidPeerId("not 64 hex characters"))?;
        Self::from_bytes(&bytes)
    }
}

/// The node's secret key: a 32-byte ed25519 seed, zeroised on drop. Its public half is the
/// node's [`PeerId`].
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// Wraps the 32 secret bytes of an ed25519 key (for example the scoped key the identity
    /// service delegates for scope `transport`). Every 32-byte string is a valid seed.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh random key from the operating system's generator (tests, throwaway nodes).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        Self::from_bytes(bytes)
    }

    /// The secret bytes. Handle with care: they are the node's identity on the network.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    /// The public key, which is the peer id others dial.
    pub fn peer_id(&self) -> PeerId {
        let public = SigningKey::from_bytes(&self.0).verifying_key();
        // A key derived from a seed is clamped and is never of small order.
        PeerId(public.to_bytes())
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {:?})", self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_peer_id_round_trips_through_hex_and_bytes() {
        let key = SecretKey::generate();
        let peer = key.peer_id();
        let text = peer.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PeerId>().unwrap(), peer);
        assert_eq!(PeerId::from_bytes(peer.as_bytes()).unwrap(), peer);
        assert_eq!(PeerId::from_slice(&peer.as_bytes()[..]).unwrap(), peer);
        assert_eq!(
            peer.verifying_key().to_bytes(),
            SigningKey::from_bytes(&key.to_bytes())
                .verifying_key()
                .to_bytes()
        );
    }

    #[test]
    fn rfc8032_test_key_gives_its_public_key() {
        // RFC 8032 section 7.1, TEST 1.
        let secret: [u8; 32] =
            hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            SecretKey::from_bytes(secret).peer_id().to_string(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn small_order_points_are_refused() {
        // The identity point (encoded y = 1) and the point of order 2 (y = -1) are weak keys.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut order_two = [0xffu8; 32];
        order_two[0] = 0xec;
        order_two[31] = 0x7f;
        for bytes in [identity, order_two] {
            assert!(matches!(
                PeerId::from_bytes(&bytes),
                Err(TransportError::InvalidPeerId(_))
            ));
        }
    }

    #[test]
    fn bytes_that_are_not_a_point_are_refused() {
        // y = 2 has no matching x on edwards25519 (x² would be a non-square).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(PeerId::from_bytes(&not_a_point).is_err());
    }

    #[test]
    fn malformed_text_and_lengths_are_refused() {
        assert!("zz".parse::<PeerId>().is_err());
        assert!("00".repeat(31).parse::<PeerId>().is_err());
        assert!("00".repeat(33).parse::<PeerId>().is_err());
        assert!(PeerId::from_slice(&[0u8; 31]).is_err());
        assert!(PeerId::from_slice(&[0u8; 33]).is_err());
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let key = SecretKey::from_bytes([7u8; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(shown.starts_with("SecretKey(for PeerId("));
    }
}
