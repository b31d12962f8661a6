//! The store service in-process: [`StoreService`] implements [`StoreApi`] over a [`Store`], the
//! network (replication, mirrors, files and mailboxes between peers) and the node's keys.
//!
//! Keys stay with the identity service: the store asks it (through [`NodeKeys`], which the
//! `kith` binary implements over the identity API) for the delegated key of a scope —
//! `store/log/<name>` for a writer log, `store/mailbox` for the node's mailbox — and keeps it in
//! memory only.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use bytes::Bytes;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::Store;
use crate::api::*;
use crate::backend::{LogInfo, VerifyReport};
use crate::error::StoreError;
use crate::files::{self, BLOCK_BYTES, FetchProgress, FileId, FileInfo};
use crate::log::{Ed25519Signer, LogKey, MAX_BATCH_ENTRIES};
use crate::mailbox::{self, Deposited, MAILBOX_ALPN, MailboxKey};
use crate::net::{Network, PeerId, file_topic};
use crate::replicate::{
    self, MirrorInfo, MirrorPolicy, Replicator, ReplicatorConfig, SyncReport, TopicMirrorInfo,
    TopicSyncReport,
};
use crate::topic::{RoomTopic, TopicId, TopicTag};

/// Where the store gets its keys: the identity service's delegated keys, by scope.
#[async_trait]
pub trait NodeKeys: Send + Sync + 'static {
    /// The secret of the delegated key for `scope` (stable for this device and scope).
    async fn delegated_secret(&self, scope: &str) -> Result<Zeroizing<[u8; 32]>, StoreError>;
}

/// How the service runs.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of mailbox records this node keeps for others, at most.
    pub mailbox_quota: u64,
    /// How often expired mailbox records are removed.
    pub expire_interval: Duration,
    /// Incoming protocol streams served at once, at most.
    pub max_incoming: usize,
    /// How long one incoming mailbox request may take.
    pub request_timeout: Duration,
    /// Entry bytes held for all mirrored logs together, at most (`None`: no total quota).
    pub mirror_quota: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mailbox_quota: mailbox::DEFAULT_TOTAL_QUOTA,
            expire_interval: Duration::from_secs(600),
            max_incoming: 64,
            request_timeout: Duration::from_secs(30),
            mirror_quota: None,
        }
    }
}

/// The store service.
pub struct StoreService {
    store: Arc<Store>,
    keys: Arc<dyn NodeKeys>,
    network: Option<Arc<dyn Network>>,
    config: StoreConfig,
    signers: tokio::sync::Mutex<HashMap<String, Arc<Ed25519Signer>>>,
    mailbox_owner: OnceCell<SigningKey>,
    replicator: Option<Arc<Replicator>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for StoreService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreService")
            .field("store", &self.store)
            .field("network", &self.network.is_some())
            .finish_non_exhaustive()
    }
}

impl StoreService {
    /// Starts the service. With a network it replicates (serves `kith/store/1`, announces and
    /// follows its logs and mirrors), serves files (`kith/file/1`) and mailboxes
    /// (`kith/mailbox/1`); in any case it expires mailbox records in the background.
    pub async fn start(
        store: Arc<Store>,
        keys: Arc<dyn NodeKeys>,
        network: Option<Arc<dyn Network>>,
        config: StoreConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let replicator = match &network {
            Some(network) => {
                let config = ReplicatorConfig {
                    total_quota_bytes: config.mirror_quota,
                    ..ReplicatorConfig::default()
                };
                let replicator = Replicator::new(store.clone(), network.clone(), config);
                replicator.start().await?;
                Some(replicator)
            }
            None => None,
        };
        let service = Arc::new(StoreService {
            store,
            keys,
            network,
            config,
            signers: Default::default(),
            mailbox_owner: OnceCell::new(),
            replicator,
            tasks: Mutex::default(),
        });
        let mut tasks = Vec::new();
        if let Some(network) = &service.network {
            let incoming = network.listen(files::ALPN).await?;
            tasks.push(tokio::spawn(serve_files(
                service.store.clone(),
                incoming,
                service.config.max_incoming,
            )));
            let incoming = network.listen(MAILBOX_ALPN).await?;
            tasks.push(tokio::spawn(serve_mailboxes(
                service.store.clone(),
                incoming,
                network.local_peer(),
                service.config.clone(),
            )));
        }
        tasks.push(tokio::spawn(housekeeping(
            service.store.clone(),
            service.config.expire_interval,
        )));
        *service.tasks.lock().unwrap() = tasks;
        Ok(service)
    }

    /// The database.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The network, when the service has one.
    pub fn network(&self) -> Option<&Arc<dyn Network>> {
        self.network.as_ref()
    }

    /// Stops serving and closes the database.
    pub async fn shutdown(&self) {
        if let Some(replicator) = &self.replicator {
            replicator.shutdown().await;
        }
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.store.close().await;
    }

    /// The replicator, when the service has a network.
    pub fn replicator(&self) -> Option<&Arc<Replicator>> {
        self.replicator.as_ref()
    }

    fn replicator_for(&self, what: &str) -> Result<&Arc<Replicator>> {
        self.replicator.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "{what} needs the transport; this store runs without one"
            ))
        })
    }

    /// Announces that this node holds a file (best effort).
    async fn announce_file(&self, id: &FileId) {
        if let Some(network) = &self.network
            && let Err(error) = network.announce(file_topic(id)).await
        {
            tracing::debug!(file = %id, %error, "announcing a file failed");
        }
    }

    /// The signer of this node's writer log `name`.
    pub async fn writer(&self, name: &str) -> Result<Arc<Ed25519Signer>> {
        check_log_name(name)?;
        let mut signers = self.signers.lock().await;
        if let Some(signer) = signers.get(name) {
            return Ok(signer.clone());
        }
        let secret = self.keys.delegated_secret(&log_scope(name)).await?;
        let signer = Arc::new(Ed25519Signer::from_seed(*secret));
        signers.insert(name.to_string(), signer.clone());
        Ok(signer)
    }

    async fn mailbox_owner(&self) -> Result<&SigningKey> {
        self.mailbox_owner
            .get_or_try_init(|| async {
                let secret = self.keys.delegated_secret(MAILBOX_SCOPE).await?;
                Ok::<_, ApiError>(SigningKey::from_bytes(&secret))
            })
            .await
    }

    fn network_for(&self, what: &str) -> Result<&Arc<dyn Network>> {
        self.network.as_ref().ok_or_else(|| {
            ApiError::FailedPrecondition(format!(
                "{what} needs the transport; this store runs without one"
            ))
        })
    }
}

/// Serves mailbox requests from peers, a bounded number at once, each bounded in time.
async fn serve_mailboxes(
    store: Arc<Store>,
    mut incoming: crate::net::Incoming,
    me: PeerId,
    config: StoreConfig,
) {
    let slots = Arc::new(Semaphore::new(config.max_incoming));
    while let Some(channel) = incoming.recv().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %hex::encode(channel.peer), "mailbox request dropped: too many at once");
            continue;
        };
        let store = store.clone();
        let (quota, timeout) = (config.mailbox_quota, config.request_timeout);
        tokio::spawn(async move {
            let peer = channel.peer;
            match tokio::time::timeout(timeout, mailbox::serve(&store, channel, me, quota)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(peer = %hex::encode(peer), %error, "mailbox request failed")
                }
                Err(_) => tracing::debug!(peer = %hex::encode(peer), "mailbox request timed out"),
            }
            drop(permit);
        });
    }
}

/// Serves file requests from peers, a bounded number at once.
async fn serve_files(store: Arc<Store>, mut incoming: crate::net::Incoming, max: usize) {
    let slots = Arc::new(Semaphore::new(max));
    while let Some(channel) = incoming.recv().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %hex::encode(channel.peer), "file request dropped: too many at once");
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let peer = channel.peer;
            if let Err(error) = files::serve(&store, channel).await {
                tracing::debug!(peer = %hex::encode(peer), %error, "serving a file failed");
            }
            drop(permit);
        });
    }
}

/// Every `every`: removes expired mailbox records and imports that never finished.
async fn housekeeping(store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match store.mailbox_expire(mailbox::unix_now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "expired mailbox records removed"),
            Err(error) => tracing::warn!(%error, "removing expired mailbox records failed"),
        }
        if let Err(error) = store
            .sweep_stale_imports(files::store::stale_import_cutoff())
            .await
        {
            tracing::warn!(%error, "removing imports that never finished failed");
        }
    }
}

#[async_trait]
impl StoreApi for StoreService {
    async fn status(&self) -> Result<StoreStatus> {
        Ok(StoreStatus {
            stats: self.store.stats().await?,
            mailboxes: self.store.mailbox_stats().await?,
        })
    }

    async fn append(&self, name: String, entries: Vec<Vec<u8>>) -> Result<LogInfo> {
        if entries.is_empty() {
            return Err(ApiError::InvalidArgument("nothing to append".into()));
        }
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(StoreError::BatchTooLarge {
                count: entries.len(),
            }
            .into());
        }
        let signer = self.writer(&name).await?;
        self.store.append(signer.as_ref(), &entries).await?;
        Ok(self.store.log_info(&signer.log_key()).await?)
    }

    async fn writer_log(&self, name: String) -> Result<LogInfo> {
        let signer = self.writer(&name).await?;
        Ok(self.store.create_log(&signer.log_key()).await?)
    }

    async fn get_entries(&self, key: LogKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>> {
        Ok(self.store.get_range(&key, start, end).await?)
    }

    async fn list_logs(&self) -> Result<Vec<LogInfo>> {
        Ok(self.store.list_logs().await?)
    }

    async fn get_log(&self, key: LogKey) -> Result<LogInfo> {
        Ok(self.store.log_info(&key).await?)
    }

    async fn verify_log(&self, key: LogKey) -> Result<VerifyReport> {
        Ok(self.store.verify_log(&key).await?)
    }

    async fn mailbox_put(
        &self,
        peer: Option<PeerId>,
        mailbox: MailboxKey,
        record: Vec<u8>,
        ttl_seconds: u64,
    ) -> Result<Deposited> {
        match peer {
            Some(peer) => {
                let network = self.network_for("depositing at a peer")?;
                Ok(
                    mailbox::deposit(network.as_ref(), peer, &mailbox, &record, ttl_seconds)
                        .await?,
                )
            }
            None => {
                let me = self
                    .network
                    .as_ref()
                    .map(|n| n.local_peer())
                    .unwrap_or([0; 32]);
                Ok(self
                    .store
                    .mailbox_put(
                        &mailbox,
                        &me,
                        &record,
                        ttl_seconds,
                        mailbox::unix_now(),
                        self.config.mailbox_quota,
                    )
                    .await?)
            }
        }
    }

    async fn mailbox_fetch(&self, peer: Option<PeerId>, ack: bool) -> Result<Vec<MailboxRecord>> {
        let owner = self.mailbox_owner().await?;
        let key = MailboxKey::of(owner);
        match peer {
            Some(peer) => {
                let network = self.network_for("fetching from a peer")?;
                let records = mailbox::fetch(network.as_ref(), peer, owner).await?;
                if ack && !records.is_empty() {
                    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
                    mailbox::ack(network.as_ref(), peer, owner, &ids).await?;
                }
                Ok(records)
            }
            None => {
                let records = self
                    .store
                    .mailbox_fetch(&key, mailbox::unix_now(), mailbox::MAX_FETCH_RECORDS)
                    .await?;
                if ack && !records.is_empty() {
                    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
                    self.store.mailbox_ack(&key, &ids).await?;
                }
                Ok(records)
            }
        }
    }

    async fn mailbox_key(&self) -> Result<MailboxKey> {
        Ok(MailboxKey::of(self.mailbox_owner().await?))
    }

    async fn sync_log(&self, key: LogKey, peer: Option<PeerId>) -> Result<SyncReport> {
        let replicator = self.replicator_for("syncing a log")?;
        match peer {
            None => Ok(replicator.sync_log(key).await?),
            Some(peer) => {
                let network = self.network_for("syncing a log")?;
                self.store.create_log(&key).await?;
                let channel = network.open(peer, replicate::ALPN).await?;
                let session = replicator.replicate(channel, &[key], false).await?;
                Ok(SyncReport {
                    peers_found: 1,
                    peers_synced: 1,
                    entries_received: session.entries_received,
                    length: self.store.log_info(&key).await?.length,
                })
            }
        }
    }

    async fn add_mirror(&self, key: LogKey, policy: MirrorPolicy) -> Result<MirrorInfo> {
        Ok(self
            .replicator_for("mirroring")?
            .add_mirror(key, policy)
            .await?)
    }

    async fn remove_mirror(&self, key: LogKey) -> Result<bool> {
        Ok(self
            .replicator_for("mirroring")?
            .remove_mirror(&key)
            .await?)
    }

    async fn list_mirrors(&self) -> Result<Vec<MirrorInfo>> {
        // Without a network nothing is replicated now; the mirrors kept are listed with what is
        // held of them (no peers seen, no sync in this run).
        let inner = self.replicator.as_ref().map(|r| r.inner());
        Ok(replicate::list_mirrors(&self.store, inner).await?)
    }

    async fn tag_log(&self, name: String, topic: RoomTopic) -> Result<LogTopics> {
        let signer = self.writer(&name).await?;
        let key = signer.log_key();
        let topic = topic.key();
        let tag = TopicTag::sign(&signer, &topic.id());
        self.store.create_log(&key).await?;
        if self.store.tag_log(&topic, &tag, true).await? {
            tracing::info!(log = %key, topic = %topic.id(), "log put under a topic");
        }
        if let Some(replicator) = &self.replicator {
            replicator.announce_topic(&topic).await;
        }
        let topics = self.store.log_topics(&key).await?;
        Ok(LogTopics {
            key,
            topics: topics.into_iter().map(|(id, _)| id).collect(),
        })
    }

    async fn untag_log(&self, name: String, topic: RoomTopic) -> Result<bool> {
        let signer = self.writer(&name).await?;
        Ok(self
            .store
            .untag_log(&signer.log_key(), &topic.key().id())
            .await?)
    }

    async fn topic_logs(&self, topic: RoomTopic) -> Result<Vec<LogInfo>> {
        let mut out = Vec::new();
        for tag in self.store.topic_tags(&topic.key().id()).await? {
            out.push(self.store.log_info(&tag.key).await?);
        }
        Ok(out)
    }

    async fn sync_topic(&self, topic: RoomTopic) -> Result<TopicSyncReport> {
        Ok(self
            .replicator_for("syncing a topic")?
            .sync_topic(&topic.key())
            .await?)
    }

    async fn add_topic_mirror(
        &self,
        topic: RoomTopic,
        policy: MirrorPolicy,
    ) -> Result<TopicMirrorInfo> {
        Ok(self
            .replicator_for("mirroring")?
            .add_topic_mirror(&topic.key(), policy)
            .await?)
    }

    async fn remove_topic_mirror(&self, id: TopicId) -> Result<bool> {
        Ok(self
            .replicator_for("mirroring")?
            .remove_topic_mirror(&id)
            .await?)
    }

    async fn list_topic_mirrors(&self) -> Result<Vec<TopicMirrorInfo>> {
        let inner = self.replicator.as_ref().map(|r| r.inner());
        Ok(replicate::list_topic_mirrors(&self.store, inner).await?)
    }

    async fn put_file(&self, ciphertext: DataStream) -> Result<FileInfo> {
        let stream =
            ciphertext.map(|piece| piece.map_err(|e| std::io::Error::other(e.to_string())));
        let reader = tokio_util::io::StreamReader::new(stream);
        let info = self.store.import_file(reader).await?;
        self.announce_file(&info.id).await;
        Ok(info)
    }

    async fn read_file(&self, id: FileId, start: u64, end: Option<u64>) -> Result<DataStream> {
        let info = self.store.file_info(&id).await?;
        let end = end.unwrap_or(info.size).min(info.size);
        if start > end {
            return Err(ApiError::InvalidArgument(format!(
                "range {start}..{end} of a file of {} bytes",
                info.size
            )));
        }
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut block = start / BLOCK_BYTES;
            let last = end.div_ceil(BLOCK_BYTES);
            while block < last {
                let to = (block + files::store::BATCH_BLOCKS).min(last);
                let blocks = match store.read_file_blocks(&id, block..to).await {
                    Ok(blocks) => blocks,
                    Err(error) => {
                        let _ = tx.send(Err(ApiError::from(error))).await;
                        return;
                    }
                };
                for (i, data) in (block..to).zip(blocks) {
                    let at = i * BLOCK_BYTES;
                    let from = start.saturating_sub(at) as usize;
                    let upto = ((end - at) as usize).min(data.len());
                    if from < upto
                        && tx
                            .send(Ok(Bytes::copy_from_slice(&data[from..upto])))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                block = to;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn fetch_file(
        &self,
        id: FileId,
        peer: Option<PeerId>,
        blocks: Range<u64>,
    ) -> Result<FetchStream> {
        let network = self.network_for("fetching a file")?.clone();
        let peers = match peer {
            Some(peer) => vec![peer],
            None => {
                let peers = network.lookup(file_topic(&id)).await?;
                if peers.is_empty() {
                    return Err(ApiError::NotFound(format!(
                        "no peer is known to hold file {id} (give one with --from)"
                    )));
                }
                peers
            }
        };
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<FetchUpdate>>(64);
        tokio::spawn(async move {
            let mut last_error = None;
            for peer in peers {
                let progress_tx = tx.clone();
                let progress = move |progress: FetchProgress| {
                    // Updates a slow reader has not taken yet are dropped; the last one is not.
                    let _ = progress_tx.try_send(Ok(FetchUpdate {
                        progress,
                        done: None,
                    }));
                };
                match files::fetch(&store, network.as_ref(), peer, id, blocks.clone(), progress)
                    .await
                {
                    Ok(report) if report.complete() => {
                        if let Err(error) = network.announce(file_topic(&id)).await {
                            tracing::debug!(file = %id, %error, "announcing a file failed");
                        }
                        let progress = FetchProgress {
                            file_size: report.info.size,
                            total: report.info.size,
                            held: report.info.held_bytes,
                            received: report.bytes_received,
                        };
                        let _ = tx
                            .send(Ok(FetchUpdate {
                                progress,
                                done: Some(report.info),
                            }))
                            .await;
                        return;
                    }
                    Ok(report) => {
                        last_error = Some(ApiError::NotFound(format!(
                            "peer {} holds only part of file {id}",
                            hex::encode(peer)
                        )));
                        tracing::debug!(file = %id, missing = report.missing.count(), "partial fetch");
                    }
                    Err(error) => {
                        tracing::debug!(file = %id, peer = %hex::encode(peer), %error, "fetch failed");
                        last_error = Some(error.into());
                    }
                }
            }
            let error = last_error.unwrap_or_else(|| ApiError::NotFound(format!("file {id}")));
            let _ = tx.send(Err(error)).await;
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn get_file(&self, id: FileId) -> Result<FileInfo> {
        Ok(self.store.file_info(&id).await?)
    }

    async fn list_files(&self) -> Result<Vec<FileInfo>> {
        Ok(self.store.list_files().await?)
    }
}

/// Keys held in memory, by scope (tests and embedders that manage keys themselves): each
/// scope's secret is BLAKE3-derived from one seed.
pub struct SeededKeys(Zeroizing<[u8; 32]>);

impl SeededKeys {
    pub fn new(seed: [u8; 32]) -> Self {
        SeededKeys(Zeroizing::new(seed))
    }
}

#[async_trait]
impl NodeKeys for SeededKeys {
    async fn delegated_secret(&self, scope: &str) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(scope.as_bytes());
        Ok(Zeroizing::new(*hasher.finalize().as_bytes()))
    }
}
