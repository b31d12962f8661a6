//! The DHT on the wire: one task that runs the sans-IO state machines on the node's shared UDP
//! socket.
//!
//! [`Dht::spawn`] starts the task. It owns the [`Responder`] (routing table, record store, token
//! issuer), the [`PendingRequests`] and every operation in progress, and nothing else touches
//! them: the cheap-clone [`Dht`] handle sends it commands over a channel and awaits the answer on
//! a oneshot. The node reads the socket's events ([`crate::net::MuxSocket::take_events`]) and
//! forwards every [`crate::net::NetEvent::Dht`] into the inbox given to `spawn`; answers and
//! requests go out with [`crate::net::MuxSocket::send_frame`], so the DHT shares QUIC's socket
//! (and so its NAT mappings).
//!
//! All state changes are synchronous: an event (a datagram, a command, a tick) updates the state
//! and queues datagrams in an outbox, which the task then sends. No lock is held across an await.
//!
//! **Operations.** A *lookup* is a [`LookupState`] driven by `FindNode` or `GetPeers` requests,
//! alpha at a time; each response feeds it, each timeout fails the query (and drops the contact
//! from the table if it still is at that address). What happens when a lookup ends is its
//! continuation: answer the caller, announce a record to the k closest with the tokens they gave
//! in their responses, finish a bootstrap, or nothing (a bucket refresh). A *ping set* pings seeds
//! (bootstrap) and then runs the self-lookup. A single ping settles a pending eviction
//! ([`Responder::take_eviction_checks`], and our own inserts when a bucket is full).
//!
//! **What is trusted.** A response is accepted only if [`PendingRequests`] matches it (sent to
//! that address, that transaction id, that kind, once); anything else, and anything that does
//! not decode, is dropped and counted without effect, so a replayed response is inert. A node
//! that answers is added to the routing table (an answer to a random transaction id proves the
//! address). Requests are answered by [`Responder::handle_request`], which enforces the
//! no-amplification rule; our own first requests to an address carry no token, so they are
//! padded to the size of the answer they want. Records returned by `GetPeers` are verified
//! against the key before they are kept.
//!
//! **Upkeep.** Tokens rotate every [`DhtConfig::token_rotation`]; buckets not touched by a lookup
//! for [`DhtConfig::refresh_interval`] are refreshed one lookup at a time; the record published
//! with [`Dht::publish_self`] is re-signed and re-announced every
//! [`DhtConfig::republish_interval`] until replaced; the routing table is written to
//! [`DhtConfig::snapshot_path`] (temporary file, then rename) every
//! [`DhtConfig::snapshot_interval`] and on shutdown, and read back (re-verified by
//! [`RoutingTable::from_snapshot`]) on start. The inbox is drained at most
//! [`DhtConfig::max_inbox_per_sec`] datagrams a second; the rest are dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use super::id::NodeId;
use super::lookup::{LookupConfig, LookupState};
use super::message::{DhtMessage, MAX_CONTACTS, MAX_DATAGRAM, MessageBody, Token};
use super::record::{PeerRecord, RecordError, RecordStore, StoreConfig};
use super::routing::{Contact, InsertOutcome, RoutingConfig, RoutingSnapshot, RoutingTable};
use super::rpc::{PendingRequests, Responder};
use crate::net::MuxSocket;
use crate::peer::{PeerId, SecretKey};

/// A ping without a token is padded to this many bytes, enough for a full `Pong` (sender key,
/// observed IPv6 address and token) to come back.
const PING_PADDED_LEN: usize = 96;
/// Most observers remembered by [`Dht::observed_addrs`].
const MAX_OBSERVERS: usize = 32;
/// Most address tokens remembered for the nodes we query.
const MAX_TOKENS: usize = 4096;
/// Commands queued for the task.
const COMMAND_QUEUE: usize = 64;

/// Settings of a [`Dht`].
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// Routing-table limits (k, diversity).
    pub routing: RoutingConfig,
    /// Lookup parameters (alpha, k). Its `timeout_ms` is replaced by `request_timeout`.
    pub lookup: LookupConfig,
    /// Limits of the store of records announced to us.
    pub store: StoreConfig,
    /// A request not answered within this long has failed.
    pub request_timeout: Duration,
    /// A bucket no lookup went into for this long is refreshed.
    pub refresh_interval: Duration,
    /// The address-token secret rotates this often (tokens live one to two periods).
    pub token_rotation: Duration,
    /// The record of [`Dht::publish_self`] is re-signed and re-announced this often.
    pub republish_interval: Duration,
    /// The routing table is written to `snapshot_path` this often (and on shutdown).
    pub snapshot_interval: Duration,
    /// Where the routing table is kept across restarts (none: not kept).
    pub snapshot_path: Option<PathBuf>,
    /// Inbox datagrams handled per second at most; more are dropped and counted.
    pub max_inbox_per_sec: u32,
    /// Whether our requests carry our key, asking others to add us to their tables. A node that
    /// cannot be reached at its source address (behind a NAT not yet punched) turns this off.
    pub advertise: bool,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            routing: RoutingConfig::default(),
            lookup: LookupConfig::default(),
            store: StoreConfig::default(),
            request_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(15 * 60),
            token_rotation: Duration::from_secs(5 * 60),
            republish_interval: Duration::from_secs(20 * 60),
            snapshot_interval: Duration::from_secs(5 * 60),
            snapshot_path: None,
            max_inbox_per_sec: 5_000,
            advertise: true,
        }
    }
}

/// Why a DHT operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// No seed answered and the routing table is empty.
    #[error("no DHT contacts: bootstrap failed")]
    NoContacts,
    /// The DHT task has stopped.
    #[error("the DHT is shut down")]
    Closed,
    /// A record could not be signed or does not verify.
    #[error("record: {0}")]
    Record(#[from] RecordError),
    /// The configuration cannot work.
    #[error("invalid DHT configuration: {0}")]
    Config(&'static str),
}

/// What the DHT is doing, for `kith dht status` and tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DhtStatus {
    /// Our id in the key space.
    #[serde(serialize_with = "crate::dht::id::serialize_display")]
    pub node_id: NodeId,
    /// Contacts in the routing table.
    pub routing_table_size: usize,
    /// Buckets holding at least one contact.
    pub non_empty_buckets: usize,
    /// Records others announced to us (including our own, stored locally).
    pub records_stored: usize,
    /// Requests sent and not yet answered or expired.
    pub pending_requests: usize,
    /// Operations in progress (lookups, ping sets, announces, eviction checks).
    pub operations: usize,
    /// Datagrams handled from the inbox.
    pub messages_in: u64,
    /// Datagrams sent.
    pub messages_out: u64,
    /// Datagrams that did not decode.
    pub dropped_malformed: u64,
    /// Responses that matched no pending request (unknown, replayed, wrong address or kind).
    pub dropped_unmatched: u64,
    /// Datagrams dropped because the inbox was over its rate.
    pub dropped_overload: u64,
}

impl DhtStatus {
    /// Every dropped datagram.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed + self.dropped_unmatched + self.dropped_overload
    }
}

/// A handle on the running DHT. Cheap to clone; every clone talks to the same task.
#[derive(Clone, Debug)]
pub struct Dht {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    commands: mpsc::Sender<Command>,
    peer: PeerId,
    node_id: NodeId,
    task: AsyncMutex<Option<JoinHandle<()>>>,
}

/// What a finished lookup found.
#[derive(Debug, Default)]
struct LookupResult {
    closest: Vec<Contact>,
    records: Vec<PeerRecord>,
}

enum Command {
    Bootstrap {
        seeds: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    },
    FindNode {
        target: NodeId,
        reply: oneshot::Sender<LookupResult>,
    },
    GetPeers {
        key: NodeId,
        reply: oneshot::Sender<LookupResult>,
    },
    Announce {
        key: NodeId,
        record: PeerRecord,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    },
    PublishSelf {
        addrs: Vec<SocketAddr>,
        relays: Vec<PeerId>,
        ttl: Duration,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    },
    Status {
        reply: oneshot::Sender<DhtStatus>,
    },
    ObservedAddrs {
        reply: oneshot::Sender<Vec<(SocketAddr, SocketAddr)>>,
    },
    Shutdown,
}

impl Dht {
    /// Starts the DHT for the node of `secret` on the shared socket `net`. `inbox` carries the
    /// DHT datagrams the socket received (the node forwards [`crate::net::NetEvent::Dht`]). The
    /// routing table is restored from `config.snapshot_path` if a valid snapshot is there; a
    /// missing or corrupt one starts an empty table (corrupt: with a warning). Must be called
    /// inside a Tokio runtime.
    pub fn spawn(
        net: Arc<MuxSocket>,
        secret: SecretKey,
        mut config: DhtConfig,
        inbox: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    ) -> Result<Dht, DhtError> {
        if config.routing.k == 0 || config.lookup.k == 0 || config.lookup.alpha == 0 {
            return Err(DhtError::Config("k and alpha must be at least 1"));
        }
        if config.request_timeout.is_zero() {
            return Err(DhtError::Config("request timeout must not be zero"));
        }
        config.lookup.k = config.lookup.k.min(MAX_CONTACTS);
        config.lookup.timeout_ms = millis(config.request_timeout);
        let peer = secret.peer_id();
        let node_id = NodeId::of_peer(&peer);
        let table = config
            .snapshot_path
            .as_deref()
            .and_then(|path| load_snapshot(path, node_id, &config.routing))
            .unwrap_or_else(|| RoutingTable::new(node_id, config.routing.clone()));
        let mut rng = StdRng::from_entropy();
        let responder = Responder::new(
            peer,
            table,
            RecordStore::new(config.store.clone()),
            &mut rng,
        );
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver {
            net,
            secret,
            peer,
            node_id,
            started: Instant::now(),
            budget: config.max_inbox_per_sec,
            config,
            rng,
            responder,
            pending: PendingRequests::default(),
            requests: HashMap::new(),
            ops: HashMap::new(),
            next_op: 0,
            tokens: HashMap::new(),
            observed: HashMap::new(),
            observed_seq: 0,
            published: None,
            refreshing: None,
            outbox: Vec::new(),
            counters: Counters::default(),
        };
        let task = tokio::spawn(driver.run(command_rx, inbox));
        Ok(Dht {
            inner: Arc::new(Handle {
                commands,
                peer,
                node_id,
                task: AsyncMutex::new(Some(task)),
            }),
        })
    }

    /// Our id in the key space.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Our peer id (the key the DHT signs with).
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(make(reply))
            .await
            .map_err(|_| DhtError::Closed)?;
        answer.await.map_err(|_| DhtError::Closed)
    }

    /// Joins the network: pings `seeds` (padded, since we hold no token of theirs yet, so that
    /// each `Pong` can carry a token and our observed address), then looks up our own id. Returns
    /// the routing table's size, or [`DhtError::NoContacts`] if it is still empty (no seed
    /// answered and no snapshot was restored). With no seeds, only the self-lookup runs, from the
    /// restored table.
    pub async fn bootstrap(&self, seeds: Vec<SocketAddr>) -> Result<usize, DhtError> {
        self.ask(|reply| Command::Bootstrap { seeds, reply })
            .await?
    }

    /// The up to k closest nodes to `target` that answered an iterative lookup, closest first
    /// (empty if the DHT is shut down).
    pub async fn find_node(&self, target: NodeId) -> Vec<Contact> {
        self.ask(|reply| Command::FindNode { target, reply })
            .await
            .map(|r| r.closest)
            .unwrap_or_default()
    }

    /// Stores `record` under `key` at the k closest nodes (after a lookup of `key`, using the
    /// address tokens they gave in its responses) and locally. Returns how many remote nodes
    /// stored it. The record must verify under `key`.
    pub async fn announce(&self, key: NodeId, record: PeerRecord) -> Result<usize, DhtError> {
        record.verify(&key, unix_secs())?;
        self.ask(|reply| Command::Announce { key, record, reply })
            .await?
    }

    /// The verified, unexpired records announced under `key`, found by an iterative `GetPeers`
    /// lookup (and in our own store): one per peer, the highest sequence number.
    pub async fn get_peers(&self, key: NodeId) -> Vec<PeerRecord> {
        self.ask(|reply| Command::GetPeers { key, reply })
            .await
            .map(|r| r.records)
            .unwrap_or_default()
    }

    /// Signs our own record (`addrs`, `relays`, valid for `ttl`) under the key
    /// `NodeId::of_peer(our peer id)` and announces it; the task re-signs and re-announces it
    /// every [`DhtConfig::republish_interval`] until another call replaces it. The sequence number
    /// is the signing time in unix milliseconds, so it grows across restarts. Returns how many
    /// remote nodes stored it.
    pub async fn publish_self(
        &self,
        addrs: Vec<SocketAddr>,
        relays: Vec<PeerId>,
        ttl: Duration,
    ) -> Result<usize, DhtError> {
        self.ask(|reply| Command::PublishSelf {
            addrs,
            relays,
            ttl,
            reply,
        })
        .await?
    }

    /// The newest record `peer` published about itself ([`Dht::publish_self`]), if found.
    pub async fn lookup_peer(&self, peer: PeerId) -> Option<PeerRecord> {
        self.get_peers(NodeId::of_peer(&peer))
            .await
            .into_iter()
            .filter(|r| r.peer == peer)
            .max_by_key(|r| r.seq)
    }

    /// Counters and sizes.
    pub async fn status(&self) -> Result<DhtStatus, DhtError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Our address as other nodes saw it, from their `Pong`s: `(observer, observed)`, most recent
    /// first, one per observer, at most 32. For NAT classification.
    pub async fn observed_addrs(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.ask(|reply| Command::ObservedAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Stops the task (writing the snapshot first) and waits for it. Operations in progress end
    /// with [`DhtError::Closed`] or empty results. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.inner.commands.send(Command::Shutdown).await;
        if let Some(task) = self.inner.task.lock().await.take() {
            let _ = task.await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// Reads and re-verifies a snapshot; `None` (with a warning unless the file is simply absent)
/// when there is nothing usable.
fn load_snapshot(path: &Path, node_id: NodeId, config: &RoutingConfig) -> Option<RoutingTable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read DHT snapshot; starting empty");
            return None;
        }
    };
    let snapshot: RoutingSnapshot = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "corrupt DHT snapshot; starting empty");
            return None;
        }
    };
    match RoutingTable::from_snapshot(node_id, config.clone(), &snapshot) {
        Ok((table, report)) => {
            debug!(
                restored = report.restored,
                dropped = report.dropped,
                "DHT snapshot restored"
            );
            Some(table)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "refused DHT snapshot; starting empty");
            None
        }
    }
}

/// Writes the snapshot atomically: a temporary file next to it, then a rename.
fn save_snapshot(path: &Path, snapshot: &RoutingSnapshot) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[derive(Default)]
struct Counters {
    messages_in: u64,
    messages_out: u64,
    dropped_malformed: u64,
    dropped_unmatched: u64,
    dropped_overload: u64,
}

type OpId = u64;

/// What a request in flight belongs to.
#[derive(Clone, Copy)]
struct Request {
    op: OpId,
    /// The node asked, when known (lookups, announces, eviction checks; not seeds).
    node: Option<NodeId>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LookupKind {
    FindNode,
    GetPeers,
}

/// What to do when a lookup ends.
enum Then {
    Reply(oneshot::Sender<LookupResult>),
    Announce {
        record: PeerRecord,
        reply: Option<oneshot::Sender<Result<usize, DhtError>>>,
    },
    Bootstrap(oneshot::Sender<Result<usize, DhtError>>),
    Refresh,
}

enum Op {
    Lookup {
        /// Boxed, like `then`: they dwarf the other variants.
        state: Box<LookupState>,
        kind: LookupKind,
        /// Tokens the answering nodes gave us, by node.
        tokens: HashMap<NodeId, Token>,
        /// Verified records, one per peer (highest sequence).
        records: HashMap<PeerId, PeerRecord>,
        then: Box<Then>,
    },
    /// Bootstrap pings; the self-lookup follows once all are answered or expired.
    Pings {
        waiting: usize,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    },
    Announces {
        waiting: usize,
        stored: usize,
        reply: Option<oneshot::Sender<Result<usize, DhtError>>>,
    },
    /// A ping to the oldest contact of a full bucket.
    Eviction { oldest: NodeId },
}

/// What [`Dht::publish_self`] asked to keep published.
struct Published {
    addrs: Vec<SocketAddr>,
    relays: Vec<PeerId>,
    ttl: Duration,
    last_ms: u64,
}

struct Driver {
    net: Arc<MuxSocket>,
    secret: SecretKey,
    peer: PeerId,
    node_id: NodeId,
    config: DhtConfig,
    /// The driver's clock starts here (milliseconds since, plus one, so 0 is "never").
    started: Instant,
    rng: StdRng,
    responder: Responder,
    pending: PendingRequests,
    requests: HashMap<u64, Request>,
    ops: HashMap<OpId, Op>,
    next_op: OpId,
    /// Tokens the nodes we query gave us, by their address (bounded).
    tokens: HashMap<SocketAddr, Token>,
    /// Observer → (our address as it saw it, recency).
    observed: HashMap<SocketAddr, (SocketAddr, u64)>,
    observed_seq: u64,
    published: Option<Published>,
    /// The bucket-refresh lookup in progress (one at a time).
    refreshing: Option<OpId>,
    /// Datagrams to send once the current event is handled.
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Inbox datagrams still allowed this second.
    budget: u32,
    counters: Counters,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        millis(self.started.elapsed()) + 1
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbox: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    ) {
        let tick_every = (self.config.request_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rotation = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut inbox_open = true;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(command) => self.on_command(command),
                },
                datagram = inbox.recv(), if inbox_open => match datagram {
                    Some((from, bytes)) => {
                        if self.budget == 0 {
                            self.counters.dropped_overload += 1;
                        } else {
                            self.budget -= 1;
                            self.on_datagram(from, &bytes);
                        }
                    }
                    None => inbox_open = false,
                },
                _ = tick.tick() => self.expire(),
                _ = second.tick() => {
                    self.budget = self.config.max_inbox_per_sec;
                    if last_rotation.elapsed() >= self.config.token_rotation {
                        last_rotation = Instant::now();
                        self.responder.tokens_mut().rotate(&mut self.rng);
                    }
                    self.maintain();
                    if last_snapshot.elapsed() >= self.config.snapshot_interval {
                        last_snapshot = Instant::now();
                        self.save_snapshot();
                    }
                }
            }
            self.flush().await;
        }
        self.save_snapshot();
        debug!(peer = %self.peer, "DHT stopped");
    }

    async fn flush(&mut self) {
        for (to, bytes) in std::mem::take(&mut self.outbox) {
            match self.net.send_frame(to, &bytes).await {
                Ok(()) => self.counters.messages_out += 1,
                Err(e) => trace!(%to, error = %e, "DHT send failed"),
            }
        }
    }

    fn save_snapshot(&self) {
        if let Some(path) = &self.config.snapshot_path
            && let Err(e) = save_snapshot(path, &self.responder.table.to_snapshot())
        {
            warn!(path = %path.display(), error = %e, "cannot write DHT snapshot");
        }
    }

    fn new_op(&mut self, op: Op) -> OpId {
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(id, op);
        id
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Bootstrap { seeds, reply } => self.bootstrap(seeds, reply),
            Command::FindNode { target, reply } => {
                self.start_lookup(target, LookupKind::FindNode, Then::Reply(reply));
            }
            Command::GetPeers { key, reply } => {
                self.start_lookup(key, LookupKind::GetPeers, Then::Reply(reply));
            }
            Command::Announce { key, record, reply } => {
                self.announce(key, record, Some(reply));
            }
            Command::PublishSelf {
                addrs,
                relays,
                ttl,
                reply,
            } => {
                self.published = Some(Published {
                    addrs,
                    relays,
                    ttl,
                    last_ms: self.now_ms(),
                });
                match self.sign_published() {
                    Ok((key, record)) => self.announce(key, record, Some(reply)),
                    Err(e) => {
                        self.published = None;
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::ObservedAddrs { reply } => {
                let mut seen: Vec<(SocketAddr, SocketAddr, u64)> = self
                    .observed
                    .iter()
                    .map(|(observer, (addr, seq))| (*observer, *addr, *seq))
                    .collect();
                seen.sort_by_key(|s| std::cmp::Reverse(s.2));
                let _ = reply.send(seen.into_iter().map(|(o, a, _)| (o, a)).collect());
            }
            Command::Shutdown => {}
        }
    }

    fn status(&self) -> DhtStatus {
        let table = &self.responder.table;
        DhtStatus {
            node_id: self.node_id,
            routing_table_size: table.len(),
            non_empty_buckets: (0..super::routing::BUCKETS)
                .filter(|&i| !table.bucket(i).is_empty())
                .count(),
            records_stored: self.responder.store.len(),
            pending_requests: self.pending.len(),
            operations: self.ops.len(),
            messages_in: self.counters.messages_in,
            messages_out: self.counters.messages_out,
            dropped_malformed: self.counters.dropped_malformed,
            dropped_unmatched: self.counters.dropped_unmatched,
            dropped_overload: self.counters.dropped_overload,
        }
    }

    /// Signs the record of [`Dht::publish_self`] afresh.
    fn sign_published(&self) -> Result<(NodeId, PeerRecord), RecordError> {
        let published = self.published.as_ref().expect("called when published");
        let key = NodeId::of_peer(&self.peer);
        let now = unix_ms();
        let record = PeerRecord::sign(
            &self.secret,
            &key,
            published.addrs.clone(),
            published.relays.clone(),
            now,
            now / 1000 + published.ttl.as_secs().max(1),
        )?;
        Ok((key, record))
    }

    fn announce(
        &mut self,
        key: NodeId,
        record: PeerRecord,
        reply: Option<oneshot::Sender<Result<usize, DhtError>>>,
    ) {
        // Keep it ourselves too: we may be among the closest nodes to the key, and a lookup never
        // asks the node that runs it.
        if let Err(e) = self.responder.store.put(key, record.clone(), unix_secs()) {
            debug!(error = %e, "own record not stored locally");
        }
        self.start_lookup(key, LookupKind::FindNode, Then::Announce { record, reply });
    }

    fn bootstrap(
        &mut self,
        seeds: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<usize, DhtError>>,
    ) {
        if seeds.is_empty() {
            let local = self.node_id;
            self.start_lookup(local, LookupKind::FindNode, Then::Bootstrap(reply));
            return;
        }
        let op = self.new_op(Op::Pings {
            waiting: seeds.len(),
            reply,
        });
        for seed in seeds {
            self.send_request(seed, None, op, |token| MessageBody::Ping { token });
        }
    }

    /// Sends a request built by `body` (given our token for `to`, if any) to `to` for operation
    /// `op`. Without a token the request is padded so that the full answer may come back.
    fn send_request(
        &mut self,
        to: SocketAddr,
        node: Option<NodeId>,
        op: OpId,
        body: impl FnOnce(Option<Token>) -> MessageBody,
    ) {
        let token = self.tokens.get(&to).copied();
        let body = body(token);
        let pad_to = match body {
            MessageBody::Ping { .. } => PING_PADDED_LEN,
            _ => MAX_DATAGRAM,
        };
        let sender = self.config.advertise.then_some(self.peer);
        let now = self.now_ms();
        let mut message = self.pending.start(to, sender, body, now, &mut self.rng);
        let txid = message.txid;
        if token.is_none() {
            message = match message.clone().padded_to(pad_to) {
                Ok(padded) => padded,
                Err(_) => message,
            };
        }
        match message.encode() {
            Ok(bytes) => {
                self.requests.insert(txid, Request { op, node });
                self.outbox.push((to, bytes));
            }
            Err(e) => {
                warn!(error = %e, "DHT request does not encode");
                // Let it expire like a lost datagram, so the operation still ends.
                self.requests.insert(txid, Request { op, node });
            }
        }
    }

    fn start_lookup(&mut self, target: NodeId, kind: LookupKind, then: Then) {
        let seeds = self
            .responder
            .table
            .closest(&target, 2 * self.config.lookup.k);
        let state = LookupState::new(target, seeds, self.config.lookup).excluding(self.node_id);
        let now = self.now_ms();
        self.responder.table.mark_lookup(&target, now);
        let op = self.new_op(Op::Lookup {
            state: Box::new(state),
            kind,
            tokens: HashMap::new(),
            records: HashMap::new(),
            then: Box::new(then),
        });
        self.advance_lookup(op);
    }

    /// Sends the lookup's next queries, or finishes it.
    fn advance_lookup(&mut self, op: OpId) {
        let now = self.now_ms();
        let Some(Op::Lookup { state, kind, .. }) = self.ops.get_mut(&op) else {
            return;
        };
        let kind = *kind;
        let target = state.target();
        let queries = state.next_queries(now);
        let done = state.is_finished() || (queries.is_empty() && state.in_flight() == 0);
        for contact in queries {
            self.send_request(contact.addr, Some(contact.id), op, |token| match kind {
                LookupKind::FindNode => MessageBody::FindNode { target, token },
                LookupKind::GetPeers => MessageBody::GetPeers { key: target, token },
            });
        }
        if done {
            self.finish_lookup(op);
        }
    }

    fn finish_lookup(&mut self, op: OpId) {
        let Some(Op::Lookup {
            state,
            tokens,
            mut records,
            then,
            kind,
        }) = self.ops.remove(&op)
        else {
            return;
        };
        if self.refreshing == Some(op) {
            self.refreshing = None;
        }
        let target = state.target();
        let outcome = state.outcome();
        trace!(
            queried = outcome.queried,
            failed = outcome.failed,
            hops = outcome.hops,
            "DHT lookup done"
        );
        match *then {
            Then::Reply(reply) => {
                if kind == LookupKind::GetPeers {
                    let now = unix_secs();
                    for record in self.responder.store.get(&target, now, usize::MAX) {
                        keep_newest(&mut records, record);
                    }
                }
                let mut records: Vec<PeerRecord> = records.into_values().collect();
                records.sort_by_key(|r| *r.peer.as_bytes());
                let _ = reply.send(LookupResult {
                    closest: outcome.closest,
                    records,
                });
            }
            Then::Bootstrap(reply) => {
                let len = self.responder.table.len();
                let _ = reply.send(if len == 0 {
                    Err(DhtError::NoContacts)
                } else {
                    Ok(len)
                });
            }
            Then::Refresh => {}
            Then::Announce { record, reply } => {
                let targets: Vec<(Contact, Token)> = outcome
                    .closest
                    .iter()
                    .filter_map(|c| tokens.get(&c.id).map(|t| (*c, *t)))
                    .collect();
                if targets.is_empty() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(0));
                    }
                    return;
                }
                let announce = self.new_op(Op::Announces {
                    waiting: targets.len(),
                    stored: 0,
                    reply,
                });
                for (contact, token) in targets {
                    let record = record.clone();
                    self.send_request(contact.addr, Some(contact.id), announce, |_| {
                        MessageBody::Announce {
                            key: target,
                            token,
                            record,
                        }
                    });
                }
            }
        }
    }

    /// Records that `contact` proved its address; a full bucket starts an eviction check.
    fn saw(&mut self, contact: Contact) {
        if let InsertOutcome::PendingEviction { oldest } = self.responder.table.insert(contact) {
            self.check_eviction(oldest);
        }
    }

    fn check_eviction(&mut self, oldest: Contact) {
        let already = self
            .ops
            .values()
            .any(|op| matches!(op, Op::Eviction { oldest: o } if *o == oldest.id));
        if already {
            return;
        }
        let op = self.new_op(Op::Eviction { oldest: oldest.id });
        self.send_request(oldest.addr, Some(oldest.id), op, |token| {
            MessageBody::Ping { token }
        });
    }

    fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.counters.messages_in += 1;
        let message = match DhtMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                trace!(%from, error = %e, "malformed DHT datagram");
                self.counters.dropped_malformed += 1;
                return;
            }
        };
        if message.body.is_request() {
            let answer = self
                .responder
                .handle_request(from, &message, bytes.len(), unix_ms());
            if let Some(answer) = answer
                && let Ok(encoded) = answer.encode()
            {
                self.outbox.push((from, encoded));
            }
            for oldest in self.responder.take_eviction_checks() {
                self.check_eviction(oldest);
            }
            return;
        }
        if let Err(e) = self.pending.match_response(from, &message) {
            trace!(%from, error = %e, "unmatched DHT response");
            self.counters.dropped_unmatched += 1;
            return;
        }
        let Some(request) = self.requests.remove(&message.txid) else {
            return;
        };
        self.on_response(from, request, message);
    }

    fn on_response(&mut self, from: SocketAddr, request: Request, message: DhtMessage) {
        // A response to our random transaction id proves the address; the key it claims must be
        // the one we asked, if we asked a known node.
        let sender_ok = match (request.node, message.sender) {
            (Some(asked), Some(sender)) => NodeId::of_peer(&sender) == asked,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if sender_ok && let Some(sender) = message.sender {
            self.saw(Contact::new(sender, from));
        }
        let token = match &message.body {
            MessageBody::Pong { token, .. }
            | MessageBody::Nodes { token, .. }
            | MessageBody::Peers { token, .. } => *token,
            _ => None,
        };
        if let Some(token) = token {
            if self.tokens.len() >= MAX_TOKENS && !self.tokens.contains_key(&from) {
                self.tokens.clear();
            }
            self.tokens.insert(from, token);
        }
        if let MessageBody::Pong {
            observed: Some(observed),
            ..
        } = &message.body
        {
            self.note_observed(from, *observed);
        }
        let Some(op) = self.ops.get_mut(&request.op) else {
            return;
        };
        match op {
            Op::Lookup {
                state,
                kind,
                tokens,
                records,
                ..
            } => {
                let Some(node) = request.node else { return };
                let target = state.target();
                match (sender_ok, message.body) {
                    (true, MessageBody::Nodes { nodes, token }) => {
                        if let Some(token) = token {
                            tokens.insert(node, token);
                        }
                        state.on_response(&node, nodes);
                    }
                    (
                        true,
                        MessageBody::Peers {
                            nodes,
                            records: got,
                            token,
                        },
                    ) => {
                        if let Some(token) = token {
                            tokens.insert(node, token);
                        }
                        if *kind == LookupKind::GetPeers {
                            let now = unix_secs();
                            for record in got {
                                if record.verify(&target, now).is_ok() {
                                    keep_newest(records, record);
                                }
                            }
                        }
                        state.on_response(&node, nodes);
                    }
                    _ => state.on_failure(&node),
                }
                let op = request.op;
                self.advance_lookup(op);
            }
            Op::Pings { waiting, .. } => {
                *waiting -= 1;
                if *waiting == 0 {
                    self.pings_done(request.op);
                }
            }
            Op::Announces {
                waiting, stored, ..
            } => {
                if message.body == (MessageBody::AnnounceAck { stored: true }) {
                    *stored += 1;
                }
                *waiting -= 1;
                if *waiting == 0 {
                    self.announces_done(request.op);
                }
            }
            Op::Eviction { oldest } => {
                let oldest = *oldest;
                self.ops.remove(&request.op);
                self.responder.table.resolve_eviction(&oldest, sender_ok);
            }
        }
    }

    fn note_observed(&mut self, observer: SocketAddr, observed: SocketAddr) {
        self.observed_seq += 1;
        if self.observed.len() >= MAX_OBSERVERS
            && !self.observed.contains_key(&observer)
            && let Some(oldest) = self
                .observed
                .iter()
                .min_by_key(|(_, (_, seq))| *seq)
                .map(|(o, _)| *o)
        {
            self.observed.remove(&oldest);
        }
        self.observed
            .insert(observer, (observed, self.observed_seq));
    }

    fn pings_done(&mut self, op: OpId) {
        let Some(Op::Pings { reply, .. }) = self.ops.remove(&op) else {
            return;
        };
        if self.responder.table.is_empty() {
            let _ = reply.send(Err(DhtError::NoContacts));
            return;
        }
        let local = self.node_id;
        self.start_lookup(local, LookupKind::FindNode, Then::Bootstrap(reply));
    }

    fn announces_done(&mut self, op: OpId) {
        if let Some(Op::Announces {
            stored,
            reply: Some(reply),
            ..
        }) = self.ops.remove(&op)
        {
            let _ = reply.send(Ok(stored));
        }
    }

    /// Fails requests that timed out.
    fn expire(&mut self) {
        let now = self.now_ms();
        let expired = self
            .pending
            .expire(now, millis(self.config.request_timeout));
        for (txid, pending) in expired {
            let Some(request) = self.requests.remove(&txid) else {
                continue;
            };
            // A node that does not answer leaves the table (if it is still at that address).
            if let Some(node) = request.node
                && self
                    .responder
                    .table
                    .get(&node)
                    .is_some_and(|c| c.addr == pending.to)
            {
                let evicting = matches!(self.ops.get(&request.op), Some(Op::Eviction { .. }));
                if !evicting {
                    self.responder.table.remove(&node);
                }
            }
            self.tokens.remove(&pending.to);
            match self.ops.get_mut(&request.op) {
                Some(Op::Lookup { state, .. }) => {
                    if let Some(node) = request.node {
                        state.on_failure(&node);
                    }
                    self.advance_lookup(request.op);
                }
                Some(Op::Pings { waiting, .. }) => {
                    *waiting -= 1;
                    if *waiting == 0 {
                        self.pings_done(request.op);
                    }
                }
                Some(Op::Announces { waiting, .. }) => {
                    *waiting -= 1;
                    if *waiting == 0 {
                        self.announces_done(request.op);
                    }
                }
                Some(Op::Eviction { oldest }) => {
                    let oldest = *oldest;
                    self.ops.remove(&request.op);
                    self.responder.table.resolve_eviction(&oldest, false);
                }
                None => {}
            }
        }
    }

    /// Once a second: purge expired records, refresh one stale bucket, republish.
    fn maintain(&mut self) {
        let now = self.now_ms();
        self.responder.store.purge_expired(unix_secs());
        if let Some(published) = &self.published
            && now.saturating_sub(published.last_ms) >= millis(self.config.republish_interval)
        {
            if let Some(p) = self.published.as_mut() {
                p.last_ms = now;
            }
            match self.sign_published() {
                Ok((key, record)) => self.announce(key, record, None),
                Err(e) => warn!(error = %e, "cannot re-sign our DHT record"),
            }
        }
        if self.refreshing.is_some() || self.responder.table.is_empty() {
            return;
        }
        let k = self.config.routing.k;
        let due = self
            .responder
            .table
            .buckets_to_refresh(now, millis(self.config.refresh_interval));
        for index in due {
            if self.responder.table.bucket(index).len() >= k {
                self.responder.table.mark_refreshed(index, now);
                continue;
            }
            let target = self.responder.table.refresh_target(index, &mut self.rng);
            self.responder.table.mark_refreshed(index, now);
            let op_id = self.next_op;
            self.refreshing = Some(op_id);
            self.start_lookup(target, LookupKind::FindNode, Then::Refresh);
            if !self.ops.contains_key(&op_id) {
                // Finished at once (nobody to ask): try the next bucket next time.
                self.refreshing = None;
            }
            break;
        }
    }
}

fn keep_newest(records: &mut HashMap<PeerId, PeerRecord>, record: PeerRecord) {
    match records.get(&record.peer) {
        Some(held) if held.seq >= record.seq => {}
        _ => {
            records.insert(record.peer, record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_or_foreign_snapshot_starts_empty() {
        let dir = std::env::temp_dir().join(format!("kith-dht-snap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routing.json");
        let me = NodeId::of_peer(&SecretKey::from_bytes([1; 32]).peer_id());
        let other = NodeId::of_peer(&SecretKey::from_bytes([2; 32]).peer_id());
        let config = RoutingConfig::default();
        assert!(load_snapshot(&path, me, &config).is_none(), "absent");
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(load_snapshot(&path, me, &config).is_none(), "corrupt");
        let mut table = RoutingTable::new(other, config.clone());
        table.insert(Contact::new(
            SecretKey::from_bytes([3; 32]).peer_id(),
            "192.0.2.1:4000".parse().unwrap(),
        ));
        save_snapshot(&path, &table.to_snapshot()).unwrap();
        assert!(
            load_snapshot(&path, me, &config).is_none(),
            "another node's"
        );
        let restored = load_snapshot(&path, other, &config).unwrap();
        assert_eq!(restored.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
