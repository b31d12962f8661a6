//! Shared set-up for the identity integration tests: homes in temp dirs, identities, servers.

#![allow(dead_code)]

use std::sync::Arc;

use kith_identity::daemon::spawn;
use kith_identity::keystore::KdfParams;
use kith_identity::{IdentityClient, IdentityService, SetupOptions};
use kith_service::{Connection, Endpoint, Home, Listen, ServerHandle, Token};

pub const PASS: &str = "test passphrase";

/// Options for a test device: the cheap KDF keeps the suite fast.
pub fn options(name: &str) -> SetupOptions {
    SetupOptions {
        device_name: name.into(),
        kdf: KdfParams::INSECURE_FAST,
        ..Default::default()
    }
}

pub fn new_identity(dir: &std::path::Path, name: &str) -> (Home, IdentityService, String) {
    let home = Home::new(dir.join(name));
    let created = IdentityService::init(&home, PASS, options(name)).unwrap();
    (home, created.service, created.mnemonic.to_string())
}

/// How a test reaches the service.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    Local,
    Unix,
    Tcp,
}

pub const ALL_VIAS: [Via; 3] = [Via::Local, Via::Unix, Via::Tcp];

pub struct Served {
    pub client: IdentityClient,
    pub server: Option<ServerHandle>,
    pub token: Token,
}

pub async fn serve(home: &Home, service: IdentityService, via: Via) -> Served {
    let token = Token::generate();
    let api = Arc::new(service);
    match via {
        Via::Local => Served {
            client: IdentityClient::local(api),
            server: None,
            token,
        },
        Via::Unix => {
            let path = home.socket("identity");
            let server = spawn(api, &[Listen::Unix(path.clone())]).await.unwrap();
            let client = IdentityClient::connect(Connection::new(Endpoint::Unix(path), None));
            Served {
                client,
                server: Some(server),
                token,
            }
        }
        Via::Tcp => {
            let listen = Listen::Tcp {
                addr: "127.0.0.1:0".parse().unwrap(),
                token: token.clone(),
            };
            let server = spawn(api, &[listen]).await.unwrap();
            let endpoint = server.endpoints()[0].clone();
            let client = IdentityClient::connect(Connection::new(endpoint, Some(token.clone())));
            Served {
                client,
                server: Some(server),
                token,
            }
        }
    }
}
