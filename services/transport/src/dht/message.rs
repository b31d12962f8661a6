//! The DHT's wire messages and their compact, versioned, bounded binary encoding.
//!
//! A message is one UDP datagram of at most [`MAX_DATAGRAM`] bytes (fits the typical 1280-byte
//! IPv6 minimum MTU with room for headers). Layout, all integers big-endian:
//!
//! ```text
//! version u8 (= 1) | kind u8 | txid u64 | flags u8 (bit 0: sender key follows, bit 1: padding
//! follows the body) | [sender 32] | body (per kind, below) | [padding length u16, that many 0s]
//! ```
//!
//! Bodies: `Ping` (optional token); `Pong` (optional observed address, optional token); `FindNode`
//! (target 32, optional token); `Nodes` (optional token, count u8 ≤ 20, contacts); `Announce`
//! (key 32, token 16, record); `AnnounceAck` (stored u8); `GetPeers` (key 32, optional token);
//! `Peers` (optional token, record count u8, records, contact count u8, contacts); `Error`
//! (code u8). An optional field is a presence byte (0 or 1) then the field; an address is a
//! family byte (4 or 6), the IP and a u16 port; a contact is a 32-byte key and an address; a
//! record is key 32, seq u64, expiry u64, address count u8 + addresses, relay count u8 + relay
//! keys, signature 64.
//!
//! Decoding is total: any input gives a message or a typed [`DecodeError`] (oversized, truncated,
//! trailing bytes, unknown version or kind, bad flag, invalid key or address, too many items),
//! never a panic. Every key is validated as an ed25519 point on the way in and every contact's id
//! is derived from its key, so a sender cannot place a contact at an id of its choosing.
//!
//! Every request carries a random 64-bit transaction id that its response echoes; see [`super::rpc`]
//! for matching and for the address tokens that enforce the no-amplification rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::id::NodeId;
use super::record::{MAX_ADDRS, MAX_RELAYS, PeerRecord};
use super::routing::Contact;
use crate::peer::PeerId;

/// The encoding version this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest message, in bytes: one UDP datagram under a typical MTU.
pub const MAX_DATAGRAM: usize = 1200;
/// Most contacts in one `Nodes` or `Peers` message.
pub const MAX_CONTACTS: usize = 20;
/// Most records in one `Peers` message (the datagram bound usually binds first).
pub const MAX_RECORDS: usize = 8;
/// Length of an address token.
pub const TOKEN_LEN: usize = 16;

/// Proof that a requester receives datagrams at the address it sends from (see [`super::rpc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; TOKEN_LEN]);

/// One DHT datagram: the header fields and the body.
///
/// A struct around a [`MessageBody`] enum rather than one flat enum, because every message has
/// the same header and the responder handles it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtMessage {
    /// Random per request; a response echoes its request's.
    pub txid: u64,
    /// The sender's key, if it wants to be added to routing tables (a node that cannot be reached,
    /// for example behind a NAT it has not punched, leaves it out).
    pub sender: Option<PeerId>,
    /// Zero bytes appended to a request so that its answer may be as large (see
    /// [`super::rpc`]: no response is larger than its request from an unverified address).
    pub padding: u16,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of DHT message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Are you there? (request)
    Ping {
        /// A token issued earlier to this address, if any (it earns the full `Pong`).
        token: Option<Token>,
    },
    /// Yes; and this is the address your ping came from. (response)
    Pong {
        /// The requester's address as seen by the responder (for learning the public address).
        observed: Option<SocketAddr>,
        /// A token for the requester's address.
        token: Option<Token>,
    },
    /// Which nodes do you know closest to `target`? (request)
    FindNode {
        /// The id looked up.
        target: NodeId,
        /// A token this node issued earlier to the requester's address, if it has one.
        token: Option<Token>,
    },
    /// The closest nodes the responder knows. (response)
    Nodes {
        /// A fresh token for the requester's address.
        token: Option<Token>,
        /// Closest first, at most [`MAX_CONTACTS`].
        nodes: Vec<Contact>,
    },
    /// Store my record under `key`. (request; needs a valid token)
    Announce {
        /// The DHT key (a topic key, or the announcing peer's own id).
        key: NodeId,
        /// Token issued by the responder to this address.
        token: Token,
        /// The signed record.
        record: PeerRecord,
    },
    /// Whether an announce was stored. (response)
    AnnounceAck {
        /// True if stored (or already held).
        stored: bool,
    },
    /// Which peers announced themselves under `key`? (request)
    GetPeers {
        /// The DHT key.
        key: NodeId,
        /// A token issued earlier to this address, if any.
        token: Option<Token>,
    },
    /// Records held under the key and the closest nodes to it. (response)
    Peers {
        /// A fresh token for the requester's address.
        token: Option<Token>,
        /// Records, at most [`MAX_RECORDS`].
        records: Vec<PeerRecord>,
        /// Closest nodes to the key, at most [`MAX_CONTACTS`].
        nodes: Vec<Contact>,
    },
    /// The request was refused. (response)
    Error {
        /// One of [`error_code`].
        code: u8,
    },
}

/// Codes of [`MessageBody::Error`].
pub mod error_code {
    /// The request needed a valid token for the requester's address.
    pub const BAD_TOKEN: u8 = 1;
    /// The announced record was refused (signature, expiry, sequence or limits).
    pub const RECORD_REFUSED: u8 = 2;
    /// The responder does not serve this request.
    pub const UNSUPPORTED: u8 = 3;
}

impl MessageBody {
    fn kind(&self) -> u8 {
        match self {
            Self::Ping { .. } => 1,
            Self::Pong { .. } => 2,
            Self::FindNode { .. } => 3,
            Self::Nodes { .. } => 4,
            Self::Announce { .. } => 5,
            Self::AnnounceAck { .. } => 6,
            Self::GetPeers { .. } => 7,
            Self::Peers { .. } => 8,
            Self::Error { .. } => 9,
        }
    }

    /// Whether this is a request (as opposed to a response).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Self::Ping { .. }
                | Self::FindNode { .. }
                | Self::Announce { .. }
                | Self::GetPeers { .. }
        )
    }
}

/// Why bytes are not a DHT message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("message of {0} bytes exceeds the datagram limit")]
    TooLarge(usize),
    /// Ends before the message does.
    #[error("message truncated")]
    Truncated,
    /// Bytes left after the message.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// A version this code does not speak.
    #[error("unknown dht message version {0}")]
    UnknownVersion(u8),
    /// An unknown message kind.
    #[error("unknown dht message kind {0}")]
    UnknownKind(u8),
    /// A flag or presence byte with an invalid value.
    #[error("invalid flag byte")]
    InvalidFlag,
    /// Padding that is not all zero bytes.
    #[error("invalid padding")]
    InvalidPadding,
    /// A key that is not a valid ed25519 public key.
    #[error("invalid key")]
    InvalidKey,
    /// An address with an unknown family.
    #[error("invalid address")]
    InvalidAddress,
    /// More items than allowed.
    #[error("too many {0}")]
    TooMany(&'static str),
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoding would exceed [`MAX_DATAGRAM`].
    #[error("message of {0} bytes exceeds the datagram limit")]
    TooLarge(usize),
    /// More items than the format allows.
    #[error("too many {0}")]
    TooMany(&'static str),
}

/// Appends big-endian fields to a buffer.
#[derive(Default, Debug)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Writes an address: family byte, IP, port.
pub(crate) fn put_addr(w: &mut Writer, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            w.u8(4);
            w.bytes(&ip.octets());
        }
        IpAddr::V6(ip) => {
            w.u8(6);
            w.bytes(&ip.octets());
        }
    }
    w.bytes(&addr.port().to_be_bytes());
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidFlag),
        }
    }
    pub(crate) fn peer(&mut self) -> Result<PeerId, DecodeError> {
        PeerId::from_bytes(&self.array()?).map_err(|_| DecodeError::InvalidKey)
    }
    pub(crate) fn node_id(&mut self) -> Result<NodeId, DecodeError> {
        Ok(NodeId::from_bytes(self.array()?))
    }
    pub(crate) fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(DecodeError::InvalidAddress),
        };
        let port = u16::from_be_bytes(self.array()?);
        Ok(SocketAddr::new(ip, port))
    }
    pub(crate) fn token(&mut self) -> Result<Option<Token>, DecodeError> {
        Ok(if self.flag()? {
            Some(Token(self.array()?))
        } else {
            None
        })
    }
    pub(crate) fn count(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::TooMany(what));
        }
        Ok(n)
    }
    pub(crate) fn contacts(&mut self) -> Result<Vec<Contact>, DecodeError> {
        let n = self.count(MAX_CONTACTS, "contacts")?;
        (0..n)
            .map(|_| {
                let peer = self.peer()?;
                Ok(Contact::new(peer, self.addr()?))
            })
            .collect()
    }
    pub(crate) fn record(&mut self) -> Result<PeerRecord, DecodeError> {
        let peer = self.peer()?;
        let seq = self.u64()?;
        let expires_at = self.u64()?;
        let n = self.count(MAX_ADDRS, "addresses")?;
        let addrs = (0..n).map(|_| self.addr()).collect::<Result<_, _>>()?;
        let n = self.count(MAX_RELAYS, "relays")?;
        let relays = (0..n).map(|_| self.peer()).collect::<Result<_, _>>()?;
        Ok(PeerRecord {
            peer,
            addrs,
            relays,
            seq,
            expires_at,
            signature: self.array()?,
        })
    }
}

fn put_token(w: &mut Writer, token: &Option<Token>) {
    match token {
        Some(t) => {
            w.u8(1);
            w.bytes(&t.0);
        }
        None => w.u8(0),
    }
}

fn put_contacts(w: &mut Writer, nodes: &[Contact]) -> Result<(), EncodeError> {
    if nodes.len() > MAX_CONTACTS {
        return Err(EncodeError::TooMany("contacts"));
    }
    w.u8(nodes.len() as u8);
    for node in nodes {
        w.bytes(node.peer.as_bytes());
        put_addr(w, &node.addr);
    }
    Ok(())
}

fn put_record(w: &mut Writer, record: &PeerRecord) -> Result<(), EncodeError> {
    if record.addrs.len() > MAX_ADDRS {
        return Err(EncodeError::TooMany("addresses"));
    }
    if record.relays.len() > MAX_RELAYS {
        return Err(EncodeError::TooMany("relays"));
    }
    record.write_body(w);
    w.bytes(&record.signature);
    Ok(())
}

impl DhtMessage {
    /// Encodes the message; fails if it would not fit one datagram or breaks a count limit.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        w.u8(PROTOCOL_VERSION);
        w.u8(self.body.kind());
        w.u64(self.txid);
        let flags = u8::from(self.sender.is_some()) | (u8::from(self.padding > 0) << 1);
        w.u8(flags);
        if let Some(peer) = &self.sender {
            w.bytes(peer.as_bytes());
        }
        match &self.body {
            MessageBody::Ping { token } => put_token(&mut w, token),
            MessageBody::Pong { observed, token } => {
                match observed {
                    Some(addr) => put_addr(&mut w, addr),
                    None => w.u8(0),
                }
                put_token(&mut w, token);
            }
            MessageBody::FindNode { target, token } => {
                w.bytes(target.as_bytes());
                put_token(&mut w, token);
            }
            MessageBody::Nodes { token, nodes } => {
                put_token(&mut w, token);
                put_contacts(&mut w, nodes)?;
            }
            MessageBody::Announce { key, token, record } => {
                w.bytes(key.as_bytes());
                w.bytes(&token.0);
                put_record(&mut w, record)?;
            }
            MessageBody::AnnounceAck { stored } => w.u8(u8::from(*stored)),
            MessageBody::GetPeers { key, token } => {
                w.bytes(key.as_bytes());
                put_token(&mut w, token);
            }
            MessageBody::Peers {
                token,
                records,
                nodes,
            } => {
                put_token(&mut w, token);
                if records.len() > MAX_RECORDS {
                    return Err(EncodeError::TooMany("records"));
                }
                w.u8(records.len() as u8);
                for record in records {
                    put_record(&mut w, record)?;
                }
                put_contacts(&mut w, nodes)?;
            }
            MessageBody::Error { code } => w.u8(*code),
        }
        if self.padding > 0 {
            w.bytes(&self.padding.to_be_bytes());
            w.bytes(&vec![0; usize::from(self.padding)]);
        }
        let bytes = w.into_bytes();
        if bytes.len() > MAX_DATAGRAM {
            return Err(EncodeError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes one datagram. Never panics; see [`DecodeError`] for what is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut r = Reader { buf: bytes };
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let kind = r.u8()?;
        let txid = r.u64()?;
        let flags = r.u8()?;
        if flags > 0b11 {
            return Err(DecodeError::InvalidFlag);
        }
        let sender = if flags & 1 == 1 {
            Some(r.peer()?)
        } else {
            None
        };
        let body = match kind {
            1 => MessageBody::Ping { token: r.token()? },
            2 => {
                let observed = match r.buf.first() {
                    Some(0) => {
                        r.u8()?;
                        None
                    }
                    _ => Some(r.addr()?),
                };
                MessageBody::Pong {
                    observed,
                    token: r.token()?,
                }
            }
            3 => MessageBody::FindNode {
                target: r.node_id()?,
                token: r.token()?,
            },
            4 => MessageBody::Nodes {
                token: r.token()?,
                nodes: r.contacts()?,
            },
            5 => MessageBody::Announce {
                key: r.node_id()?,
                token: Token(r.array()?),
                record: r.record()?,
            },
            6 => MessageBody::AnnounceAck { stored: r.flag()? },
            7 => MessageBody::GetPeers {
                key: r.node_id()?,
                token: r.token()?,
            },
            8 => {
                let token = r.token()?;
                let n = r.count(MAX_RECORDS, "records")?;
                let records = (0..n).map(|_| r.record()).collect::<Result<_, _>>()?;
                MessageBody::Peers {
                    token,
                    records,
                    nodes: r.contacts()?,
                }
            }
            9 => MessageBody::Error { code: r.u8()? },
            other => return Err(DecodeError::UnknownKind(other)),
        };
        let mut padding = 0;
        if flags & 2 == 2 {
            padding = u16::from_be_bytes(r.array()?);
            // Zero-length padding has its own encoding (flag clear): refuse it, so that the
            // encoding stays canonical.
            if padding == 0 || r.take(usize::from(padding))?.iter().any(|b| *b != 0) {
                return Err(DecodeError::InvalidPadding);
            }
        }
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes(r.buf.len()));
        }
        Ok(Self {
            txid,
            sender,
            padding,
            body,
        })
    }

    /// The same message with padding added so that it encodes to exactly `len` bytes. A message
    /// that is already within 2 bytes of `len` (padding costs a 2-byte length) or longer is left
    /// unpadded. Requesters without a token pad requests to the size of the answer they want.
    pub fn padded_to(mut self, len: usize) -> Result<Self, EncodeError> {
        self.padding = 0;
        let bare = self.encode()?.len();
        // Padding costs 2 bytes of length on top of the zeros.
        if len > bare + 2 {
            self.padding = u16::try_from(len - bare - 2).map_err(|_| EncodeError::TooLarge(len))?;
            self.encode()?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::topic_key;
    use crate::peer::SecretKey;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};

    fn peer(seed: u8) -> PeerId {
        SecretKey::from_bytes([seed; 32]).peer_id()
    }

    fn contacts(n: usize) -> Vec<Contact> {
        (0..n)
            .map(|i| {
                let addr = if i % 2 == 0 {
                    format!("198.51.100.{i}:{}", 1000 + i)
                } else {
                    format!("[2001:db8::{i}]:{}", 1000 + i)
                };
                Contact::new(peer(i as u8 + 1), addr.parse().unwrap())
            })
            .collect()
    }

    fn record(seed: u8, key: &NodeId) -> PeerRecord {
        PeerRecord::sign(
            &SecretKey::from_bytes([seed; 32]),
            key,
            vec![
                "192.0.2.1:4000".parse().unwrap(),
                "[2001:db8::1]:4000".parse().unwrap(),
            ],
            vec![peer(200), peer(201)],
            7,
            1_000_000,
        )
        .unwrap()
    }

    /// One message of every kind, with the largest legal contents where it matters.
    pub(crate) fn samples() -> Vec<DhtMessage> {
        let key = topic_key(b"room");
        let token = Some(Token([9; TOKEN_LEN]));
        let bodies = vec![
            MessageBody::Ping { token: None },
            MessageBody::Ping { token },
            MessageBody::Pong {
                observed: Some("203.0.113.5:999".parse().unwrap()),
                token,
            },
            MessageBody::Pong {
                observed: None,
                token: None,
            },
            MessageBody::FindNode {
                target: key,
                token: None,
            },
            MessageBody::FindNode { target: key, token },
            MessageBody::Nodes {
                token,
                nodes: contacts(MAX_CONTACTS),
            },
            MessageBody::Nodes {
                token: None,
                nodes: vec![],
            },
            MessageBody::Announce {
                key,
                token: Token([3; TOKEN_LEN]),
                record: record(1, &key),
            },
            MessageBody::AnnounceAck { stored: true },
            MessageBody::GetPeers { key, token },
            MessageBody::Peers {
                token,
                records: vec![record(1, &key), record(2, &key)],
                nodes: contacts(5),
            },
            MessageBody::Error {
                code: error_code::BAD_TOKEN,
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| DhtMessage {
                txid: 0x0123_4567_89ab_cdef ^ i as u64,
                sender: (i % 3 != 0).then(|| peer(50)),
                padding: if i % 4 == 1 { 3 } else { 0 },
                body,
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        for message in samples() {
            let bytes = message.encode().unwrap();
            assert!(bytes.len() <= MAX_DATAGRAM);
            assert_eq!(DhtMessage::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn a_full_nodes_message_fits_one_datagram() {
        let message = DhtMessage {
            txid: 1,
            sender: Some(peer(1)),
            padding: 0,
            body: MessageBody::Nodes {
                token: Some(Token([0; TOKEN_LEN])),
                nodes: contacts(MAX_CONTACTS)
                    .into_iter()
                    .map(|mut c| {
                        c.addr = "[2001:db8::1]:1".parse().unwrap();
                        c
                    })
                    .collect(),
            },
        };
        assert!(message.encode().unwrap().len() <= MAX_DATAGRAM);
    }

    #[test]
    fn oversized_and_overfull_messages_are_not_encoded() {
        let key = topic_key(b"room");
        let message = DhtMessage {
            txid: 1,
            sender: None,
            padding: 0,
            body: MessageBody::Peers {
                token: None,
                records: vec![record(1, &key); MAX_RECORDS],
                nodes: vec![],
            },
        };
        assert!(matches!(message.encode(), Err(EncodeError::TooLarge(_))));
        let message = DhtMessage {
            txid: 1,
            sender: None,
            padding: 0,
            body: MessageBody::Nodes {
                token: None,
                nodes: contacts(MAX_CONTACTS + 1),
            },
        };
        assert_eq!(message.encode(), Err(EncodeError::TooMany("contacts")));
    }

    #[test]
    fn malformed_input_gives_typed_errors() {
        let ping = DhtMessage {
            txid: 5,
            sender: None,
            padding: 0,
            body: MessageBody::Ping { token: None },
        }
        .encode()
        .unwrap();
        assert_eq!(DhtMessage::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            DhtMessage::decode(&vec![1u8; MAX_DATAGRAM + 1]),
            Err(DecodeError::TooLarge(MAX_DATAGRAM + 1))
        );
        let mut bad = ping.clone();
        bad[0] = 2;
        assert_eq!(
            DhtMessage::decode(&bad),
            Err(DecodeError::UnknownVersion(2))
        );
        let mut bad = ping.clone();
        bad[1] = 77;
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::UnknownKind(77)));
        let mut bad = ping.clone();
        bad.push(0);
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::TrailingBytes(1)));
        let mut bad = ping.clone();
        bad[10] = 4;
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::InvalidFlag));
        let mut bad = ping.clone();
        bad[11] = 2; // token presence byte
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::InvalidFlag));
        let padded = DhtMessage::decode(&ping)
            .unwrap()
            .padded_to(100)
            .unwrap()
            .encode()
            .unwrap();
        assert_eq!(padded.len(), 100);
        let mut bad = padded.clone();
        bad[99] = 1;
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::InvalidPadding));
        // A sender key that is a small-order point.
        let mut bad = ping.clone();
        bad[10] = 1;
        bad.extend_from_slice(&[0u8; 32]);
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::InvalidKey));
        // 21 contacts.
        let mut bad = DhtMessage {
            txid: 5,
            sender: None,
            padding: 0,
            body: MessageBody::Nodes {
                token: None,
                nodes: vec![],
            },
        }
        .encode()
        .unwrap();
        *bad.last_mut().unwrap() = 21;
        assert_eq!(
            DhtMessage::decode(&bad),
            Err(DecodeError::TooMany("contacts"))
        );
        // An address family that does not exist.
        let mut bad = DhtMessage {
            txid: 5,
            sender: None,
            padding: 0,
            body: MessageBody::Nodes {
                token: None,
                nodes: contacts(1),
            },
        }
        .encode()
        .unwrap();
        let family_at = bad.len() - 7;
        assert_eq!(bad[family_at], 4);
        bad[family_at] = 5;
        assert_eq!(DhtMessage::decode(&bad), Err(DecodeError::InvalidAddress));
    }

    #[test]
    fn every_truncation_of_every_valid_message_is_refused() {
        for message in samples() {
            let bytes = message.encode().unwrap();
            for len in 0..bytes.len() {
                assert!(
                    DhtMessage::decode(&bytes[..len]).is_err(),
                    "{len} of {} bytes",
                    bytes.len()
                );
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = StdRng::seed_from_u64(0xd47);
        let samples: Vec<Vec<u8>> = samples().iter().map(|m| m.encode().unwrap()).collect();
        let mut accepted = 0;
        for i in 0..100_000 {
            let bytes = if i % 2 == 0 {
                // Pure noise, sometimes with a valid version byte so decoding goes deeper.
                let mut b = vec![0u8; rng.gen_range(0..1300)];
                rng.fill_bytes(&mut b);
                if i % 4 == 0 && !b.is_empty() {
                    b[0] = PROTOCOL_VERSION;
                }
                b
            } else {
                // A valid message with a few bytes flipped.
                let mut b = samples[rng.gen_range(0..samples.len())].clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    b[at] = rng.r#gen();
                }
                b
            };
            if let Ok(message) = DhtMessage::decode(&bytes) {
                accepted += 1;
                // Whatever decodes re-encodes to the same bytes: the encoding is canonical.
                assert_eq!(message.encode().unwrap(), bytes);
            }
        }
        assert!(accepted < 100_000);
    }
}
