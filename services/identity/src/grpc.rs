//! The identity service over gRPC: the server adapter that serves any [`IdentityApi`], and the
//! remote implementation of [`IdentityApi`] that calls it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use kith_proto::identity::v1 as pb;
use kith_proto::identity::v1::identity_client::IdentityClient as GrpcClient;
use kith_proto::identity::v1::identity_server::{Identity, IdentityServer};
use kith_service::{AuthChannel, Connection, MAX_MESSAGE_BYTES, ServiceError};
use tonic::{Request, Response, Status};

use crate::api::*;
use crate::error::{IdentityError, Result};
use crate::keys::{Context, PublicKey, Signature};
use crate::link::LinkRequest;
use crate::records::{Delegation, DeviceAttestation, Profile, ProfileUpdate, RevocationList};
use crate::wire::{avatar_from_wire, key_kind_from_wire, key_kind_to_wire};

/// Serves `api` as the `kith.identity.v1.Identity` gRPC service.
pub fn grpc_service(api: Arc<dyn IdentityApi>) -> IdentityServer<IdentityGrpc> {
    IdentityServer::new(IdentityGrpc(api))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The gRPC adapter over any identity implementation.
pub struct IdentityGrpc(Arc<dyn IdentityApi>);

fn status(err: IdentityError) -> Status {
    err.to_status()
}

fn required<T>(field: Option<T>, name: &str) -> Result<T> {
    field.ok_or_else(|| IdentityError::InvalidArgument(format!("{name} is required")))
}

#[async_trait]
impl Identity for IdentityGrpc {
    async fn show(
        &self,
        _: Request<pb::ShowRequest>,
    ) -> Result<Response<pb::ShowResponse>, Status> {
        let info = self.0.show().await.map_err(status)?;
        Ok(Response::new((&info).into()))
    }

    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let r = request.into_inner();
        let key = key_kind_from_wire(r.key).map_err(status)?;
        let context = Context::new(&r.context).map_err(status)?;
        let signed = self.0.sign(key, context, r.message).await.map_err(status)?;
        Ok(Response::new(pb::SignResponse {
            public_key: signed.public_key.as_bytes().to_vec().into(),
            signature: signed.signature.0.to_vec().into(),
            signed_bytes: signed.signed_bytes.into(),
        }))
    }

    async fn sign_batch(
        &self,
        request: Request<pb::SignBatchRequest>,
    ) -> Result<Response<pb::SignBatchResponse>, Status> {
        let r = request.into_inner();
        let key = key_kind_from_wire(r.key).map_err(status)?;
        if r.items.len() > MAX_BATCH_ITEMS {
            return Err(status(IdentityError::TooLarge(format!(
                "batch has {} items; at most {MAX_BATCH_ITEMS} allowed",
                r.items.len()
            ))));
        }
        let items = r
            .items
            .into_iter()
            .map(|i| {
                Ok(SignItem {
                    context: Context::new(&i.context)?,
                    message: i.message,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        let batch = self.0.sign_batch(key, items).await.map_err(status)?;
        Ok(Response::new(pb::SignBatchResponse {
            public_key: batch.public_key.as_bytes().to_vec().into(),
            signatures: batch
                .signatures
                .iter()
                .map(|s| Bytes::copy_from_slice(&s.0))
                .collect(),
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let item = required(request.into_inner().item, "item")
            .and_then(TryInto::try_into)
            .map_err(status)?;
        self.0.verify(item).await.map_err(status)?;
        Ok(Response::new(pb::VerifyResponse {}))
    }

    async fn verify_batch(
        &self,
        request: Request<pb::VerifyBatchRequest>,
    ) -> Result<Response<pb::VerifyBatchResponse>, Status> {
        let items = request.into_inner().items;
        if items.len() > MAX_BATCH_ITEMS {
            return Err(status(IdentityError::TooLarge(format!(
                "batch has {} items; at most {MAX_BATCH_ITEMS} allowed",
                items.len()
            ))));
        }
        let items = items
            .into_iter()
            .map(TryInto::try_into)
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        self.0.verify_batch(items).await.map_err(status)?;
        Ok(Response::new(pb::VerifyBatchResponse {}))
    }

    async fn list_devices(
        &self,
        _: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let list = self.0.list_devices().await.map_err(status)?;
        Ok(Response::new((&list).into()))
    }

    async fn approve_link(
        &self,
        request: Request<pb::ApproveLinkRequest>,
    ) -> Result<Response<pb::ApproveLinkResponse>, Status> {
        let r = request.into_inner();
        let link = LinkRequest::decode(&r.link_code).map_err(status)?;
        let approval = self
            .0
            .approve_link(link, (r.expires_at != 0).then_some(r.expires_at))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ApproveLinkResponse {
            attestation: Some((&approval.attestation).into()),
            approval_code: approval.approval_code,
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let r = request.into_inner();
        let device = PublicKey::from_bytes(&r.device_public_key).map_err(status)?;
        let list = self
            .0
            .revoke_device(device, r.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RevokeDeviceResponse {
            revocations: Some((&list).into()),
        }))
    }

    async fn verify_device(
        &self,
        request: Request<pb::VerifyDeviceRequest>,
    ) -> Result<Response<pb::VerifyDeviceResponse>, Status> {
        let r = request.into_inner();
        let attestation: DeviceAttestation = required(r.attestation, "attestation")
            .and_then(TryInto::try_into)
            .map_err(status)?;
        let revocations: Option<RevocationList> = r
            .revocations
            .map(TryInto::try_into)
            .transpose()
            .map_err(status)?;
        self.0
            .verify_device(attestation, revocations)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::VerifyDeviceResponse {}))
    }

    async fn import_revocations(
        &self,
        request: Request<pb::ImportRevocationsRequest>,
    ) -> Result<Response<pb::ImportRevocationsResponse>, Status> {
        let list = required(request.into_inner().revocations, "revocations")
            .and_then(TryInto::try_into)
            .map_err(status)?;
        self.0.import_revocations(list).await.map_err(status)?;
        Ok(Response::new(pb::ImportRevocationsResponse {}))
    }

    async fn set_profile(
        &self,
        request: Request<pb::SetProfileRequest>,
    ) -> Result<Response<pb::SetProfileResponse>, Status> {
        let r = request.into_inner();
        let update = ProfileUpdate {
            display_name: r.display_name,
            bio: r.bio,
            avatar_hash: avatar_from_wire(&r.avatar_hash).map_err(status)?,
        };
        let profile = self.0.set_profile(update).await.map_err(status)?;
        Ok(Response::new(pb::SetProfileResponse {
            profile: Some((&profile).into()),
        }))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let r = request.into_inner();
        let identity = if r.identity_public_key.is_empty() {
            None
        } else {
            Some(PublicKey::from_bytes(&r.identity_public_key).map_err(status)?)
        };
        let profile = self.0.get_profile(identity).await.map_err(status)?;
        Ok(Response::new(pb::GetProfileResponse {
            profile: Some((&profile).into()),
        }))
    }

    async fn import_profile(
        &self,
        request: Request<pb::ImportProfileRequest>,
    ) -> Result<Response<pb::ImportProfileResponse>, Status> {
        let profile = required(request.into_inner().profile, "profile")
            .and_then(TryInto::try_into)
            .map_err(status)?;
        self.0.import_profile(profile).await.map_err(status)?;
        Ok(Response::new(pb::ImportProfileResponse {}))
    }

    async fn delegate(
        &self,
        request: Request<pb::DelegateRequest>,
    ) -> Result<Response<pb::DelegateResponse>, Status> {
        let r = request.into_inner();
        let key = self
            .0
            .delegate(r.scope, std::num::NonZeroU64::new(r.ttl_seconds))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DelegateResponse {
            delegation: Some((&key.delegation).into()),
            scoped_secret_key: Bytes::copy_from_slice(&key.secret[..]),
        }))
    }

    async fn verify_delegation(
        &self,
        request: Request<pb::VerifyDelegationRequest>,
    ) -> Result<Response<pb::VerifyDelegationResponse>, Status> {
        let r = request.into_inner();
        let delegation = required(r.delegation, "delegation")
            .and_then(TryInto::try_into)
            .map_err(status)?;
        self.0
            .verify_delegation(delegation, r.scope)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::VerifyDelegationResponse {}))
    }
}

/// [`IdentityApi`] over gRPC.
pub struct RemoteIdentity {
    client: GrpcClient<AuthChannel>,
}

impl RemoteIdentity {
    pub fn new(connection: Connection) -> Self {
        Self {
            client: GrpcClient::new(connection.channel())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                // No client-side cap: the server enforces its limit and answers with a typed
                // `TooLarge` error, the same one a local caller gets.
                .max_encoding_message_size(usize::MAX),
        }
    }

    /// Sends `request` with `method`, reconnecting if the service restarted, and maps the status
    /// back to the typed error.
    async fn call<Q, R, F, Fut>(&self, request: Q, method: F) -> Result<R>
    where
        Q: Clone,
        F: Fn(GrpcClient<AuthChannel>, Q) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        kith_service::unary(&self.client, request, method).await
    }
}

fn verify_item_to_wire(item: &VerifyItem) -> pb::VerifyItem {
    item.into()
}

#[async_trait]
impl IdentityApi for RemoteIdentity {
    async fn show(&self) -> Result<IdentityInfo> {
        self.call(
            pb::ShowRequest {},
            |mut c, r| async move { c.show(r).await },
        )
        .await?
        .try_into()
    }

    async fn sign(&self, key: KeyKind, context: Context, message: Bytes) -> Result<SignedMessage> {
        let request = pb::SignRequest {
            context: context.as_str().to_owned(),
            message,
            key: key_kind_to_wire(key),
        };
        let r = self
            .call(request, |mut c, r| async move { c.sign(r).await })
            .await?;
        Ok(SignedMessage {
            public_key: PublicKey::from_bytes(&r.public_key)?,
            signature: Signature::from_bytes(&r.signature)?,
            signed_bytes: r.signed_bytes.to_vec(),
        })
    }

    async fn sign_batch(&self, key: KeyKind, items: Vec<SignItem>) -> Result<BatchSignature> {
        let request = pb::SignBatchRequest {
            items: items
                .into_iter()
                .map(|i| pb::SignItem {
                    context: i.context.as_str().to_owned(),
                    message: i.message,
                })
                .collect(),
            key: key_kind_to_wire(key),
        };
        let r = self
            .call(request, |mut c, r| async move { c.sign_batch(r).await })
            .await?;
        Ok(BatchSignature {
            public_key: PublicKey::from_bytes(&r.public_key)?,
            signatures: r
                .signatures
                .iter()
                .map(|s| Signature::from_bytes(s))
                .collect::<Result<_>>()?,
        })
    }

    async fn verify(&self, item: VerifyItem) -> Result<()> {
        let request = pb::VerifyRequest {
            item: Some(verify_item_to_wire(&item)),
        };
        self.call(request, |mut c, r| async move { c.verify(r).await })
            .await
            .map(|_| ())
    }

    async fn verify_batch(&self, items: Vec<VerifyItem>) -> Result<()> {
        let request = pb::VerifyBatchRequest {
            items: items.iter().map(verify_item_to_wire).collect(),
        };
        self.call(request, |mut c, r| async move { c.verify_batch(r).await })
            .await
            .map(|_| ())
    }

    async fn list_devices(&self) -> Result<DeviceList> {
        self.call(pb::ListDevicesRequest {}, |mut c, r| async move {
            c.list_devices(r).await
        })
        .await?
        .try_into()
    }

    async fn approve_link(
        &self,
        request: LinkRequest,
        expires_at: Option<u64>,
    ) -> Result<LinkApproval> {
        let request = pb::ApproveLinkRequest {
            link_code: request.encode(),
            expires_at: expires_at.unwrap_or(0),
        };
        let r = self
            .call(request, |mut c, r| async move { c.approve_link(r).await })
            .await?;
        Ok(LinkApproval {
            attestation: required(r.attestation, "attestation")?.try_into()?,
            approval_code: r.approval_code,
        })
    }

    async fn revoke_device(&self, device: PublicKey, reason: String) -> Result<RevocationList> {
        let request = pb::RevokeDeviceRequest {
            device_public_key: device.as_bytes().to_vec().into(),
            reason,
        };
        let r = self
            .call(request, |mut c, r| async move { c.revoke_device(r).await })
            .await?;
        required(r.revocations, "revocations")?.try_into()
    }

    async fn verify_device(
        &self,
        attestation: DeviceAttestation,
        revocations: Option<RevocationList>,
    ) -> Result<()> {
        let request = pb::VerifyDeviceRequest {
            attestation: Some((&attestation).into()),
            revocations: revocations.as_ref().map(Into::into),
        };
        self.call(request, |mut c, r| async move { c.verify_device(r).await })
            .await
            .map(|_| ())
    }

    async fn import_revocations(&self, revocations: RevocationList) -> Result<()> {
        let request = pb::ImportRevocationsRequest {
            revocations: Some((&revocations).into()),
        };
        self.call(
            request,
            |mut c, r| async move { c.import_revocations(r).await },
        )
        .await
        .map(|_| ())
    }

    async fn set_profile(&self, update: ProfileUpdate) -> Result<Profile> {
        let request = pb::SetProfileRequest {
            display_name: update.display_name,
            bio: update.bio,
            avatar_hash: update
                .avatar_hash
                .map(|h| h.to_vec())
                .unwrap_or_default()
                .into(),
        };
        let r = self
            .call(request, |mut c, r| async move { c.set_profile(r).await })
            .await?;
        required(r.profile, "profile")?.try_into()
    }

    async fn get_profile(&self, identity: Option<PublicKey>) -> Result<Profile> {
        let request = pb::GetProfileRequest {
            identity_public_key: identity
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default()
                .into(),
        };
        let r = self
            .call(request, |mut c, r| async move { c.get_profile(r).await })
            .await?;
        required(r.profile, "profile")?.try_into()
    }

    async fn import_profile(&self, profile: Profile) -> Result<()> {
        let request = pb::ImportProfileRequest {
            profile: Some((&profile).into()),
        };
        self.call(request, |mut c, r| async move { c.import_profile(r).await })
            .await
            .map(|_| ())
    }

    async fn delegate(
        &self,
        scope: String,
        ttl_seconds: Option<std::num::NonZeroU64>,
    ) -> Result<DelegatedKey> {
        let request = pb::DelegateRequest {
            scope,
            ttl_seconds: ttl_seconds.map_or(0, std::num::NonZeroU64::get),
        };
        let r = self
            .call(request, |mut c, r| async move { c.delegate(r).await })
            .await?;
        let secret: [u8; 32] = r.scoped_secret_key.as_ref().try_into().map_err(|_| {
            IdentityError::InvalidArgument("scoped secret key must be 32 bytes".into())
        })?;
        let delegation: Delegation = required(r.delegation, "delegation")?.try_into()?;
        if crate::keys::SecretKey::from_bytes(&secret).public_key() != delegation.scoped_key {
            return Err(IdentityError::InvalidArgument(
                "scoped secret does not match the delegated key".into(),
            ));
        }
        Ok(DelegatedKey {
            delegation,
            secret: zeroize::Zeroizing::new(secret),
        })
    }

    async fn verify_delegation(&self, delegation: Delegation, scope: String) -> Result<()> {
        let request = pb::VerifyDelegationRequest {
            delegation: Some((&delegation).into()),
            scope,
        };
        self.call(
            request,
            |mut c, r| async move { c.verify_delegation(r).await },
        )
        .await
        .map(|_| ())
    }
}
