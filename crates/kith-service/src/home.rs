//! The layout of a Kith data dir ("home"), shared by every service and the `kith` command.
//!
//! ```text
//! $KITH_HOME/
//!   identity/keystore.json   encrypted secrets (0600)
//!   identity/state.json      signed public records
//!   run/<service>.sock       owner-only gRPC sockets (dir 0700)
//!   run/<service>.cookie     bearer token for the service's TCP listener (0600)
//! ```

use std::path::{Path, PathBuf};

/// A Kith data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home(PathBuf);

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }

    /// `--home`, else `$KITH_HOME`, else the platform data dir (`$XDG_DATA_HOME/kith` or
    /// `~/.local/share/kith`).
    pub fn resolve(explicit: Option<&Path>) -> Self {
        if let Some(path) = explicit {
            return Self::new(path);
        }
        if let Some(path) = std::env::var_os("KITH_HOME").filter(|v| !v.is_empty()) {
            return Self::new(PathBuf::from(path));
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Self::new(PathBuf::from(data).join("kith"));
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Self::new(home.join(".local/share/kith"))
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    pub fn service_dir(&self, service: &str) -> PathBuf {
        self.0.join(service)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }

    pub fn socket(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.sock"))
    }

    pub fn cookie(&self, service: &str) -> PathBuf {
        self.run_dir().join(format!("{service}.cookie"))
    }

    /// The listeners of `service`: `listen` as given, or the home's `run/<service>.sock` when
    /// empty. TCP listeners share one bearer token, from `token_file` or the home's
    /// `run/<service>.cookie`, created (0600) if missing.
    pub fn listeners(
        &self,
        service: &str,
        listen: &[crate::Endpoint],
        token_file: Option<&Path>,
    ) -> Result<Vec<crate::Listen>, crate::CookieError> {
        let endpoints = if listen.is_empty() {
            vec![crate::Endpoint::Unix(self.socket(service))]
        } else {
            listen.to_vec()
        };
        let mut token: Option<crate::Token> = None;
        endpoints
            .into_iter()
            .map(|endpoint| match endpoint {
                crate::Endpoint::Unix(path) => Ok(crate::Listen::Unix(path)),
                crate::Endpoint::Tcp(addr) => {
                    let token = match &token {
                        Some(token) => token.clone(),
                        None => {
                            let path =
                                token_file.map_or_else(|| self.cookie(service), Path::to_path_buf);
                            token
                                .insert(crate::Token::load_or_create_cookie(&path)?)
                                .clone()
                        }
                    };
                    Ok(crate::Listen::Tcp { addr, token })
                }
            })
            .collect()
    }
}
