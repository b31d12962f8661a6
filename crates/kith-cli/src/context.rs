//! What every command needs: the home, the output mode, and a client for the identity service —
//! remote when a service is reachable, otherwise in-process over the unlocked keystore.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kith_identity::daemon::SERVICE;
use kith_identity::passphrase::read_passphrase;
use kith_identity::{IdentityClient, IdentityService};
use kith_service::{Connection, Endpoint, Home, Token};

use crate::Cli;

pub struct Ctx {
    pub home: Home,
    pub json: bool,
    endpoint: Option<Endpoint>,
    token_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

impl Ctx {
    pub fn new(cli: &Cli) -> Self {
        Self {
            home: Home::resolve(cli.home.as_deref()),
            json: cli.json,
            endpoint: cli.endpoint.clone(),
            token_file: cli.token_file.clone(),
            passphrase_file: cli.passphrase_file.clone(),
        }
    }

    pub fn passphrase(&self, confirm: bool) -> anyhow::Result<zeroize::Zeroizing<String>> {
        read_passphrase(self.passphrase_file.as_deref(), confirm).map_err(anyhow::Error::msg)
    }

    /// A connection to `service` if one is configured (`--endpoint`) or running (the home's
    /// socket answers); `None` otherwise.
    pub fn connection(&self, service: &str) -> anyhow::Result<Option<Connection>> {
        if let Some(endpoint) = &self.endpoint {
            let token = match endpoint {
                Endpoint::Unix(_) => None,
                Endpoint::Tcp(_) => Some(self.token(service)?),
            };
            return Ok(Some(Connection::new(endpoint.clone(), token)));
        }
        let socket = self.home.socket(service);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Some(Connection::new(Endpoint::Unix(socket), None)));
        }
        Ok(None)
    }

    fn token(&self, service: &str) -> anyhow::Result<Token> {
        let path = self
            .token_file
            .clone()
            .unwrap_or_else(|| self.home.cookie(service));
        Token::read_cookie(&path).context("load the service credential (use --token-file)")
    }

    /// The identity service: the running one, or this home's keystore opened in-process.
    pub async fn identity(&self) -> anyhow::Result<IdentityClient> {
        if let Some(connection) = self.connection(SERVICE)? {
            return Ok(IdentityClient::connect(connection));
        }
        let passphrase = self.passphrase(false)?;
        let service = IdentityService::open(&self.home, &passphrase)?;
        Ok(IdentityClient::local(Arc::new(service)))
    }
}
