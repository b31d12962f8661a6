//! Keys and signatures: validated public-key and signature types, SLIP-0010 ed25519 derivation
//! from the BIP39 seed, and domain-separated signing.
//!
//! Every signature Kith makes covers `signed_bytes(context, message)`:
//!
//! ```text
//! "kith-signature-v1" 0x00 | len(context) as u8 | context | BLAKE3(message)
//! ```
//!
//! so a signature made for one context can never verify under another, and the bytes an ed25519
//! signature covers are always small and printable for independent checking.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use zeroize::Zeroizing;

use crate::error::{IdentityError, Result};

/// The hardened SLIP-0010 path of the identity key: purpose 5484' ("KITH" on a phone keypad),
/// identity account 0', key generation 0'. Wallets use BIP84/BIP86 paths of the same seed
/// (m/84'/…, m/86'/…), which share no prefix with this one.
pub const IDENTITY_PATH: &str = "m/5484'/0'/0'";
const IDENTITY_PATH_INDICES: [u32; 3] = [5484, 0, 0];

const SIGNATURE_DOMAIN: &[u8] = b"kith-signature-v1\0";

/// Contexts under this prefix are reserved for records the identity service signs itself
/// (attestations, revocations, profiles, delegations); callers cannot sign under them.
pub const RESERVED_CONTEXT_PREFIX: &str = "kith/";

/// An ed25519 public key that is a valid, non-weak curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidArgument(format!(
                "public key must be 32 bytes, got {}",
                bytes.len()
            ))
        })?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| {
            IdentityError::InvalidArgument("public key is not a valid ed25519 point".into())
        })?;
        if key.is_weak() {
            return Err(IdentityError::InvalidArgument(
                "public key is a weak (small-order) point".into(),
            ));
        }
        Ok(Self(raw))
    }

    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| IdentityError::InvalidArgument("public key is not hex".into()))?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("validated on construction")
    }

    /// Verifies `signature` over `signed_bytes(context, message)` (strict RFC 8032 rules).
    pub fn verify(&self, context: &Context, message: &[u8], signature: &Signature) -> Result<()> {
        self.verify_raw(&signed_bytes(context, message), signature)
    }

    /// Verifies a signature over exactly `signed` (no domain separation): for standard test
    /// vectors and for records that build their own signed bytes.
    pub fn verify_raw(&self, signed: &[u8], signature: &Signature) -> Result<()> {
        self.verifying_key()
            .verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&signature.0))
            .map_err(|_| IdentityError::BadSignature("signature does not verify".into()))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// A 64-byte ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let raw: [u8; 64] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidArgument(format!(
                "signature must be 64 bytes, got {}",
                bytes.len()
            ))
        })?;
        Ok(Self(raw))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        Self::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A signing context: 1 to 64 characters of `[a-z0-9._/-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Context(String);

impl Context {
    pub const MAX_LEN: usize = 64;

    pub fn new(text: &str) -> Result<Self> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._/-".contains(c);
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.chars().all(ok_char) {
            return Err(IdentityError::InvalidArgument(format!(
                "context {text:?} must be 1 to {} characters of a-z 0-9 . _ / -",
                Self::MAX_LEN
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// A context callers may sign under (not reserved for the service's own records).
    pub fn for_caller(text: &str) -> Result<Self> {
        let context = Self::new(text)?;
        context.check_caller()?;
        Ok(context)
    }

    /// Refuses a context reserved for the service's own records.
    pub fn check_caller(&self) -> Result<()> {
        if self.is_reserved() {
            return Err(IdentityError::ReservedContext(format!(
                "context {:?} is reserved: contexts starting with {RESERVED_CONTEXT_PREFIX:?} are signed only by the identity service itself",
                self.0
            )));
        }
        Ok(())
    }

    pub(crate) fn internal(text: &'static str) -> Self {
        debug_assert!(text.starts_with(RESERVED_CONTEXT_PREFIX));
        Self(text.to_owned())
    }

    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_CONTEXT_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The exact bytes an ed25519 signature covers for `message` under `context`.
pub fn signed_bytes(context: &Context, message: &[u8]) -> Vec<u8> {
    let ctx = context.as_str().as_bytes();
    let mut out = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 1 + ctx.len() + 32);
    out.extend_from_slice(SIGNATURE_DOMAIN);
    out.push(ctx.len() as u8);
    out.extend_from_slice(ctx);
    out.extend_from_slice(blake3::hash(message).as_bytes());
    out
}

/// An ed25519 secret key held by the identity service. Zeroised on drop.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut rand_core::OsRng))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(bytes))
    }

    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, context: &Context, message: &[u8]) -> (Signature, Vec<u8>) {
        let signed = signed_bytes(context, message);
        (self.sign_raw(&signed), signed)
    }

    /// Signs exactly `signed` (no domain separation): for standard test vectors and for records
    /// that build their own signed bytes. Never exposed through the service API.
    pub fn sign_raw(&self, signed: &[u8]) -> Signature {
        Signature(self.0.sign(signed).to_bytes())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key())
    }
}

/// Verifies many `(public key, context, message, signature)` items at once with ed25519 batch
/// verification; on failure names the first bad item.
pub fn verify_batch(items: &[(PublicKey, Context, Vec<u8>, Signature)]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let signed: Vec<Vec<u8>> = items
        .iter()
        .map(|(_, c, m, _)| signed_bytes(c, m))
        .collect();
    let messages: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
    let signatures: Vec<ed25519_dalek::Signature> = items
        .iter()
        .map(|(_, _, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    let keys: Vec<VerifyingKey> = items.iter().map(|(k, _, _, _)| k.verifying_key()).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return Ok(());
    }
    for (index, ((key, _, _, signature), signed)) in items.iter().zip(&signed).enumerate() {
        if key.verify_raw(signed, signature).is_err() {
            return Err(IdentityError::BadSignature(format!(
                "signature {} of {} does not verify",
                index + 1,
                items.len()
            )));
        }
    }
    Err(IdentityError::BadSignature("batch does not verify".into()))
}

/// A SLIP-0010 ed25519 node: secret key and chain code.
pub struct Slip10Node {
    pub key: Zeroizing<[u8; 32]>,
    pub chain_code: Zeroizing<[u8; 32]>,
}

impl Slip10Node {
    pub fn master(seed: &[u8]) -> Self {
        Self::from_hmac(b"ed25519 seed", &[seed])
    }

    /// Hardened child `index` (the hardened bit is added here; ed25519 has only hardened children).
    pub fn child(&self, index: u32) -> Self {
        let hardened = (index | 0x8000_0000).to_be_bytes();
        Self::from_hmac(&self.chain_code[..], &[&[0u8], &self.key[..], &hardened])
    }

    pub fn derive_path(seed: &[u8], indices: &[u32]) -> Self {
        indices
            .iter()
            .fold(Self::master(seed), |node, &index| node.child(index))
    }

    fn from_hmac(key: &[u8], parts: &[&[u8]]) -> Self {
        let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("hmac takes any key length");
        for part in parts {
            mac.update(part);
        }
        let out = Zeroizing::new(<[u8; 64]>::from(mac.finalize().into_bytes()));
        let mut node = Self {
            key: Zeroizing::new([0; 32]),
            chain_code: Zeroizing::new([0; 32]),
        };
        node.key.copy_from_slice(&out[..32]);
        node.chain_code.copy_from_slice(&out[32..]);
        node
    }
}

/// Parses a path like `m/0H/1'` into hardened indices (every ed25519 SLIP-0010 step is hardened).
pub fn parse_hardened_path(path: &str) -> Result<Vec<u32>> {
    let mut parts = path.split('/');
    if parts.next() != Some("m") {
        return Err(IdentityError::InvalidArgument(format!(
            "path {path:?} must start with m"
        )));
    }
    parts
        .map(|part| {
            let digits = part
                .strip_suffix('\'')
                .or_else(|| part.strip_suffix('H'))
                .ok_or_else(|| {
                    IdentityError::InvalidArgument(format!("path step {part:?} must be hardened"))
                })?;
            digits
                .parse::<u32>()
                .ok()
                .filter(|i| *i < 0x8000_0000)
                .ok_or_else(|| {
                    IdentityError::InvalidArgument(format!("path step {part:?} is not an index"))
                })
        })
        .collect()
}

/// The identity key of a BIP39 seed, on [`IDENTITY_PATH`].
pub fn identity_key_from_seed(seed: &[u8; 64]) -> SecretKey {
    let node = Slip10Node::derive_path(seed, &IDENTITY_PATH_INDICES);
    SecretKey::from_bytes(&node.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_path_constant_matches_indices() {
        assert_eq!(
            parse_hardened_path(IDENTITY_PATH).unwrap(),
            IDENTITY_PATH_INDICES
        );
    }

    #[test]
    fn context_rules() {
        assert!(Context::new("chat/message").is_ok());
        assert!(Context::new("").is_err());
        assert!(Context::new("Upper").is_err());
        assert!(Context::new(&"a".repeat(65)).is_err());
        assert!(matches!(
            Context::for_caller("kith/device-attestation"),
            Err(IdentityError::ReservedContext(_))
        ));
    }

    #[test]
    fn signature_does_not_verify_under_another_context() {
        let key = SecretKey::generate();
        let a = Context::new("app/a").unwrap();
        let b = Context::new("app/b").unwrap();
        let (sig, _) = key.sign(&a, b"hello");
        key.public_key().verify(&a, b"hello", &sig).unwrap();
        assert!(matches!(
            key.public_key().verify(&b, b"hello", &sig),
            Err(IdentityError::BadSignature(_))
        ));
        assert!(key.public_key().verify(&a, b"hellO", &sig).is_err());
    }

    #[test]
    fn batch_verification_names_the_bad_item() {
        let key = SecretKey::generate();
        let ctx = Context::new("app/batch").unwrap();
        let mut items: Vec<_> = (0..8u8)
            .map(|i| {
                let (sig, _) = key.sign(&ctx, &[i]);
                (key.public_key(), ctx.clone(), vec![i], sig)
            })
            .collect();
        verify_batch(&items).unwrap();
        items[5].2 = vec![99];
        let err = verify_batch(&items).unwrap_err();
        assert_eq!(
            err,
            IdentityError::BadSignature("signature 6 of 8 does not verify".into())
        );
    }

    #[test]
    fn weak_and_invalid_public_keys_are_refused() {
        assert!(PublicKey::from_bytes(&[0u8; 31]).is_err());
        // The identity point (0, 1) is small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(&identity).is_err());
    }
}
