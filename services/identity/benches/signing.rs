//! Sign and verify through every layer a caller can use, measured in one run against the direct
//! library call: raw ed25519-dalek (the anchor below us), the identity library, the in-process
//! client, gRPC over a Unix socket and gRPC over TCP (with its bearer token). Also batched
//! signing over gRPC per signature. Writes its table into BENCHMARKS.md.
//!
//! Run: `cargo bench -p kith-identity --bench signing` (release build). The machine is shared and
//! noisy, so each figure is the median of per-call latencies gathered over interleaved rounds.

use kith_bench::{today, verdict, write_section};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::Signer;
use kith_identity::api::{SignItem, VerifyItem};
use kith_identity::keys::{Context, signed_bytes};
use kith_identity::keystore::KdfParams;
use kith_identity::{IdentityApi, IdentityClient, IdentityService, KeyKind, SetupOptions};
use kith_service::{Connection, Endpoint, Home, Listen, Token};

const ROUNDS: usize = 7;
const CALLS_PER_ROUND: usize = 400;
const BATCH: usize = 256;
const BATCH_CALLS_PER_ROUND: usize = 30;
const MESSAGE: &[u8] = b"a chat-message-sized payload of sixty-four bytes, give or take..";

struct Samples(Vec<Duration>);

impl Samples {
    fn median_us(&mut self) -> f64 {
        self.0.sort();
        self.0[self.0.len() / 2].as_secs_f64() * 1e6
    }
    fn p90_us(&mut self) -> f64 {
        self.0.sort();
        self.0[self.0.len() * 9 / 10].as_secs_f64() * 1e6
    }
}

async fn time_calls<F, Fut>(samples: &mut Samples, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..CALLS_PER_ROUND {
        let start = Instant::now();
        call().await;
        samples.0.push(start.elapsed());
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    let options = SetupOptions {
        device_name: "bench".into(),
        kdf: KdfParams::INSECURE_FAST,
        ..Default::default()
    };
    let service = Arc::new(
        IdentityService::init(&home, "bench", options)
            .unwrap()
            .service,
    );
    let token = Token::generate();
    let listen = vec![
        Listen::Unix(home.socket("identity")),
        Listen::Tcp {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: token.clone(),
        },
    ];
    let bare_socket = dir.path().join("bare.sock");
    // The servers run on their own thread and runtime, as they would in their own process; the
    // callers use a single-threaded runtime, like the `kith` command.
    let (endpoint_tx, endpoint_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = {
        let service = service.clone();
        let bare_socket = bare_socket.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = kith_identity::daemon::spawn(service, &listen)
                    .await
                    .unwrap();
                // The transport anchor: a bare tonic server (health only, none of Kith's layers).
                let (_reporter, health) = tonic_health::server::health_reporter();
                let bare = tokio::net::UnixListener::bind(&bare_socket).unwrap();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(health)
                        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(bare)),
                );
                endpoint_tx.send(server.endpoints()[1].clone()).unwrap();
                let _ = stop_rx.await;
                server.shutdown().await;
            })
        })
    };
    let tcp = endpoint_rx.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(service, home, tcp, token, bare_socket));
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}

async fn run(
    service: Arc<IdentityService>,
    home: Home,
    tcp: Endpoint,
    token: Token,
    bare_socket: std::path::PathBuf,
) {
    let bare = Connection::new(Endpoint::Unix(bare_socket), None);
    let kith_unix = Connection::new(Endpoint::Unix(home.socket("identity")), None);
    let local = IdentityClient::local(service.clone());
    let unix = IdentityClient::connect(kith_unix.clone());
    let tcp = IdentityClient::connect(Connection::new(tcp, Some(token)));

    let context = Context::new("bench/sign").unwrap();
    let message = Bytes::from_static(MESSAGE);
    let info = service.show().await.unwrap();
    let signature = service
        .sign(KeyKind::Device, context.clone(), message.clone())
        .await
        .unwrap()
        .signature;
    let verify_item = VerifyItem {
        public_key: info.device,
        context: context.clone(),
        message: message.clone(),
        signature,
    };
    let dalek = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let raw_signed = signed_bytes(&context, MESSAGE);
    let raw_sig = dalek.sign(&raw_signed);
    let batch: Vec<SignItem> = (0..BATCH)
        .map(|_| SignItem {
            context: context.clone(),
            message: message.clone(),
        })
        .collect();

    // Warm up connections and caches.
    for client in [&local, &unix, &tcp] {
        client.show().await.unwrap();
        client
            .sign(KeyKind::Device, context.clone(), message.clone())
            .await
            .unwrap();
    }

    let names = [
        "ed25519-dalek sign (anchor)",
        "library direct sign",
        "in-process client sign",
        "gRPC unix sign",
        "gRPC tcp sign",
        "ed25519-dalek verify (anchor)",
        "library direct verify",
        "in-process client verify",
        "gRPC unix verify",
        "gRPC tcp verify",
        "library direct sign, per sig in batch of 256",
        "gRPC unix sign_batch, per sig (256)",
        "gRPC tcp sign_batch, per sig (256)",
        "bare tonic health check, unix (transport anchor)",
        "Kith server health check, unix",
    ];
    let mut samples: Vec<Samples> = names.iter().map(|_| Samples(Vec::new())).collect();
    for _ in 0..ROUNDS {
        time_calls(&mut samples[0], || async {
            std::hint::black_box(dalek.sign(&raw_signed));
        })
        .await;
        time_calls(&mut samples[1], || async {
            service
                .sign(KeyKind::Device, context.clone(), message.clone())
                .await
                .unwrap();
        })
        .await;
        for (i, client) in [&local, &unix, &tcp].into_iter().enumerate() {
            time_calls(&mut samples[2 + i], || async {
                client
                    .sign(KeyKind::Device, context.clone(), message.clone())
                    .await
                    .unwrap();
            })
            .await;
        }
        time_calls(&mut samples[5], || async {
            dalek
                .verifying_key()
                .verify_strict(&raw_signed, &raw_sig)
                .unwrap();
        })
        .await;
        time_calls(&mut samples[6], || async {
            service.verify(verify_item.clone()).await.unwrap()
        })
        .await;
        for (i, client) in [&local, &unix, &tcp].into_iter().enumerate() {
            time_calls(&mut samples[7 + i], || async {
                client.verify(verify_item.clone()).await.unwrap()
            })
            .await;
        }
        time_calls(&mut samples[13], || async {
            kith_service::health_check(&bare, "").await.unwrap();
        })
        .await;
        time_calls(&mut samples[14], || async {
            kith_service::health_check(&kith_unix, "").await.unwrap();
        })
        .await;
        // Batches: time whole calls, record per-signature cost. The three paths take turns call
        // by call, so drifts in CPU speed on this shared machine hit them alike.
        for _ in 0..BATCH_CALLS_PER_ROUND {
            for (slot, client) in [(10, None), (11, Some(&unix)), (12, Some(&tcp))] {
                let start = Instant::now();
                match client {
                    None => {
                        service
                            .sign_batch(KeyKind::Device, batch.clone())
                            .await
                            .unwrap();
                    }
                    Some(c) => {
                        c.sign_batch(KeyKind::Device, batch.clone()).await.unwrap();
                    }
                }
                samples[slot].0.push(start.elapsed() / BATCH as u32);
            }
        }
    }
    let medians: Vec<(f64, f64)> = samples
        .iter_mut()
        .map(|s| (s.median_us(), s.p90_us()))
        .collect();
    let base_sign = medians[1].0;
    let base_verify = medians[6].0;
    let mut table =
        String::from("| path | median µs | p90 µs | ratio to direct |\n|---|---:|---:|---:|\n");
    for (i, name) in names.iter().enumerate() {
        let base = if (5..10).contains(&i) {
            base_verify
        } else {
            base_sign
        };
        table.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.2}× |\n",
            medians[i].0,
            medians[i].1,
            medians[i].0 / base
        ));
    }
    let targets = format!(
        "Targets: in-process client within 1.1× of direct — sign {:.2}×, verify {:.2}× ({}); \
         gRPC sign round trip over a Unix socket under 150 µs median — {:.1} µs ({}); \
         batched signing over gRPC within 1.5× of direct per signature — unix {:.2}×, tcp {:.2}× ({}).",
        medians[2].0 / base_sign,
        medians[7].0 / base_verify,
        verdict(medians[2].0 / base_sign <= 1.1 && medians[7].0 / base_verify <= 1.1),
        medians[3].0,
        verdict(medians[3].0 < 150.0),
        medians[11].0 / medians[10].0,
        medians[12].0 / medians[10].0,
        verdict(medians[11].0 / medians[10].0 <= 1.5 && medians[12].0 / medians[10].0 <= 1.5),
    );
    let section = format!(
        "Measured {} by `cargo bench -p kith-identity --bench signing` (release, {ROUNDS} interleaved rounds × {CALLS_PER_ROUND} calls, 64-byte messages, server on its own thread and runtime, client on a single-threaded runtime, one process).\n\n{table}\n{targets}\n",
        today()
    );
    println!("{section}");
    write_section("identity-signing", &section);
}
