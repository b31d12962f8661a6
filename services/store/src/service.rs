//! The store service in-process: [`StoreService`] implements [`StoreApi`] over a [`Store`], the
//! network (for mailboxes at other peers and, through it, replication) and the node's keys.
//!
//! Keys stay with the identity service: the store asks it (through [`NodeKeys`], which the
//! `kith` binary implements over the identity API) for the delegated key of a scope —
//! `store/log/<name>` for a writer log, `store/mailbox` for the node's mailbox — and keeps it in
//! memory only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ed25519_dalek::SigningKey;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::Store;
use crate::api::*;
use crate::backend::{LogInfo, VerifyReport};
use crate::error::StoreError;
use crate::log::{Ed25519Signer, LogKey, MAX_BATCH_ENTRIES};
use crate::mailbox::{self, Deposited, MAILBOX_ALPN, MailboxKey};
use crate::net::{Network, PeerId};

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mailbox_quota: mailbox::DEFAULT_TOTAL_QUOTA,
            expire_interval: Duration::from_secs(600),
            max_incoming: 64,
            request_timeout: Duration::from_secs(30),
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
    /// Starts the service: serves mailboxes on the network (when there is one) and expires
    /// mailbox records in the background.
    pub async fn start(
        store: Arc<Store>,
        keys: Arc<dyn NodeKeys>,
        network: Option<Arc<dyn Network>>,
        config: StoreConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let service = Arc::new(StoreService {
            store,
            keys,
            network,
            config,
            signers: Default::default(),
            mailbox_owner: OnceCell::new(),
            tasks: Mutex::default(),
        });
        let mut tasks = Vec::new();
        if let Some(network) = &service.network {
            let incoming = network.listen(MAILBOX_ALPN).await?;
            tasks.push(tokio::spawn(serve_mailboxes(
                service.store.clone(),
                incoming,
                network.local_peer(),
                service.config.clone(),
            )));
        }
        tasks.push(tokio::spawn(expire_mailboxes(
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
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.store.close().await;
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

async fn expire_mailboxes(store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match store.mailbox_expire(mailbox::unix_now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(records = n, "expired mailbox records removed"),
            Err(error) => tracing::warn!(%error, "removing expired mailbox records failed"),
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
