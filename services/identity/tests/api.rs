//! The identity API end to end, run the same way against the in-process client, gRPC over a Unix
//! socket and gRPC over TCP: results and typed errors must be identical.

mod common;

use bytes::Bytes;
use common::*;
use kith_identity::api::{MAX_BATCH_ITEMS, MAX_SIGN_MESSAGE, SignItem, VerifyItem};
use kith_identity::keys::{Context, Signature};
use kith_identity::records::{DeviceAttestation, ProfileUpdate, now};
use kith_identity::{IdentityError, IdentityService, KeyKind};

fn ctx(s: &str) -> Context {
    Context::new(s).unwrap()
}

#[tokio::test]
async fn signing_and_verification_behave_the_same_everywhere() {
    for via in ALL_VIAS {
        let dir = tempfile::tempdir().unwrap();
        let (home, service, _) = new_identity(dir.path(), "alice");
        let served = serve(&home, service, via).await;
        let c = &served.client;
        let info = c.show().await.unwrap();
        assert!(info.holds_identity_secret, "{via:?}");

        let signed = c
            .sign(
                KeyKind::Preferred,
                ctx("app/post"),
                Bytes::from_static(b"hi"),
            )
            .await
            .unwrap();
        assert_eq!(signed.public_key, info.identity);
        let item = VerifyItem {
            public_key: signed.public_key,
            context: ctx("app/post"),
            message: Bytes::from_static(b"hi"),
            signature: signed.signature,
        };
        c.verify(item.clone()).await.unwrap();
        let device_signed = c
            .sign(KeyKind::Device, ctx("app/post"), Bytes::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(device_signed.public_key, info.device);

        // The same signature under another context is refused, with the same typed error.
        let wrong = VerifyItem {
            context: ctx("app/other"),
            ..item.clone()
        };
        assert!(
            matches!(c.verify(wrong).await, Err(IdentityError::BadSignature(_))),
            "{via:?}"
        );
        // Reserved contexts cannot be signed by callers.
        let err = c
            .sign(
                KeyKind::Identity,
                ctx("kith/device-attestation"),
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::ReservedContext(_)),
            "{via:?}: {err:?}"
        );
        // Oversized messages are refused by the service, not truncated.
        let big = Bytes::from(vec![0u8; MAX_SIGN_MESSAGE + 1]);
        let err = c
            .sign(KeyKind::Device, ctx("app/big"), big)
            .await
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::TooLarge(_)),
            "{via:?}: {err:?}"
        );

        // Batches: sign many, verify them at once, and name a bad one.
        let items: Vec<SignItem> = (0..100u32)
            .map(|i| SignItem {
                context: ctx("app/batch"),
                message: Bytes::from(i.to_be_bytes().to_vec()),
            })
            .collect();
        let batch = c
            .sign_batch(KeyKind::Preferred, items.clone())
            .await
            .unwrap();
        assert_eq!(batch.signatures.len(), 100);
        let mut checks: Vec<VerifyItem> = items
            .iter()
            .zip(&batch.signatures)
            .map(|(i, s)| VerifyItem {
                public_key: batch.public_key,
                context: i.context.clone(),
                message: i.message.clone(),
                signature: *s,
            })
            .collect();
        c.verify_batch(checks.clone()).await.unwrap();
        checks[2].signature = Signature([7; 64]);
        assert_eq!(
            c.verify_batch(checks).await.unwrap_err(),
            IdentityError::BadSignature("signature 3 of 100 does not verify".into())
        );
        let too_many: Vec<SignItem> = (0..=MAX_BATCH_ITEMS)
            .map(|_| SignItem {
                context: ctx("app/x"),
                message: Bytes::new(),
            })
            .collect();
        assert!(matches!(
            c.sign_batch(KeyKind::Device, too_many).await,
            Err(IdentityError::TooLarge(_))
        ));

        if let Some(server) = served.server {
            server.shutdown().await;
        }
    }
}

#[tokio::test]
async fn devices_link_revoke_and_verify_the_same_everywhere() {
    for via in ALL_VIAS {
        let dir = tempfile::tempdir().unwrap();
        let (home, service, _) = new_identity(dir.path(), "alice");
        let own = service.attestation().clone();
        let served = serve(&home, service, via).await;
        let c = &served.client;

        // A new device asks to link; alice approves; the new device finishes.
        let laptop_home = kith_service::Home::new(dir.path().join("laptop"));
        let request = IdentityService::begin_link(&laptop_home, PASS, options("laptop")).unwrap();
        // Asking again gives the same request (the pending key is kept).
        assert_eq!(
            IdentityService::begin_link(&laptop_home, PASS, options("laptop")).unwrap(),
            request
        );
        let approval = c.approve_link(request.clone(), None).await.unwrap();
        let laptop =
            IdentityService::finish_link(&laptop_home, PASS, &approval.approval_code).unwrap();
        assert_eq!(laptop.identity(), own.identity);
        let laptop_att = laptop.attestation().clone();
        c.verify_device(laptop_att.clone(), None).await.unwrap();
        // A linked device holds no identity secret: it cannot approve or revoke.
        let laptop = kith_identity::IdentityClient::local(std::sync::Arc::new(laptop));
        let other = IdentityService::begin_link(
            &kith_service::Home::new(dir.path().join("x")),
            PASS,
            options("x"),
        )
        .unwrap();
        assert!(matches!(
            laptop.approve_link(other, None).await,
            Err(IdentityError::NoIdentitySecret(_))
        ));
        let signed = laptop
            .sign(KeyKind::Preferred, ctx("app/a"), Bytes::new())
            .await
            .unwrap();
        assert_eq!(signed.public_key, laptop_att.device);

        // A forged attestation (any field changed) is refused.
        let mut forged = laptop_att.clone();
        forged.name = "not the laptop".into();
        assert!(
            matches!(
                c.verify_device(forged, None).await,
                Err(IdentityError::BadSignature(_))
            ),
            "{via:?}"
        );

        // Per-device revocation: the laptop is revoked, alice's own device is not.
        let list = c
            .revoke_device(laptop_att.device, "stolen".into())
            .await
            .unwrap();
        assert_eq!(list.version, 1);
        assert!(matches!(
            c.verify_device(laptop_att.clone(), None).await,
            Err(IdentityError::Revoked(_))
        ));
        c.verify_device(own.clone(), None).await.unwrap();
        assert!(matches!(
            c.revoke_device(laptop_att.device, "again".into()).await,
            Err(IdentityError::FailedPrecondition(_))
        ));
        assert!(matches!(
            c.revoke_device(own.device, "oops".into()).await,
            Err(IdentityError::FailedPrecondition(_))
        ));
        assert!(matches!(
            c.approve_link(request, None).await,
            Err(IdentityError::Revoked(_))
        ));
        let devices = c.list_devices().await.unwrap();
        assert_eq!(devices.devices.len(), 2);
        assert!(
            devices
                .devices
                .iter()
                .any(|d| d.revoked && d.attestation.device == laptop_att.device)
        );
        assert!(devices.devices.iter().any(|d| d.this_device && !d.revoked));

        // A third party learns of the revocation from the signed list.
        let bob_dir = tempfile::tempdir().unwrap();
        let (_, bob, _) = new_identity(bob_dir.path(), "bob");
        let bob = kith_identity::IdentityClient::local(std::sync::Arc::new(bob));
        bob.verify_device(laptop_att.clone(), None).await.unwrap();
        assert!(matches!(
            bob.verify_device(laptop_att.clone(), Some(list.clone()))
                .await,
            Err(IdentityError::Revoked(_))
        ));
        // ...and remembers it, so later checks without the list are refused too.
        assert!(matches!(
            bob.verify_device(laptop_att, None).await,
            Err(IdentityError::Revoked(_))
        ));
        // A tampered list is refused.
        let mut tampered = list.clone();
        tampered.revoked.clear();
        assert!(matches!(
            bob.import_revocations(tampered).await,
            Err(IdentityError::BadSignature(_))
        ));

        if let Some(server) = served.server {
            server.shutdown().await;
        }
    }
}

#[tokio::test]
async fn expired_attestations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (home, service, _) = new_identity(dir.path(), "alice");
    let mut served = Vec::new();
    for via in ALL_VIAS {
        let (h, s) = if matches!(via, Via::Local) {
            let (h, s, _) = new_identity(dir.path(), "alice-local");
            (h, s)
        } else if matches!(via, Via::Unix) {
            let (h, s, _) = new_identity(dir.path(), "alice-unix");
            (h, s)
        } else {
            (home.clone(), IdentityService::open(&home, PASS).unwrap())
        };
        served.push((via, serve(&h, s, via).await));
    }
    drop(service);
    let mut attestations = Vec::new();
    for (i, (_, s)) in served.iter().enumerate() {
        let req = IdentityService::begin_link(
            &kith_service::Home::new(dir.path().join(format!("d{i}"))),
            PASS,
            options("short"),
        )
        .unwrap();
        let approval = s.client.approve_link(req, Some(now() + 2)).await.unwrap();
        s.client
            .verify_device(approval.attestation.clone(), None)
            .await
            .unwrap();
        attestations.push(approval.attestation);
    }
    // An expiry in the past is refused when approving.
    let req = IdentityService::begin_link(
        &kith_service::Home::new(dir.path().join("late")),
        PASS,
        options("late"),
    )
    .unwrap();
    assert!(matches!(
        served[0].1.client.approve_link(req, Some(now() - 1)).await,
        Err(IdentityError::InvalidArgument(_))
    ));
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    for ((via, s), att) in served.iter().zip(attestations) {
        let err = s.client.verify_device(att, None).await.unwrap_err();
        assert!(matches!(err, IdentityError::Expired(_)), "{via:?}: {err:?}");
    }
}

#[tokio::test]
async fn profiles_are_signed_versioned_and_validated() {
    for via in ALL_VIAS {
        let dir = tempfile::tempdir().unwrap();
        let (home, service, _) = new_identity(dir.path(), "alice");
        let served = serve(&home, service, via).await;
        let c = &served.client;
        assert!(matches!(
            c.get_profile(None).await,
            Err(IdentityError::NotFound(_))
        ));
        let v1 = c
            .set_profile(ProfileUpdate {
                display_name: "Alice".into(),
                bio: "hello".into(),
                avatar_hash: Some([9; 32]),
            })
            .await
            .unwrap();
        assert_eq!(v1.version, 1);
        let v2 = c
            .set_profile(ProfileUpdate {
                display_name: "Alice A.".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(c.get_profile(None).await.unwrap(), v2);
        let too_long = ProfileUpdate {
            display_name: "x".repeat(65),
            ..Default::default()
        };
        assert!(matches!(
            c.set_profile(too_long).await,
            Err(IdentityError::TooLarge(_))
        ));
        assert!(matches!(
            c.set_profile(ProfileUpdate {
                display_name: "a\u{7}b".into(),
                ..Default::default()
            })
            .await,
            Err(IdentityError::InvalidArgument(_))
        ));
        assert_eq!(
            c.get_profile(None).await.unwrap(),
            v2,
            "a refused update changes nothing"
        );

        // Bob imports alice's profile; an older one does not replace a newer; a forged one is refused.
        let bob_dir = tempfile::tempdir().unwrap();
        let (_, bob, _) = new_identity(bob_dir.path(), "bob");
        let bob = kith_identity::IdentityClient::local(std::sync::Arc::new(bob));
        bob.import_profile(v2.clone()).await.unwrap();
        assert!(matches!(
            bob.import_profile(v1.clone()).await,
            Err(IdentityError::Stale(_))
        ));
        let mut forged = v2.clone();
        forged.version = 3;
        forged.bio = "evil".into();
        assert!(matches!(
            bob.import_profile(forged).await,
            Err(IdentityError::BadSignature(_))
        ));
        assert_eq!(bob.get_profile(Some(v2.identity)).await.unwrap(), v2);

        if let Some(server) = served.server {
            server.shutdown().await;
        }
    }
}

#[tokio::test]
async fn delegated_keys_are_scoped_stable_and_verifiable() {
    for via in ALL_VIAS {
        let dir = tempfile::tempdir().unwrap();
        let (home, service, _) = new_identity(dir.path(), "alice");
        let served = serve(&home, service, via).await;
        let c = &served.client;
        let a = c.delegate("transport".into(), None).await.unwrap();
        let b = c
            .delegate("transport".into(), std::num::NonZeroU64::new(60))
            .await
            .unwrap();
        assert_eq!(
            a.delegation.scoped_key, b.delegation.scoped_key,
            "stable per device and scope"
        );
        let store = c.delegate("store".into(), None).await.unwrap();
        assert_ne!(store.delegation.scoped_key, a.delegation.scoped_key);
        assert_eq!(
            kith_identity::keys::SecretKey::from_bytes(&a.secret).public_key(),
            a.delegation.scoped_key
        );
        c.verify_delegation(a.delegation.clone(), "transport".into())
            .await
            .unwrap();
        assert!(matches!(
            c.verify_delegation(a.delegation.clone(), "store".into())
                .await,
            Err(IdentityError::WrongScope(_))
        ));
        let mut forged = a.delegation.clone();
        forged.expires_at += 1;
        assert!(matches!(
            c.verify_delegation(forged, "transport".into()).await,
            Err(IdentityError::BadSignature(_))
        ));
        assert!(matches!(
            c.delegate("Bad Scope".into(), None).await,
            Err(IdentityError::InvalidArgument(_))
        ));
        let too_long = std::num::NonZeroU64::new(kith_identity::MAX_DELEGATION_TTL + 1);
        assert!(matches!(
            c.delegate("x".into(), too_long).await,
            Err(IdentityError::InvalidArgument(_))
        ));
        if let Some(server) = served.server {
            server.shutdown().await;
        }
    }
}

#[test]
fn delegation_is_refused_after_the_device_attestation_expires() {
    let identity = kith_identity::keys::SecretKey::generate();
    let device = kith_identity::keys::SecretKey::generate();
    let att =
        DeviceAttestation::issue(&identity, device.public_key(), "d", Some(now() + 100)).unwrap();
    let scoped = kith_identity::keys::SecretKey::generate().public_key();
    let d =
        kith_identity::records::Delegation::issue(&device, att, scoped, "transport", now() + 1000);
    d.verify("transport", now()).unwrap();
    assert!(matches!(
        d.verify("transport", now() + 200),
        Err(IdentityError::Expired(_))
    ));
}
