//! Bootstrap peers and names from DNS, through hickory-resolver.
//!
//! # Bootstrap records
//!
//! [`resolve_bootstrap`] reads two forms under a domain and merges what they give:
//!
//! - **SRV + TXT**: `_kith._udp.<domain>` SRV records name bootstrap nodes as `host:port`
//!   (lower priority first, then higher weight). Each target host carries one TXT record
//!   `kith-peer=<peer id>` (the 64-hex-character [`PeerId`] form) and A/AAAA records; the node is
//!   dialled at each of its addresses on the SRV port.
//!
//!   ```text
//!   _kith._udp.example.com.  SRV 10 0 4433 boot1.example.com.
//!   boot1.example.com.       TXT "kith-peer=d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
//!   boot1.example.com.       A   192.0.2.10
//!   ```
//!
//! - **TXT only**, for static configuration in one record set: `_kith-bootstrap.<domain>` TXT
//!   `kith-bootstrap=<peer id>@<ip>:<port>`, IPv6 written `[2001:db8::1]:4433`.
//!
//! At most [`MAX_PEERS`] peers come back, each with at most [`MAX_ADDRS_PER_PEER`] addresses. A
//! TXT record is its strings joined, at most [`MAX_TXT_BYTES`] bytes, UTF-8. TXT strings without
//! the `kith-…=` prefix belong to someone else and are ignored; entries with the prefix that do
//! not parse are skipped with a warning. An answer that has Kith entries but no usable one is
//! [`DiscoveryError::Malformed`]; no Kith entry at all is [`DiscoveryError::NotFound`].
//!
//! # Names
//!
//! [`resolve_name`] maps a host name to an identity, like Bluesky's `_atproto` handles:
//! `_kith.<name>` TXT holds exactly one `kith=<identity id>` value (the `kith1…` bech32m id the
//! identity service prints; repeating the same value is fine, two different ones are
//! [`DiscoveryError::Ambiguous`]) and any number of `node=<peer id>` entries naming the node keys
//! that serve it.
//!
//! ```text
//! _kith.alice.example.com. TXT "kith=kith1…"
//! _kith.alice.example.com. TXT "node=d75a98…511a"
//! ```
//!
//! Names are checked before anything is sent: letters, digits and hyphens in labels of 1 to 63
//! characters (no hyphen at either end), at least two labels, at most 253 characters, a final
//! label that is not all digits; one trailing dot is allowed. Queries are sent fully qualified,
//! so no search domain is ever appended.
//!
//! DNS is not authenticated here (no DNSSEC requirement), so everything found is a hint that the
//! QUIC handshake then proves; see the [module docs](super).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{
    BootstrapPeer, DiscoveryError, IdentityId, MAX_ADDRS_PER_PEER, MAX_PEERS, MAX_TXT_BYTES,
};
use crate::peer::PeerId;

/// Most records of one answer that are looked at; the rest are ignored.
pub const MAX_ANSWER_RECORDS: usize = 256;
/// Longest host name, without the trailing dot.
pub const MAX_NAME_LEN: usize = 253;

const BOOTSTRAP_SRV_PREFIX: &str = "_kith._udp";
const BOOTSTRAP_TXT_PREFIX: &str = "_kith-bootstrap";
const NAME_PREFIX: &str = "_kith";

/// How to reach DNS.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Name servers to ask, over UDP with TCP for truncated answers. Empty: the system's
    /// (`/etc/resolv.conf` on Unix).
    pub nameservers: Vec<SocketAddr>,
    /// Time to wait for one answer from one server.
    pub timeout: Duration,
    /// Tries per server.
    pub attempts: usize,
    /// Bound on one whole lookup, whatever the retries.
    pub deadline: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
            deadline: Duration::from_secs(5),
        }
    }
}

impl DnsConfig {
    /// The system's name servers with the default timeouts.
    pub fn system() -> Self {
        Self::default()
    }

    /// Only these name servers (a user's chosen server, or a test's local one).
    pub fn with_nameservers(nameservers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            nameservers: nameservers.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// A configured resolver. Cheap to clone; clones share the cache and connections.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    inner: TokioResolver,
    deadline: Duration,
}

impl DnsResolver {
    /// Builds a resolver from `config`. Must be called inside a tokio runtime.
    pub fn new(config: &DnsConfig) -> Result<Self, DiscoveryError> {
        if config.timeout.is_zero() || config.attempts == 0 || config.deadline.is_zero() {
            return Err(DiscoveryError::Config(
                "timeout, attempts and deadline must be positive".into(),
            ));
        }
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| DiscoveryError::Config(format!("system resolver: {e}")))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = config.timeout;
        options.attempts = config.attempts;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        options.cache_size = 1024;
        let inner = builder
            .build()
            .map_err(|e| DiscoveryError::Config(format!("build resolver: {e}")))?;
        Ok(Self {
            inner,
            deadline: config.deadline,
        })
    }

    async fn lookup(&self, fqdn: &str, kind: RecordType) -> Result<Lookup, DiscoveryError> {
        match tokio::time::timeout(self.deadline, self.inner.lookup(fqdn, kind)).await {
            Err(_) => Err(DiscoveryError::Timeout {
                name: fqdn.to_owned(),
            }),
            Ok(result) => result.map_err(|e| lookup_error(fqdn, e)),
        }
    }

    async fn lookup_ips(&self, fqdn: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        match tokio::time::timeout(self.deadline, self.inner.lookup_ip(fqdn)).await {
            Err(_) => Err(DiscoveryError::Timeout {
                name: fqdn.to_owned(),
            }),
            Ok(result) => Ok(result
                .map_err(|e| lookup_error(fqdn, e))?
                .iter()
                .take(MAX_ANSWER_RECORDS)
                .collect()),
        }
    }

    /// The TXT records at `fqdn`, each as its strings joined; oversized and non-UTF-8 ones are
    /// dropped with a warning.
    async fn txt(&self, fqdn: &str) -> Result<Vec<String>, DiscoveryError> {
        let lookup = self.lookup(fqdn, RecordType::TXT).await?;
        let mut out = Vec::new();
        for record in lookup.answers().iter().take(MAX_ANSWER_RECORDS) {
            let RData::TXT(txt) = &record.data else {
                continue;
            };
            let len: usize = txt.txt_data.iter().map(|s| s.len()).sum();
            if len > MAX_TXT_BYTES {
                warn!(
                    name = fqdn,
                    len, "skipping TXT record longer than {MAX_TXT_BYTES} bytes"
                );
                continue;
            }
            let joined: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            match String::from_utf8(joined) {
                Ok(text) => out.push(text),
                Err(_) => warn!(name = fqdn, "skipping TXT record that is not UTF-8"),
            }
        }
        Ok(out)
    }
}

fn lookup_error(name: &str, error: NetError) -> DiscoveryError {
    let name = name.to_owned();
    if error.is_no_records_found() {
        DiscoveryError::NotFound { name }
    } else if matches!(error, NetError::Timeout) {
        DiscoveryError::Timeout { name }
    } else {
        DiscoveryError::Resolve {
            name,
            source: Box::new(error),
        }
    }
}

/// Checks that `name` is a host name (see the module docs) and returns it lower-cased, without
/// a trailing dot.
pub fn validate_name(name: &str) -> Result<String, DiscoveryError> {
    let invalid = |reason| DiscoveryError::InvalidName {
        name: name.chars().take(300).collect(),
        reason,
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err(invalid("empty"));
    }
    if bare.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 253 characters"));
    }
    let labels: Vec<&str> = bare.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("needs at least two labels"));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(invalid("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("only letters, digits and hyphens are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("label starts or ends with a hyphen"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("top-level label is all digits"));
    }
    Ok(bare.to_ascii_lowercase())
}

/// `<prefix>.<name>.`, checked to fit DNS's length limit.
fn prefixed(prefix: &str, name: &str, original: &str) -> Result<String, DiscoveryError> {
    if prefix.len() + 1 + name.len() > MAX_NAME_LEN {
        return Err(DiscoveryError::InvalidName {
            name: original.chars().take(300).collect(),
            reason: "too long once the _kith label is added",
        });
    }
    Ok(format!("{prefix}.{name}."))
}

/// An address a bootstrap record may name: a real unicast address and a port.
fn usable_addr(addr: &SocketAddr) -> bool {
    let ip = addr.ip();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// Peers gathered from one form, and how many Kith entries were unusable.
#[derive(Default)]
struct Found {
    peers: Vec<BootstrapPeer>,
    malformed: usize,
}

impl Found {
    /// Adds `addrs` for `peer`, merging with an earlier entry; bounded in peers and addresses.
    fn add(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = SocketAddr>) {
        let index = match self.peers.iter().position(|p| p.peer == peer) {
            Some(index) => index,
            None if self.peers.len() < MAX_PEERS => {
                self.peers.push(BootstrapPeer {
                    peer,
                    addrs: Vec::new(),
                });
                self.peers.len() - 1
            }
            None => {
                debug!(?peer, "bootstrap peer limit reached; ignoring the rest");
                return;
            }
        };
        let entry = &mut self.peers[index];
        for addr in addrs {
            if entry.addrs.len() >= MAX_ADDRS_PER_PEER {
                break;
            }
            if !entry.addrs.contains(&addr) {
                entry.addrs.push(addr);
            }
        }
    }

    fn merge(&mut self, other: Found) {
        self.malformed += other.malformed;
        for peer in other.peers {
            self.add(peer.peer, peer.addrs);
        }
    }
}

/// Resolves the bootstrap peers published under `domain` (both forms, see the module docs).
pub async fn resolve_bootstrap(
    resolver: &DnsResolver,
    domain: &str,
) -> Result<Vec<BootstrapPeer>, DiscoveryError> {
    let bare = validate_name(domain)?;
    let srv_name = prefixed(BOOTSTRAP_SRV_PREFIX, &bare, domain)?;
    let txt_name = prefixed(BOOTSTRAP_TXT_PREFIX, &bare, domain)?;
    let (srv, txt) = tokio::join!(
        bootstrap_from_srv(resolver, &srv_name),
        bootstrap_from_txt(resolver, &txt_name)
    );

    let mut found = Found::default();
    let mut failure = None;
    for result in [srv, txt] {
        match result {
            Ok(part) => found.merge(part),
            Err(DiscoveryError::NotFound { .. }) => {}
            Err(error) => {
                warn!(%error, "bootstrap lookup failed");
                failure.get_or_insert(error);
            }
        }
    }
    if !found.peers.is_empty() {
        return Ok(found.peers);
    }
    if found.malformed > 0 {
        return Err(DiscoveryError::Malformed {
            name: bare,
            reason: format!("none of {} bootstrap entries is usable", found.malformed),
        });
    }
    Err(failure.unwrap_or(DiscoveryError::NotFound { name: bare }))
}

/// The TXT-only form: `kith-bootstrap=<peer id>@<ip:port>`.
async fn bootstrap_from_txt(resolver: &DnsResolver, fqdn: &str) -> Result<Found, DiscoveryError> {
    let mut found = Found::default();
    for text in resolver.txt(fqdn).await? {
        let Some(value) = text.strip_prefix("kith-bootstrap=") else {
            continue;
        };
        match parse_bootstrap_entry(value) {
            Ok((peer, addr)) => found.add(peer, [addr]),
            Err(reason) => {
                warn!(name = fqdn, entry = %text, reason, "skipping malformed bootstrap entry");
                found.malformed += 1;
            }
        }
    }
    Ok(found)
}

pub(crate) fn parse_bootstrap_entry(value: &str) -> Result<(PeerId, SocketAddr), &'static str> {
    let (peer, addr) = value
        .split_once('@')
        .ok_or("expected <peer id>@<ip>:<port>")?;
    let peer = PeerId::from_str(peer).map_err(|_| "invalid peer id")?;
    let addr = SocketAddr::from_str(addr).map_err(|_| "invalid ip:port")?;
    if !usable_addr(&addr) {
        return Err("address is not a usable unicast ip:port");
    }
    Ok((peer, addr))
}

/// The SRV form: targets from `_kith._udp.<domain>`, each with its TXT `kith-peer=` and A/AAAA.
async fn bootstrap_from_srv(resolver: &DnsResolver, fqdn: &str) -> Result<Found, DiscoveryError> {
    let lookup = resolver.lookup(fqdn, RecordType::SRV).await?;
    let mut targets = Vec::new();
    let mut found = Found::default();
    for record in lookup.answers().iter().take(MAX_ANSWER_RECORDS) {
        let RData::SRV(srv) = &record.data else {
            continue;
        };
        if srv.target.is_root() {
            // RFC 2782: a target of "." means the service is decidedly not available there.
            continue;
        }
        let host = match validate_name(&srv.target.to_ascii()) {
            Ok(host) if srv.port != 0 => host,
            _ => {
                warn!(name = fqdn, target = %srv.target, port = srv.port, "skipping malformed SRV record");
                found.malformed += 1;
                continue;
            }
        };
        targets.push((srv.priority, std::cmp::Reverse(srv.weight), host, srv.port));
    }
    targets.sort();

    // One lookup per distinct host, in SRV order, with every port the host was given.
    let mut hosts: Vec<(String, Vec<u16>)> = Vec::new();
    for (_, _, host, port) in targets {
        if let Some((_, ports)) = hosts.iter_mut().find(|(h, _)| *h == host) {
            if !ports.contains(&port) {
                ports.push(port);
            }
        } else if hosts.len() < MAX_PEERS {
            hosts.push((host, vec![port]));
        }
    }

    let mut tasks = JoinSet::new();
    for (index, (host, ports)) in hosts.into_iter().enumerate() {
        let resolver = resolver.clone();
        tasks.spawn(async move { (index, srv_target(&resolver, &host, &ports).await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results.sort_by_key(|(index, _)| *index);
    for (_, result) in results {
        match result {
            Ok((peer, addrs)) => found.add(peer, addrs),
            Err(reason) => {
                warn!(name = fqdn, %reason, "skipping bootstrap target");
                found.malformed += 1;
            }
        }
    }
    Ok(found)
}

/// One SRV target: its single `kith-peer=` TXT value and its addresses on the SRV ports.
async fn srv_target(
    resolver: &DnsResolver,
    host: &str,
    ports: &[u16],
) -> Result<(PeerId, Vec<SocketAddr>), String> {
    let fqdn = format!("{host}.");
    let (txt, ips) = tokio::join!(resolver.txt(&fqdn), resolver.lookup_ips(&fqdn));
    let txt = txt.map_err(|e| format!("{host}: TXT: {e}"))?;
    let mut peers = HashSet::new();
    for text in &txt {
        if let Some(value) = text.strip_prefix("kith-peer=") {
            match PeerId::from_str(value) {
                Ok(peer) => {
                    peers.insert(peer);
                }
                Err(_) => warn!(host, entry = %text, "skipping malformed kith-peer entry"),
            }
        }
    }
    let peer = match peers.len() {
        0 => return Err(format!("{host}: no valid kith-peer TXT record")),
        1 => peers.into_iter().next().expect("one element"),
        _ => return Err(format!("{host}: several different kith-peer values")),
    };
    let ips = ips.map_err(|e| format!("{host}: A/AAAA: {e}"))?;
    let addrs: Vec<SocketAddr> = ips
        .into_iter()
        .flat_map(|ip| ports.iter().map(move |port| SocketAddr::new(ip, *port)))
        .filter(usable_addr)
        .take(MAX_ADDRS_PER_PEER)
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host}: no usable address"));
    }
    Ok((peer, addrs))
}

/// What a name points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRecord {
    /// The name that was resolved, lower-cased, without a trailing dot.
    pub name: String,
    /// The identity it names.
    pub identity: IdentityId,
    /// Node keys that serve the identity (possibly none; at most [`MAX_PEERS`]).
    pub nodes: Vec<PeerId>,
}

/// Resolves a name such as `alice.example.com` through its `_kith` TXT records (see the module
/// docs). An invalid name is refused before any query is sent.
pub async fn resolve_name(
    resolver: &DnsResolver,
    name: &str,
) -> Result<NameRecord, DiscoveryError> {
    let bare = validate_name(name)?;
    let fqdn = prefixed(NAME_PREFIX, &bare, name)?;
    let texts = match resolver.txt(&fqdn).await {
        Err(DiscoveryError::NotFound { .. }) => {
            return Err(DiscoveryError::NotFound { name: bare });
        }
        other => other?,
    };

    let mut identities: Vec<IdentityId> = Vec::new();
    let mut malformed_ids = 0usize;
    let mut nodes: Vec<PeerId> = Vec::new();
    for text in &texts {
        if let Some(value) = text.strip_prefix("kith=") {
            match IdentityId::from_str(value) {
                Ok(id) if !identities.contains(&id) => identities.push(id),
                Ok(_) => {}
                Err(_) => {
                    warn!(name = %bare, entry = %text, "skipping malformed kith= entry");
                    malformed_ids += 1;
                }
            }
        } else if let Some(value) = text.strip_prefix("node=") {
            match PeerId::from_str(value) {
                Ok(peer) if !nodes.contains(&peer) && nodes.len() < MAX_PEERS => nodes.push(peer),
                Ok(_) => {}
                Err(_) => warn!(name = %bare, entry = %text, "skipping malformed node= entry"),
            }
        }
    }
    match identities.len() {
        1 => Ok(NameRecord {
            name: bare,
            identity: identities[0],
            nodes,
        }),
        0 if malformed_ids > 0 => Err(DiscoveryError::Malformed {
            name: bare,
            reason: "no kith= entry holds a valid identity id".into(),
        }),
        0 => Err(DiscoveryError::NotFound { name: bare }),
        n => Err(DiscoveryError::Ambiguous {
            name: bare,
            reason: format!("{n} different kith= identities"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_normalised() {
        assert_eq!(
            validate_name("Alice.Example.COM.").unwrap(),
            "alice.example.com"
        );
        assert_eq!(validate_name("a-1.b2.io").unwrap(), "a-1.b2.io");
        let long_ok = format!("{}.com", vec!["a".repeat(63); 3].join("."));
        assert!(validate_name(&long_ok).is_ok());
        for bad in [
            "",
            ".",
            "localhost",
            "a..b",
            ".a.b",
            "-a.com",
            "a-.com",
            "a_b.com",
            "a b.com",
            "ä.com",
            "1.2.3.4",
            "a.com..",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}.com", vec!["a".repeat(63); 4].join(".")),
        ] {
            assert!(
                matches!(validate_name(bad), Err(DiscoveryError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn bootstrap_entries_parse_v4_and_v6_and_refuse_junk() {
        let peer = crate::peer::SecretKey::generate().peer_id();
        let (p, a) = parse_bootstrap_entry(&format!("{peer}@192.0.2.1:4433")).unwrap();
        assert_eq!((p, a), (peer, "192.0.2.1:4433".parse().unwrap()));
        let (_, a) = parse_bootstrap_entry(&format!("{peer}@[2001:db8::1]:4433")).unwrap();
        assert_eq!(a, "[2001:db8::1]:4433".parse().unwrap());
        for bad in [
            format!("{peer}"),
            format!("{peer}@192.0.2.1"),
            format!("{peer}@192.0.2.1:0"),
            format!("{peer}@0.0.0.0:1"),
            format!("{peer}@224.0.0.251:5353"),
            format!("{peer}@2001:db8::1:4433"),
            format!("{}@192.0.2.1:1", "00".repeat(32)),
            "@192.0.2.1:1".to_owned(),
        ] {
            assert!(parse_bootstrap_entry(&bad).is_err(), "{bad} accepted");
        }
    }
}
