//! Kith's transport against raw quinn, measured in one run with the same transport settings,
//! the same socket set-up and the same loopback path:
//!
//! - bulk throughput on one stream (a connection per system, one stream per round);
//! - connection set-up: the dialler's `connect` until it returns, and `connect` plus a first
//!   one-byte stream round trip (which also covers the accepting side finishing the handshake,
//!   checking the dialler's key and routing the connection to its protocol handler).
//!
//! Raw quinn is the anchor: rustls on the same ring provider, an ordinary self-signed ECDSA P-256
//! certificate, a client verifier that skips verification, no client authentication. Kith signs
//! and verifies on both ends (ed25519 raw public keys). A second set-up anchor does the same
//! authentication work the ordinary way: raw quinn with mutual TLS, self-signed ed25519
//! certificates pinned as each other's only root (rustls's WebPKI verifiers). Both sides do full handshakes (session
//! resumption is off in both, as it is in Kith, where a resumed session would prove no key).
//!
//! Run: `cargo bench -p kith-transport --bench quic` (release). The server endpoints run on their
//! own thread and single-threaded runtime, like another process; the clients on the main thread.
//! Figures are medians over interleaved rounds (the machine is shared and noisy). Writes its
//! table into BENCHMARKS.md.

#[path = "support/raw_quic.rs"]
mod raw_quic;

use kith_bench::{today, verdict, write_section};
use raw_quic::{raw_client_config, raw_endpoint, raw_server_config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kith_transport::{
    Connection, Endpoint, EndpointOptions, PeerId, ProtocolHandler, Router, SecretKey,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const ALPN: &[u8] = b"kith/bench/1";
const ROUNDS: usize = 11;
const BULK_BYTES: usize = 128 << 20;
const WRITE_SIZE: usize = 1 << 20;
const CONNECTS_PER_ROUND: usize = 40;

/// Reads a stream to its end and answers with the number of bytes it got.
async fn sink(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut total = 0u64;
    while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
        total += chunk.bytes.len() as u64;
    }
    let _ = send.write_all(&total.to_le_bytes()).await;
    let _ = send.finish();
}

struct KithSink;

#[async_trait]
impl ProtocolHandler for KithSink {
    async fn accept(&self, conn: Connection) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            tokio::spawn(sink(send, recv));
        }
    }
}

async fn raw_accept_loop(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(sink(send, recv));
            }
        });
    }
}

fn options() -> EndpointOptions {
    EndpointOptions::localhost()
}

/// A self-signed ed25519 certificate for `localhost` and its key.
fn ed25519_cert() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn roots(cert: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Arc::new(roots)
}

/// Mutual TLS the ordinary way: each side's self-signed certificate is the other's only root.
struct MutualCerts {
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    client: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

impl MutualCerts {
    fn new() -> Self {
        Self {
            server: ed25519_cert(),
            client: ed25519_cert(),
        }
    }

    fn server_config(&self) -> quinn::ServerConfig {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&self.client.0),
            raw_quic::provider(),
        )
        .build()
        .unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(raw_quic::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.0.clone()], self.server.1.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
        config.transport_config(Arc::new(options().transport_config()));
        config
    }

    fn client_config(&self) -> quinn::ClientConfig {
        let mut tls = rustls::ClientConfig::builder_with_provider(raw_quic::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&self.server.0))
            .with_client_auth_cert(vec![self.client.0.clone()], self.client.1.clone_key())
            .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        let mut config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        config.transport_config(Arc::new(options().transport_config()));
        config
    }
}

struct Servers {
    kith_peer: PeerId,
    kith_addr: SocketAddr,
    raw_addr: SocketAddr,
    mutual_addr: SocketAddr,
}

/// One system under test, seen from the dialling side.
enum System {
    Kith {
        endpoint: Endpoint,
        peer: PeerId,
        addr: SocketAddr,
    },
    Raw {
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    },
}

/// Either kind of connection, to open streams on.
enum Conn {
    Kith(Connection),
    Raw(quinn::Connection),
}

impl Conn {
    async fn open_bi(&self) -> (quinn::SendStream, quinn::RecvStream) {
        match self {
            Conn::Kith(conn) => conn.open_bi().await.unwrap(),
            Conn::Raw(conn) => conn.open_bi().await.unwrap(),
        }
    }
    fn close(&self) {
        match self {
            Conn::Kith(conn) => conn.close(0u32.into(), b"done"),
            Conn::Raw(conn) => conn.close(0u32.into(), b"done"),
        }
    }
}

impl System {
    async fn connect(&self) -> Conn {
        match self {
            System::Kith {
                endpoint,
                peer,
                addr,
            } => Conn::Kith(endpoint.connect(*peer, *addr, ALPN).await.unwrap()),
            System::Raw {
                endpoint,
                config,
                addr,
            } => Conn::Raw(
                endpoint
                    .connect_with(config.clone(), *addr, "localhost")
                    .unwrap()
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// Sends `BULK_BYTES` on one new stream; returns MiB/s from opening the stream until the far
/// end confirmed it read everything.
async fn bulk_round(conn: &Conn) -> f64 {
    let block = vec![0x5au8; WRITE_SIZE];
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await;
    for _ in 0..BULK_BYTES / WRITE_SIZE {
        send.write_all(&block).await.unwrap();
    }
    send.finish().unwrap();
    let answer = recv.read_to_end(8).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(answer, (BULK_BYTES as u64).to_le_bytes());
    BULK_BYTES as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
}

/// Connects; returns the time `connect` took and the time until a first one-byte stream round
/// trip completed.
async fn connect_round(system: &System) -> (Duration, Duration) {
    let started = Instant::now();
    let conn = system.connect().await;
    let connected = started.elapsed();
    let (mut send, mut recv) = conn.open_bi().await;
    send.write_all(&[1]).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(8).await.unwrap();
    let round_trip = started.elapsed();
    assert_eq!(answer, 1u64.to_le_bytes());
    conn.close();
    (connected, round_trip)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn p90(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() * 9 / 10]
}

fn main() {
    let certs = Arc::new(MutualCerts::new());
    let server_certs = certs.clone();
    let (servers_tx, servers_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let router = Router::builder(Endpoint::bind(SecretKey::generate(), options()).unwrap())
                .accept(ALPN, KithSink)
                .spawn()
                .unwrap();
            let raw = raw_endpoint(&options(), Some(raw_server_config(&options(), ALPN)));
            tokio::spawn(raw_accept_loop(raw.clone()));
            let mutual = raw_endpoint(&options(), Some(server_certs.server_config()));
            tokio::spawn(raw_accept_loop(mutual.clone()));
            servers_tx
                .send(Servers {
                    kith_peer: router.endpoint().peer_id(),
                    kith_addr: router.endpoint().local_addr(),
                    raw_addr: raw.local_addr().unwrap(),
                    mutual_addr: mutual.local_addr().unwrap(),
                })
                .unwrap();
            let _ = stop_rx.await;
            router.shutdown().await;
            for endpoint in [raw, mutual] {
                endpoint.close(0u32.into(), b"done");
                let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
            }
        })
    });
    let servers = servers_rx.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(servers, certs.client_config()));
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}

async fn run(servers: Servers, mutual_client: quinn::ClientConfig) {
    let kith_client = Endpoint::bind(SecretKey::generate(), options()).unwrap();
    let systems = [
        System::Kith {
            endpoint: kith_client.clone(),
            peer: servers.kith_peer,
            addr: servers.kith_addr,
        },
        System::Raw {
            endpoint: raw_endpoint(&options(), None),
            config: raw_client_config(&options(), ALPN),
            addr: servers.raw_addr,
        },
        System::Raw {
            endpoint: raw_endpoint(&options(), None),
            config: mutual_client,
            addr: servers.mutual_addr,
        },
    ];
    // One long-lived connection per system for bulk; warm both up (congestion window, MTU).
    let mut bulk_conns = Vec::new();
    for system in &systems[..2] {
        let conn = system.connect().await;
        bulk_round(&conn).await;
        for _ in 0..5 {
            connect_round(system).await;
        }
        bulk_conns.push(conn);
    }

    let mut throughput = [Vec::new(), Vec::new()];
    let mut connect = [Vec::new(), Vec::new(), Vec::new()];
    let mut first_trip = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..5 {
        connect_round(&systems[2]).await;
    }
    for round in 0..ROUNDS {
        // Alternate which system goes first, so drift on the machine hits both alike.
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for i in order.into_iter().filter(|i| *i < 2) {
            throughput[i].push(bulk_round(&bulk_conns[i]).await);
        }
        for _ in 0..CONNECTS_PER_ROUND {
            for i in order {
                let (connected, round_trip) = connect_round(&systems[i]).await;
                connect[i].push(connected.as_secs_f64() * 1e3);
                first_trip[i].push(round_trip.as_secs_f64() * 1e3);
            }
        }
        eprintln!(
            "round {round}: kith {:.0} MiB/s, raw {:.0} MiB/s",
            throughput[0][round], throughput[1][round]
        );
    }
    for conn in &bulk_conns {
        conn.close();
    }
    kith_client.close().await;

    // Ratios are paired by round (both systems measured back to back, order alternating), and
    // the ratio reported is the median of the per-round ratios: load that comes and goes on a
    // shared machine then shifts both sides of a pair alike, where the ratio of two overall
    // medians can compare a quiet round of one system with a loaded round of the other.
    let per_round = |values: &[f64], r: usize| {
        let mut round: Vec<f64> =
            values[r * CONNECTS_PER_ROUND..(r + 1) * CONNECTS_PER_ROUND].to_vec();
        median(&mut round)
    };
    let mut tput_ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| throughput[0][r] / throughput[1][r])
        .collect();
    let mut conn_ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| per_round(&connect[0], r) / per_round(&connect[1], r))
        .collect();
    let mut trip_ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| per_round(&first_trip[0], r) / per_round(&first_trip[1], r))
        .collect();
    let mut mutual_ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| per_round(&connect[0], r) / per_round(&connect[2], r))
        .collect();
    let mut mutual_trip_ratios: Vec<f64> = (0..ROUNDS)
        .map(|r| per_round(&first_trip[0], r) / per_round(&first_trip[2], r))
        .collect();
    let mutual_med = [median(&mut connect[2]), median(&mut first_trip[2])];
    let mutual_ratio = [median(&mut mutual_ratios), median(&mut mutual_trip_ratios)];
    let tput = [median(&mut throughput[0]), median(&mut throughput[1])];
    let tput_min = [
        throughput[0].iter().cloned().fold(f64::MAX, f64::min),
        throughput[1].iter().cloned().fold(f64::MAX, f64::min),
    ];
    let conn_med = [median(&mut connect[0]), median(&mut connect[1])];
    let conn_p90 = [p90(&mut connect[0]), p90(&mut connect[1])];
    let trip_med = [median(&mut first_trip[0]), median(&mut first_trip[1])];
    let trip_p90 = [p90(&mut first_trip[0]), p90(&mut first_trip[1])];
    let tput_ratio = median(&mut tput_ratios);
    let conn_ratio = median(&mut conn_ratios);
    let trip_ratio = median(&mut trip_ratios);

    let mut table = String::from(
        "| measurement | Kith | raw quinn (anchor) | ratio Kith / raw, median of per-round ratios |\n|---|---:|---:|---:|\n",
    );
    table.push_str(&format!(
        "| bulk, one stream, median MiB/s (worst round) | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.2}× |\n",
        tput[0], tput_min[0], tput[1], tput_min[1], tput_ratio
    ));
    table.push_str(&format!(
        "| `connect` returns, median ms (p90) | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2}× |\n",
        conn_med[0], conn_p90[0], conn_med[1], conn_p90[1], conn_ratio
    ));
    table.push_str(&format!(
        "| `connect` + first stream round trip, median ms (p90) | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2}× |\n",
        trip_med[0], trip_p90[0], trip_med[1], trip_p90[1], trip_ratio
    ));
    table.push_str(&format!(
        "| `connect` returns vs raw quinn with mutual TLS (pinned ed25519 certificates), median ms | {:.2} | {:.2} | {:.2}× |\n",
        conn_med[0], mutual_med[0], mutual_ratio[0]
    ));
    table.push_str(&format!(
        "| `connect` + first round trip vs raw quinn with mutual TLS, median ms | {:.2} | {:.2} | {:.2}× |\n",
        trip_med[0], mutual_med[1], mutual_ratio[1]
    ));
    let targets = format!(
        "Targets: one-stream throughput ≥ 0.9× raw quinn — {:.2}× ({}); key-authenticated set-up ≤ 1.2× raw quinn — {:.2}× to `connect`, {:.2}× to the first round trip ({}).",
        tput_ratio,
        verdict(tput_ratio >= 0.9),
        conn_ratio,
        trip_ratio,
        verdict(conn_ratio <= 1.2 && trip_ratio <= 1.2),
    ) + &format!(
        " Against raw quinn doing the same work (mutual authentication, ed25519 on both ends): {:.2}× to `connect`, {:.2}× to the first round trip ({}).",
        mutual_ratio[0],
        mutual_ratio[1],
        verdict(mutual_ratio[0] <= 1.2 && mutual_ratio[1] <= 1.2),
    );
    let section = format!(
        "Measured {} by `cargo bench -p kith-transport --bench quic` (release, loopback, {ROUNDS} interleaved rounds; bulk: {} MiB per round on one stream of a warm connection, {} KiB writes; set-up: {CONNECTS_PER_ROUND} sequential new connections per system per round; same socket buffers and quinn transport settings on both; servers on their own thread and single-threaded runtime, clients on another; each ratio is the median of the {ROUNDS} per-round ratios, the columns are medians over all rounds).\n\n{table}\n{targets}\n",
        today(),
        BULK_BYTES >> 20,
        WRITE_SIZE >> 10,
    );
    println!("{section}");
    write_section("transport-quic", &section);
}
