//! Conversions between wire types (`kith_proto::identity::v1`) and domain types. Everything
//! received is validated here: a malformed field is an `InvalidArgument`, never a panic.

use kith_proto::identity::v1 as pb;

use crate::api::*;
use crate::error::{IdentityError, Result};
use crate::keys::{Context, PublicKey, Signature};
use crate::records::{Delegation, DeviceAttestation, Profile, RevocationList, RevokedDevice};

fn required<T>(field: Option<T>, name: &str) -> Result<T> {
    field.ok_or_else(|| IdentityError::InvalidArgument(format!("{name} is required")))
}

fn opt_time(t: u64) -> Option<u64> {
    (t != 0).then_some(t)
}

pub fn key_kind_from_wire(kind: i32) -> Result<KeyKind> {
    match pb::KeyKind::try_from(kind) {
        Ok(pb::KeyKind::Unspecified) => Ok(KeyKind::Preferred),
        Ok(pb::KeyKind::Identity) => Ok(KeyKind::Identity),
        Ok(pb::KeyKind::Device) => Ok(KeyKind::Device),
        Err(_) => Err(IdentityError::InvalidArgument(format!(
            "unknown key kind {kind}"
        ))),
    }
}

pub fn key_kind_to_wire(kind: KeyKind) -> i32 {
    let kind = match kind {
        KeyKind::Preferred => pb::KeyKind::Unspecified,
        KeyKind::Identity => pb::KeyKind::Identity,
        KeyKind::Device => pb::KeyKind::Device,
    };
    kind as i32
}

impl From<&DeviceAttestation> for pb::DeviceAttestation {
    fn from(a: &DeviceAttestation) -> Self {
        Self {
            identity_public_key: a.identity.as_bytes().to_vec().into(),
            device_public_key: a.device.as_bytes().to_vec().into(),
            name: a.name.clone(),
            created_at: a.created_at,
            expires_at: a.expires_at.unwrap_or(0),
            signature: a.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::DeviceAttestation> for DeviceAttestation {
    type Error = IdentityError;
    fn try_from(a: pb::DeviceAttestation) -> Result<Self> {
        Ok(Self {
            identity: PublicKey::from_bytes(&a.identity_public_key)?,
            device: PublicKey::from_bytes(&a.device_public_key)?,
            name: a.name,
            created_at: a.created_at,
            expires_at: opt_time(a.expires_at),
            signature: Signature::from_bytes(&a.signature)?,
        })
    }
}

impl From<&RevocationList> for pb::RevocationList {
    fn from(l: &RevocationList) -> Self {
        Self {
            identity_public_key: l.identity.as_bytes().to_vec().into(),
            version: l.version,
            revoked: l
                .revoked
                .iter()
                .map(|r| pb::RevokedDevice {
                    device_public_key: r.device.as_bytes().to_vec().into(),
                    revoked_at: r.revoked_at,
                    reason: r.reason.clone(),
                })
                .collect(),
            signature: l.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::RevocationList> for RevocationList {
    type Error = IdentityError;
    fn try_from(l: pb::RevocationList) -> Result<Self> {
        Ok(Self {
            identity: PublicKey::from_bytes(&l.identity_public_key)?,
            version: l.version,
            revoked: l
                .revoked
                .into_iter()
                .map(|r| {
                    Ok(RevokedDevice {
                        device: PublicKey::from_bytes(&r.device_public_key)?,
                        revoked_at: r.revoked_at,
                        reason: r.reason,
                    })
                })
                .collect::<Result<_>>()?,
            signature: Signature::from_bytes(&l.signature)?,
        })
    }
}

pub fn avatar_from_wire(bytes: &[u8]) -> Result<Option<[u8; 32]>> {
    match bytes.len() {
        0 => Ok(None),
        32 => Ok(Some(bytes.try_into().expect("32 bytes"))),
        n => Err(IdentityError::InvalidArgument(format!(
            "avatar hash must be 32 bytes, got {n}"
        ))),
    }
}

impl From<&Profile> for pb::Profile {
    fn from(p: &Profile) -> Self {
        Self {
            identity_public_key: p.identity.as_bytes().to_vec().into(),
            version: p.version,
            display_name: p.display_name.clone(),
            bio: p.bio.clone(),
            avatar_hash: p.avatar_hash.map(|h| h.to_vec()).unwrap_or_default().into(),
            updated_at: p.updated_at,
            signer: Some((&p.signer).into()),
            signature: p.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::Profile> for Profile {
    type Error = IdentityError;
    fn try_from(p: pb::Profile) -> Result<Self> {
        Ok(Self {
            identity: PublicKey::from_bytes(&p.identity_public_key)?,
            version: p.version,
            display_name: p.display_name,
            bio: p.bio,
            avatar_hash: avatar_from_wire(&p.avatar_hash)?,
            updated_at: p.updated_at,
            signer: required(p.signer, "profile signer")?.try_into()?,
            signature: Signature::from_bytes(&p.signature)?,
        })
    }
}

impl From<&Delegation> for pb::Delegation {
    fn from(d: &Delegation) -> Self {
        Self {
            scoped_public_key: d.scoped_key.as_bytes().to_vec().into(),
            scope: d.scope.clone(),
            issued_at: d.issued_at,
            expires_at: d.expires_at,
            device: Some((&d.device).into()),
            signature: d.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::Delegation> for Delegation {
    type Error = IdentityError;
    fn try_from(d: pb::Delegation) -> Result<Self> {
        Ok(Self {
            scoped_key: PublicKey::from_bytes(&d.scoped_public_key)?,
            scope: d.scope,
            issued_at: d.issued_at,
            expires_at: d.expires_at,
            device: required(d.device, "delegation device")?.try_into()?,
            signature: Signature::from_bytes(&d.signature)?,
        })
    }
}

impl From<&VerifyItem> for pb::VerifyItem {
    fn from(i: &VerifyItem) -> Self {
        Self {
            public_key: i.public_key.as_bytes().to_vec().into(),
            context: i.context.as_str().to_owned(),
            message: i.message.clone(),
            signature: i.signature.0.to_vec().into(),
        }
    }
}

impl TryFrom<pb::VerifyItem> for VerifyItem {
    type Error = IdentityError;
    fn try_from(i: pb::VerifyItem) -> Result<Self> {
        Ok(Self {
            public_key: PublicKey::from_bytes(&i.public_key)?,
            context: Context::new(&i.context)?,
            message: i.message,
            signature: Signature::from_bytes(&i.signature)?,
        })
    }
}

impl From<&IdentityInfo> for pb::ShowResponse {
    fn from(i: &IdentityInfo) -> Self {
        Self {
            identity_public_key: i.identity.as_bytes().to_vec().into(),
            device_public_key: i.device.as_bytes().to_vec().into(),
            id: i.id.clone(),
            search_code: i.search_code.clone(),
            derivation_path: i.derivation_path.clone(),
            device: Some((&i.attestation).into()),
            holds_identity_secret: i.holds_identity_secret,
        }
    }
}

impl TryFrom<pb::ShowResponse> for IdentityInfo {
    type Error = IdentityError;
    fn try_from(r: pb::ShowResponse) -> Result<Self> {
        Ok(Self {
            identity: PublicKey::from_bytes(&r.identity_public_key)?,
            device: PublicKey::from_bytes(&r.device_public_key)?,
            id: r.id,
            search_code: r.search_code,
            derivation_path: r.derivation_path,
            attestation: required(r.device, "device attestation")?.try_into()?,
            holds_identity_secret: r.holds_identity_secret,
        })
    }
}

impl From<&DeviceList> for pb::ListDevicesResponse {
    fn from(l: &DeviceList) -> Self {
        Self {
            devices: l
                .devices
                .iter()
                .map(|d| pb::DeviceEntry {
                    attestation: Some((&d.attestation).into()),
                    revoked: d.revoked,
                    this_device: d.this_device,
                })
                .collect(),
            revocations: l.revocations.as_ref().map(Into::into),
        }
    }
}

impl TryFrom<pb::ListDevicesResponse> for DeviceList {
    type Error = IdentityError;
    fn try_from(r: pb::ListDevicesResponse) -> Result<Self> {
        Ok(Self {
            devices: r
                .devices
                .into_iter()
                .map(|d| {
                    Ok(DeviceEntry {
                        attestation: required(d.attestation, "device attestation")?.try_into()?,
                        revoked: d.revoked,
                        this_device: d.this_device,
                    })
                })
                .collect::<Result<_>>()?,
            revocations: r.revocations.map(TryInto::try_into).transpose()?,
        })
    }
}
