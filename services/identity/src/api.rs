//! The identity service's API: the trait every implementation and every client speaks, and its
//! domain types (validated; never wire types).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::keys::{Context, PublicKey, Signature};
use crate::link::LinkRequest;
use crate::records::{Delegation, DeviceAttestation, Profile, ProfileUpdate, RevocationList};

/// Largest message `sign` accepts; callers hash larger payloads first.
pub const MAX_SIGN_MESSAGE: usize = 1024 * 1024;
/// Most items in one batch call.
pub const MAX_BATCH_ITEMS: usize = 4096;
/// Largest total message bytes in one batch call.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Which of this node's keys signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// The identity key, if this device holds it; otherwise the device key.
    #[default]
    Preferred,
    Identity,
    Device,
}

/// What `show` returns: everything public about this node's identity and device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    pub identity: PublicKey,
    pub device: PublicKey,
    pub id: String,
    pub search_code: String,
    pub derivation_path: String,
    pub attestation: DeviceAttestation,
    pub holds_identity_secret: bool,
}

/// A signature with what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedMessage {
    pub public_key: PublicKey,
    pub signature: Signature,
    /// The exact bytes the ed25519 signature covers (see [`crate::keys::signed_bytes`]).
    pub signed_bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignItem {
    pub context: Context,
    pub message: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSignature {
    pub public_key: PublicKey,
    pub signatures: Vec<Signature>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyItem {
    pub public_key: PublicKey,
    pub context: Context,
    pub message: Bytes,
    pub signature: Signature,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    pub attestation: DeviceAttestation,
    pub revoked: bool,
    pub this_device: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    pub devices: Vec<DeviceEntry>,
    pub revocations: Option<RevocationList>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkApproval {
    pub attestation: DeviceAttestation,
    /// The code the new device finishes linking with.
    pub approval_code: String,
}

/// A scoped key handed to another service, and the proof that this device delegated it.
pub struct DelegatedKey {
    pub delegation: Delegation,
    pub secret: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DelegatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelegatedKey")
            .field("delegation", &self.delegation)
            .finish_non_exhaustive()
    }
}

/// The identity service. Implemented by [`crate::IdentityService`] (in-process) and by the gRPC
/// remote client; callers hold an [`IdentityClient`] and cannot tell which.
#[async_trait]
pub trait IdentityApi: Send + Sync + 'static {
    async fn show(&self) -> Result<IdentityInfo>;

    async fn sign(&self, key: KeyKind, context: Context, message: Bytes) -> Result<SignedMessage>;
    async fn sign_batch(&self, key: KeyKind, items: Vec<SignItem>) -> Result<BatchSignature>;
    async fn verify(&self, item: VerifyItem) -> Result<()>;
    async fn verify_batch(&self, items: Vec<VerifyItem>) -> Result<()>;

    async fn list_devices(&self) -> Result<DeviceList>;
    /// Attests the device of a link request; needs the identity secret.
    async fn approve_link(
        &self,
        request: LinkRequest,
        expires_at: Option<u64>,
    ) -> Result<LinkApproval>;
    /// Adds `device` to this identity's revocation list; needs the identity secret.
    async fn revoke_device(&self, device: PublicKey, reason: String) -> Result<RevocationList>;
    /// "Does this device speak for this identity?": signature, expiry and revocation in one call.
    async fn verify_device(
        &self,
        attestation: DeviceAttestation,
        revocations: Option<RevocationList>,
    ) -> Result<()>;
    async fn import_revocations(&self, revocations: RevocationList) -> Result<()>;

    async fn set_profile(&self, update: ProfileUpdate) -> Result<Profile>;
    /// `None` is this node's own identity.
    async fn get_profile(&self, identity: Option<PublicKey>) -> Result<Profile>;
    async fn import_profile(&self, profile: Profile) -> Result<()>;

    /// Issues (or re-issues) the scoped key for `scope`: stable for this device and scope.
    async fn delegate(
        &self,
        scope: String,
        ttl_seconds: Option<std::num::NonZeroU64>,
    ) -> Result<DelegatedKey>;
    async fn verify_delegation(&self, delegation: Delegation, scope: String) -> Result<()>;
}

/// The client every caller of the identity service holds, in-process or remote.
pub type IdentityClient = kith_service::Client<dyn IdentityApi>;

impl kith_service::RemoteApi for dyn IdentityApi {
    fn remote(connection: kith_service::Connection) -> Arc<Self> {
        Arc::new(crate::grpc::RemoteIdentity::new(connection))
    }
}
