//! One replication session over one [`PeerChannel`]: symmetric, any number of logs.
//!
//! Four tasks per session: a *writer* (encodes outgoing messages, flushes when its queue runs
//! dry, so small messages share packets), a *reader* (decodes; `Request`s go straight to the
//! server task through a queue bounded by [`MAX_PEER_REQUESTS`] — a peer with more in flight has
//! broken the protocol — everything else to the main loop), a *server* (answers requests from
//! the store, in order) and the main loop (opens logs, tracks what each side has, requests what
//! is missing with several requests in flight, stores replies with
//! [`Store::put_remote_at`], follows the store's updates). Serving and storing run at the same
//! time, so a peer pulling from us does not wait for our own writes.
//!
//! Per log, the main loop wants `[evicted_below, peer's length) ∩ peer's held − held − in
//! flight`, asks for it in requests of at most [`MAX_REQUEST_ENTRIES`] entries against the
//! root the peer advertised (revealing our held length's peaks while we are behind it, so the
//! first reply to arrive upgrades us and the others verify against the same root), and keeps up
//! to `max_in_flight` requests outstanding per log. What is held is read from the store when the
//! log opens, so a session after an interrupted one asks only for what is missing.
//!
//! Topic queries ride the same session (see [`super::wire`]): the main loop sends ours after the
//! hello and answers the peer's (at most [`MAX_SESSION_TOPIC_QUERIES`]) from the store; an
//! answer is accepted only for a query we sent, with the holder's proof, and with every tag's
//! signature valid. The session is not settled while a query of ours is unanswered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand_core::RngCore;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{broadcast, mpsc, watch};

use super::Inner;
use super::wire::{
    self, Discovery, MAX_REPLY_BYTES, MAX_REQUEST_ENTRIES, Message, VERSION, capability,
    check_capability, discovery_id,
};
use crate::backend::{LogUpdate, PutOutcome};
use crate::error::StoreError;
use crate::log::{LogKey, RangeSet, SignedRoot};
use crate::net::{PeerChannel, PeerId};
use crate::topic::{Direction, TopicId, TopicKey, TopicTag};

/// The most requests a peer may have outstanding with us in one session.
pub const MAX_PEER_REQUESTS: usize = 16;

/// The most requests we keep in flight per session (over all its logs): half of what the peer
/// accepts, so an honest requester never reaches [`MAX_PEER_REQUESTS`].
pub const MAX_SESSION_IN_FLIGHT: usize = MAX_PEER_REQUESTS / 2;

/// The most logs one session may open.
pub const MAX_SESSION_LOGS: usize = 1024;

/// The most topic queries a peer may send in one session.
pub const MAX_SESSION_TOPIC_QUERIES: usize = 64;

/// The most fork messages a peer may send per log.
const MAX_FORK_MESSAGES: u32 = 8;

/// What one session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionReport {
    pub peer: PeerId,
    /// Entries we sent in answers to the peer's requests.
    pub entries_sent: u64,
    /// Entries we received, verified and stored.
    pub entries_received: u64,
    pub bytes_received: u64,
    /// Logs whose peer's length we reached (for the peer's held entries we wanted).
    pub synced: Vec<LogKey>,
    /// The answers to our topic queries, in the order they came.
    pub topics: Vec<TopicAnswer>,
}

/// A peer's answer to one of our topic queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicAnswer {
    pub topic: TopicId,
    /// The tags of the logs it holds under the topic (each signature checked), or `None`: it
    /// does not hold the topic (or did not accept our proof; it cannot be told apart).
    pub logs: Option<Vec<TopicTag>>,
}

/// Which side of the session we are.
pub(crate) enum Role {
    /// We opened the stream, for these logs and to ask for these topics' logs. `live`: stay
    /// and follow until stopped; otherwise close once both sides have what they wanted.
    Initiator {
        logs: Vec<LogKey>,
        topics: Vec<TopicKey>,
        live: bool,
    },
    /// The peer opened it; we answer for logs we hold and pull what we lack of them.
    Acceptor,
}

struct Pending {
    discovery: Discovery,
    start: u64,
    end: u64,
    root: SignedRoot,
    upgrade_from: Option<u64>,
}

struct Chan {
    key: LogKey,
    we_opened: bool,
    they_opened: bool,
    unavailable: bool,
    local: Option<SignedRoot>,
    have: RangeSet,
    evicted_below: u64,
    forked: bool,
    peer_root: Option<SignedRoot>,
    peer_held: RangeSet,
    /// The peer's advertised root cannot be used by us right now (it is older than ours and we
    /// cannot place it, or it could not prove the upgrade); wait for its next `Have`.
    peer_stuck: bool,
    in_flight: RangeSet,
    in_flight_count: usize,
    /// The root length we last advertised.
    advertised: u64,
    forks_received: u32,
    synced_reported: bool,
    /// The peer sent its `Have` for this log.
    peer_have_seen: bool,
}

impl Chan {
    fn open_both(&self) -> bool {
        self.we_opened && self.they_opened
    }

    fn local_length(&self) -> u64 {
        self.local.map_or(0, |r| r.length())
    }

    /// What we still want from the peer (not counting what is in flight).
    fn wanted(&self) -> RangeSet {
        let Some(peer) = self.peer_root else {
            return RangeSet::new();
        };
        let mut want = RangeSet::new();
        want.insert(self.evicted_below, peer.length());
        want.intersection(&self.peer_held)
            .difference(&self.have)
            .difference(&self.in_flight)
    }

    /// Whether the peer's root is longer than ours (so we want at least the root).
    fn wants_root(&self) -> bool {
        self.peer_root
            .is_some_and(|p| p.length() > self.local_length())
    }

    /// Nothing more to do with this log in this session until something changes.
    fn settled(&self) -> bool {
        if self.unavailable || (self.forked && self.in_flight_count == 0) {
            return true;
        }
        if !self.open_both() || !self.peer_have_seen {
            return false;
        }
        self.in_flight_count == 0
            && (self.peer_stuck || (self.wanted().is_empty() && !self.wants_root()))
    }
}

/// Counters shared by the session's tasks.
#[derive(Default)]
struct Shared {
    entries_sent: AtomicU64,
    /// Requests read from the peer whose answers are not yet written to the stream: what the
    /// peer may have outstanding, and so what its answers may hold in memory, is bounded by it.
    pending_peer_requests: AtomicUsize,
    /// The sequence number (order read) of the peer's last request.
    last_request: AtomicU64,
}

enum Incoming {
    /// A message and its sequence number (the order it was read in).
    Msg(u64, Box<Message>),
    /// The peer's `Done`, with its sequence number.
    Done(u64),
    End,
    Failed(StoreError),
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    channel: PeerChannel,
    role: Role,
    mut stop: watch::Receiver<bool>,
) -> Result<SessionReport, StoreError> {
    let PeerChannel { peer, send, recv } = channel;
    let peer_hex = hex::encode(&peer[..8]);

    let shared = Arc::new(Shared::default());
    let (out_tx, out_rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(write_loop(send, out_rx, shared.clone()));
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let closed = || StoreError::Network("session writer stopped".into());
    out_tx
        .send(Message::Hello {
            version: VERSION,
            nonce,
        })
        .await
        .map_err(|_| closed())?;

    let mut recv = BufReader::with_capacity(256 * 1024, recv);
    let mut buf = Vec::new();
    let their_nonce = match tokio::time::timeout(
        inner.config.timeout,
        wire::read_message(&mut recv, &mut buf),
    )
    .await
    {
        Err(_) => return Err(StoreError::Network("no hello from peer".into())),
        Ok(Ok(Some(Message::Hello { version, nonce }))) if version == VERSION => nonce,
        Ok(Ok(Some(Message::Hello { version, .. }))) => {
            return Err(StoreError::Protocol(format!(
                "peer speaks version {version}"
            )));
        }
        Ok(Ok(Some(other))) => {
            return Err(StoreError::Protocol(format!(
                "expected hello, got {}",
                other.kind()
            )));
        }
        Ok(Ok(None)) => return Err(StoreError::Network("peer closed before hello".into())),
        Ok(Err(e)) => return Err(e),
    };

    let served: Arc<Mutex<HashMap<Discovery, LogKey>>> = Arc::default();
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Incoming>(8);
    let (req_tx, req_rx) = mpsc::channel::<Message>(MAX_PEER_REQUESTS);
    let reader = tokio::spawn(read_loop(recv, buf, ctl_tx, req_tx, shared.clone()));
    let server = tokio::spawn(serve_loop(
        inner.clone(),
        req_rx,
        out_tx.clone(),
        served.clone(),
        shared.clone(),
    ));

    let mut session = Session {
        inner: inner.clone(),
        peer,
        nonce,
        their_nonce,
        out: out_tx,
        served,
        shared: shared.clone(),
        chans: HashMap::new(),
        requests: HashMap::new(),
        next_id: 0,
        done_sent: false,
        asked: HashMap::new(),
        peer_queries: 0,
        peer_done: 0,
        last_answer: 0,
        report: SessionReport {
            peer,
            ..SessionReport::default()
        },
        last_progress: Instant::now(),
    };
    let mut updates = inner.store.subscribe();
    let (live, initiator) = match &role {
        Role::Initiator { live, .. } => (*live, true),
        Role::Acceptor => (true, false),
    };
    let result = async {
        if let Role::Initiator { logs, topics, .. } = &role {
            for topic in topics {
                session.ask(topic.clone()).await?;
            }
            for key in logs {
                session.open(*key).await?;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            session.plan().await?;
            if initiator && !live && session.finished() {
                return Ok(());
            }
            tokio::select! {
                msg = ctl_rx.recv() => match msg {
                    Some(Incoming::Msg(seq, m)) => {
                        session.last_progress = Instant::now();
                        if matches!(
                            *m,
                            Message::Open { .. }
                                | Message::Unavailable { .. }
                                | Message::Have { .. }
                                | Message::TopicLogs { .. }
                                | Message::TopicUnknown { .. }
                        ) {
                            session.last_answer = seq;
                        }
                        session.handle(*m).await?;
                    }
                    Some(Incoming::Done(seq)) => session.peer_done = seq,
                    Some(Incoming::Failed(e)) => return Err(e),
                    Some(Incoming::End) | None => {
                        // The peer finished its direction: answer what it already asked, then
                        // end ours.
                        return Ok(());
                    }
                },
                update = updates.recv() => session.on_update(update, &mut updates).await?,
                _ = tick.tick() => {
                    if session.check_timeout(initiator && !live)? {
                        // Settled, and the peer has been silent for the whole timeout without
                        // its `Done`: we have what we came for.
                        return Ok(());
                    }
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    .await;

    // Closing: the reader stops at once; the server finishes the requests it has (so an orderly
    // end leaves the peer nothing unanswered), the writer drains and finishes our direction.
    reader.abort();
    let Session {
        out, mut report, ..
    } = session;
    drop(out);
    if result.is_ok() {
        let _ = tokio::time::timeout(inner.config.timeout, server).await;
    } else {
        server.abort();
    }
    match tokio::time::timeout(inner.config.timeout, writer).await {
        Ok(Ok(Err(e))) if result.is_ok() => {
            tracing::debug!(peer = %peer_hex, error = %e, "session writer failed while closing");
        }
        _ => {}
    }
    report.entries_sent = shared.entries_sent.load(Ordering::Relaxed);
    inner
        .stats
        .entries_sent
        .fetch_add(report.entries_sent, Ordering::Relaxed);
    match &result {
        Ok(()) => tracing::debug!(
            peer = %peer_hex,
            sent = report.entries_sent,
            received = report.entries_received,
            "store session ended"
        ),
        Err(e @ StoreError::Protocol(_)) => {
            inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %peer_hex, error = %e, "peer broke the store protocol; session cut");
        }
        Err(e) => tracing::debug!(peer = %peer_hex, error = %e, "store session failed"),
    }
    result.map(|()| report)
}

async fn write_loop(
    send: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
) -> Result<(), StoreError> {
    let mut send = BufWriter::with_capacity(256 * 1024, send);
    while let Some(msg) = rx.recv().await {
        wire::write_message(&mut send, &msg).await?;
        if matches!(msg, Message::Data { .. } | Message::NoData { .. }) {
            shared.pending_peer_requests.fetch_sub(1, Ordering::SeqCst);
        }
        // Flush only when nothing else is queued: small messages share writes.
        if rx.is_empty() {
            send.flush()
                .await
                .map_err(|e| StoreError::Network(format!("write: {e}")))?;
        }
    }
    send.flush()
        .await
        .map_err(|e| StoreError::Network(format!("write: {e}")))?;
    send.shutdown()
        .await
        .map_err(|e| StoreError::Network(format!("finish: {e}")))
}

async fn read_loop(
    mut recv: BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    mut buf: Vec<u8>,
    ctl: mpsc::Sender<Incoming>,
    requests: mpsc::Sender<Message>,
    shared: Arc<Shared>,
) {
    let mut seq = 0u64;
    loop {
        seq += 1;
        let msg = match wire::read_message(&mut recv, &mut buf).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                let _ = ctl.send(Incoming::End).await;
                return;
            }
            Err(e) => {
                let _ = ctl.send(Incoming::Failed(e)).await;
                return;
            }
        };
        match msg {
            Message::Request { .. } => {
                shared.last_request.store(seq, Ordering::SeqCst);
                let outstanding = shared.pending_peer_requests.fetch_add(1, Ordering::SeqCst) + 1;
                if outstanding > MAX_PEER_REQUESTS || requests.try_send(msg).is_err() {
                    let _ = ctl
                        .send(Incoming::Failed(StoreError::Protocol(format!(
                            "more than {MAX_PEER_REQUESTS} requests in flight"
                        ))))
                        .await;
                    return;
                }
            }
            Message::Done => {
                // Through the main loop, so it is seen after everything sent before it.
                if ctl.send(Incoming::Done(seq)).await.is_err() {
                    return;
                }
            }
            other => {
                if ctl.send(Incoming::Msg(seq, Box::new(other))).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn serve_loop(
    inner: Arc<Inner>,
    mut requests: mpsc::Receiver<Message>,
    out: mpsc::Sender<Message>,
    served: Arc<Mutex<HashMap<Discovery, LogKey>>>,
    shared: Arc<Shared>,
) -> Result<(), StoreError> {
    while let Some(msg) = requests.recv().await {
        let Message::Request {
            discovery,
            id,
            length,
            start,
            end,
            upgrade_from,
        } = msg
        else {
            continue;
        };
        let key = served.lock().expect("served lock").get(&discovery).copied();
        let reply = match key {
            // Asked before the log was open (before our `Have`): nothing to answer with.
            None => Message::NoData { discovery, id },
            Some(key) => match inner
                .store
                .get_range_with_proof_at(&key, start, end, length, upgrade_from, MAX_REPLY_BYTES)
                .await
            {
                Ok((entries, proof)) => {
                    shared
                        .entries_sent
                        .fetch_add(entries.len() as u64, Ordering::Relaxed);
                    Message::Data {
                        discovery,
                        id,
                        start,
                        entries,
                        proof,
                    }
                }
                Err(
                    StoreError::OutOfRange
                    | StoreError::NotHeld { .. }
                    | StoreError::EntryNotHeld { .. }
                    | StoreError::LogNotFound { .. },
                ) => Message::NoData { discovery, id },
                Err(e) => {
                    tracing::warn!(log = %key, error = %e, "serving a replication request failed");
                    return Err(e);
                }
            },
        };
        if out.send(reply).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

struct Session {
    inner: Arc<Inner>,
    peer: PeerId,
    nonce: [u8; 32],
    their_nonce: [u8; 32],
    out: mpsc::Sender<Message>,
    served: Arc<Mutex<HashMap<Discovery, LogKey>>>,
    shared: Arc<Shared>,
    chans: HashMap<Discovery, Chan>,
    requests: HashMap<u32, Pending>,
    next_id: u32,
    done_sent: bool,
    /// Our topic queries not answered yet.
    asked: HashMap<TopicId, TopicKey>,
    /// How many topic queries the peer sent.
    peer_queries: usize,
    /// The sequence number of the peer's last `Done` (0: none yet).
    peer_done: u64,
    /// The sequence number of the peer's last `Open`, `Unavailable` or `Have`.
    last_answer: u64,
    report: SessionReport,
    last_progress: Instant,
}

fn protocol(msg: String) -> StoreError {
    StoreError::Protocol(msg)
}

impl Session {
    async fn send(&self, msg: Message) -> Result<(), StoreError> {
        self.out
            .send(msg)
            .await
            .map_err(|_| StoreError::Network("session writer stopped".into()))
    }

    /// Our state of `key`'s log, read from the store.
    async fn load(&self, key: LogKey) -> Result<Chan, StoreError> {
        let info = self.inner.store.create_log(&key).await?;
        let have = self.inner.store.held(&key).await?;
        Ok(Chan {
            key,
            we_opened: false,
            they_opened: false,
            unavailable: false,
            local: info.root,
            have,
            evicted_below: self.inner.evicted_below(&key),
            forked: info.forked,
            peer_root: None,
            peer_held: RangeSet::new(),
            peer_stuck: false,
            in_flight: RangeSet::new(),
            in_flight_count: 0,
            advertised: 0,
            forks_received: 0,
            synced_reported: false,
            peer_have_seen: false,
        })
    }

    /// Initiator: opens `key`'s log.
    async fn open(&mut self, key: LogKey) -> Result<(), StoreError> {
        let discovery = discovery_id(&key);
        if self.chans.contains_key(&discovery) {
            return Ok(());
        }
        self.inner.register(key);
        let mut chan = self.load(key).await?;
        chan.we_opened = true;
        self.chans.insert(discovery, chan);
        self.send(Message::Open {
            discovery,
            capability: capability(
                &key,
                &self.their_nonce,
                &self.inner.local_peer(),
                &self.peer,
            ),
        })
        .await
    }

    /// Asks the peer for the logs it holds under `topic`.
    async fn ask(&mut self, topic: TopicKey) -> Result<(), StoreError> {
        let id = topic.id();
        if self.asked.contains_key(&id) {
            return Ok(());
        }
        let capability = topic.capability(
            Direction::Query,
            &self.their_nonce,
            &self.inner.local_peer(),
            &self.peer,
        );
        self.asked.insert(id, topic);
        self.send(Message::TopicQuery {
            topic: id,
            capability,
        })
        .await
    }

    /// The peer asks for a topic's logs: answered only if we hold the topic and its proof is
    /// right; otherwise `TopicUnknown`, the same either way.
    async fn on_topic_query(
        &mut self,
        topic: TopicId,
        capability: [u8; 32],
    ) -> Result<(), StoreError> {
        self.peer_queries += 1;
        if self.peer_queries > MAX_SESSION_TOPIC_QUERIES {
            return Err(protocol("too many topic queries".into()));
        }
        // The peer hears from us again once we are settled.
        self.done_sent = false;
        let me = self.inner.local_peer();
        let proven = match self.inner.store.topic(&topic).await? {
            Some(key) if key.check(&capability, Direction::Query, &self.nonce, &self.peer, &me) => {
                Some(key)
            }
            _ => None,
        };
        let Some(key) = proven else {
            tracing::debug!(peer = %hex::encode(&self.peer[..8]), "topic query not answered");
            return self.send(Message::TopicUnknown { topic }).await;
        };
        let logs = self.inner.store.topic_tags(&topic).await?;
        self.send(Message::TopicLogs {
            topic,
            capability: key.capability(Direction::Answer, &self.their_nonce, &me, &self.peer),
            logs,
        })
        .await
    }

    /// The peer answers one of our topic queries.
    fn on_topic_answer(
        &mut self,
        topic: TopicId,
        answer: Option<([u8; 32], Vec<TopicTag>)>,
    ) -> Result<(), StoreError> {
        let key = self
            .asked
            .remove(&topic)
            .ok_or_else(|| protocol("topic answer to no query".into()))?;
        let logs = match answer {
            None => None,
            Some((capability, logs)) => {
                let me = self.inner.local_peer();
                if !key.check(&capability, Direction::Answer, &self.nonce, &self.peer, &me) {
                    return Err(protocol("bad capability in topic answer".into()));
                }
                for tag in &logs {
                    tag.verify(&topic).map_err(|_| {
                        protocol(format!(
                            "topic answer lists log {} without its writer's tag",
                            tag.key
                        ))
                    })?;
                }
                Some(logs)
            }
        };
        self.report.topics.push(TopicAnswer { topic, logs });
        Ok(())
    }

    async fn handle(&mut self, msg: Message) -> Result<(), StoreError> {
        match msg {
            Message::TopicQuery { topic, capability } => {
                self.on_topic_query(topic, capability).await
            }
            Message::TopicLogs {
                topic,
                capability,
                logs,
            } => self.on_topic_answer(topic, Some((capability, logs))),
            Message::TopicUnknown { topic } => self.on_topic_answer(topic, None),
            Message::Hello { .. } => Err(protocol("a second hello".into())),
            Message::Open {
                discovery,
                capability: cap,
            } => self.on_open(discovery, cap).await,
            Message::Unavailable { discovery } => {
                let chan = self
                    .chans
                    .get_mut(&discovery)
                    .filter(|c| c.we_opened && !c.they_opened && !c.unavailable)
                    .ok_or_else(|| protocol("unavailable for a log we did not open".into()))?;
                chan.unavailable = true;
                tracing::debug!(log = %chan.key, "peer does not hold the log");
                Ok(())
            }
            Message::Have {
                discovery,
                root,
                held,
            } => self.on_have(discovery, root, held).await,
            Message::Data {
                discovery,
                id,
                start,
                entries,
                proof,
            } => self.on_data(discovery, id, start, entries, proof).await,
            Message::NoData { discovery, id } => {
                let pending = self.take_pending(discovery, id)?;
                let chan = self.chans.get_mut(&discovery).expect("pending log is open");
                chan.in_flight.remove(pending.start, pending.end);
                chan.in_flight_count -= 1;
                if pending.start == pending.end {
                    chan.peer_stuck = true;
                } else {
                    // The peer cannot serve these after all (evicted since it said so).
                    chan.peer_held.remove(pending.start, pending.end);
                }
                Ok(())
            }
            Message::Fork {
                discovery,
                evidence,
            } => {
                let chan = self
                    .chans
                    .get_mut(&discovery)
                    .filter(|c| c.open_both())
                    .ok_or_else(|| protocol("fork evidence for a log not open".into()))?;
                if evidence.key() != chan.key {
                    return Err(protocol(format!(
                        "fork evidence for {} on log {}",
                        evidence.key(),
                        chan.key
                    )));
                }
                chan.forks_received += 1;
                if chan.forks_received > MAX_FORK_MESSAGES {
                    return Err(protocol("too many fork messages".into()));
                }
                // Verified when decoded; verified again (and kept) by the store.
                self.inner.store.add_fork_evidence(evidence).await?;
                tracing::warn!(log = %chan.key, "peer sent evidence that the log's writer forked it");
                chan.forked = true;
                Ok(())
            }
            Message::Request { .. } | Message::Done => Ok(()), // handled by the reader
        }
    }

    async fn on_open(&mut self, discovery: Discovery, cap: [u8; 32]) -> Result<(), StoreError> {
        if let Some(chan) = self.chans.get_mut(&discovery) {
            if chan.they_opened || !chan.we_opened || chan.unavailable {
                return Err(protocol("log opened twice".into()));
            }
            if !check_capability(
                &chan.key,
                &cap,
                &self.nonce,
                &self.peer,
                &self.inner.local_peer(),
            ) {
                return Err(protocol("bad capability in open".into()));
            }
            chan.they_opened = true;
            return self.opened(discovery).await;
        }
        if self.chans.len() >= MAX_SESSION_LOGS {
            return Err(protocol("too many logs opened".into()));
        }
        let Some(key) = self.inner.find(&discovery).await? else {
            // Not a log we hold: say so, and learn nothing more. (It hears from us again once
            // we are settled.)
            self.done_sent = false;
            return self.send(Message::Unavailable { discovery }).await;
        };
        if !check_capability(
            &key,
            &cap,
            &self.nonce,
            &self.peer,
            &self.inner.local_peer(),
        ) {
            return Err(protocol("bad capability in open".into()));
        }
        let mut chan = self.load(key).await?;
        chan.we_opened = true;
        chan.they_opened = true;
        self.chans.insert(discovery, chan);
        self.send(Message::Open {
            discovery,
            capability: capability(
                &key,
                &self.their_nonce,
                &self.inner.local_peer(),
                &self.peer,
            ),
        })
        .await?;
        self.opened(discovery).await
    }

    /// Both sides opened the log: serve it and tell the peer what we have.
    async fn opened(&mut self, discovery: Discovery) -> Result<(), StoreError> {
        let chan = self.chans.get(&discovery).expect("opened log");
        let key = chan.key;
        self.served
            .lock()
            .expect("served lock")
            .insert(discovery, key);
        // Evidence first: a peer told the log is forked asks for nothing.
        if self.chans[&discovery].forked {
            for evidence in self
                .inner
                .store
                .fork_evidence(&key)
                .await?
                .into_iter()
                .take(4)
            {
                self.send(Message::Fork {
                    discovery,
                    evidence,
                })
                .await?;
            }
        }
        self.advertise(discovery).await
    }

    async fn advertise(&mut self, discovery: Discovery) -> Result<(), StoreError> {
        // The peer learns something new: it hears from us again once we are settled.
        self.done_sent = false;
        let chan = self.chans.get_mut(&discovery).expect("advertised log");
        chan.advertised = chan.local_length();
        let msg = Message::Have {
            discovery,
            root: chan.local,
            held: chan.have.clone(),
        };
        self.send(msg).await
    }

    async fn on_have(
        &mut self,
        discovery: Discovery,
        root: Option<SignedRoot>,
        held: RangeSet,
    ) -> Result<(), StoreError> {
        let chan = self
            .chans
            .get_mut(&discovery)
            .filter(|c| c.open_both())
            .ok_or_else(|| protocol("have for a log not open".into()))?;
        if let Some(r) = root
            && r.key() != chan.key
        {
            return Err(protocol(format!(
                "have for log {} carries a root of {}",
                chan.key,
                r.key()
            )));
        }
        if let (Some(theirs), Some(ours)) = (root, chan.local)
            && theirs.length() == ours.length()
            && theirs.hash() != ours.hash()
            && !chan.forked
        {
            // In a canonical order, so both sides (each finding it) keep the same evidence.
            let (a, b) = if ours.hash() < theirs.hash() {
                (ours, theirs)
            } else {
                (theirs, ours)
            };
            let evidence = crate::log::ForkEvidence::SameLength { a, b };
            self.inner.store.add_fork_evidence(evidence.clone()).await?;
            chan.forked = true;
            tracing::warn!(log = %chan.key, "peer holds a different root of the same length: log forked");
            self.send(Message::Fork {
                discovery,
                evidence,
            })
            .await?;
            return Ok(());
        }
        chan.peer_root = root;
        chan.peer_held = held;
        chan.peer_stuck = false;
        chan.peer_have_seen = true;
        chan.synced_reported = false;
        self.inner.note_peer(&chan.key, self.peer);
        Ok(())
    }

    fn take_pending(&mut self, discovery: Discovery, id: u32) -> Result<Pending, StoreError> {
        let pending = self
            .requests
            .remove(&id)
            .ok_or_else(|| protocol(format!("reply to no request ({id})")))?;
        if pending.discovery != discovery {
            return Err(protocol("reply names another log than its request".into()));
        }
        Ok(pending)
    }

    async fn on_data(
        &mut self,
        discovery: Discovery,
        id: u32,
        start: u64,
        entries: Vec<Vec<u8>>,
        proof: crate::log::Proof,
    ) -> Result<(), StoreError> {
        let pending = self.take_pending(discovery, id)?;
        let n = entries.len() as u64;
        if start != pending.start
            || n > pending.end - pending.start
            || (n == 0) != (pending.start == pending.end)
        {
            return Err(protocol(format!(
                "data {start}+{n} does not answer request {}..{}",
                pending.start, pending.end
            )));
        }
        let chan = self.chans.get_mut(&discovery).expect("pending log is open");
        chan.in_flight.remove(pending.start, pending.end);
        chan.in_flight_count -= 1;
        if chan.forked || chan.unavailable {
            return Ok(());
        }
        if self.inner.known(&discovery).is_none() {
            // The log was dropped here meanwhile (a removed mirror): stop replicating it.
            chan.unavailable = true;
            return Ok(());
        }
        let key = chan.key;
        let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
        let outcome = self
            .inner
            .store
            .put_remote_at(&pending.root, start, &entries, &proof, pending.upgrade_from)
            .await;
        match outcome {
            Ok(PutOutcome::Stored { root, .. }) => {
                let chan = self.chans.get_mut(&discovery).expect("open");
                chan.have.insert(start, start + n);
                if chan.local.is_none_or(|l| root.length() > l.length()) {
                    chan.local = Some(root);
                }
                self.report.entries_received += n;
                self.report.bytes_received += bytes;
                self.inner
                    .stats
                    .entries_received
                    .fetch_add(n, Ordering::Relaxed);
                if let Some(below) = self.inner.after_store(&key, bytes).await? {
                    let chan = self.chans.get_mut(&discovery).expect("open");
                    chan.evicted_below = chan.evicted_below.max(below);
                    chan.have.remove(0, below);
                }
                Ok(())
            }
            Ok(PutOutcome::Forked(evidence)) => {
                self.chans.get_mut(&discovery).expect("open").forked = true;
                self.send(Message::Fork {
                    discovery,
                    evidence,
                })
                .await
            }
            Err(StoreError::StaleRoot { .. } | StoreError::Conflict { .. }) => {
                // Our held root moved since we asked (another peer, or our writer): not the
                // peer's fault. Re-read our state and ask again.
                let fresh = self.load(key).await?;
                let chan = self.chans.get_mut(&discovery).expect("open");
                chan.local = fresh.local;
                chan.have = fresh.have;
                chan.forked = fresh.forked;
                if chan
                    .peer_root
                    .is_some_and(|p| p.length() <= chan.local_length())
                {
                    chan.peer_stuck = !chan.wanted().is_empty();
                }
                Ok(())
            }
            Err(StoreError::Forked { .. }) => {
                self.chans.get_mut(&discovery).expect("open").forked = true;
                Ok(())
            }
            Err(
                e @ (StoreError::BadProof
                | StoreError::BadSignature
                | StoreError::EntryTooLarge { .. }
                | StoreError::BatchTooLarge { .. }
                | StoreError::OutOfRange
                | StoreError::Malformed(_)
                | StoreError::WrongLog { .. }),
            ) => Err(protocol(format!(
                "entries {start}..{} of log {key} fail verification: {e}",
                start + n
            ))),
            Err(e) => Err(e),
        }
    }

    /// Our store changed: tell the peer about longer roots of open logs.
    async fn on_update(
        &mut self,
        first: Result<LogUpdate, broadcast::error::RecvError>,
        updates: &mut broadcast::Receiver<LogUpdate>,
    ) -> Result<(), StoreError> {
        let mut changed: Vec<Discovery> = Vec::new();
        let mut lagged = false;
        let mut next = Some(first);
        while let Some(update) = next.take() {
            match update {
                Ok(u) => {
                    let d = discovery_id(&u.key);
                    if let Some(chan) = self.chans.get_mut(&d) {
                        chan.have.insert(u.start.max(chan.evicted_below), u.end);
                        if u.length > chan.advertised && !changed.contains(&d) {
                            changed.push(d);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => lagged = true,
                Err(broadcast::error::RecvError::Closed) => {}
            }
            next = updates.try_recv().ok().map(Ok);
        }
        if lagged {
            changed = self.chans.keys().copied().collect();
        }
        for d in changed {
            let key = self.chans[&d].key;
            if lagged {
                // Missed updates: re-read everything about the log.
                let fresh = self.load(key).await?;
                let chan = self.chans.get_mut(&d).expect("open");
                chan.have = fresh.have;
                chan.forked |= fresh.forked;
            }
            // The held ranges were kept up to date from the updates; the root is one row.
            let root = self.inner.store.root(&key).await?;
            let chan = self.chans.get_mut(&d).expect("open");
            if root.is_some_and(|r| r.length() > chan.local_length()) {
                chan.local = root;
            }
            if chan.open_both() && chan.local_length() > chan.advertised {
                self.advertise(d).await?;
            }
        }
        Ok(())
    }

    /// Sends the requests we can, and `Done` when there is nothing left to ask for.
    async fn plan(&mut self) -> Result<(), StoreError> {
        let max = self.inner.config.max_in_flight;
        let mut budget = MAX_SESSION_IN_FLIGHT.saturating_sub(self.requests.len());
        let mut to_send = Vec::new();
        for (d, chan) in self.chans.iter_mut() {
            if !chan.open_both() || chan.forked || chan.peer_stuck || chan.unavailable {
                continue;
            }
            let Some(peer_root) = chan.peer_root else {
                continue;
            };
            let length = peer_root.length();
            let local = chan.local_length();
            let upgrade_from = (local < length).then_some(local);
            let want = chan.wanted();
            'ranges: for (s, e) in want.iter() {
                let mut at = s;
                while at < e {
                    if chan.in_flight_count >= max || budget == 0 {
                        break 'ranges;
                    }
                    budget -= 1;
                    let to = (at + MAX_REQUEST_ENTRIES).min(e);
                    to_send.push((*d, at, to, peer_root, upgrade_from));
                    chan.in_flight.insert(at, to);
                    chan.in_flight_count += 1;
                    at = to;
                }
            }
            if want.is_empty() && chan.in_flight_count == 0 && upgrade_from.is_some() && budget > 0
            {
                budget -= 1;
                // Nothing we want below its length, but its root is newer: take the root.
                to_send.push((*d, local, local, peer_root, upgrade_from));
                chan.in_flight_count += 1;
            }
        }
        for (discovery, start, end, root, upgrade_from) in to_send {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            self.requests.insert(
                id,
                Pending {
                    discovery,
                    start,
                    end,
                    root,
                    upgrade_from,
                },
            );
            self.done_sent = false;
            self.send(Message::Request {
                discovery,
                id,
                length: root.length(),
                start,
                end,
                upgrade_from,
            })
            .await?;
        }
        // Logs that reached the peer's length.
        for chan in self.chans.values_mut() {
            if !chan.synced_reported && chan.peer_root.is_some() && chan.settled() && !chan.forked {
                chan.synced_reported = true;
                if !self.report.synced.contains(&chan.key) {
                    self.report.synced.push(chan.key);
                }
                self.inner.synced(&chan.key).await?;
            }
        }
        if !self.done_sent && self.settled() {
            self.done_sent = true;
            self.send(Message::Done).await?;
        }
        Ok(())
    }

    fn settled(&self) -> bool {
        self.asked.is_empty() && self.chans.values().all(Chan::settled)
    }

    /// An initiator that is not following: both sides have what they wanted.
    fn finished(&self) -> bool {
        // The peer's last `Done` came after its last request and after its last word about the
        // logs (so it had seen ours and wanted nothing more), and we answered everything.
        self.settled()
            && self.peer_done > self.shared.last_request.load(Ordering::SeqCst)
            && self.peer_done > self.last_answer
            && self.shared.pending_peer_requests.load(Ordering::SeqCst) == 0
    }

    /// A peer that stops answering what we wait for is given up on. `Ok(true)`: a one-shot
    /// session is settled and the peer silent for the whole timeout (it owes us only its
    /// `Done`): end it as done.
    fn check_timeout(&self, one_shot: bool) -> Result<bool, StoreError> {
        let waiting = !self.requests.is_empty()
            || !self.asked.is_empty()
            || self
                .chans
                .values()
                .any(|c| c.we_opened && !c.they_opened && !c.unavailable);
        let silent = self.last_progress.elapsed() > self.inner.config.timeout;
        if waiting && silent {
            return Err(StoreError::Network(format!(
                "peer sent nothing for {:?}",
                self.inner.config.timeout
            )));
        }
        Ok(one_shot && silent && self.settled())
    }
}
