//! Signed public records: device attestations, revocation lists, profiles and delegations.
//!
//! Each record signs a canonical binary encoding of its fields (length-prefixed, fixed order)
//! under its own reserved context, so a record can never be replayed as another kind of record
//! or as a caller's signature.

use serde::{Deserialize, Serialize};

use crate::error::{IdentityError, Result};
use crate::keys::{Context, PublicKey, SecretKey, Signature};

pub const ATTESTATION_CONTEXT: &str = "kith/device-attestation";
pub const REVOCATION_CONTEXT: &str = "kith/revocation-list";
pub const PROFILE_CONTEXT: &str = "kith/profile";
pub const DELEGATION_CONTEXT: &str = "kith/delegation";

pub const MAX_NAME_LEN: usize = 64;
pub const MAX_BIO_LEN: usize = 512;
pub const MAX_REASON_LEN: usize = 200;
pub const MAX_REVOKED: usize = 4096;

/// Canonical encoder: fixed field order, big-endian integers, u32 length before variable fields.
#[derive(Default)]
struct Canon(Vec<u8>);

impl Canon {
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }
    fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
}

/// Validates a short human text (a name or reason): bounded, no control characters.
pub fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(IdentityError::TooLarge(format!(
            "{what} is {} bytes; at most {max} allowed",
            text.len()
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(IdentityError::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A device key attested by an identity key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAttestation {
    pub identity: PublicKey,
    pub device: PublicKey,
    pub name: String,
    pub created_at: u64,
    /// `None`: never expires.
    pub expires_at: Option<u64>,
    pub signature: Signature,
}

impl DeviceAttestation {
    fn signed_fields(
        identity: &PublicKey,
        device: &PublicKey,
        name: &str,
        created_at: u64,
        expires_at: Option<u64>,
    ) -> Vec<u8> {
        Canon::default()
            .bytes(identity.as_bytes())
            .bytes(device.as_bytes())
            .str(name)
            .u64(created_at)
            .u64(expires_at.unwrap_or(0))
            .0
    }

    pub fn issue(
        identity: &SecretKey,
        device: PublicKey,
        name: &str,
        expires_at: Option<u64>,
    ) -> Result<Self> {
        check_text("device name", name, MAX_NAME_LEN)?;
        let created_at = now();
        if expires_at.is_some_and(|e| e <= created_at) {
            return Err(IdentityError::InvalidArgument(
                "expiry must be in the future".into(),
            ));
        }
        let fields = Self::signed_fields(
            &identity.public_key(),
            &device,
            name,
            created_at,
            expires_at,
        );
        let (signature, _) = identity.sign(&Context::internal(ATTESTATION_CONTEXT), &fields);
        Ok(Self {
            identity: identity.public_key(),
            device,
            name: name.to_owned(),
            created_at,
            expires_at,
            signature,
        })
    }

    /// Checks the signature, the field bounds and, at time `at`, the expiry. Revocation is the
    /// caller's business (it needs the identity's revocation list).
    pub fn verify(&self, at: u64) -> Result<()> {
        check_text("device name", &self.name, MAX_NAME_LEN)?;
        let fields = Self::signed_fields(
            &self.identity,
            &self.device,
            &self.name,
            self.created_at,
            self.expires_at,
        );
        self.identity
            .verify(
                &Context::internal(ATTESTATION_CONTEXT),
                &fields,
                &self.signature,
            )
            .map_err(|_| {
                IdentityError::BadSignature(
                    "device attestation is not signed by its identity".into(),
                )
            })?;
        if let Some(expires_at) = self.expires_at
            && expires_at <= at
        {
            return Err(IdentityError::Expired(format!(
                "attestation of device {} expired at {expires_at}",
                self.device
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedDevice {
    pub device: PublicKey,
    pub revoked_at: u64,
    pub reason: String,
}

/// An identity's signed, versioned list of revoked devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    pub identity: PublicKey,
    pub version: u64,
    pub revoked: Vec<RevokedDevice>,
    pub signature: Signature,
}

impl RevocationList {
    fn signed_fields(identity: &PublicKey, version: u64, revoked: &[RevokedDevice]) -> Vec<u8> {
        let mut canon = Canon::default()
            .bytes(identity.as_bytes())
            .u64(version)
            .u64(revoked.len() as u64);
        for entry in revoked {
            canon = canon
                .bytes(entry.device.as_bytes())
                .u64(entry.revoked_at)
                .str(&entry.reason);
        }
        canon.0
    }

    /// The next version of `previous` (or version 1) with `device` added.
    pub fn extend(
        identity: &SecretKey,
        previous: Option<&RevocationList>,
        device: PublicKey,
        reason: &str,
    ) -> Result<Self> {
        check_text("revocation reason", reason, MAX_REASON_LEN)?;
        let mut revoked = previous.map(|p| p.revoked.clone()).unwrap_or_default();
        if revoked.iter().any(|r| r.device == device) {
            return Err(IdentityError::FailedPrecondition(format!(
                "device {device} is already revoked"
            )));
        }
        if revoked.len() >= MAX_REVOKED {
            return Err(IdentityError::TooLarge(format!(
                "revocation list holds the maximum of {MAX_REVOKED} devices"
            )));
        }
        revoked.push(RevokedDevice {
            device,
            revoked_at: now(),
            reason: reason.to_owned(),
        });
        let version = previous.map_or(1, |p| p.version + 1);
        let fields = Self::signed_fields(&identity.public_key(), version, &revoked);
        let (signature, _) = identity.sign(&Context::internal(REVOCATION_CONTEXT), &fields);
        Ok(Self {
            identity: identity.public_key(),
            version,
            revoked,
            signature,
        })
    }

    pub fn verify(&self) -> Result<()> {
        if self.revoked.len() > MAX_REVOKED {
            return Err(IdentityError::TooLarge(format!(
                "revocation list has more than {MAX_REVOKED} entries"
            )));
        }
        for entry in &self.revoked {
            check_text("revocation reason", &entry.reason, MAX_REASON_LEN)?;
        }
        let fields = Self::signed_fields(&self.identity, self.version, &self.revoked);
        self.identity
            .verify(
                &Context::internal(REVOCATION_CONTEXT),
                &fields,
                &self.signature,
            )
            .map_err(|_| {
                IdentityError::BadSignature("revocation list is not signed by its identity".into())
            })
    }

    pub fn is_revoked(&self, device: &PublicKey) -> bool {
        self.revoked.iter().any(|r| &r.device == device)
    }
}

/// A signed, versioned public profile; a higher version replaces a lower one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub identity: PublicKey,
    pub version: u64,
    pub display_name: String,
    pub bio: String,
    /// BLAKE3 hash of the avatar image.
    pub avatar_hash: Option<[u8; 32]>,
    pub updated_at: u64,
    /// The device that signed the profile, with the attestation that it speaks for `identity`.
    pub signer: DeviceAttestation,
    pub signature: Signature,
}

/// The fields a user sets on their profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    pub display_name: String,
    pub bio: String,
    pub avatar_hash: Option<[u8; 32]>,
}

impl ProfileUpdate {
    pub fn validate(&self) -> Result<()> {
        check_text("display name", &self.display_name, MAX_NAME_LEN)?;
        check_text("bio", &self.bio, MAX_BIO_LEN)
    }
}

impl Profile {
    fn signed_fields(&self) -> Vec<u8> {
        Canon::default()
            .bytes(self.identity.as_bytes())
            .u64(self.version)
            .str(&self.display_name)
            .str(&self.bio)
            .bytes(self.avatar_hash.as_ref().map_or(&[][..], |h| &h[..]))
            .u64(self.updated_at)
            .bytes(self.signer.device.as_bytes())
            .0
    }

    pub fn sign(
        device: &SecretKey,
        signer: DeviceAttestation,
        version: u64,
        update: ProfileUpdate,
    ) -> Result<Self> {
        update.validate()?;
        let mut profile = Self {
            identity: signer.identity,
            version,
            display_name: update.display_name,
            bio: update.bio,
            avatar_hash: update.avatar_hash,
            updated_at: now(),
            signer,
            signature: Signature([0; 64]),
        };
        let (signature, _) = device.sign(
            &Context::internal(PROFILE_CONTEXT),
            &profile.signed_fields(),
        );
        profile.signature = signature;
        Ok(profile)
    }

    /// Checks the fields, the signer's attestation and the signature. Revocation of the signer is
    /// checked by the caller.
    pub fn verify(&self, at: u64) -> Result<()> {
        ProfileUpdate {
            display_name: self.display_name.clone(),
            bio: self.bio.clone(),
            avatar_hash: self.avatar_hash,
        }
        .validate()?;
        if self.signer.identity != self.identity {
            return Err(IdentityError::WrongIdentity(
                "profile signer belongs to another identity".into(),
            ));
        }
        self.signer.verify(at)?;
        self.signer
            .device
            .verify(
                &Context::internal(PROFILE_CONTEXT),
                &self.signed_fields(),
                &self.signature,
            )
            .map_err(|_| IdentityError::BadSignature("profile signature does not verify".into()))
    }
}

/// A scoped key delegated by a device to another service (for example the transport's node key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub scoped_key: PublicKey,
    pub scope: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub device: DeviceAttestation,
    pub signature: Signature,
}

impl Delegation {
    fn signed_fields(&self) -> Vec<u8> {
        Canon::default()
            .bytes(self.scoped_key.as_bytes())
            .str(&self.scope)
            .u64(self.issued_at)
            .u64(self.expires_at)
            .bytes(self.device.device.as_bytes())
            .0
    }

    pub fn issue(
        device: &SecretKey,
        attestation: DeviceAttestation,
        scoped_key: PublicKey,
        scope: &str,
        expires_at: u64,
    ) -> Self {
        let mut delegation = Self {
            scoped_key,
            scope: scope.to_owned(),
            issued_at: now(),
            expires_at,
            device: attestation,
            signature: Signature([0; 64]),
        };
        let (signature, _) = device.sign(
            &Context::internal(DELEGATION_CONTEXT),
            &delegation.signed_fields(),
        );
        delegation.signature = signature;
        delegation
    }

    /// Checks the device attestation, the signature, the scope and expiry at time `at`.
    pub fn verify(&self, scope: &str, at: u64) -> Result<()> {
        if self.scope != scope {
            return Err(IdentityError::WrongScope(format!(
                "delegation is for scope {:?}, not {scope:?}",
                self.scope
            )));
        }
        self.device.verify(at)?;
        self.device
            .device
            .verify(
                &Context::internal(DELEGATION_CONTEXT),
                &self.signed_fields(),
                &self.signature,
            )
            .map_err(|_| {
                IdentityError::BadSignature("delegation is not signed by its device".into())
            })?;
        if self.expires_at <= at {
            return Err(IdentityError::Expired(format!(
                "delegation expired at {}",
                self.expires_at
            )));
        }
        Ok(())
    }
}
