//! Two real endpoints on 127.0.0.1 with real UDP sockets: authentication by key, ALPN routing,
//! streams, a large transfer and shutdown under load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kith_transport::{
    Connection, Endpoint, EndpointOptions, PeerId, ProtocolHandler, Router, SecretKey,
    TransportError, close_code,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{DigitallySignedStruct, SignatureAlgorithm, SignatureScheme};
use tokio::sync::Notify;

const ECHO: &[u8] = b"kith/echo/1";

fn node() -> Endpoint {
    Endpoint::bind(SecretKey::generate(), EndpointOptions::localhost()).unwrap()
}

/// What a handler saw: how many connections it got, from whom, and how many have ended.
#[derive(Clone, Default)]
struct Seen {
    accepted: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<PeerId>>>,
}

impl Seen {
    fn record(&self, conn: &Connection) {
        self.accepted.fetch_add(1, Ordering::SeqCst);
        self.peers.lock().unwrap().push(conn.remote_peer());
    }
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Echoes every bidirectional stream back to its sender, many streams at once.
struct Echo(Seen);

#[async_trait]
impl ProtocolHandler for Echo {
    async fn accept(&self, conn: Connection) {
        self.0.record(&conn);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut recv, &mut send).await;
                let _ = send.finish();
            });
        }
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// Serves `ECHO` on a fresh endpoint.
fn echo_server() -> (Router, Seen) {
    let seen = Seen::default();
    let router = Router::builder(node())
        .accept(ECHO, Echo(seen.clone()))
        .spawn()
        .unwrap();
    (router, seen)
}

fn addr(router: &Router) -> SocketAddr {
    router.endpoint().local_addr()
}

#[tokio::test]
async fn both_sides_exchange_data_both_ways_and_know_each_other() {
    /// Answers the client's stream, then opens one of its own towards the client.
    struct PingPong(Seen);

    #[async_trait]
    impl ProtocolHandler for PingPong {
        async fn accept(&self, conn: Connection) {
            self.0.record(&conn);
            assert_eq!(conn.alpn(), b"kith/ping/1");
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let ping = recv.read_to_end(64).await.unwrap();
            assert_eq!(ping, b"ping from client");
            send.write_all(b"pong from server").await.unwrap();
            send.finish().unwrap();
            // Now the server initiates.
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(b"ping from server").await.unwrap();
            send.finish().unwrap();
            assert_eq!(recv.read_to_end(64).await.unwrap(), b"pong from client");
            conn.closed().await;
        }
    }

    let seen = Seen::default();
    let server = Router::builder(node())
        .accept(b"kith/ping/1", PingPong(seen.clone()))
        .spawn()
        .unwrap();
    let client = node();
    let conn = client
        .connect(server.endpoint().peer_id(), addr(&server), b"kith/ping/1")
        .await
        .unwrap();
    assert_eq!(conn.remote_peer(), server.endpoint().peer_id());
    assert_eq!(conn.alpn(), b"kith/ping/1");

    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"ping from client").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"pong from server");

    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    assert_eq!(recv.read_to_end(64).await.unwrap(), b"ping from server");
    send.write_all(b"pong from client").await.unwrap();
    send.finish().unwrap();
    // Wait for the server to have read our answer before closing.
    send.stopped().await.unwrap();

    assert_eq!(*seen.peers.lock().unwrap(), vec![client.peer_id()]);
    conn.close(close_code::NORMAL, b"done");
    server.shutdown().await;
    client.close().await;
}

#[tokio::test]
async fn dialling_the_wrong_key_is_refused_in_the_handshake() {
    let (server, seen) = echo_server();
    let client = node();
    let expected = SecretKey::generate().peer_id();
    let error = client
        .connect(expected, addr(&server), ECHO)
        .await
        .unwrap_err();
    match error {
        TransportError::WrongPeer {
            expected: e,
            actual,
            addr: a,
        } => {
            assert_eq!(e, expected);
            assert_eq!(actual, server.endpoint().peer_id());
            assert_eq!(a, addr(&server));
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    // The handshake never completed on the server either, so no handler ran. Then the right key
    // works from the same endpoint.
    let conn = client
        .connect(server.endpoint().peer_id(), addr(&server), ECHO)
        .await
        .unwrap();
    echo_once(&conn, b"after a refused attempt").await;
    assert_eq!(seen.accepted(), 1);
    server.shutdown().await;
}

async fn echo_once(conn: &Connection, message: &[u8]) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(message).await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1 << 20).await.unwrap(), message);
}

#[tokio::test]
async fn an_unknown_alpn_is_refused_in_the_handshake() {
    let (server, seen) = echo_server();
    let client = node();
    let error = client
        .connect(server.endpoint().peer_id(), addr(&server), b"kith/nope/1")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TransportError::ProtocolRefused { alpn, .. } if alpn == "kith/nope/1"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!("peer at {} does not speak kith/nope/1", addr(&server))
    );
    assert_eq!(seen.accepted(), 0);
    assert!(matches!(
        client
            .connect(server.endpoint().peer_id(), addr(&server), b"")
            .await,
        Err(TransportError::InvalidAlpn)
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_without_a_router_accepts_nothing() {
    let quiet = node();
    let client = Endpoint::bind(
        SecretKey::generate(),
        EndpointOptions {
            idle_timeout: Duration::from_millis(500),
            ..EndpointOptions::localhost()
        },
    )
    .unwrap();
    let error = client
        .connect(quiet.peer_id(), quiet.local_addr(), ECHO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            TransportError::Handshake {
                source: quinn::ConnectionError::TimedOut,
                ..
            }
        ),
        "{error:?}"
    );
}

// --- Clients that are not Kith nodes, built from raw quinn and rustls. ---

/// A server verifier that accepts anything (the client under test is the misbehaving party).
#[derive(Debug)]
struct AcceptAnyServer {
    raw_keys: bool,
}

impl ServerCertVerifier for AcceptAnyServer {
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
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        self.raw_keys
    }
}

/// An ECDSA key that claims to sign with ed25519, so that the client gets as far as presenting
/// its (ECDSA) key, which the server must then refuse for its type.
#[derive(Debug)]
struct MislabelledKey(Arc<dyn SigningKey>);

#[derive(Debug)]
struct MislabelledSigner(Box<dyn Signer>);

impl SigningKey for MislabelledKey {
    fn choose_scheme(&self, _offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let inner = self
            .0
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])?;
        Some(Box::new(MislabelledSigner(inner)))
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

impl Signer for MislabelledSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0.sign(message)
    }
    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

async fn raw_client_connect(
    tls: rustls::ClientConfig,
    server: &Router,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    endpoint
        .connect_with(config, addr(server), "kith")
        .unwrap()
        .await
}

fn raw_client_builder(
    raw_keys: bool,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer { raw_keys }))
}

#[tokio::test]
async fn a_client_with_an_ecdsa_raw_key_is_refused_for_its_key_type() {
    let (server, seen) = echo_server();
    let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let signing = rustls::crypto::ring::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
        PrivatePkcs8KeyDer::from(ecdsa.serialize_der()),
    ))
    .unwrap();
    let key = Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(ecdsa.public_key_der())],
        Arc::new(MislabelledKey(signing)),
    ));
    let mut tls = raw_client_builder(true).with_client_cert_resolver(Arc::new(
        rustls::client::AlwaysResolvesClientRawPublicKeys::new(key),
    ));
    tls.alpn_protocols = vec![ECHO.to_vec()];
    // In TLS 1.3 the client is done before the server has checked the client's key, so the
    // client may see its connection open and then closed by the server.
    let error = match raw_client_connect(tls, &server).await {
        Ok(conn) => conn.closed().await,
        Err(error) => error,
    };
    // The server refused the key for its type: TLS alert certificate_unknown (46) as a QUIC
    // crypto error, with rustls's reason.
    match &error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::crypto(46),
                "{error}"
            );
            assert!(
                String::from_utf8_lossy(&close.reason).contains("NotEd25519"),
                "{error}"
            );
        }
        other => panic!("expected the server to close the handshake, got {other:?}"),
    }
    assert_eq!(seen.accepted(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_with_an_ecdsa_x509_certificate_is_refused() {
    let (server, seen) = echo_server();
    let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["kith".into()])
        .unwrap()
        .self_signed(&ecdsa)
        .unwrap();
    let mut tls = raw_client_builder(false)
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ecdsa.serialize_der())),
        )
        .unwrap();
    tls.alpn_protocols = vec![ECHO.to_vec()];
    assert!(raw_client_connect(tls, &server).await.is_err());
    assert_eq!(seen.accepted(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_streams_on_one_connection() {
    const STREAMS: usize = 300; // more than the 128 a peer may have open: some must wait
    let (server, _) = echo_server();
    let client = node();
    let conn = client
        .connect(server.endpoint().peer_id(), addr(&server), ECHO)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let conn = conn.clone();
        tasks.spawn(async move {
            let message: Vec<u8> = (0..16 * 1024).map(|j| (i * 31 + j) as u8).collect();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&message).await.unwrap();
            send.finish().unwrap();
            let echoed = recv.read_to_end(1 << 20).await.unwrap();
            assert_eq!(echoed, message, "stream {i}");
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
        done += 1;
    }
    assert_eq!(done, STREAMS);
    server.shutdown().await;
}

/// Deterministic bytes for chunk `index` of a transfer (no need to hold it all in memory).
fn chunk(index: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.finalize_xof().fill(&mut out);
    out
}

/// Reads a stream to its end, hashing it, and answers with the hash and the length.
struct HashSink;

#[async_trait]
impl ProtocolHandler for HashSink {
    async fn accept(&self, conn: Connection) {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let mut hasher = blake3::Hasher::new();
            let mut total = 0u64;
            while let Ok(Some(data)) = recv.read_chunk(1 << 20, true).await {
                total += data.bytes.len() as u64;
                hasher.update(&data.bytes);
            }
            let _ = send.write_all(hasher.finalize().as_bytes()).await;
            let _ = send.write_all(&total.to_le_bytes()).await;
            let _ = send.finish();
        }
    }
}

#[tokio::test]
async fn a_64_mib_transfer_arrives_intact() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 64;
    let server = Router::builder(node())
        .accept(b"kith/hash/1", HashSink)
        .spawn()
        .unwrap();
    let client = node();
    let conn = client
        .connect(server.endpoint().peer_id(), addr(&server), b"kith/hash/1")
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut hasher = blake3::Hasher::new();
    let started = Instant::now();
    for index in 0..CHUNKS {
        let data = chunk(index, CHUNK);
        hasher.update(&data);
        send.write_all(&data).await.unwrap();
    }
    send.finish().unwrap();
    let answer = recv.read_to_end(64).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(&answer[..32], hasher.finalize().as_bytes());
    assert_eq!(answer[32..], (CHUNKS * CHUNK as u64).to_le_bytes());
    eprintln!("64 MiB in {elapsed:?} (test profile)");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_during_a_transfer_ends_cleanly() {
    /// Reads forever; notes when its task ends.
    struct Drain {
        reading: Arc<Notify>,
        ended: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl ProtocolHandler for Drain {
        async fn accept(&self, conn: Connection) {
            if let Ok(mut recv) = conn.accept_uni().await {
                let mut notified = false;
                while let Ok(Some(_)) = recv.read_chunk(1 << 16, true).await {
                    if !notified {
                        self.reading.notify_one();
                        notified = true;
                    }
                }
            }
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
    }

    let reading = Arc::new(Notify::new());
    let ended = Arc::new(AtomicUsize::new(0));
    let server = Router::builder(node())
        .accept(
            b"kith/drain/1",
            Drain {
                reading: reading.clone(),
                ended: ended.clone(),
            },
        )
        .spawn()
        .unwrap();
    let server_addr = addr(&server);
    let server_id = server.endpoint().peer_id();
    let client = node();
    let conn = client
        .connect(server_id, server_addr, b"kith/drain/1")
        .await
        .unwrap();
    let mut send = conn.open_uni().await.unwrap();
    // Write until the connection goes away, then report how it went.
    let writer = tokio::spawn(async move {
        let block = vec![7u8; 1 << 16];
        loop {
            if let Err(error) = send.write_all(&block).await {
                return error;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), reading.notified())
        .await
        .expect("server started reading");

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown finished in time");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ended.load(Ordering::SeqCst), 1, "handler task ended");
    assert!(server.is_shutdown());

    // The client saw an orderly close with the shutdown code, not a timeout.
    let write_error = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer stopped")
        .unwrap();
    assert!(
        matches!(
            &write_error,
            quinn::WriteError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == close_code::SHUTDOWN
        ),
        "{write_error:?}"
    );
    // Shutting down twice is harmless, and the closed server accepts nobody new.
    server.shutdown().await;
    let impatient = Endpoint::bind(
        SecretKey::generate(),
        EndpointOptions {
            idle_timeout: Duration::from_millis(500),
            ..EndpointOptions::localhost()
        },
    )
    .unwrap();
    assert!(
        impatient
            .connect(server_id, server_addr, b"kith/drain/1")
            .await
            .is_err()
    );
    client.close().await;
    // Connecting from a closed endpoint is a typed error.
    assert!(matches!(
        client
            .connect(server_id, server_addr, b"kith/drain/1")
            .await,
        Err(TransportError::Closed)
    ));
}

#[tokio::test]
async fn invalid_alpns_are_refused_when_building_a_router() {
    struct Nothing;
    #[async_trait]
    impl ProtocolHandler for Nothing {
        async fn accept(&self, _: Connection) {}
    }
    assert!(matches!(
        Router::builder(node()).accept(b"", Nothing).spawn(),
        Err(TransportError::InvalidAlpn)
    ));
    assert!(matches!(
        Router::builder(node())
            .accept(vec![b'x'; 256], Nothing)
            .spawn(),
        Err(TransportError::InvalidAlpn)
    ));
}
