//! Log keys and signed roots.
//!
//! A log *is* its writer's ed25519 public key ([`LogKey`]). The writer commits to the log's
//! content at a length by signing a [`SignedRoot`]:
//!
//! ```text
//! signed bytes = "kith-store-root-v1\0" ‖ log key (32) ‖ length (u64 LE) ‖ root hash (32)
//! ```
//!
//! The prefix separates these signatures from every other use of the key. Anyone with only the
//! public key can check a root; nothing here needs a decryption key.
//!
//! The signing key need not live in the store: [`RootSigner`] is all the store asks for (the
//! identity service's delegated key for the log, a remote signer, or [`Ed25519Signer`] in tests).

use std::fmt;

use async_trait::async_trait;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::tree::Hash;
use crate::error::StoreError;

/// The domain prefix of every signed root.
pub const ROOT_SIGNATURE_DOMAIN: &[u8] = b"kith-store-root-v1\0";

/// A log's id: its writer's ed25519 public key, validated (a point on the curve, not of small
/// order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "[u8; 32]", into = "[u8; 32]")]
pub struct LogKey([u8; 32]);

impl LogKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, StoreError> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| StoreError::InvalidKey("not an ed25519 point"))?;
        if key.is_weak() {
            return Err(StoreError::InvalidKey("small-order ed25519 key"));
        }
        Ok(LogKey(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::InvalidKey("not 32 bytes"))?;
        Self::from_bytes(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("validated on construction")
    }

    /// Checks (strictly) that `signature` is this key's over `message`. For statements other
    /// than roots, each with a domain prefix of its own (see [`crate::topic::TopicTag`]).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), StoreError> {
        self.verifying_key()
            .verify_strict(message, &Signature::from_bytes(signature))
            .map_err(|_| StoreError::BadSignature)
    }
}

impl TryFrom<[u8; 32]> for LogKey {
    type Error = StoreError;
    fn try_from(bytes: [u8; 32]) -> Result<Self, StoreError> {
        Self::from_bytes(bytes)
    }
}

impl From<LogKey> for [u8; 32] {
    fn from(key: LogKey) -> [u8; 32] {
        key.0
    }
}

impl fmt::Display for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogKey({})", &hex::encode(self.0)[..16])
    }
}

/// A root before it is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsignedRoot {
    pub key: LogKey,
    pub length: u64,
    pub hash: Hash,
}

impl UnsignedRoot {
    /// The exact bytes the writer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROOT_SIGNATURE_DOMAIN.len() + 72);
        out.extend_from_slice(ROOT_SIGNATURE_DOMAIN);
        out.extend_from_slice(&self.key.0);
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out
    }
}

/// A root hash at a length, signed by the log's key. Only constructed verified: holding one means
/// the signature was checked.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SignedRootFields", into = "SignedRootFields")]
pub struct SignedRoot {
    key: LogKey,
    length: u64,
    hash: Hash,
    signature: [u8; 64],
}

/// The encoded size of a [`SignedRoot`].
pub const SIGNED_ROOT_BYTES: usize = 32 + 8 + 32 + 64;

impl SignedRoot {
    /// Checks `signature` over `root` and returns the signed root, or
    /// [`StoreError::BadSignature`].
    pub fn new(root: UnsignedRoot, signature: [u8; 64]) -> Result<Self, StoreError> {
        if root.length > super::MAX_LOG_LENGTH {
            return Err(StoreError::OutOfRange);
        }
        let sig = Signature::from_bytes(&signature);
        root.key
            .verifying_key()
            .verify_strict(&root.signed_bytes(), &sig)
            .map_err(|_| StoreError::BadSignature)?;
        Ok(SignedRoot {
            key: root.key,
            length: root.length,
            hash: root.hash,
            signature,
        })
    }

    /// A root signed by a [`RootSigner`] that [`RootSigner::signs_in_process`]: not verified
    /// again (except in debug builds).
    pub(crate) fn from_trusted_signer(root: UnsignedRoot, signature: [u8; 64]) -> Self {
        debug_assert!(
            Self::new(root, signature).is_ok(),
            "in-process signer signed wrong"
        );
        SignedRoot {
            key: root.key,
            length: root.length,
            hash: root.hash,
            signature,
        }
    }

    pub fn key(&self) -> LogKey {
        self.key
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// `key ‖ length (u64 LE) ‖ hash ‖ signature`, 136 bytes.
    pub fn to_bytes(&self) -> [u8; SIGNED_ROOT_BYTES] {
        let mut out = [0u8; SIGNED_ROOT_BYTES];
        out[..32].copy_from_slice(&self.key.0);
        out[32..40].copy_from_slice(&self.length.to_le_bytes());
        out[40..72].copy_from_slice(&self.hash);
        out[72..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != SIGNED_ROOT_BYTES {
            return Err(StoreError::Malformed("signed root is not 136 bytes"));
        }
        let key = LogKey::from_slice(&bytes[..32])?;
        let length = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));
        let hash: Hash = bytes[40..72].try_into().expect("32 bytes");
        let signature: [u8; 64] = bytes[72..].try_into().expect("64 bytes");
        Self::new(UnsignedRoot { key, length, hash }, signature)
    }
}

impl fmt::Debug for SignedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedRoot")
            .field("key", &self.key)
            .field("length", &self.length)
            .field("hash", &hex::encode(&self.hash[..8]))
            .finish()
    }
}

/// The serde form of a [`SignedRoot`]; deserialising verifies the signature.
#[derive(Serialize, Deserialize)]
struct SignedRootFields {
    key: LogKey,
    length: u64,
    #[serde(with = "hex_array")]
    hash: Hash,
    #[serde(with = "hex_array")]
    signature: [u8; 64],
}

impl TryFrom<SignedRootFields> for SignedRoot {
    type Error = StoreError;
    fn try_from(f: SignedRootFields) -> Result<Self, StoreError> {
        SignedRoot::new(
            UnsignedRoot {
                key: f.key,
                length: f.length,
                hash: f.hash,
            },
            f.signature,
        )
    }
}

impl From<SignedRoot> for SignedRootFields {
    fn from(r: SignedRoot) -> Self {
        SignedRootFields {
            key: r.key,
            length: r.length,
            hash: r.hash,
            signature: r.signature,
        }
    }
}

/// Fixed-size byte arrays as hex strings in serde formats.
pub(crate) mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(s).map_err(D::Error::custom)?;
        v.try_into()
            .map_err(|_| D::Error::custom(format!("expected {N} bytes")))
    }
}

/// Whatever holds a log's signing key. The store asks it to sign roots and checks every
/// signature it returns before using it.
#[async_trait]
pub trait RootSigner: Send + Sync {
    /// The log this signer writes.
    fn log_key(&self) -> LogKey;

    /// Signs `root.signed_bytes()`.
    async fn sign_root(&self, root: &UnsignedRoot) -> Result<[u8; 64], StoreError>;

    /// Whether this signer signs in-process with the very key `log_key` names, so that its
    /// signatures cannot be wrong. Only then does the store skip re-verifying what it returns
    /// (an ed25519 verification costs about twice a signature: a third of a single append's CPU).
    /// Remote and delegating signers keep the default, `false`.
    fn signs_in_process(&self) -> bool {
        false
    }
}

/// A [`RootSigner`] holding an ed25519 key in memory (tests, benchmarks, and embedders that
/// manage the key themselves).
pub struct Ed25519Signer {
    key: SigningKey,
    log_key: LogKey,
}

impl Ed25519Signer {
    pub fn new(key: SigningKey) -> Self {
        let log_key = LogKey::from_bytes(key.verifying_key().to_bytes())
            .expect("a signing key's public key is a valid, non-weak point");
        Ed25519Signer { key, log_key }
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self::new(SigningKey::from_bytes(&seed))
    }

    pub fn generate() -> Self {
        Self::new(SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The log this key writes.
    pub fn log_key(&self) -> LogKey {
        self.log_key
    }

    /// Signs synchronously (the trait method without the future).
    pub fn sign(&self, root: &UnsignedRoot) -> [u8; 64] {
        self.key.sign(&root.signed_bytes()).to_bytes()
    }

    /// Signs another statement by the writer; `message` must start with a domain prefix of its
    /// own (see [`crate::topic::TopicTag`]), never the roots'.
    pub(crate) fn sign_statement(&self, message: &[u8]) -> [u8; 64] {
        debug_assert!(!message.starts_with(ROOT_SIGNATURE_DOMAIN));
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("log_key", &self.log_key)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RootSigner for Ed25519Signer {
    fn log_key(&self) -> LogKey {
        self.log_key
    }

    async fn sign_root(&self, root: &UnsignedRoot) -> Result<[u8; 64], StoreError> {
        if root.key != self.log_key {
            return Err(StoreError::WrongSigner);
        }
        Ok(self.sign(root))
    }

    fn signs_in_process(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(signer: &Ed25519Signer, length: u64, hash: Hash) -> SignedRoot {
        let u = UnsignedRoot {
            key: signer.log_key(),
            length,
            hash,
        };
        SignedRoot::new(u, signer.sign(&u)).unwrap()
    }

    #[test]
    fn signed_bytes_are_domain_separated_and_bind_every_field() {
        let s = Ed25519Signer::from_seed([7; 32]);
        let u = UnsignedRoot {
            key: s.log_key(),
            length: 5,
            hash: [9; 32],
        };
        let bytes = u.signed_bytes();
        assert!(bytes.starts_with(b"kith-store-root-v1\0"));
        assert_eq!(bytes.len(), 19 + 32 + 8 + 32);
        let sig = s.sign(&u);
        assert!(SignedRoot::new(u, sig).is_ok());
        for changed in [
            UnsignedRoot { length: 6, ..u },
            UnsignedRoot { hash: [8; 32], ..u },
            UnsignedRoot {
                key: Ed25519Signer::from_seed([8; 32]).log_key(),
                ..u
            },
        ] {
            assert!(matches!(
                SignedRoot::new(changed, sig),
                Err(StoreError::BadSignature)
            ));
        }
        // A signature over the bare fields (no domain prefix) is refused.
        let bare = s.key.sign(&bytes[19..]).to_bytes();
        assert!(SignedRoot::new(u, bare).is_err());
    }

    #[test]
    fn encoding_round_trips_and_every_bit_flip_is_refused() {
        let s = Ed25519Signer::from_seed([1; 32]);
        let r = root(&s, 42, [3; 32]);
        let bytes = r.to_bytes();
        assert_eq!(SignedRoot::from_bytes(&bytes).unwrap(), r);
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(SignedRoot::from_bytes(&b).is_err(), "bit {bit}");
        }
        assert!(SignedRoot::from_bytes(&bytes[..135]).is_err());
        let json = serde_json::to_string(&r).unwrap();
        let back: SignedRoot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let tampered = json.replace("\"length\":42", "\"length\":43");
        assert!(serde_json::from_str::<SignedRoot>(&tampered).is_err());
    }

    #[test]
    fn absurd_lengths_are_refused_even_when_signed() {
        let s = Ed25519Signer::from_seed([1; 32]);
        for length in [crate::log::MAX_LOG_LENGTH + 1, u64::MAX] {
            let u = UnsignedRoot {
                key: s.log_key(),
                length,
                hash: [0; 32],
            };
            assert!(matches!(
                SignedRoot::new(u, s.sign(&u)),
                Err(StoreError::OutOfRange)
            ));
        }
    }

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        // The identity point (small order).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(LogKey::from_bytes(identity).is_err());
        assert!(LogKey::from_slice(&[1, 2, 3]).is_err());
    }

    #[tokio::test]
    async fn signer_refuses_other_logs() {
        let s = Ed25519Signer::from_seed([1; 32]);
        let other = Ed25519Signer::from_seed([2; 32]).log_key();
        let u = UnsignedRoot {
            key: other,
            length: 1,
            hash: [0; 32],
        };
        assert!(matches!(
            s.sign_root(&u).await,
            Err(StoreError::WrongSigner)
        ));
    }
}
