//! Where a service listens and how a client reaches it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A local gRPC address: `unix:/path/to.sock` or `tcp://host:port` (`http://` is accepted too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid endpoint {input:?}: {why} (expected unix:/path or tcp://host:port)")]
pub struct EndpointParseError {
    input: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| EndpointParseError {
            input: input.to_owned(),
            why,
        };
        if let Some(path) = input.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let rest = input
            .strip_prefix("tcp://")
            .or_else(|| input.strip_prefix("http://"))
            .ok_or_else(|| err("unknown scheme"))?;
        let rest = rest.trim_end_matches('/');
        if let Ok(addr) = rest.parse() {
            return Ok(Endpoint::Tcp(addr));
        }
        // A host name: resolve it once, now, so the error surfaces at configuration time.
        std::net::ToSocketAddrs::to_socket_addrs(rest)
            .map_err(|_| err("cannot resolve host"))?
            .next()
            .map(Endpoint::Tcp)
            .ok_or_else(|| err("host has no address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:7000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert!("ftp://x".parse::<Endpoint>().is_err());
        assert!("unix:".parse::<Endpoint>().is_err());
        assert!("tcp://127.0.0.1".parse::<Endpoint>().is_err());
    }
}
