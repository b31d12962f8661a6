//! The service framework around a real identity server: authenticated listeners, health,
//! reflection, metrics, reconnection after a restart, socket permissions and size limits.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use kith_identity::keys::Context;
use kith_identity::{IdentityClient, IdentityError, IdentityService, KeyKind};
use kith_service::{Connection, Endpoint, Listen, Token, health_check};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    auth: Option<&Token>,
) -> String {
    let auth = auth
        .map(|t| format!("authorization: Bearer {}\r\n", t.as_str()))
        .unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn tcp_requires_the_right_token() {
    let dir = tempfile::tempdir().unwrap();
    let (home, service, _) = new_identity(dir.path(), "alice");
    let served = serve(&home, service, Via::Tcp).await;
    let server = served.server.unwrap();
    let endpoint = server.endpoints()[0].clone();

    served.client.show().await.unwrap();
    let anonymous = IdentityClient::connect(Connection::new(endpoint.clone(), None));
    let err = anonymous.show().await.unwrap_err();
    assert!(matches!(err, IdentityError::Unauthenticated(_)), "{err:?}");
    let wrong = IdentityClient::connect(Connection::new(endpoint.clone(), Some(Token::generate())));
    let err = wrong
        .sign(KeyKind::Device, Context::new("a/b").unwrap(), Bytes::new())
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Unauthenticated(_)), "{err:?}");
    // Health and reflection are behind the same credential.
    assert!(
        health_check(&Connection::new(endpoint.clone(), None), "")
            .await
            .is_err()
    );

    // /metrics: 401 without the token, Prometheus text with it, counting the calls made above.
    let Endpoint::Tcp(addr) = endpoint else {
        unreachable!()
    };
    let refused = http_get(tokio::net::TcpStream::connect(addr).await.unwrap(), None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let metrics = http_get(
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        Some(&served.token),
    )
    .await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(r#"kith_rpc_total{service="identity",method="identity.show",code="0"} 1"#),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unix_socket_is_owner_only_and_serves_health_reflection_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (home, service, _) = new_identity(dir.path(), "alice");
    let served = serve(&home, service, Via::Unix).await;
    let server = served.server.unwrap();
    let socket = home.socket("identity");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(home.run_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    let connection = Connection::new(Endpoint::Unix(socket.clone()), None);
    assert!(
        health_check(&connection, "kith.identity.v1.Identity")
            .await
            .unwrap()
    );
    assert!(health_check(&connection, "").await.unwrap());

    // Reflection lists the identity service, so grpcurl can call it without the proto files.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(connection.channel());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("no list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"kith.identity.v1.Identity"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let metrics = http_get(
        tokio::net::UnixStream::connect(&socket).await.unwrap(),
        None,
    )
    .await;
    assert!(metrics.contains("kith_rpc_total"), "{metrics}");

    // A second server cannot steal a live socket.
    let again = IdentityService::open(&home, PASS).unwrap();
    let err = kith_identity::daemon::spawn(Arc::new(again), &[Listen::Unix(socket.clone())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");

    server.shutdown().await;
    assert!(!socket.exists(), "shutdown removes the socket");
    let err = served.client.show().await.unwrap_err();
    assert!(matches!(err, IdentityError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn clients_reconnect_when_the_service_restarts() {
    for via in [Via::Unix, Via::Tcp] {
        let dir = tempfile::tempdir().unwrap();
        let (home, service, _) = new_identity(dir.path(), "alice");
        let served = serve(&home, service, via).await;
        let server = served.server.unwrap();
        let listen = match server.endpoints()[0].clone() {
            Endpoint::Unix(path) => Listen::Unix(path),
            Endpoint::Tcp(addr) => Listen::Tcp {
                addr,
                token: served.token.clone(),
            },
        };
        let before = served.client.show().await.unwrap();
        server.shutdown().await;
        // Restart on the same address after a pause; the same client keeps working.
        let home2 = home.clone();
        let restarted = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let service = IdentityService::open(&home2, PASS).unwrap();
            kith_identity::daemon::spawn(Arc::new(service), &[listen])
                .await
                .unwrap()
        });
        let mut after = None;
        for _ in 0..50 {
            match served.client.show().await {
                Ok(info) => {
                    after = Some(info);
                    break;
                }
                Err(IdentityError::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{via:?}: {e:?}"),
            }
        }
        assert_eq!(after.expect("reconnected"), before, "{via:?}");
        restarted.await.unwrap().shutdown().await;
    }
}

#[tokio::test]
async fn requests_over_the_transport_limit_are_refused_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (home, service, _) = new_identity(dir.path(), "alice");
    let served = serve(&home, service, Via::Unix).await;
    let huge = Bytes::from(vec![0u8; kith_service::MAX_MESSAGE_BYTES + 1]);
    let err = served
        .client
        .sign(KeyKind::Device, Context::new("a/b").unwrap(), huge)
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::TooLarge(_)), "{err:?}");
    // The server is unharmed.
    served.client.show().await.unwrap();
    served.server.unwrap().shutdown().await;
}

#[tokio::test]
async fn a_failed_bind_leaves_nothing_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (home, service, _) = new_identity(dir.path(), "alice");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let socket = home.socket("identity");
    let listen = [
        Listen::Unix(socket.clone()),
        Listen::Tcp {
            addr: taken.local_addr().unwrap(),
            token: Token::generate(),
        },
    ];
    let err = kith_identity::daemon::spawn(Arc::new(service), &listen)
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("bind tcp://"), "{err}");
    assert!(!socket.exists(), "the unix listener that did bind is gone");
}
