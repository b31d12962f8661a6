//! Credentials for local gRPC.
//!
//! Unix-socket listeners are protected by the file system: the socket is created owner-only (0600)
//! inside an owner-only directory. TCP listeners are open to anything that can reach the port, so
//! they demand a bearer token: 32 random bytes kept hex-encoded in a cookie file (0600) in the data
//! dir, which a local client reads and sends in the `authorization` header.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use rand::RngCore;
use zeroize::Zeroizing;

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<Zeroizing<String>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Errors reading or creating a cookie file.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    #[error("read cookie {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("write cookie {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cookie {path} is malformed: expected 64 hex characters")]
    Malformed { path: String },
    #[error("cookie {path} is readable by others (mode {mode:o}); it must be 0600")]
    Exposed { path: String, mode: u32 },
}

impl Token {
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        Self(Arc::new(Zeroizing::new(hex::encode(raw))))
    }

    /// Parses a token given as text (e.g. from an environment variable).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(Arc::new(Zeroizing::new(text.to_ascii_lowercase()))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks a presented `authorization` header value in constant time.
    pub fn matches_header(&self, header: &[u8]) -> bool {
        let Some(presented) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        let expected = self.0.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Reads the cookie at `path`, refusing one other users could read.
    pub fn read_cookie(path: &Path) -> Result<Self, CookieError> {
        let display = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| CookieError::Read {
            path: display.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CookieError::Exposed {
                path: display,
                mode,
            });
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| CookieError::Read {
                    path: display.clone(),
                    source,
                })?,
            );
        Self::parse(&text).ok_or(CookieError::Malformed { path: display })
    }

    /// Reads the cookie at `path`, or creates it (0600) with a fresh token if it does not exist.
    pub fn load_or_create_cookie(path: &Path) -> Result<Self, CookieError> {
        if path.exists() {
            return Self::read_cookie(path);
        }
        let token = Self::generate();
        let display = path.display().to_string();
        let write_err = |source| CookieError::Write {
            path: display.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        file.write_all(token.as_str().as_bytes())
            .map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/cookie");
        let token = Token::load_or_create_cookie(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Token::load_or_create_cookie(&path).unwrap();
        assert_eq!(token.as_str(), again.as_str());
        assert!(token.matches_header(format!("Bearer {}", token.as_str()).as_bytes()));
        assert!(!token.matches_header(b"Bearer 00"));
        assert!(!token.matches_header(token.as_str().as_bytes()));
    }

    #[test]
    fn exposed_or_malformed_cookie_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, "zz").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            Token::read_cookie(&path),
            Err(CookieError::Malformed { .. })
        ));
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Token::read_cookie(&path),
            Err(CookieError::Exposed { .. })
        ));
    }
}
