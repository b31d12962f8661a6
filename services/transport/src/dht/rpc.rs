//! Requests and responses: address tokens, the no-amplification rule, the responder, and
//! matching responses to the requests we sent.
//!
//! **No amplification.** The DHT runs over UDP, where a source address can be forged; a node
//! that answered small requests with large responses would let anyone flood a victim by
//! sending requests "from" it. So a response is never larger than its request unless the
//! request proves that its sender receives datagrams at its source address. The proof is a
//! [`Token`], as in BitTorrent's DHT: every response carries a token for the requester's
//! address (a keyed BLAKE3 hash of the address under a secret the responder rotates, valid for
//! the current and the previous secret), and a request that echoes a valid token gets a full
//! answer. A requester without a token yet can instead pad its request ([`DhtMessage::padding`])
//! to the size of the answer it wants, as QUIC clients pad their first packet: the rule only
//! bounds the ratio. A response that would break the rule is cut down, in this order: contacts
//! and records from the far end, the observed address, the responder's key, the token. Announces
//! always need a valid token; the refusal ([`error_code::BAD_TOKEN`]) is smaller than any
//! announce.
//!
//! A request's sender key is added to the routing table only when its address is verified by a
//! token, so a forged source address cannot plant a contact.
//!
//! **Matching.** [`PendingRequests`] gives every request a random 64-bit transaction id and
//! accepts a response only from the address the request went to, with that id, of the matching
//! kind, once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;

use super::message::{
    DhtMessage, MAX_CONTACTS, MAX_DATAGRAM, MAX_RECORDS, MessageBody, TOKEN_LEN, Token, error_code,
};
use super::record::RecordStore;
use super::routing::{Contact, InsertOutcome, RoutingTable};
use crate::peer::PeerId;

/// Issues and checks address tokens under a rotating secret.
#[derive(Clone)]
pub struct TokenIssuer {
    current: [u8; 32],
    previous: [u8; 32],
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer(..)")
    }
}

fn token_under(secret: &[u8; 32], addr: &SocketAddr) -> Token {
    let mut input = [0u8; 19];
    match addr.ip() {
        IpAddr::V4(ip) => {
            input[0] = 4;
            input[1..5].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            input[0] = 6;
            input[1..17].copy_from_slice(&ip.octets());
        }
    }
    input[17..].copy_from_slice(&addr.port().to_be_bytes());
    let hash = blake3::keyed_hash(secret, &input);
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&hash.as_bytes()[..TOKEN_LEN]);
    Token(token)
}

impl TokenIssuer {
    /// A fresh issuer with random secrets.
    pub fn new(rng: &mut impl Rng) -> Self {
        Self {
            current: rng.r#gen(),
            previous: rng.r#gen(),
        }
    }

    /// Starts a new secret; tokens of the one before stay valid until the next rotation. The
    /// driver rotates every few minutes.
    pub fn rotate(&mut self, rng: &mut impl Rng) {
        self.previous = self.current;
        self.current = rng.r#gen();
    }

    /// The token for `addr` under the current secret.
    pub fn issue(&self, addr: &SocketAddr) -> Token {
        token_under(&self.current, addr)
    }

    /// Whether `token` was issued to `addr` under the current or the previous secret.
    pub fn verify(&self, addr: &SocketAddr, token: &Token) -> bool {
        token_under(&self.current, addr) == *token || token_under(&self.previous, addr) == *token
    }
}

/// The answering side of a DHT node: its routing table, record store and token issuer.
#[derive(Debug)]
pub struct Responder {
    local: PeerId,
    /// The node's routing table.
    pub table: RoutingTable,
    /// Records announced to this node.
    pub store: RecordStore,
    tokens: TokenIssuer,
    evictions: Vec<Contact>,
}

impl Responder {
    /// A responder for the node `local`.
    pub fn new(local: PeerId, table: RoutingTable, store: RecordStore, rng: &mut impl Rng) -> Self {
        Self {
            local,
            table,
            store,
            tokens: TokenIssuer::new(rng),
            evictions: Vec::new(),
        }
    }

    /// The token issuer (the driver rotates it).
    pub fn tokens_mut(&mut self) -> &mut TokenIssuer {
        &mut self.tokens
    }

    /// Contacts the driver must ping to settle pending evictions (see
    /// [`RoutingTable::resolve_eviction`]).
    pub fn take_eviction_checks(&mut self) -> Vec<Contact> {
        std::mem::take(&mut self.evictions)
    }

    /// Answers a request that arrived from `from` as `request_len` bytes, at unix time `now_ms`.
    /// Returns `None` for messages that are not requests.
    pub fn handle_request(
        &mut self,
        from: SocketAddr,
        request: &DhtMessage,
        request_len: usize,
        now_ms: u64,
    ) -> Option<DhtMessage> {
        let presented = match &request.body {
            MessageBody::FindNode { token, .. } | MessageBody::GetPeers { token, .. } => *token,
            MessageBody::Announce { token, .. } => Some(*token),
            MessageBody::Ping { token } => *token,
            _ => return None,
        };
        let verified = presented.is_some_and(|t| self.tokens.verify(&from, &t));
        if verified
            && let Some(sender) = request.sender
            && let InsertOutcome::PendingEviction { oldest } =
                self.table.insert(Contact::new(sender, from))
        {
            self.evictions.push(oldest);
        }
        let token = Some(self.tokens.issue(&from));
        let k = self.table.config().k.min(MAX_CONTACTS);
        let body = match &request.body {
            MessageBody::Ping { .. } => MessageBody::Pong {
                observed: Some(from),
                token,
            },
            MessageBody::FindNode { target, .. } => MessageBody::Nodes {
                token,
                nodes: self.table.closest(target, k),
            },
            MessageBody::GetPeers { key, .. } => MessageBody::Peers {
                token,
                records: self.store.get(key, now_ms / 1000, MAX_RECORDS),
                nodes: self.table.closest(key, k),
            },
            MessageBody::Announce { key, record, .. } => {
                if !verified {
                    MessageBody::Error {
                        code: error_code::BAD_TOKEN,
                    }
                } else {
                    match self.store.put(*key, record.clone(), now_ms / 1000) {
                        Ok(_) => MessageBody::AnnounceAck { stored: true },
                        Err(_) => MessageBody::Error {
                            code: error_code::RECORD_REFUSED,
                        },
                    }
                }
            }
            _ => unreachable!("only requests reach here"),
        };
        let response = DhtMessage {
            txid: request.txid,
            sender: Some(self.local),
            padding: 0,
            body,
        };
        let limit = if verified {
            MAX_DATAGRAM
        } else {
            request_len.min(MAX_DATAGRAM)
        };
        fit(response, limit)
    }
}

fn encoded_len(message: &DhtMessage) -> usize {
    message.encode().map_or(usize::MAX, |b| b.len())
}

/// Cuts `response` down until it encodes to at most `limit` bytes (see the module docs for the
/// order), or gives `None` if even the bare response is too large: the smallest requests (a
/// `Ping` with no sender key, token or padding, 12 bytes) get no answer at all.
fn fit(mut response: DhtMessage, limit: usize) -> Option<DhtMessage> {
    loop {
        if encoded_len(&response) <= limit {
            return Some(response);
        }
        let shrunk = match &mut response.body {
            MessageBody::Nodes { nodes, .. } if !nodes.is_empty() => {
                nodes.pop();
                true
            }
            MessageBody::Peers { nodes, .. } if !nodes.is_empty() => {
                nodes.pop();
                true
            }
            MessageBody::Peers { records, .. } if !records.is_empty() => {
                records.pop();
                true
            }
            MessageBody::Pong { observed, .. } if observed.is_some() => {
                *observed = None;
                true
            }
            _ => false,
        };
        if shrunk {
            continue;
        }
        if response.sender.take().is_some() {
            continue;
        }
        match &mut response.body {
            MessageBody::Nodes { token, .. }
            | MessageBody::Peers { token, .. }
            | MessageBody::Pong { token, .. }
                if token.is_some() =>
            {
                *token = None;
            }
            _ => return None,
        }
    }
}

/// What kind of request a pending transaction was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `Ping`, answered by `Pong`.
    Ping,
    /// `FindNode`, answered by `Nodes`.
    FindNode,
    /// `Announce`, answered by `AnnounceAck`.
    Announce,
    /// `GetPeers`, answered by `Peers`.
    GetPeers,
}

/// A request waiting for its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Where it was sent.
    pub to: SocketAddr,
    /// What it asked.
    pub kind: RequestKind,
    /// When, in the driver's milliseconds.
    pub sent_at_ms: u64,
}

/// Why a response was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// No request with this transaction id is waiting (never sent, answered or expired).
    #[error("no pending request with this transaction id")]
    UnknownTransaction,
    /// The response came from another address than the request went to.
    #[error("response from an address the request was not sent to")]
    WrongAddress,
    /// The response does not answer that kind of request.
    #[error("response does not match the request kind")]
    WrongKind,
    /// The message is a request, not a response.
    #[error("not a response")]
    NotAResponse,
}

/// Requests sent and not yet answered, by transaction id.
#[derive(Debug, Default)]
pub struct PendingRequests {
    pending: HashMap<u64, Pending>,
}

impl PendingRequests {
    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Makes a request with a fresh random transaction id and remembers it.
    pub fn start(
        &mut self,
        to: SocketAddr,
        sender: Option<PeerId>,
        body: MessageBody,
        now_ms: u64,
        rng: &mut impl Rng,
    ) -> DhtMessage {
        let kind = match body {
            MessageBody::Ping { .. } => RequestKind::Ping,
            MessageBody::FindNode { .. } => RequestKind::FindNode,
            MessageBody::Announce { .. } => RequestKind::Announce,
            MessageBody::GetPeers { .. } => RequestKind::GetPeers,
            _ => panic!("PendingRequests::start takes a request body"),
        };
        let txid = loop {
            let txid: u64 = rng.r#gen();
            if !self.pending.contains_key(&txid) {
                break txid;
            }
        };
        self.pending.insert(
            txid,
            Pending {
                to,
                kind,
                sent_at_ms: now_ms,
            },
        );
        DhtMessage {
            txid,
            sender,
            padding: 0,
            body,
        }
    }

    /// Accepts `response` from `from` if it answers a pending request (which is then done).
    /// An error response answers any kind.
    pub fn match_response(
        &mut self,
        from: SocketAddr,
        response: &DhtMessage,
    ) -> Result<Pending, MatchError> {
        if response.body.is_request() {
            return Err(MatchError::NotAResponse);
        }
        let pending = *self
            .pending
            .get(&response.txid)
            .ok_or(MatchError::UnknownTransaction)?;
        if pending.to != from {
            return Err(MatchError::WrongAddress);
        }
        let answers = matches!(
            (pending.kind, &response.body),
            (_, MessageBody::Error { .. })
                | (RequestKind::Ping, MessageBody::Pong { .. })
                | (RequestKind::FindNode, MessageBody::Nodes { .. })
                | (RequestKind::Announce, MessageBody::AnnounceAck { .. })
                | (RequestKind::GetPeers, MessageBody::Peers { .. })
        );
        if !answers {
            return Err(MatchError::WrongKind);
        }
        self.pending.remove(&response.txid);
        Ok(pending)
    }

    /// Forgets requests older than `timeout_ms` and returns them (their nodes failed to answer).
    pub fn expire(&mut self, now_ms: u64, timeout_ms: u64) -> Vec<(u64, Pending)> {
        let expired: Vec<(u64, Pending)> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.sent_at_ms) >= timeout_ms)
            .map(|(txid, p)| (*txid, *p))
            .collect();
        for (txid, _) in &expired {
            self.pending.remove(txid);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::id::{NodeId, topic_key};
    use crate::dht::record::{PeerRecord, StoreConfig};
    use crate::dht::routing::RoutingConfig;
    use crate::peer::SecretKey;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const NOW_MS: u64 = 1_000_000;

    fn responder(rng: &mut StdRng) -> Responder {
        let local = SecretKey::from_bytes([1; 32]).peer_id();
        let mut table = RoutingTable::new(NodeId::of_peer(&local), RoutingConfig::default());
        for n in 0..200u32 {
            let peer = SecretKey::from_bytes(blake3::hash(&n.to_be_bytes()).into()).peer_id();
            let addr = format!("[2001:db8:{n:x}::1]:4000").parse().unwrap();
            table.insert(Contact::new(peer, addr));
        }
        Responder::new(local, table, RecordStore::new(StoreConfig::default()), rng)
    }

    /// Sends `request` through the codec; returns its encoded length and the decoded answer.
    fn send(
        responder: &mut Responder,
        from: SocketAddr,
        request: &DhtMessage,
    ) -> (usize, Option<DhtMessage>) {
        let bytes = request.encode().unwrap();
        let decoded = DhtMessage::decode(&bytes).unwrap();
        let response = responder.handle_request(from, &decoded, bytes.len(), NOW_MS);
        let response = response.map(|r| {
            let encoded = r.encode().unwrap();
            assert!(encoded.len() <= MAX_DATAGRAM);
            DhtMessage::decode(&encoded).unwrap()
        });
        (bytes.len(), response)
    }

    fn request(body: MessageBody, sender: Option<PeerId>) -> DhtMessage {
        DhtMessage {
            txid: 42,
            sender,
            padding: 0,
            body,
        }
    }

    #[test]
    fn tokens_are_bound_to_the_address_and_survive_one_rotation() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut issuer = TokenIssuer::new(&mut rng);
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let token = issuer.issue(&a);
        assert!(issuer.verify(&a, &token));
        assert!(!issuer.verify(&b, &token));
        issuer.rotate(&mut rng);
        assert!(issuer.verify(&a, &token));
        issuer.rotate(&mut rng);
        assert!(!issuer.verify(&a, &token));
    }

    #[test]
    fn no_response_to_an_unverified_address_is_larger_than_its_request() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut node = responder(&mut rng);
        let from: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let me_peer = SecretKey::from_bytes([9; 32]).peer_id();
        let me = Some(me_peer);
        let key = topic_key(b"room");
        let forged_token = Some(Token([7; TOKEN_LEN]));
        let requests = [
            request(MessageBody::Ping { token: None }, None),
            request(MessageBody::Ping { token: None }, me),
            request(
                MessageBody::FindNode {
                    target: key,
                    token: None,
                },
                me,
            ),
            request(
                MessageBody::FindNode {
                    target: key,
                    token: forged_token,
                },
                None,
            ),
            request(MessageBody::GetPeers { key, token: None }, me),
            request(
                MessageBody::Announce {
                    key,
                    token: Token([7; TOKEN_LEN]),
                    record: PeerRecord::sign(
                        &SecretKey::from_bytes([9; 32]),
                        &key,
                        vec![],
                        vec![],
                        1,
                        NOW_MS / 1000 + 60,
                    )
                    .unwrap(),
                },
                None,
            ),
        ];
        for req in &requests {
            let (request_len, response) = send(&mut node, from, req);
            if let Some(response) = response {
                let response_len = response.encode().unwrap().len();
                assert!(
                    response_len <= request_len,
                    "{req:?}: {response_len} > {request_len}"
                );
            }
        }
        // The bare 12-byte ping gets no answer at all; with a sender key it gets a token.
        assert!(send(&mut node, from, &requests[0]).1.is_none());
        let (_, pong) = send(&mut node, from, &requests[1]);
        assert!(matches!(
            pong.unwrap().body,
            MessageBody::Pong { token: Some(_), .. }
        ));
        // Unverified senders are not added to the routing table.
        assert!(node.table.get(&NodeId::of_peer(&me_peer)).is_none());
    }

    #[test]
    fn a_valid_token_or_padding_earns_the_full_answer() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut node = responder(&mut rng);
        let from: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let me = SecretKey::from_bytes([9; 32]).peer_id();
        let target = NodeId::random(&mut rng);
        let (_, first) = send(
            &mut node,
            from,
            &request(
                MessageBody::FindNode {
                    target,
                    token: None,
                },
                Some(me),
            ),
        );
        let MessageBody::Nodes {
            token: Some(token),
            nodes,
        } = first.unwrap().body
        else {
            panic!("expected nodes with a token");
        };
        assert!(nodes.len() < 20, "unverified answer is cut down");
        let (request_len, full) = send(
            &mut node,
            from,
            &request(
                MessageBody::FindNode {
                    target,
                    token: Some(token),
                },
                Some(me),
            ),
        );
        let full = full.unwrap();
        assert!(full.encode().unwrap().len() > request_len);
        let MessageBody::Nodes { nodes, .. } = full.body else {
            panic!("expected nodes")
        };
        assert_eq!(nodes, node.table.closest(&target, 20));
        // Verified senders are added to the table.
        assert!(node.table.get(&NodeId::of_peer(&me)).is_some());
        // The token is bound to the address: from elsewhere it earns nothing.
        let elsewhere: SocketAddr = "198.51.100.10:5000".parse().unwrap();
        let (request_len, cut) = send(
            &mut node,
            elsewhere,
            &request(
                MessageBody::FindNode {
                    target,
                    token: Some(token),
                },
                Some(me),
            ),
        );
        assert!(cut.unwrap().encode().unwrap().len() <= request_len);
        // Padding the request to a full datagram earns the full answer without a token.
        let padded = request(
            MessageBody::FindNode {
                target,
                token: None,
            },
            Some(me),
        )
        .padded_to(MAX_DATAGRAM)
        .unwrap();
        let (request_len, answer) = send(&mut node, elsewhere, &padded);
        assert_eq!(request_len, MAX_DATAGRAM);
        let MessageBody::Nodes { nodes, .. } = answer.unwrap().body else {
            panic!("expected nodes")
        };
        assert_eq!(nodes.len(), 20);
    }

    #[test]
    fn announce_needs_a_token_and_get_peers_returns_the_record() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut node = responder(&mut rng);
        let from: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let secret = SecretKey::from_bytes([9; 32]);
        let me = secret.peer_id();
        let key = topic_key(b"room");
        let record =
            PeerRecord::sign(&secret, &key, vec![from], vec![], 1, NOW_MS / 1000 + 600).unwrap();
        let announce = |token| {
            request(
                MessageBody::Announce {
                    key,
                    token,
                    record: record.clone(),
                },
                Some(me),
            )
        };
        let (_, refused) = send(&mut node, from, &announce(Token([0; TOKEN_LEN])));
        assert_eq!(
            refused.unwrap().body,
            MessageBody::Error {
                code: error_code::BAD_TOKEN
            }
        );
        let (_, peers) = send(
            &mut node,
            from,
            &request(MessageBody::GetPeers { key, token: None }, Some(me)),
        );
        let MessageBody::Peers {
            token: Some(token),
            records,
            ..
        } = peers.unwrap().body
        else {
            panic!("expected peers with a token");
        };
        assert!(records.is_empty());
        let (_, ack) = send(&mut node, from, &announce(token));
        assert_eq!(ack.unwrap().body, MessageBody::AnnounceAck { stored: true });
        let (_, peers) = send(
            &mut node,
            from,
            &request(
                MessageBody::GetPeers {
                    key,
                    token: Some(token),
                },
                Some(me),
            ),
        );
        let MessageBody::Peers { records, .. } = peers.unwrap().body else {
            panic!("expected peers")
        };
        assert_eq!(records, vec![record.clone()]);
        records[0].verify(&key, NOW_MS / 1000).unwrap();
        // A tampered record is refused even with a valid token.
        let mut forged = record.clone();
        forged.seq = 2;
        let (_, refused) = send(
            &mut node,
            from,
            &request(
                MessageBody::Announce {
                    key,
                    token,
                    record: forged,
                },
                Some(me),
            ),
        );
        assert_eq!(
            refused.unwrap().body,
            MessageBody::Error {
                code: error_code::RECORD_REFUSED
            }
        );
    }

    #[test]
    fn responses_match_only_their_request() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut pending = PendingRequests::default();
        let to: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let ping = pending.start(to, None, MessageBody::Ping { token: None }, 0, &mut rng);
        let find = pending.start(
            to,
            None,
            MessageBody::FindNode {
                target: NodeId::random(&mut rng),
                token: None,
            },
            0,
            &mut rng,
        );
        assert_ne!(ping.txid, find.txid);
        let pong = |txid| DhtMessage {
            txid,
            sender: None,
            padding: 0,
            body: MessageBody::Pong {
                observed: None,
                token: None,
            },
        };
        assert_eq!(
            pending.match_response(to, &pong(ping.txid ^ 1)),
            Err(MatchError::UnknownTransaction)
        );
        assert_eq!(
            pending.match_response("192.0.2.2:4000".parse().unwrap(), &pong(ping.txid)),
            Err(MatchError::WrongAddress)
        );
        assert_eq!(
            pending.match_response(to, &pong(find.txid)),
            Err(MatchError::WrongKind)
        );
        assert_eq!(
            pending.match_response(to, &ping),
            Err(MatchError::NotAResponse)
        );
        assert_eq!(
            pending.match_response(to, &pong(ping.txid)).unwrap().kind,
            RequestKind::Ping
        );
        assert_eq!(
            pending.match_response(to, &pong(ping.txid)),
            Err(MatchError::UnknownTransaction),
            "answered once"
        );
        assert_eq!(pending.expire(1_999, 2_000).len(), 0);
        let expired = pending.expire(2_000, 2_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].0, find.txid);
        assert!(pending.is_empty());
    }
}
