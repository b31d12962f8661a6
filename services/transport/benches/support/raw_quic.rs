//! Raw quinn, the anchor of the QUIC benchmarks: rustls on the same ring provider as Kith, an
//! ordinary self-signed ECDSA P-256 certificate, a client that skips verifying it, no client
//! authentication, session resumption off, and the same socket set-up and transport settings
//! as the Kith endpoint it is measured against. Shared by this crate's `benches/quic.rs` and
//! the CLI crate's `benches/file.rs` (both include this file by path).

use std::sync::Arc;

use kith_transport::EndpointOptions;
use kith_transport::socket::bind_udp_socket;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// The crypto provider both systems use.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A raw quinn endpoint on the same kind of socket as Kith's (`options`' address and buffers).
pub fn raw_endpoint(
    options: &EndpointOptions,
    server: Option<quinn::ServerConfig>,
) -> quinn::Endpoint {
    let socket = bind_udp_socket(options.bind_addr, options.socket_buffer_bytes).unwrap();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap()
}

/// A server speaking `alpn` with a fresh self-signed certificate and `options`' transport
/// settings.
pub fn raw_server_config(options: &EndpointOptions, alpn: &[u8]) -> quinn::ServerConfig {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(options.transport_config()));
    config
}

#[derive(Debug)]
struct SkipVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client speaking `alpn` that does not check the server's certificate, with `options`'
/// transport settings.
pub fn raw_client_config(options: &EndpointOptions, alpn: &[u8]) -> quinn::ClientConfig {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipVerification(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    config.transport_config(Arc::new(options.transport_config()));
    config
}
