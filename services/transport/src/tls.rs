//! TLS 1.3 in which both ends are authenticated by their ed25519 node keys, and by nothing else.
//!
//! Each end presents an RFC 7250 *raw public key* instead of an X.509 certificate: the TLS
//! `Certificate` message carries just the 44-byte DER `SubjectPublicKeyInfo` of its node key,
//! and the `CertificateVerify` signature proves possession of the secret half. Raw keys were
//! chosen over pinned self-signed certificates because there is then nothing to parse but a fixed
//! 12-byte prefix and 32 key bytes (no ASN.1 certificate parser on the attack surface, no names,
//! CAs or validity dates to ignore), the handshake is smaller, and rustls 0.23 negotiates them
//! through its resolver and verifier hooks (`only_raw_public_keys`, `requires_raw_public_keys`)
//! with no change to quinn. A peer that does not offer raw keys fails the handshake.
//!
//! The verifiers here:
//! - refuse any key that is not ed25519, or that is a weak ed25519 point ([`PeerId`] rules);
//! - verify the TLS 1.3 `CertificateVerify` signature with that key (ed25519-dalek's
//!   `verify_strict`: canonical encodings only, no small-order components; its AVX2 backend is
//!   about twice as fast as ring's, which matters on a handshake with two verifications), and
//!   accept only the `ed25519` signature scheme;
//! - on the dialling side, refuse a key other than the [`PeerId`] being dialled, and remember the
//!   key that was shown so the caller gets a typed [`TransportError::WrongPeer`].
//!
//! The server requires client authentication and learns the client's peer id from its key.
//! Session resumption, tickets and 0-RTT are off: a resumed TLS 1.3 session presents no key, so
//! a ticket from one peer must never stand in for another.

use std::any::Any;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, NoServerSessionStorage};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    PeerIncompatible, PeerMisbehaved, SignatureScheme,
};
use zeroize::Zeroizing;

use crate::error::TransportError;
use crate::peer::{PeerId, SecretKey};

/// DER of `SubjectPublicKeyInfo { algorithm: id-Ed25519 (1.3.101.112), subjectPublicKey: BIT
/// STRING }` up to the 32 key bytes (RFC 8410 section 4). Every ed25519 SPKI is exactly this
/// prefix followed by the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER of a version-1 PKCS#8 `OneAsymmetricKey` for ed25519 up to the 32-byte seed (RFC 8410
/// section 7), which is how the ring provider loads an ed25519 signing key.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The SNI-free server name quinn needs to start a handshake. It is never sent (SNI is off) and
/// never checked: the peer id is.
pub(crate) const SERVER_NAME: &str = "kith";

/// Encodes a peer id as the DER `SubjectPublicKeyInfo` sent as the raw public key.
pub fn ed25519_spki(peer: &PeerId) -> SubjectPublicKeyInfoDer<'static> {
    let mut der = Vec::with_capacity(44);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(peer.as_bytes());
    SubjectPublicKeyInfoDer::from(der)
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    #[error("presented key is not ed25519")]
    NotEd25519,
    #[error("presented ed25519 key is invalid or weak")]
    InvalidKey,
}

/// Reads the peer id out of a DER `SubjectPublicKeyInfo`, refusing every other key type.
pub fn peer_from_spki(der: &[u8]) -> Result<PeerId, KeyRefused> {
    let key = der
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .filter(|key| key.len() == PeerId::LENGTH)
        .ok_or(KeyRefused::NotEd25519)?;
    PeerId::from_slice(key).map_err(|_| KeyRefused::InvalidKey)
}

/// The peer id proven in a finished handshake, from quinn's `peer_identity()` (the chain rustls
/// recorded: here a single raw public key).
pub(crate) fn peer_from_identity(identity: Option<Box<dyn Any>>) -> Option<PeerId> {
    let chain = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match chain.as_slice() {
        [key] => peer_from_spki(key.as_ref()).ok(),
        _ => None,
    }
}

fn refused(reason: KeyRefused) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
}

/// The node's TLS identity: its key as rustls signs with it, and the crypto provider (ring,
/// TLS 1.3 only) shared by every config it builds.
#[derive(Debug)]
pub(crate) struct TlsIdentity {
    peer_id: PeerId,
    certified_key: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl TlsIdentity {
    pub(crate) fn new(secret: &SecretKey) -> Result<Self, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut pkcs8 = Zeroizing::new(Vec::with_capacity(48));
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(&secret.to_bytes()[..]);
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
        let signing_key = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| TransportError::Config(format!("load node key: {e}")))?;
        let peer_id = secret.peer_id();
        let spki = ed25519_spki(&peer_id);
        // With raw public keys the "certificate" is the SPKI itself.
        let certified_key = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(spki.as_ref().to_vec())],
            signing_key,
        ));
        Ok(Self {
            peer_id,
            certified_key,
            provider,
        })
    }

    pub(crate) fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The server side: requires the client's ed25519 key, offers only the given protocols (a
    /// client that offers none of them is refused with `no_application_protocol`).
    pub(crate) fn server_config(
        &self,
        alpns: Vec<Vec<u8>>,
    ) -> Result<rustls::ServerConfig, TransportError> {
        let verifier = Arc::new(AnyPeerClientVerifier::new());
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
                self.certified_key.clone(),
            )));
        config.alpn_protocols = alpns;
        config.max_early_data_size = 0;
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(config)
    }

    /// The client side for one connection: offers `alpn`, presents our key, accepts only
    /// `expected`. The returned verifier tells afterwards which other key was shown, if any.
    pub(crate) fn client_config(
        &self,
        expected: PeerId,
        alpn: &[u8],
    ) -> Result<(rustls::ClientConfig, Arc<PinnedServerVerifier>), TransportError> {
        let verifier = Arc::new(PinnedServerVerifier::new(expected));
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
                self.certified_key.clone(),
            )));
        config.alpn_protocols = vec![alpn.to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        config.enable_sni = false;
        Ok((config, verifier))
    }
}

/// Checks the peer's raw key and its TLS 1.3 signature: the part both verifiers share.
#[derive(Debug)]
struct KeyCheck;

impl KeyCheck {
    fn peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<PeerId, TlsError> {
        if !intermediates.is_empty() {
            return Err(TlsError::InvalidCertificate(CertificateError::BadEncoding));
        }
        peer_from_spki(end_entity.as_ref()).map_err(refused)
    }

    fn signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        // Only ed25519 was advertised; anything else is the peer misbehaving.
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        let peer = peer_from_spki(key.as_ref()).map_err(refused)?;
        let signature = ed25519_dalek::Signature::from_slice(dss.signature())
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadSignature))?;
        peer.verifying_key()
            .verify_strict(message, &signature)
            .map_err(|_| TlsError::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

/// The dialling side's verifier: the server must prove the one key being dialled.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    expected: PeerId,
    check: KeyCheck,
    /// The key the server showed if it was a valid ed25519 key other than `expected`.
    wrong_peer: Mutex<Option<PeerId>>,
}

impl PinnedServerVerifier {
    fn new(expected: PeerId) -> Self {
        Self {
            expected,
            check: KeyCheck,
            wrong_peer: Mutex::new(None),
        }
    }

    /// The other peer that answered, if the handshake was refused because of it.
    pub(crate) fn wrong_peer(&self) -> Option<PeerId> {
        *self.wrong_peer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // Names, issuers and dates mean nothing here: the key is the identity.
        let peer = self.check.peer(end_entity, intermediates)?;
        if peer != self.expected {
            *self.wrong_peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
            return Err(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.check.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The accepting side's verifier: any valid ed25519 key may connect, and it becomes the
/// connection's remote peer id. (Who may do what is decided above the transport.)
#[derive(Debug)]
pub(crate) struct AnyPeerClientVerifier {
    check: KeyCheck,
}

impl AnyPeerClientVerifier {
    fn new() -> Self {
        Self { check: KeyCheck }
    }
}

impl ClientCertVerifier for AnyPeerClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.check.peer(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.check.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use rustls::{ClientConnection, ServerConnection};

    use super::*;

    fn identity() -> TlsIdentity {
        TlsIdentity::new(&SecretKey::generate()).unwrap()
    }

    /// An identity that claims `claimed`'s key but can only sign with its own.
    fn impostor(claimed: PeerId) -> TlsIdentity {
        let real = identity();
        let certified_key = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(
                ed25519_spki(&claimed).as_ref().to_vec(),
            )],
            real.certified_key.key.clone(),
        ));
        TlsIdentity {
            peer_id: claimed,
            certified_key,
            provider: real.provider,
        }
    }

    #[derive(Debug)]
    enum Failed {
        Client(TlsError),
        Server(TlsError),
    }

    /// Runs a TLS 1.3 handshake in memory (no QUIC) and returns both finished connections.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<(ClientConnection, ServerConnection), Failed> {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().map_err(Failed::Server)?;
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets().map_err(Failed::Client)?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn spki_round_trips_and_matches_the_signing_key() {
        let id = identity();
        let spki = ed25519_spki(&id.peer_id());
        assert_eq!(spki.as_ref().len(), 44);
        assert_eq!(peer_from_spki(spki.as_ref()).unwrap(), id.peer_id());
        // ring's view of the key loaded from our hand-made PKCS#8 is the same public key.
        assert_eq!(
            id.certified_key.key.public_key().unwrap().as_ref(),
            spki.as_ref()
        );
    }

    #[test]
    fn spki_from_an_independent_encoder_is_read() {
        let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let peer = peer_from_spki(&ed25519.public_key_der()).unwrap();
        assert_eq!(&peer.as_bytes()[..], ed25519.public_key_raw());
    }

    #[test]
    fn other_key_types_and_malformed_keys_are_refused() {
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(
            peer_from_spki(&ecdsa.public_key_der()),
            Err(KeyRefused::NotEd25519)
        );
        let good = ed25519_spki(&identity().peer_id()).as_ref().to_vec();
        assert_eq!(peer_from_spki(&good[..43]), Err(KeyRefused::NotEd25519));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(peer_from_spki(&long), Err(KeyRefused::NotEd25519));
        let mut weak = good[..12].to_vec();
        weak.push(1);
        weak.extend_from_slice(&[0u8; 31]);
        assert_eq!(peer_from_spki(&weak), Err(KeyRefused::InvalidKey));
        assert_eq!(peer_from_spki(&[]), Err(KeyRefused::NotEd25519));
    }

    #[test]
    fn pinned_verifier_accepts_only_the_dialled_key() {
        let id = identity();
        let (server, other) = (identity().peer_id(), identity().peer_id());
        let (_, verifier) = id.client_config(server, b"test").unwrap();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let now = UnixTime::now();
        let spki = |peer: &PeerId| CertificateDer::from(ed25519_spki(peer).as_ref().to_vec());
        assert!(
            verifier
                .verify_server_cert(&spki(&server), &[], &name, &[], now)
                .is_ok()
        );
        assert_eq!(verifier.wrong_peer(), None);
        assert!(
            verifier
                .verify_server_cert(&spki(&other), &[], &name, &[], now)
                .is_err()
        );
        assert_eq!(verifier.wrong_peer(), Some(other));
        // A chain is not a raw key.
        assert!(
            verifier
                .verify_server_cert(&spki(&server), &[spki(&server)], &name, &[], now)
                .is_err()
        );
        assert_eq!(
            verifier.supported_verify_schemes(),
            [SignatureScheme::ED25519]
        );
        assert!(verifier.requires_raw_public_keys());
    }

    #[test]
    fn client_verifier_requires_an_ed25519_key_and_client_auth() {
        let verifier = AnyPeerClientVerifier::new();
        assert!(verifier.offer_client_auth() && verifier.client_auth_mandatory());
        assert!(verifier.requires_raw_public_keys());
        let now = UnixTime::now();
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let refused = verifier
            .verify_client_cert(&CertificateDer::from(ecdsa.public_key_der()), &[], now)
            .unwrap_err();
        match refused {
            TlsError::InvalidCertificate(CertificateError::Other(OtherError(reason))) => {
                assert_eq!(
                    reason.downcast_ref::<KeyRefused>(),
                    Some(&KeyRefused::NotEd25519)
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        let ed25519 = CertificateDer::from(ed25519_spki(&identity().peer_id()).as_ref().to_vec());
        assert!(verifier.verify_client_cert(&ed25519, &[], now).is_ok());
    }

    #[test]
    fn handshake_authenticates_both_keys() {
        let (client, server) = (identity(), identity());
        let (config, verifier) = client.client_config(server.peer_id(), b"test").unwrap();
        let server_config = server.server_config(vec![b"test".to_vec()]).unwrap();
        let (client_conn, server_conn) = handshake(config, server_config).unwrap();
        assert_eq!(verifier.wrong_peer(), None);
        let seen_by_server = server_conn.peer_certificates().unwrap();
        assert_eq!(
            peer_from_spki(seen_by_server[0].as_ref()).unwrap(),
            client.peer_id()
        );
        let seen_by_client = client_conn.peer_certificates().unwrap();
        assert_eq!(
            peer_from_spki(seen_by_client[0].as_ref()).unwrap(),
            server.peer_id()
        );
        assert_eq!(
            client_conn.negotiated_cipher_suite().unwrap().version(),
            &rustls::version::TLS13
        );
    }

    #[test]
    fn wrong_server_key_fails_on_the_client() {
        let (client, server, expected) = (identity(), identity(), identity().peer_id());
        let (config, verifier) = client.client_config(expected, b"test").unwrap();
        let result = handshake(
            config,
            server.server_config(vec![b"test".to_vec()]).unwrap(),
        );
        assert!(matches!(result, Err(Failed::Client(_))), "{result:?}");
        assert_eq!(verifier.wrong_peer(), Some(server.peer_id()));
    }

    #[test]
    fn server_claiming_a_key_it_cannot_sign_with_is_refused() {
        let (client, victim) = (identity(), identity().peer_id());
        let server = impostor(victim);
        let (config, verifier) = client.client_config(victim, b"test").unwrap();
        let result = handshake(
            config,
            server.server_config(vec![b"test".to_vec()]).unwrap(),
        );
        // The key matched, so only the CertificateVerify signature can have failed.
        assert!(
            matches!(
                result,
                Err(Failed::Client(TlsError::InvalidCertificate(
                    CertificateError::BadSignature
                )))
            ),
            "{result:?}"
        );
        assert_eq!(verifier.wrong_peer(), None);
    }

    #[test]
    fn client_claiming_a_key_it_cannot_sign_with_is_refused() {
        let (victim, server) = (identity().peer_id(), identity());
        let client = impostor(victim);
        let (config, _) = client.client_config(server.peer_id(), b"test").unwrap();
        let result = handshake(
            config,
            server.server_config(vec![b"test".to_vec()]).unwrap(),
        );
        assert!(
            matches!(
                result,
                Err(Failed::Server(TlsError::InvalidCertificate(
                    CertificateError::BadSignature
                )))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn client_without_a_key_is_refused() {
        let server = identity();
        let (mut config, _) = identity().client_config(server.peer_id(), b"test").unwrap();
        // A resolver that offers raw keys but has none to present.
        #[derive(Debug)]
        struct NoKey;
        impl rustls::client::ResolvesClientCert for NoKey {
            fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
                None
            }
            fn only_raw_public_keys(&self) -> bool {
                true
            }
            fn has_certs(&self) -> bool {
                false
            }
        }
        config.client_auth_cert_resolver = Arc::new(NoKey);
        let result = handshake(
            config,
            server.server_config(vec![b"test".to_vec()]).unwrap(),
        );
        assert!(matches!(result, Err(Failed::Server(_))), "{result:?}");
    }

    #[test]
    fn unknown_alpn_is_refused_by_the_server() {
        let (client, server) = (identity(), identity());
        let (config, _) = client.client_config(server.peer_id(), b"other").unwrap();
        let result = handshake(
            config,
            server.server_config(vec![b"test".to_vec()]).unwrap(),
        );
        assert!(
            matches!(result, Err(Failed::Server(TlsError::NoApplicationProtocol))),
            "{result:?}"
        );
    }
}
