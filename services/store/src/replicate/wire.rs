//! The replication wire protocol (`kith/store/1`): length-prefixed binary messages.
//!
//! A frame is `length u32 LE ‖ kind u8 ‖ body`, `length` counting kind and body, at most
//! [`MAX_FRAME_BYTES`]. Integers are little-endian. Decoding is total: every length is bounded
//! before anything is allocated, every field is checked, trailing bytes are an error, and
//! signed roots and fork evidence are verified as they are decoded. A peer whose bytes do not
//! decode has broken the protocol ([`StoreError::Protocol`]).
//!
//! Logs are named by their *discovery id* ([`discovery_id`]), a keyed hash of the log key: a
//! peer that does not know a log's key cannot tell which log an id is, and cannot open it,
//! because [`Message::Open`] carries a capability ([`capability`]) only a holder of the key can
//! compute, bound to the receiver's random session nonce and both peer ids (so it cannot be
//! replayed in another session or relayed to a third peer).
//! Nothing that reveals the key (a signed root) is sent for a log before the peer proved it
//! knows the key.
//!
//! Either side may also ask for the logs the other holds under a room's discovery topic
//! ([`crate::topic`]): `TopicQuery` names the topic by its public id and proves knowledge of
//! the topic with a capability bound to the receiver's nonce, the direction and both peer ids.
//! A holder that knows the topic and accepts the proof answers `TopicLogs` — its own proof for
//! the asker, then the writers' signed tags of at most [`MAX_TOPIC_LOGS`] logs, in strictly
//! ascending key order (so no duplicates); anything else (an unknown topic, a wrong proof) gets
//! `TopicUnknown`, the same answer either way, so a peer that cannot prove the topic learns not
//! even whether the holder has it. The tags' signatures are checked by the session that asked,
//! before anything is kept (decoding only checks their keys).
//!
//! | kind | message | body |
//! |---|---|---|
//! | 1 | `Hello` | version u8 ‖ nonce \[32\] |
//! | 2 | `Open` | discovery \[32\] ‖ capability \[32\] |
//! | 3 | `Unavailable` | discovery \[32\] |
//! | 4 | `Have` | discovery ‖ has_root u8 ‖ root \[136\]? ‖ n u32 ‖ (start u64 ‖ end u64) × n |
//! | 5 | `Request` | discovery ‖ id u32 ‖ length u64 ‖ start u64 ‖ end u64 ‖ upgrade_from u64 (`u64::MAX`: none) |
//! | 6 | `Data` | discovery ‖ id u32 ‖ start u64 ‖ n u32 ‖ (len u32 ‖ bytes) × n ‖ proof |
//! | 7 | `NoData` | discovery ‖ id u32 |
//! | 8 | `Fork` | discovery ‖ len u32 ‖ evidence |
//! | 9 | `Done` | (empty) |
//! | 10 | `TopicQuery` | topic id \[32\] ‖ capability \[32\] |
//! | 11 | `TopicLogs` | topic id \[32\] ‖ capability \[32\] ‖ n u32 ‖ (log key \[32\] ‖ signature \[64\]) × n |
//! | 12 | `TopicUnknown` | topic id \[32\] |

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::StoreError;
use crate::log::proof::MAX_PROOF_NODES;
use crate::log::root::SIGNED_ROOT_BYTES;
use crate::log::{ForkEvidence, LogKey, MAX_ENTRY_BYTES, Proof, RangeSet, SignedRoot};
use crate::topic::{MAX_TOPIC_LOGS, TopicId, TopicTag};

/// The protocol's ALPN.
pub const ALPN: &str = "kith/store/1";

/// The protocol version in `Hello`.
pub const VERSION: u8 = 1;

/// The most entries one `Request` may ask for (and one `Data` may carry).
pub const MAX_REQUEST_ENTRIES: u64 = 1024;

/// The most entry bytes one `Data` may carry (a single entry may be up to
/// [`MAX_ENTRY_BYTES`], which is smaller).
pub const MAX_REPLY_BYTES: u64 = 1024 * 1024;

/// The most ranges one `Have` may list (a holder with more lists a subset of what it holds).
pub const MAX_HAVE_RANGES: usize = 4096;

/// The largest fork evidence accepted (two node claims with full proofs fit well inside).
pub const MAX_EVIDENCE_BYTES: usize = 128 * 1024;

/// The largest frame: a full `Data` (entries, their length prefixes, a proof of
/// [`MAX_PROOF_NODES`] nodes) with room to spare.
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

const _: () = assert!(
    (MAX_REPLY_BYTES as usize) + 4 * MAX_REQUEST_ENTRIES as usize + 4 + 40 * MAX_PROOF_NODES + 64
        < MAX_FRAME_BYTES
);
const _: () = assert!(MAX_ENTRY_BYTES as u64 <= MAX_REPLY_BYTES);
const _: () = assert!(1 + 64 + 4 + 96 * MAX_TOPIC_LOGS < MAX_FRAME_BYTES);

/// A log's name on the wire: `BLAKE3-keyed(key, "kith-store discovery v1")`, like hypercore's
/// discovery key.
pub type Discovery = [u8; 32];

/// The discovery id of `key`'s log.
pub fn discovery_id(key: &LogKey) -> Discovery {
    *blake3::keyed_hash(key.as_bytes(), b"kith-store discovery v1").as_bytes()
}

/// Proof that the sender of an `Open` knows the log's key: a MAC, under a key derived from the
/// log key, of the receiver's session nonce and both peers' ids (which the transport
/// authenticates), so it works in no other session and cannot be relayed to a third peer.
pub fn capability(
    key: &LogKey,
    receiver_nonce: &[u8; 32],
    sender: &[u8; 32],
    receiver: &[u8; 32],
) -> [u8; 32] {
    let mac_key = blake3::derive_key("kith-store capability v2", key.as_bytes());
    let mut mac = blake3::Hasher::new_keyed(&mac_key);
    mac.update(receiver_nonce);
    mac.update(sender);
    mac.update(receiver);
    *mac.finalize().as_bytes()
}

/// Whether `cap` is [`capability`] for these values (compared in constant time).
pub fn check_capability(
    key: &LogKey,
    cap: &[u8; 32],
    receiver_nonce: &[u8; 32],
    sender: &[u8; 32],
    receiver: &[u8; 32],
) -> bool {
    blake3::Hash::from(*cap)
        == blake3::Hash::from(capability(key, receiver_nonce, sender, receiver))
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First message each way.
    Hello { version: u8, nonce: [u8; 32] },
    /// "I hold or want this log, and know its key": the log is open once both sides sent it.
    Open {
        discovery: Discovery,
        capability: [u8; 32],
    },
    /// The answer to an `Open` for a log the receiver does not hold (or will not serve).
    Unavailable { discovery: Discovery },
    /// What the sender holds: its signed root and held entries (a subset if sparse).
    Have {
        discovery: Discovery,
        root: Option<SignedRoot>,
        held: RangeSet,
    },
    /// Entries `[start, end)` with a proof against the receiver's root of `length` entries (one
    /// it advertised), revealing the peaks of `upgrade_from` if given. An empty range (only
    /// with `upgrade_from`) asks for the root's upgrade proof alone.
    Request {
        discovery: Discovery,
        id: u32,
        length: u64,
        start: u64,
        end: u64,
        upgrade_from: Option<u64>,
    },
    /// The answer to a `Request`: a non-empty prefix of the asked range (empty only for an
    /// empty request), and its proof.
    Data {
        discovery: Discovery,
        id: u32,
        start: u64,
        entries: Vec<Vec<u8>>,
        proof: Proof,
    },
    /// The answer to a `Request` the sender cannot serve (not held, evicted).
    NoData { discovery: Discovery, id: u32 },
    /// Evidence that the log's writer forked it (verified on decoding).
    Fork {
        discovery: Discovery,
        evidence: ForkEvidence,
    },
    /// "I want nothing more from you for now."
    Done,
    /// "Which logs do you hold under this topic? I know it (the capability proves it)."
    TopicQuery {
        topic: TopicId,
        capability: [u8; 32],
    },
    /// The answer to a `TopicQuery` the sender accepted: its own proof that it knows the topic
    /// and the tags of the logs it holds under it (strictly ascending keys, at most
    /// [`MAX_TOPIC_LOGS`]).
    TopicLogs {
        topic: TopicId,
        capability: [u8; 32],
        logs: Vec<TopicTag>,
    },
    /// The answer to a `TopicQuery` for a topic the sender does not hold, or whose proof was
    /// wrong (indistinguishable on purpose).
    TopicUnknown { topic: TopicId },
}

const HELLO: u8 = 1;
const OPEN: u8 = 2;
const UNAVAILABLE: u8 = 3;
const HAVE: u8 = 4;
const REQUEST: u8 = 5;
const DATA: u8 = 6;
const NO_DATA: u8 = 7;
const FORK: u8 = 8;
const DONE: u8 = 9;
const TOPIC_QUERY: u8 = 10;
const TOPIC_LOGS: u8 = 11;
const TOPIC_UNKNOWN: u8 = 12;

fn bad(what: &str) -> StoreError {
    StoreError::Protocol(what.to_owned())
}

/// A cursor over a frame's body that fails instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(bad(&format!("truncated {what}")));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, StoreError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn array(&mut self, what: &str) -> Result<[u8; 32], StoreError> {
        Ok(self.take(32, what)?.try_into().expect("32"))
    }
    fn end(&self, what: &str) -> Result<(), StoreError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad(&format!("trailing bytes after {what}")))
        }
    }
}

impl Message {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Open { .. } => "open",
            Message::Unavailable { .. } => "unavailable",
            Message::Have { .. } => "have",
            Message::Request { .. } => "request",
            Message::Data { .. } => "data",
            Message::NoData { .. } => "no-data",
            Message::Fork { .. } => "fork",
            Message::Done => "done",
            Message::TopicQuery { .. } => "topic-query",
            Message::TopicLogs { .. } => "topic-logs",
            Message::TopicUnknown { .. } => "topic-unknown",
        }
    }

    /// The frame: length prefix, kind, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Message::Hello { version, nonce } => {
                out.push(HELLO);
                out.push(*version);
                out.extend_from_slice(nonce);
            }
            Message::Open {
                discovery,
                capability,
            } => {
                out.push(OPEN);
                out.extend_from_slice(discovery);
                out.extend_from_slice(capability);
            }
            Message::Unavailable { discovery } => {
                out.push(UNAVAILABLE);
                out.extend_from_slice(discovery);
            }
            Message::Have {
                discovery,
                root,
                held,
            } => {
                out.push(HAVE);
                out.extend_from_slice(discovery);
                match root {
                    Some(r) => {
                        out.push(1);
                        out.extend_from_slice(&r.to_bytes());
                    }
                    None => out.push(0),
                }
                let ranges: Vec<(u64, u64)> = held.iter().take(MAX_HAVE_RANGES).collect();
                out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
                for (s, e) in ranges {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&e.to_le_bytes());
                }
            }
            Message::Request {
                discovery,
                id,
                length,
                start,
                end,
                upgrade_from,
            } => {
                out.push(REQUEST);
                out.extend_from_slice(discovery);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&length.to_le_bytes());
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&end.to_le_bytes());
                out.extend_from_slice(&upgrade_from.unwrap_or(u64::MAX).to_le_bytes());
            }
            Message::Data {
                discovery,
                id,
                start,
                entries,
                proof,
            } => {
                out.push(DATA);
                out.extend_from_slice(discovery);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&start.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
                out.extend_from_slice(&proof.to_bytes());
            }
            Message::NoData { discovery, id } => {
                out.push(NO_DATA);
                out.extend_from_slice(discovery);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Message::Fork {
                discovery,
                evidence,
            } => {
                out.push(FORK);
                out.extend_from_slice(discovery);
                let bytes = evidence.to_bytes();
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&bytes);
            }
            Message::Done => out.push(DONE),
            Message::TopicQuery { topic, capability } => {
                out.push(TOPIC_QUERY);
                out.extend_from_slice(topic.as_bytes());
                out.extend_from_slice(capability);
            }
            Message::TopicLogs {
                topic,
                capability,
                logs,
            } => {
                out.push(TOPIC_LOGS);
                out.extend_from_slice(topic.as_bytes());
                out.extend_from_slice(capability);
                out.extend_from_slice(&(logs.len() as u32).to_le_bytes());
                for tag in logs {
                    out.extend_from_slice(tag.key.as_bytes());
                    out.extend_from_slice(&tag.signature);
                }
            }
            Message::TopicUnknown { topic } => {
                out.push(TOPIC_UNKNOWN);
                out.extend_from_slice(topic.as_bytes());
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// Decodes one frame's content (kind and body, without the length prefix).
    pub fn decode(frame: &[u8]) -> Result<Message, StoreError> {
        let mut r = Reader(frame);
        let kind = r.u8("message kind")?;
        let msg = match kind {
            HELLO => Message::Hello {
                version: r.u8("hello")?,
                nonce: r.array("hello")?,
            },
            OPEN => Message::Open {
                discovery: r.array("open")?,
                capability: r.array("open")?,
            },
            UNAVAILABLE => Message::Unavailable {
                discovery: r.array("unavailable")?,
            },
            HAVE => {
                let discovery = r.array("have")?;
                let root = match r.u8("have")? {
                    0 => None,
                    1 => Some(
                        SignedRoot::from_bytes(r.take(SIGNED_ROOT_BYTES, "have root")?)
                            .map_err(|e| bad(&format!("root in have: {e}")))?,
                    ),
                    _ => return Err(bad("have: bad root flag")),
                };
                let n = r.u32("have")? as usize;
                if n > MAX_HAVE_RANGES {
                    return Err(bad("have: too many ranges"));
                }
                let length = root.map_or(0, |r| r.length());
                let mut held = RangeSet::new();
                let mut last_end = None;
                for _ in 0..n {
                    let (s, e) = (r.u64("have range")?, r.u64("have range")?);
                    // Sorted, disjoint, non-empty and within the root: what a RangeSet sends.
                    if s >= e || e > length || last_end.is_some_and(|l| s <= l) {
                        return Err(bad("have: ranges not sorted, disjoint and within the root"));
                    }
                    last_end = Some(e);
                    held.insert(s, e);
                }
                Message::Have {
                    discovery,
                    root,
                    held,
                }
            }
            REQUEST => {
                let discovery = r.array("request")?;
                let id = r.u32("request")?;
                let length = r.u64("request")?;
                let start = r.u64("request")?;
                let end = r.u64("request")?;
                let upgrade_from = match r.u64("request")? {
                    u64::MAX => None,
                    u => Some(u),
                };
                // An empty range only as a root-only upgrade.
                if start > end
                    || (start == end && upgrade_from.is_none())
                    || end > length
                    || end - start > MAX_REQUEST_ENTRIES
                    || upgrade_from.is_some_and(|u| u >= length)
                {
                    return Err(bad("request: bad range"));
                }
                Message::Request {
                    discovery,
                    id,
                    length,
                    start,
                    end,
                    upgrade_from,
                }
            }
            DATA => {
                let discovery = r.array("data")?;
                let id = r.u32("data")?;
                let start = r.u64("data")?;
                let n = r.u32("data")? as u64;
                if n > MAX_REQUEST_ENTRIES {
                    return Err(bad("data: bad entry count"));
                }
                let mut entries = Vec::with_capacity(n as usize);
                let mut total = 0u64;
                for _ in 0..n {
                    let len = r.u32("data entry")? as usize;
                    if len > MAX_ENTRY_BYTES {
                        return Err(bad(&format!("data: entry of {len} bytes is too large")));
                    }
                    total += len as u64;
                    if total > MAX_REPLY_BYTES {
                        return Err(bad("data: reply too large"));
                    }
                    entries.push(r.take(len, "data entry")?.to_vec());
                }
                let (proof, rest) =
                    Proof::decode(r.0).map_err(|e| bad(&format!("data proof: {e}")))?;
                r.0 = rest;
                Message::Data {
                    discovery,
                    id,
                    start,
                    entries,
                    proof,
                }
            }
            NO_DATA => Message::NoData {
                discovery: r.array("no-data")?,
                id: r.u32("no-data")?,
            },
            FORK => {
                let discovery = r.array("fork")?;
                let len = r.u32("fork")? as usize;
                if len > MAX_EVIDENCE_BYTES {
                    return Err(bad("fork: evidence too large"));
                }
                let evidence = ForkEvidence::from_bytes(r.take(len, "fork evidence")?)
                    .map_err(|e| bad(&format!("fork evidence: {e}")))?;
                Message::Fork {
                    discovery,
                    evidence,
                }
            }
            DONE => Message::Done,
            TOPIC_QUERY => Message::TopicQuery {
                topic: TopicId(r.array("topic-query")?),
                capability: r.array("topic-query")?,
            },
            TOPIC_LOGS => {
                let topic = TopicId(r.array("topic-logs")?);
                let capability = r.array("topic-logs")?;
                let n = r.u32("topic-logs")? as usize;
                if n > MAX_TOPIC_LOGS {
                    return Err(bad("topic-logs: too many logs"));
                }
                let mut logs: Vec<TopicTag> = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = LogKey::from_bytes(r.array("topic-logs key")?)
                        .map_err(|e| bad(&format!("topic-logs key: {e}")))?;
                    if logs.last().is_some_and(|l| l.key >= key) {
                        return Err(bad("topic-logs: keys not strictly ascending"));
                    }
                    let signature = r.take(64, "topic-logs signature")?.try_into().expect("64");
                    logs.push(TopicTag { key, signature });
                }
                Message::TopicLogs {
                    topic,
                    capability,
                    logs,
                }
            }
            TOPIC_UNKNOWN => Message::TopicUnknown {
                topic: TopicId(r.array("topic-unknown")?),
            },
            other => return Err(bad(&format!("unknown message kind {other}"))),
        };
        r.end(msg.kind())?;
        Ok(msg)
    }
}

/// Reads one message; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_message<R: AsyncRead + Unpin>(
    recv: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, StoreError> {
    let mut len = [0u8; 4];
    match recv.read(&mut len[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(StoreError::Network(format!("read: {e}"))),
    }
    recv.read_exact(&mut len[1..])
        .await
        .map_err(|e| StoreError::Network(format!("read: {e}")))?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(bad(&format!("frame of {len} bytes")));
    }
    buf.clear();
    buf.resize(len, 0);
    recv.read_exact(buf)
        .await
        .map_err(|e| StoreError::Network(format!("read: {e}")))?;
    Message::decode(buf).map(Some)
}

/// Writes one message (not flushed).
pub async fn write_message<W: AsyncWrite + Unpin>(
    send: &mut W,
    msg: &Message,
) -> Result<(), StoreError> {
    send.write_all(&msg.encode())
        .await
        .map_err(|e| StoreError::Network(format!("write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::root::{Ed25519Signer, UnsignedRoot};
    use crate::log::tree::Node;
    use proptest::prelude::*;

    fn root(length: u64) -> SignedRoot {
        let signer = Ed25519Signer::from_seed([7; 32]);
        let u = UnsignedRoot {
            key: signer.log_key(),
            length,
            hash: [3; 32],
        };
        SignedRoot::new(u, signer.sign(&u)).unwrap()
    }

    fn samples() -> Vec<Message> {
        let d = [9u8; 32];
        vec![
            Message::Hello {
                version: VERSION,
                nonce: [1; 32],
            },
            Message::Open {
                discovery: d,
                capability: [2; 32],
            },
            Message::Unavailable { discovery: d },
            Message::Have {
                discovery: d,
                root: Some(root(100)),
                held: RangeSet::from(vec![(0, 10), (20, 100)]),
            },
            Message::Have {
                discovery: d,
                root: None,
                held: RangeSet::new(),
            },
            Message::Request {
                discovery: d,
                id: 5,
                length: 100,
                start: 10,
                end: 20,
                upgrade_from: Some(3),
            },
            Message::Data {
                discovery: d,
                id: 5,
                start: 10,
                entries: vec![vec![1, 2, 3], vec![], vec![4; 1000]],
                proof: Proof {
                    nodes: vec![Node {
                        hash: [5; 32],
                        size: 9,
                    }],
                },
            },
            Message::NoData {
                discovery: d,
                id: 1,
            },
            Message::Done,
            Message::TopicQuery {
                topic: TopicId([3; 32]),
                capability: [4; 32],
            },
            Message::TopicLogs {
                topic: TopicId([3; 32]),
                capability: [5; 32],
                logs: tags(3),
            },
            Message::TopicLogs {
                topic: TopicId([3; 32]),
                capability: [5; 32],
                logs: Vec::new(),
            },
            Message::TopicUnknown {
                topic: TopicId([3; 32]),
            },
        ]
    }

    /// `n` valid tags in ascending key order.
    fn tags(n: u8) -> Vec<TopicTag> {
        let id = TopicId([3; 32]);
        let mut tags: Vec<TopicTag> = (0..n)
            .map(|i| TopicTag::sign(&Ed25519Signer::from_seed([i + 1; 32]), &id))
            .collect();
        tags.sort_by_key(|t| t.key);
        tags
    }

    #[test]
    fn messages_round_trip() {
        for m in samples() {
            let frame = m.encode();
            assert_eq!(
                u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
                frame.len() - 4
            );
            assert_eq!(Message::decode(&frame[4..]).unwrap(), m);
        }
    }

    #[test]
    fn bad_fields_are_refused() {
        let d = [9u8; 32];
        let too_long = Message::Request {
            discovery: d,
            id: 1,
            length: 1000,
            start: 0,
            end: MAX_REQUEST_ENTRIES + 1,
            upgrade_from: None,
        };
        assert!(Message::decode(&too_long.encode()[4..]).is_err());
        // An empty range only as a root-only upgrade.
        let empty = |upgrade_from| Message::Request {
            discovery: d,
            id: 1,
            length: 10,
            start: 4,
            end: 4,
            upgrade_from,
        };
        assert!(Message::decode(&empty(None).encode()[4..]).is_err());
        assert!(Message::decode(&empty(Some(3)).encode()[4..]).is_ok());
        assert!(Message::decode(&empty(Some(10)).encode()[4..]).is_err());
        let past_root = Message::Have {
            discovery: d,
            root: Some(root(5)),
            held: RangeSet::from(vec![(0, 6)]),
        };
        assert!(Message::decode(&past_root.encode()[4..]).is_err());
        // A forged root signature.
        let mut have = Message::Have {
            discovery: d,
            root: Some(root(5)),
            held: RangeSet::new(),
        }
        .encode();
        let sig_at = 4 + 1 + 32 + 1 + 72;
        have[sig_at] ^= 1;
        assert!(matches!(
            Message::decode(&have[4..]),
            Err(StoreError::Protocol(_))
        ));
        // An oversized entry.
        let mut data = Message::Data {
            discovery: d,
            id: 1,
            start: 0,
            entries: vec![vec![0; 10]],
            proof: Proof::default(),
        }
        .encode();
        let len_at = 4 + 1 + 32 + 4 + 8 + 4;
        data[len_at..len_at + 4].copy_from_slice(&(MAX_ENTRY_BYTES as u32 + 1).to_le_bytes());
        assert!(Message::decode(&data[4..]).is_err());
        // Topic answers: too many logs, keys out of order or repeated, a small-order key.
        let logs = |logs: Vec<TopicTag>| Message::TopicLogs {
            topic: TopicId([3; 32]),
            capability: [5; 32],
            logs,
        };
        let mut many = logs(Vec::new()).encode();
        many[4 + 1 + 64..4 + 1 + 68].copy_from_slice(&(MAX_TOPIC_LOGS as u32 + 1).to_le_bytes());
        assert!(Message::decode(&many[4..]).is_err());
        let mut reversed = tags(3);
        reversed.reverse();
        assert!(Message::decode(&logs(reversed).encode()[4..]).is_err());
        let twice = vec![tags(1)[0], tags(1)[0]];
        assert!(Message::decode(&logs(twice).encode()[4..]).is_err());
        let mut weak = logs(tags(1)).encode();
        weak[4 + 1 + 68..4 + 1 + 100].copy_from_slice(&[0; 32]);
        weak[4 + 1 + 68] = 1; // the identity point: small order
        assert!(Message::decode(&weak[4..]).is_err());
        // Trailing bytes.
        let mut done = Message::Done.encode();
        done.push(0);
        assert!(Message::decode(&done[4..]).is_err());
    }

    proptest! {
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn truncations_never_decode_to_something_else(k in 0usize..13, cut in 0usize..2000) {
            let m = &samples()[k];
            let frame = m.encode();
            let body = &frame[4..];
            if cut < body.len() {
                prop_assert!(Message::decode(&body[..cut]).is_err());
            }
        }
    }

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        let mut buf = Vec::new();
        let err = read_message(&mut wire.as_slice(), &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Protocol(_)));
        assert!(buf.capacity() < 1024);
        // A clean end between frames is not an error.
        let empty: &[u8] = &[];
        assert!(
            read_message(&mut &*empty, &mut buf)
                .await
                .unwrap()
                .is_none()
        );
    }
}
