//! Replication over the network, and blind mirrors.
//!
//! Peers speak [`wire`] (ALPN [`ALPN`], `kith/store/1`) over [`crate::net::PeerChannel`]s. A
//! session ([`session`]) is symmetric: each side opens the logs it holds or wants (by discovery
//! id, with a capability proving it knows the key), says what it has (signed root and held
//! ranges), requests what it lacks in pipelined batches, and stores every batch only after its
//! proof verified ([`crate::Store::put_remote_at`]). Live appends on either side are announced
//! to the sessions that have the log open and fetched. Fork evidence found on the way is kept
//! and passed on.
//!
//! [`Replicator`] runs it for a node: it serves incoming sessions, announces the
//! [`crate::net::log_topic`] of every log it holds, syncs or follows logs by looking their
//! topics up (retrying with backoff while no peer answers), and keeps **mirrors**: logs this
//! node replicates and serves for others knowing only the public key — it holds ciphertext and
//! signatures and nothing else, like any member's store — within a per-log and a total byte
//! quota, evicting the oldest entry bytes of the lowest-priority mirrors first (tree nodes and
//! roots stay, so what remains still verifies). The node's own logs are never evicted.
//!
//! Logs can also be found by a room's discovery topic ([`crate::topic`]). The replicator
//! announces [`crate::net::room_topic`] for every topic its logs carry; asked over a session
//! for a topic's logs by a peer that proves the topic, it lists the writers' tags of the logs it
//! holds under it ([`wire`]). A **topic mirror** ([`Replicator::add_topic_mirror`]) looks the
//! topic up, asks every peer found, mirrors every log listed (each as a mirror of its own, under
//! the topic mirror's policy: the quota applies per log), keeps the tags so it answers for the
//! topic and announces it itself, and asks again every `lookup_interval` for logs of new
//! members. [`Replicator::sync_topic`] does one round for a reader: find the topic's logs and
//! bring each up to date once.

pub mod session;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use session::{SessionReport, TopicAnswer};
pub use wire::{ALPN, Discovery, discovery_id};

use crate::Store;
use crate::error::StoreError;
use crate::log::LogKey;
use crate::net::{Network, PeerChannel, PeerId, log_topic};
use crate::topic::{TopicId, TopicKey, TopicTag};

/// The most peers asked for a topic's logs in one round.
pub const MAX_TOPIC_PEERS: usize = 32;

/// How a [`Replicator`] behaves.
#[derive(Clone, Debug)]
pub struct ReplicatorConfig {
    /// The most entry bytes held for all mirrored logs together (`None`: no total quota). Over
    /// it, the lowest-priority mirrors lose their oldest entries first.
    pub total_quota_bytes: Option<u64>,
    /// Requests in flight per log per session.
    pub max_in_flight: usize,
    /// A peer that sends nothing for this long while we wait on it is dropped; also the bound
    /// on the hello and on closing.
    pub timeout: Duration,
    /// First wait before looking a followed log's peers up again when none answered; doubles
    /// up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How often a followed log's topic is looked up again while sessions run (and a mirrored
    /// room topic's peers asked again for new logs), and every held log's and room's topic
    /// re-announced.
    pub lookup_interval: Duration,
    pub announce_interval: Duration,
    /// The most sessions peers may have open with us at once.
    pub max_incoming: usize,
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        ReplicatorConfig {
            total_quota_bytes: None,
            max_in_flight: 4,
            timeout: Duration::from_secs(30),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            lookup_interval: Duration::from_secs(30),
            announce_interval: Duration::from_secs(300),
            max_incoming: 64,
        }
    }
}

/// A mirror's policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MirrorPolicy {
    /// The most entry bytes to hold for this log (`None`: only the total quota applies).
    pub quota_bytes: Option<u64>,
    /// Over the total quota, lower priorities are evicted first.
    pub priority: i32,
}

/// A mirrored log as [`Replicator::list_mirrors`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MirrorInfo {
    pub key: LogKey,
    pub policy: MirrorPolicy,
    /// The held root's length.
    pub length: u64,
    pub held_entries: u64,
    pub bytes_held: u64,
    /// Entries below this were evicted for quota.
    pub evicted_below: u64,
    /// Peers that advertised this log to us since this replicator started.
    pub peers_seen: u64,
    /// When a session last brought the log up to a peer's length (unix ms).
    pub last_sync_ms: Option<u64>,
    pub forked: bool,
    /// Mirrored because it was asked for by key (`false`: only because a mirrored topic listed
    /// it).
    pub by_key: bool,
    /// The mirrored topics that list this log.
    pub topics: Vec<TopicId>,
}

/// A mirrored room topic as [`Replicator::list_topic_mirrors`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicMirrorInfo {
    pub id: TopicId,
    /// The policy every log found under the topic is mirrored with: the quota is each log's
    /// own, not one for the topic's logs together.
    pub policy: MirrorPolicy,
    /// The logs held under the topic (found by asking peers, or carried already), by key.
    pub logs: Vec<LogKey>,
    /// Peers that proved the topic and answered since this replicator started.
    pub peers_seen: u64,
    pub added_ms: u64,
    /// When peers were last asked for the topic's logs (unix ms).
    pub last_check_ms: Option<u64>,
}

/// What one round of asking peers for a topic's logs found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopicCheck {
    /// Peers found under the topic's DHT key.
    pub peers_found: usize,
    /// Peers that proved they know the topic and listed its logs.
    pub peers_answered: usize,
    /// Logs put under the topic here for the first time.
    pub new_logs: Vec<LogKey>,
}

/// What [`Replicator::sync_topic`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicSyncReport {
    pub topic: TopicId,
    pub peers_found: usize,
    pub peers_answered: usize,
    /// Every log held under the topic afterwards, and how its sync went.
    pub logs: Vec<TopicLogSync>,
}

/// One log of a [`TopicSyncReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicLogSync {
    pub key: LogKey,
    /// The held root's length afterwards.
    pub length: u64,
    pub entries_received: u64,
    /// Why it could not be synced (no peer had it, …); the others were still tried.
    pub error: Option<String>,
}

/// Cumulative counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplicatorStats {
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Sessions cut because the peer broke the protocol (bad proofs, garbage, …).
    pub protocol_errors: u64,
    pub sessions: u64,
}

/// What [`Replicator::sync_log`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Peers found under the log's topic.
    pub peers_found: usize,
    /// Peers a session completed with.
    pub peers_synced: usize,
    pub entries_received: u64,
    /// The held root's length afterwards.
    pub length: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub entries_sent: AtomicU64,
    pub entries_received: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub sessions: AtomicU64,
}

struct MirrorState {
    policy: MirrorPolicy,
    /// Entry bytes held (exact after each quota check, an upper bound in between).
    bytes: u64,
    evicted_below: u64,
    peers: HashSet<PeerId>,
}

/// What every session shares.
pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    network: Arc<dyn Network>,
    pub(crate) config: ReplicatorConfig,
    /// Logs we answer for, by discovery id.
    known: Mutex<HashMap<Discovery, LogKey>>,
    /// When `known` was last re-read from the store.
    refreshed: Mutex<Option<std::time::Instant>>,
    mirrors: Mutex<HashMap<LogKey, MirrorState>>,
    /// One quota pass at a time.
    evicting: tokio::sync::Mutex<()>,
    pub(crate) stats: Stats,
    stop: watch::Sender<bool>,
    /// Live sessions by (peer, log), so a followed log has one session per peer.
    following: Mutex<HashSet<(PeerId, LogKey)>>,
    incoming: AtomicUsize,
    active: AtomicUsize,
    /// Peers that answered for each topic since start.
    topic_peers: Mutex<HashMap<TopicId, HashSet<PeerId>>>,
}

impl Inner {
    pub(crate) fn local_peer(&self) -> PeerId {
        self.network.local_peer()
    }

    pub(crate) fn known(&self, discovery: &Discovery) -> Option<LogKey> {
        self.known
            .lock()
            .expect("known lock")
            .get(discovery)
            .copied()
    }

    /// [`Self::known`], re-reading the store's logs first on a miss (at most once a second:
    /// logs appended or received since the last read, e.g. before [`Replicator::start`]).
    pub(crate) async fn find(&self, discovery: &Discovery) -> Result<Option<LogKey>, StoreError> {
        if let Some(key) = self.known(discovery) {
            return Ok(Some(key));
        }
        let stale = {
            let mut last = self.refreshed.lock().expect("refreshed lock");
            let stale = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if stale {
                *last = Some(std::time::Instant::now());
            }
            stale
        };
        if stale {
            for key in self.store.log_keys().await? {
                self.register(key);
            }
        }
        Ok(self.known(discovery))
    }

    /// Adds `key` to the logs we answer for; true if it is new.
    pub(crate) fn register(&self, key: LogKey) -> bool {
        self.known
            .lock()
            .expect("known lock")
            .insert(discovery_id(&key), key)
            .is_none()
    }

    pub(crate) fn evicted_below(&self, key: &LogKey) -> u64 {
        self.mirrors
            .lock()
            .expect("mirrors lock")
            .get(key)
            .map_or(0, |m| m.evicted_below)
    }

    pub(crate) fn note_peer(&self, key: &LogKey, peer: PeerId) {
        if let Some(m) = self.mirrors.lock().expect("mirrors lock").get_mut(key) {
            m.peers.insert(peer);
        }
    }

    pub(crate) async fn synced(&self, key: &LogKey) -> Result<(), StoreError> {
        let mirrored = self.mirrors.lock().expect("mirrors lock").contains_key(key);
        if mirrored {
            self.store.mirror_synced(key).await?;
        }
        Ok(())
    }

    /// After `bytes` of `key`'s entries were stored: enforce quotas if they may be exceeded.
    /// Returns the log's new eviction mark if it moved.
    pub(crate) async fn after_store(
        &self,
        key: &LogKey,
        bytes: u64,
    ) -> Result<Option<u64>, StoreError> {
        let over = {
            let mut mirrors = self.mirrors.lock().expect("mirrors lock");
            let Some(m) = mirrors.get_mut(key) else {
                return Ok(None);
            };
            m.bytes += bytes;
            let log_over = m.policy.quota_bytes.is_some_and(|q| m.bytes > q);
            let total: u64 = mirrors.values().map(|m| m.bytes).sum();
            log_over || self.config.total_quota_bytes.is_some_and(|t| total > t)
        };
        if !over {
            return Ok(None);
        }
        let before = self.evicted_below(key);
        self.enforce_quotas().await?;
        let after = self.evicted_below(key);
        Ok((after > before).then_some(after))
    }

    /// Brings every mirror within its quota, then all of them within the total quota,
    /// evicting from the lowest priority (then the earliest added) first.
    pub(crate) async fn enforce_quotas(&self) -> Result<(), StoreError> {
        let _one = self.evicting.lock().await;
        let rows = self.store.mirrors().await?;
        let keys: Vec<LogKey> = rows.iter().map(|m| m.key).collect();
        let mut bytes = self.store.entry_bytes(&keys).await?;
        let mut marks: HashMap<LogKey, u64> =
            rows.iter().map(|m| (m.key, m.evicted_below)).collect();
        for m in &rows {
            if self.store.writes(&m.key) {
                continue;
            }
            let held = bytes[&m.key];
            if let Some(q) = m.quota_bytes
                && held > q
            {
                let report = self.store.evict_oldest(&m.key, held - q).await?;
                *bytes.get_mut(&m.key).expect("counted") -= report.bytes;
                marks.insert(m.key, report.evicted_below);
            }
        }
        if let Some(total_quota) = self.config.total_quota_bytes {
            let mut order: Vec<_> = rows.iter().collect();
            order.sort_by_key(|m| (m.priority, m.added_ms));
            let mut total: u64 = bytes.values().sum();
            for m in order {
                if total <= total_quota {
                    break;
                }
                if self.store.writes(&m.key) {
                    continue;
                }
                let report = self.store.evict_oldest(&m.key, total - total_quota).await?;
                total -= report.bytes;
                *bytes.get_mut(&m.key).expect("counted") -= report.bytes;
                marks.insert(m.key, report.evicted_below);
            }
        }
        let mut mirrors = self.mirrors.lock().expect("mirrors lock");
        for (key, state) in mirrors.iter_mut() {
            if let Some(b) = bytes.get(key) {
                state.bytes = *b;
            }
            if let Some(m) = marks.get(key) {
                state.evicted_below = state.evicted_below.max(*m);
            }
        }
        Ok(())
    }
}

/// Every mirrored log of `store` with its policy and state, ordered by key; with the
/// replicator's `inner` its peers and last sync too (without one — a store running without a
/// network — nothing was replicated in this run: no peers, no sync).
pub(crate) async fn list_mirrors(
    store: &Store,
    inner: Option<&Inner>,
) -> Result<Vec<MirrorInfo>, StoreError> {
    let rows = store.mirrors().await?;
    let keys: Vec<LogKey> = rows.iter().map(|m| m.key).collect();
    let bytes = store.entry_bytes(&keys).await?;
    let mirrored: HashSet<TopicId> = store
        .topic_mirrors()
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for m in rows {
        let info = store.log_info(&m.key).await?;
        let peers_seen = inner.map_or(0, |inner| {
            inner
                .mirrors
                .lock()
                .expect("mirrors lock")
                .get(&m.key)
                .map_or(0, |s| s.peers.len() as u64)
        });
        let topics = store
            .log_topics(&m.key)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| mirrored.contains(id))
            .collect();
        out.push(MirrorInfo {
            key: m.key,
            policy: MirrorPolicy {
                quota_bytes: m.quota_bytes,
                priority: m.priority,
            },
            length: info.length,
            held_entries: info.held_entries,
            bytes_held: bytes.get(&m.key).copied().unwrap_or(0),
            evicted_below: m.evicted_below,
            peers_seen,
            last_sync_ms: inner.and(m.last_sync_ms),
            forked: info.forked,
            by_key: m.by_key,
            topics,
        });
    }
    Ok(out)
}

/// Every mirrored room topic of `store` with its policy and the logs held under it, ordered by
/// id; with the replicator's `inner` the peers that answered for it too.
pub(crate) async fn list_topic_mirrors(
    store: &Store,
    inner: Option<&Inner>,
) -> Result<Vec<TopicMirrorInfo>, StoreError> {
    let mut out = Vec::new();
    for t in store.topic_mirrors().await? {
        let logs = store
            .topic_tags(&t.id)
            .await?
            .into_iter()
            .map(|tag| tag.key)
            .collect();
        let peers_seen = inner.map_or(0, |inner| {
            inner
                .topic_peers
                .lock()
                .expect("topic peers lock")
                .get(&t.id)
                .map_or(0, |p| p.len() as u64)
        });
        out.push(TopicMirrorInfo {
            id: t.id,
            policy: MirrorPolicy {
                quota_bytes: t.quota_bytes,
                priority: t.priority,
            },
            logs,
            peers_seen,
            added_ms: t.added_ms,
            last_check_ms: t.last_check_ms,
        });
    }
    Ok(out)
}

/// Replication for one node: serves peers, syncs and follows logs, keeps mirrors.
pub struct Replicator {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    follows: Mutex<HashMap<LogKey, JoinHandle<()>>>,
    /// Mirrored topics being asked for new logs.
    topic_follows: Mutex<HashMap<TopicId, JoinHandle<()>>>,
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("peer", &hex::encode(self.inner.network.local_peer()))
            .finish_non_exhaustive()
    }
}

impl Replicator {
    /// A replicator for `store` on `network`. Nothing runs until [`Self::start`] (or a
    /// direct call to [`Self::sync_log`], [`Self::replicate`] or [`Self::handle`]).
    pub fn new(
        store: Arc<Store>,
        network: Arc<dyn Network>,
        config: ReplicatorConfig,
    ) -> Arc<Replicator> {
        Arc::new(Replicator {
            inner: Arc::new(Inner {
                store,
                network,
                config,
                known: Mutex::default(),
                refreshed: Mutex::default(),
                mirrors: Mutex::default(),
                evicting: tokio::sync::Mutex::new(()),
                stats: Stats::default(),
                stop: watch::channel(false).0,
                following: Mutex::default(),
                incoming: AtomicUsize::new(0),
                active: AtomicUsize::new(0),
                topic_peers: Mutex::default(),
            }),
            tasks: Mutex::default(),
            follows: Mutex::default(),
            topic_follows: Mutex::default(),
            started: Default::default(),
        })
    }

    /// Loads what the store holds (logs and persisted mirrors), serves incoming sessions on
    /// [`ALPN`], announces every held log's topic and every room topic its logs carry (again
    /// every `announce_interval`, and new logs as they appear), follows every mirror and asks
    /// for every mirrored room topic's logs.
    pub async fn start(self: &Arc<Self>) -> Result<(), StoreError> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let listening = async {
            self.load().await?;
            self.inner.network.listen(ALPN).await
        }
        .await;
        let mut incoming = match listening {
            Ok(incoming) => incoming,
            Err(e) => {
                // Not started: a later `start` tries again.
                self.started.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let me = self.clone();
        let accept = tokio::spawn(async move {
            let mut stop = me.inner.stop.subscribe();
            loop {
                tokio::select! {
                    ch = incoming.recv() => match ch {
                        Some(ch) => {
                            if me.inner.incoming.load(Ordering::SeqCst) >= me.inner.config.max_incoming {
                                tracing::warn!(peer = %hex::encode(ch.peer), "too many store sessions; refusing one");
                                continue;
                            }
                            let me2 = me.clone();
                            me.inner.incoming.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                let _ = me2.handle(ch).await;
                                me2.inner.incoming.fetch_sub(1, Ordering::SeqCst);
                            });
                        }
                        None => return,
                    },
                    _ = stop.changed() => return,
                }
            }
        });
        let me = self.clone();
        let announce = tokio::spawn(async move {
            let mut stop = me.inner.stop.subscribe();
            let mut updates = me.inner.store.subscribe();
            let mut tick = tokio::time::interval(me.inner.config.announce_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.announce_all().await,
                    u = updates.recv() => {
                        if let Ok(u) = u
                            && me.inner.register(u.key)
                            && let Err(e) = me.inner.network.announce(log_topic(&u.key)).await
                        {
                            tracing::debug!(log = %u.key, error = %e, "announcing a new log failed");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        });
        self.tasks
            .lock()
            .expect("tasks lock")
            .extend([accept, announce]);
        let mirrors: Vec<LogKey> = self
            .inner
            .mirrors
            .lock()
            .expect("mirrors lock")
            .keys()
            .copied()
            .collect();
        for key in mirrors {
            self.follow(key);
        }
        for topic in self.inner.store.topic_mirrors().await? {
            self.follow_topic(topic.topic);
        }
        Ok(())
    }

    /// Reads the held logs and the mirror table into memory.
    async fn load(&self) -> Result<(), StoreError> {
        for key in self.inner.store.log_keys().await? {
            self.inner.register(key);
        }
        let rows = self.inner.store.mirrors().await?;
        let keys: Vec<LogKey> = rows.iter().map(|m| m.key).collect();
        let bytes = self.inner.store.entry_bytes(&keys).await?;
        let mut mirrors = self.inner.mirrors.lock().expect("mirrors lock");
        for m in rows {
            self.inner.register(m.key);
            mirrors.entry(m.key).or_insert(MirrorState {
                policy: MirrorPolicy {
                    quota_bytes: m.quota_bytes,
                    priority: m.priority,
                },
                bytes: bytes[&m.key],
                evicted_below: m.evicted_below,
                peers: HashSet::new(),
            });
        }
        Ok(())
    }

    async fn announce_all(&self) {
        let keys: Vec<LogKey> = self
            .inner
            .known
            .lock()
            .expect("known lock")
            .values()
            .copied()
            .collect();
        for key in keys {
            if let Err(e) = self.inner.network.announce(log_topic(&key)).await {
                tracing::debug!(log = %key, error = %e, "announcing a log failed");
            }
        }
        match self.inner.store.topics().await {
            Ok(topics) => {
                for t in topics {
                    self.announce_topic(&t.topic).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the topics to announce failed"),
        }
    }

    /// Announces that this node holds logs of a room topic (best effort).
    pub async fn announce_topic(&self, topic: &TopicKey) {
        if let Err(e) = self.inner.network.announce(topic.dht_topic()).await {
            tracing::debug!(topic = %topic.id(), error = %e, "announcing a topic failed");
        }
    }

    /// Serves one incoming session (a stream a peer opened on [`ALPN`]) until the peer ends
    /// it or the replicator shuts down: answers for the logs we hold that the peer opens, and
    /// pulls what we lack of them.
    pub async fn handle(
        self: &Arc<Self>,
        channel: PeerChannel,
    ) -> Result<SessionReport, StoreError> {
        self.run_session(channel, session::Role::Acceptor).await
    }

    /// Replicates `logs` over a stream we opened to a peer. With `live`, the session stays and
    /// follows both sides' appends until [`Self::shutdown`] or the peer leaves; otherwise it
    /// ends once both sides have what they wanted from each other.
    pub async fn replicate(
        self: &Arc<Self>,
        channel: PeerChannel,
        logs: &[LogKey],
        live: bool,
    ) -> Result<SessionReport, StoreError> {
        for key in logs {
            self.inner.register(*key);
        }
        self.run_session(
            channel,
            session::Role::Initiator {
                logs: logs.to_vec(),
                topics: Vec::new(),
                live,
            },
        )
        .await
    }

    async fn run_session(
        &self,
        channel: PeerChannel,
        role: session::Role,
    ) -> Result<SessionReport, StoreError> {
        self.inner.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        let stop = self.inner.stop.subscribe();
        let result = if *stop.borrow() {
            Err(StoreError::Network("replicator is shut down".into()))
        } else {
            session::run(self.inner.clone(), channel, role, stop).await
        };
        self.inner.active.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Brings `key`'s log up to date once: looks up the peers announced under its topic and
    /// runs a session with each reachable one in turn (each asks only for what is still
    /// missing). While no peer can be reached it retries with backoff, three times.
    pub async fn sync_log(self: &Arc<Self>, key: LogKey) -> Result<SyncReport, StoreError> {
        if self.inner.register(key) {
            self.inner.store.create_log(&key).await?;
        }
        if let Err(e) = self.inner.network.announce(log_topic(&key)).await {
            tracing::debug!(log = %key, error = %e, "announcing a log failed");
        }
        let mut report = SyncReport::default();
        let mut delay = self.inner.config.retry_initial;
        let mut last_error = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.inner.config.retry_max);
            }
            let peers = self.inner.network.lookup(log_topic(&key)).await?;
            report.peers_found = peers.len();
            for peer in peers {
                let channel = match self.inner.network.open(peer, ALPN).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(peer = %hex::encode(peer), error = %e, "peer unreachable");
                        last_error = Some(e);
                        continue;
                    }
                };
                match self.replicate(channel, &[key], false).await {
                    Ok(r) => {
                        report.peers_synced += 1;
                        report.entries_received += r.entries_received;
                    }
                    Err(e) => {
                        tracing::debug!(peer = %hex::encode(peer), error = %e, "sync session failed");
                        last_error = Some(e);
                    }
                }
            }
            if report.peers_synced > 0 {
                report.length = self.inner.store.log_info(&key).await?.length;
                return Ok(report);
            }
        }
        Err(last_error
            .unwrap_or_else(|| StoreError::Network(format!("no peer found for log {key}"))))
    }

    /// Keeps `key`'s log replicated in the background: looks its topic up, keeps one live
    /// session with every peer found (re-looking up every `lookup_interval`), and retries with
    /// backoff while none answers. Until [`Self::unfollow`] or [`Self::shutdown`].
    pub fn follow(self: &Arc<Self>, key: LogKey) {
        let mut follows = self.follows.lock().expect("follows lock");
        if follows.get(&key).is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.inner.register(key);
        let me = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = me.inner.store.create_log(&key).await {
                tracing::warn!(log = %key, error = %e, "cannot follow log");
                return;
            }
            let mut stop = me.inner.stop.subscribe();
            let mut delay = me.inner.config.retry_initial;
            loop {
                if let Err(e) = me.inner.network.announce(log_topic(&key)).await {
                    tracing::debug!(log = %key, error = %e, "announcing a log failed");
                }
                let peers = me
                    .inner
                    .network
                    .lookup(log_topic(&key))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::debug!(log = %key, error = %e, "looking a log's peers up failed");
                        Vec::new()
                    });
                for peer in peers {
                    if me
                        .inner
                        .following
                        .lock()
                        .expect("following lock")
                        .contains(&(peer, key))
                    {
                        continue;
                    }
                    match me.inner.network.open(peer, ALPN).await {
                        Ok(channel) => {
                            me.inner
                                .following
                                .lock()
                                .expect("following lock")
                                .insert((peer, key));
                            let me2 = me.clone();
                            tokio::spawn(async move {
                                if let Err(e) = me2.replicate(channel, &[key], true).await {
                                    tracing::debug!(log = %key, peer = %hex::encode(peer), error = %e, "follow session ended");
                                }
                                me2.inner
                                    .following
                                    .lock()
                                    .expect("following lock")
                                    .remove(&(peer, key));
                            });
                        }
                        Err(e) => {
                            tracing::debug!(peer = %hex::encode(peer), error = %e, "peer unreachable");
                        }
                    }
                }
                let connected = me
                    .inner
                    .following
                    .lock()
                    .expect("following lock")
                    .iter()
                    .any(|(_, k)| *k == key);
                let wait = next_wait(&me.inner.config, connected, &mut delay);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        follows.insert(key, task);
    }

    /// Stops looking for new peers of `key`'s log (running sessions end with the replicator).
    pub fn unfollow(&self, key: &LogKey) {
        if let Some(task) = self.follows.lock().expect("follows lock").remove(key) {
            task.abort();
        }
    }

    /// Mirrors `key`'s log: replicates and serves it without any decryption key, within
    /// `policy`. Persisted (a restarted node keeps mirroring); calling it again updates the
    /// policy. Refused for a log this node writes.
    pub async fn add_mirror(
        self: &Arc<Self>,
        key: LogKey,
        policy: MirrorPolicy,
    ) -> Result<MirrorInfo, StoreError> {
        let row = self
            .inner
            .store
            .set_mirror(&key, policy.quota_bytes, policy.priority)
            .await?;
        let bytes = self.inner.store.entry_bytes(&[key]).await?[&key];
        {
            let mut mirrors = self.inner.mirrors.lock().expect("mirrors lock");
            let state = mirrors.entry(key).or_insert(MirrorState {
                policy,
                bytes,
                evicted_below: row.evicted_below,
                peers: HashSet::new(),
            });
            state.policy = policy;
            state.bytes = bytes;
        }
        self.inner.register(key);
        self.inner.enforce_quotas().await?;
        if self.started.load(Ordering::SeqCst) {
            if let Err(e) = self.inner.network.announce(log_topic(&key)).await {
                tracing::debug!(log = %key, error = %e, "announcing a log failed");
            }
            self.follow(key);
        }
        self.mirror_info(&key)
            .await?
            .ok_or(StoreError::LogNotFound { key })
    }

    /// Stops mirroring `key` and deletes what was held for it. Returns whether it was mirrored.
    pub async fn remove_mirror(&self, key: &LogKey) -> Result<bool, StoreError> {
        self.unfollow(key);
        self.inner.mirrors.lock().expect("mirrors lock").remove(key);
        let removed = self.inner.store.remove_mirror(key).await?;
        if removed {
            self.inner
                .known
                .lock()
                .expect("known lock")
                .remove(&discovery_id(key));
        }
        Ok(removed)
    }

    /// Every mirrored log with its policy and state, ordered by key.
    pub async fn list_mirrors(&self) -> Result<Vec<MirrorInfo>, StoreError> {
        list_mirrors(&self.inner.store, Some(&self.inner)).await
    }

    async fn mirror_info(&self, key: &LogKey) -> Result<Option<MirrorInfo>, StoreError> {
        Ok(self
            .list_mirrors()
            .await?
            .into_iter()
            .find(|m| m.key == *key))
    }

    /// Asks the peer at the other end of `channel` for the logs it holds under `topic`, in a
    /// one-shot session. `Ok(None)`: the peer does not hold the topic (or refused our proof).
    /// The tags returned are checked (the peer proved the topic, every writer signed its tag);
    /// nothing is stored.
    pub async fn query_topic(
        self: &Arc<Self>,
        channel: PeerChannel,
        topic: &TopicKey,
    ) -> Result<Option<Vec<TopicTag>>, StoreError> {
        let id = topic.id();
        let report = self
            .run_session(
                channel,
                session::Role::Initiator {
                    logs: Vec::new(),
                    topics: vec![topic.clone()],
                    live: false,
                },
            )
            .await?;
        report
            .topics
            .into_iter()
            .find(|a| a.topic == id)
            .map(|a| a.logs)
            .ok_or_else(|| StoreError::Network("peer left before answering the topic query".into()))
    }

    /// One round for `topic`: looks its DHT key up, asks every peer found (at most
    /// [`MAX_TOPIC_PEERS`]) for the topic's logs and keeps their tags here (so this node lists
    /// and announces them too). With a `mirror` policy, every log found is mirrored under it.
    pub async fn check_topic(
        self: &Arc<Self>,
        topic: &TopicKey,
        mirror: Option<MirrorPolicy>,
    ) -> Result<TopicCheck, StoreError> {
        let id = topic.id();
        self.announce_topic(topic).await;
        let peers = self.inner.network.lookup(topic.dht_topic()).await?;
        let mut report = TopicCheck {
            peers_found: peers.len(),
            ..TopicCheck::default()
        };
        let mut held: HashSet<LogKey> = self
            .inner
            .store
            .topic_tags(&id)
            .await?
            .into_iter()
            .map(|t| t.key)
            .collect();
        for peer in peers.into_iter().take(MAX_TOPIC_PEERS) {
            let channel = match self.inner.network.open(peer, ALPN).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = %hex::encode(peer), error = %e, "peer unreachable");
                    continue;
                }
            };
            let tags = match self.query_topic(channel, topic).await {
                Ok(Some(tags)) => tags,
                Ok(None) => {
                    tracing::debug!(peer = %hex::encode(peer), topic = %id, "peer does not hold the topic");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(peer = %hex::encode(peer), topic = %id, error = %e, "topic query failed");
                    continue;
                }
            };
            report.peers_answered += 1;
            self.inner
                .topic_peers
                .lock()
                .expect("topic peers lock")
                .entry(id)
                .or_default()
                .insert(peer);
            for tag in tags {
                if !held.contains(&tag.key) {
                    match self.inner.store.tag_log(topic, &tag, false).await {
                        Ok(_) => {
                            held.insert(tag.key);
                            report.new_logs.push(tag.key);
                            self.inner.register(tag.key);
                        }
                        Err(StoreError::TopicLimit(why)) => {
                            tracing::warn!(topic = %id, %why, "a topic's logs past the limit are ignored");
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if let Some(policy) = mirror {
                    self.adopt(tag.key, policy).await?;
                }
            }
        }
        if mirror.is_some() {
            self.inner.store.topic_checked(&id).await?;
        }
        Ok(report)
    }

    /// Mirrors `key`'s log because a mirrored topic lists it, under that topic's `policy`,
    /// unless it is mirrored already or is this node's own. Returns whether it is new.
    async fn adopt(
        self: &Arc<Self>,
        key: LogKey,
        policy: MirrorPolicy,
    ) -> Result<bool, StoreError> {
        if self
            .inner
            .mirrors
            .lock()
            .expect("mirrors lock")
            .contains_key(&key)
        {
            return Ok(false);
        }
        let own_tag = self
            .inner
            .store
            .log_topics(&key)
            .await?
            .iter()
            .any(|(_, own)| *own);
        if own_tag || self.inner.store.writes(&key) {
            return Ok(false);
        }
        let row = self
            .inner
            .store
            .adopt_mirror(&key, policy.quota_bytes, policy.priority)
            .await?;
        let bytes = self.inner.store.entry_bytes(&[key]).await?[&key];
        self.inner
            .mirrors
            .lock()
            .expect("mirrors lock")
            .entry(key)
            .or_insert(MirrorState {
                policy: MirrorPolicy {
                    quota_bytes: row.quota_bytes,
                    priority: row.priority,
                },
                bytes,
                evicted_below: row.evicted_below,
                peers: HashSet::new(),
            });
        self.inner.register(key);
        tracing::info!(log = %key, "mirroring a log a mirrored topic lists");
        if self.started.load(Ordering::SeqCst) {
            if let Err(e) = self.inner.network.announce(log_topic(&key)).await {
                tracing::debug!(log = %key, error = %e, "announcing a log failed");
            }
            self.follow(key);
        }
        Ok(true)
    }

    /// Mirrors a room by its topic: finds the topic's logs by asking the peers announced under
    /// it, mirrors each under `policy` (its quota applies to each log on its own), answers and
    /// announces for the topic itself, and keeps asking every `lookup_interval` for new logs.
    /// Persisted (a restarted node goes on); calling it again updates the policy, of the logs
    /// found so far too (unless they are mirrored by key).
    pub async fn add_topic_mirror(
        self: &Arc<Self>,
        topic: &TopicKey,
        policy: MirrorPolicy,
    ) -> Result<TopicMirrorInfo, StoreError> {
        let id = topic.id();
        self.inner
            .store
            .set_topic_mirror(topic, policy.quota_bytes, policy.priority)
            .await?;
        // The store moved the policy of the logs the topic found; so does memory.
        let rows = self.inner.store.mirrors().await?;
        {
            let mut mirrors = self.inner.mirrors.lock().expect("mirrors lock");
            for row in rows {
                if let Some(state) = mirrors.get_mut(&row.key) {
                    state.policy = MirrorPolicy {
                        quota_bytes: row.quota_bytes,
                        priority: row.priority,
                    };
                }
            }
        }
        // Logs already held under the topic (a room this node synced before) are mirrored now.
        for tag in self.inner.store.topic_tags(&id).await? {
            self.adopt(tag.key, policy).await?;
        }
        self.inner.enforce_quotas().await?;
        if self.started.load(Ordering::SeqCst) {
            self.follow_topic(topic.clone());
        }
        list_topic_mirrors(&self.inner.store, Some(&self.inner))
            .await?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| StoreError::Corrupt(format!("topic mirror {id} vanished")))
    }

    /// Asks for `topic`'s logs in the background: at once, then every `lookup_interval` (with
    /// backoff while no peer answers), mirroring what is found under the topic mirror's stored
    /// policy, until the topic mirror is removed or the replicator shuts down.
    fn follow_topic(self: &Arc<Self>, topic: TopicKey) {
        let id = topic.id();
        let mut follows = self.topic_follows.lock().expect("topic follows lock");
        if follows.get(&id).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut stop = me.inner.stop.subscribe();
            let mut delay = me.inner.config.retry_initial;
            loop {
                let policy = me.inner.store.topic_mirrors().await.map(|rows| {
                    rows.into_iter().find(|t| t.id == id).map(|t| MirrorPolicy {
                        quota_bytes: t.quota_bytes,
                        priority: t.priority,
                    })
                });
                let answered = match policy {
                    Ok(None) => return,
                    Ok(Some(policy)) => match me.check_topic(&topic, Some(policy)).await {
                        Ok(check) => {
                            if !check.new_logs.is_empty() {
                                tracing::info!(topic = %id, new = check.new_logs.len(), "found new logs of a mirrored topic");
                            }
                            check.peers_answered > 0
                        }
                        Err(e) => {
                            tracing::debug!(topic = %id, error = %e, "asking for a topic's logs failed");
                            false
                        }
                    },
                    Err(e) => {
                        tracing::warn!(topic = %id, error = %e, "reading a topic mirror failed");
                        false
                    }
                };
                let wait = next_wait(&me.inner.config, answered, &mut delay);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        follows.insert(id, task);
    }

    /// Stops mirroring topic `id`: no more asking for its logs; every log mirrored only because
    /// it listed them is deleted (a log also mirrored by key or by another topic stays, under
    /// that); the topic is forgotten for logs not this node's own, so it is no longer announced
    /// or answered for unless the node's own logs carry it. Returns whether it was mirrored.
    pub async fn remove_topic_mirror(self: &Arc<Self>, id: &TopicId) -> Result<bool, StoreError> {
        if let Some(task) = self
            .topic_follows
            .lock()
            .expect("topic follows lock")
            .remove(id)
        {
            task.abort();
        }
        let dropped = match self.inner.store.remove_topic_mirror(id).await {
            Ok(dropped) => dropped,
            Err(e) => {
                // Nothing changed: go on following it.
                if self.started.load(Ordering::SeqCst)
                    && let Ok(Some(topic)) = self.inner.store.topic(id).await
                {
                    self.follow_topic(topic);
                }
                return Err(e);
            }
        };
        let Some(dropped) = dropped else {
            return Ok(false);
        };
        for key in &dropped {
            self.unfollow(key);
            self.inner.mirrors.lock().expect("mirrors lock").remove(key);
            self.inner
                .known
                .lock()
                .expect("known lock")
                .remove(&discovery_id(key));
        }
        self.inner
            .topic_peers
            .lock()
            .expect("topic peers lock")
            .remove(id);
        tracing::info!(topic = %id, dropped = dropped.len(), "no longer mirroring a topic");
        Ok(true)
    }

    /// Every mirrored room topic with its policy and the logs held under it, ordered by id.
    pub async fn list_topic_mirrors(&self) -> Result<Vec<TopicMirrorInfo>, StoreError> {
        list_topic_mirrors(&self.inner.store, Some(&self.inner)).await
    }

    /// Brings a room's logs up to date once, knowing only its topic (a reader catching up):
    /// asks the peers announced under the topic for its logs (retrying with backoff, three
    /// times, while none answers), keeps their tags, then syncs every log held under the topic
    /// in turn ([`Self::sync_log`]); a log no peer can serve is reported, not fatal.
    pub async fn sync_topic(
        self: &Arc<Self>,
        topic: &TopicKey,
    ) -> Result<TopicSyncReport, StoreError> {
        let id = topic.id();
        let mut delay = self.inner.config.retry_initial;
        let mut check = TopicCheck::default();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(self.inner.config.retry_max);
            }
            check = self.check_topic(topic, None).await?;
            if check.peers_answered > 0 {
                break;
            }
        }
        if check.peers_answered == 0 {
            return Err(StoreError::Network(format!(
                "no peer answered for topic {id} ({} found)",
                check.peers_found
            )));
        }
        let mut report = TopicSyncReport {
            topic: id,
            peers_found: check.peers_found,
            peers_answered: check.peers_answered,
            logs: Vec::new(),
        };
        for tag in self.inner.store.topic_tags(&id).await? {
            let synced = self.sync_log(tag.key).await;
            let length = self.inner.store.log_info(&tag.key).await?.length;
            report.logs.push(match synced {
                Ok(r) => TopicLogSync {
                    key: tag.key,
                    length,
                    entries_received: r.entries_received,
                    error: None,
                },
                Err(e) => TopicLogSync {
                    key: tag.key,
                    length,
                    entries_received: 0,
                    error: Some(kith_service::error_chain(&e)),
                },
            });
        }
        Ok(report)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Cumulative counters since this replicator was made.
    pub fn stats(&self) -> ReplicatorStats {
        let s = &self.inner.stats;
        ReplicatorStats {
            entries_sent: s.entries_sent.load(Ordering::Relaxed),
            entries_received: s.entries_received.load(Ordering::Relaxed),
            protocol_errors: s.protocol_errors.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
        }
    }

    /// Stops everything: no new sessions, running ones end (each finishes what it was sending),
    /// background tasks stop. Waits up to the configured timeout for sessions to end.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        for (_, task) in self.follows.lock().expect("follows lock").drain() {
            task.abort();
        }
        for (_, task) in self
            .topic_follows
            .lock()
            .expect("topic follows lock")
            .drain()
        {
            task.abort();
        }
        let tasks: Vec<_> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for task in tasks {
            task.abort();
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.timeout;
        while self.inner.active.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// How long a follow loop waits before looking again: the lookup interval once a peer answered
/// (resetting the backoff), else the current backoff, which doubles up to `retry_max`.
fn next_wait(config: &ReplicatorConfig, answered: bool, delay: &mut Duration) -> Duration {
    if answered {
        *delay = config.retry_initial;
        config.lookup_interval
    } else {
        let d = *delay;
        *delay = (d * 2).min(config.retry_max);
        d
    }
}
