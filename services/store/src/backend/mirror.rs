//! Mirrored logs (table `mirrors`, migration 2): logs this node replicates and serves for others
//! without any decryption key, each with an optional byte quota and an eviction priority, and
//! eviction itself.
//!
//! Eviction drops the *entry bytes* of a log's oldest held entries and keeps every tree node
//! they carried (each evicted entry's `tree` column moves to `nodes` rows in the same
//! transaction) and the signed root, so the log becomes sparse: what remains still verifies and
//! can still be proven to peers. A log this process writes to is never evicted or deleted.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use super::{
    Db, LOOKUP_CHUNK, NODE_BYTES, Store, decode_node, release_writer, take_writer, to_i64, to_u64,
    tree_blob_len,
};
use crate::error::StoreError;
use crate::log::LogKey;
use crate::log::tree::{self, Node};

/// What deleting a log (held for others, no longer wanted) takes, in order: every row naming
/// its id (`$1`), then the log.
pub(crate) const DELETE_LOG: &[&str] = &[
    "DELETE FROM entries WHERE log_id = $1",
    "DELETE FROM nodes WHERE log_id = $1",
    "DELETE FROM fork_evidence WHERE log_id = $1",
    "DELETE FROM log_topics WHERE log_id = $1",
    "DELETE FROM mirrors WHERE log_id = $1",
    "DELETE FROM logs WHERE id = $1",
];

/// Entries read per eviction step.
const EVICT_STEP: i64 = 1024;

/// A mirrored log's stored policy and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MirrorRow {
    pub key: LogKey,
    /// The most entry bytes to hold for this log (`None`: no quota of its own).
    pub quota_bytes: Option<u64>,
    /// Over the total quota, lower priorities are evicted first.
    pub priority: i32,
    /// Entries below this index were evicted and are not fetched again.
    pub evicted_below: u64,
    /// When the mirror was added (unix ms).
    pub added_ms: u64,
    /// When a replication session last brought this log up to a peer's length (unix ms).
    pub last_sync_ms: Option<u64>,
    /// Mirrored because it was asked for by key (`false`: only because a mirrored topic
    /// listed it; see [`Store::adopt_mirror`]).
    pub by_key: bool,
}

/// What one eviction dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EvictReport {
    pub entries: u64,
    pub bytes: u64,
    /// The log's eviction mark afterwards: nothing below it is fetched again.
    pub evicted_below: u64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type MirrorTuple = (Vec<u8>, Option<i64>, i64, i64, i64, Option<i64>, i64);

fn mirror_from_row(row: MirrorTuple) -> Result<MirrorRow, StoreError> {
    let (key, quota, priority, below, added, last, by_key) = row;
    Ok(MirrorRow {
        key: LogKey::from_slice(&key)
            .map_err(|e| StoreError::Corrupt(format!("stored mirror key: {e}")))?,
        quota_bytes: quota.map(to_u64).transpose()?,
        priority: i32::try_from(priority)
            .map_err(|_| StoreError::Corrupt(format!("mirror priority {priority}")))?,
        evicted_below: to_u64(below)?,
        added_ms: to_u64(added)?,
        last_sync_ms: last.map(to_u64).transpose()?,
        by_key: by_key != 0,
    })
}

impl Store {
    /// Records `key` as mirrored by key with this policy (creating the log if needed; updating
    /// the policy if it is mirrored already). Refused for a log this process writes.
    pub async fn set_mirror(
        &self,
        key: &LogKey,
        quota_bytes: Option<u64>,
        priority: i32,
    ) -> Result<MirrorRow, StoreError> {
        self.insert_mirror(
            key,
            quota_bytes,
            priority,
            "INSERT INTO mirrors (log_id, quota_bytes, priority, added_ms, by_key) \
             VALUES ($1, $2, $3, $4, 1) \
             ON CONFLICT (log_id) DO UPDATE SET quota_bytes = excluded.quota_bytes, \
             priority = excluded.priority, by_key = 1",
        )
        .await
    }

    /// Records `key` as mirrored because a mirrored topic listed it, with that topic's policy,
    /// unless it is mirrored already (a log mirrored by key, or found by another topic first,
    /// keeps its policy). Returns the mirror record. Refused for a log this process writes.
    pub async fn adopt_mirror(
        &self,
        key: &LogKey,
        quota_bytes: Option<u64>,
        priority: i32,
    ) -> Result<MirrorRow, StoreError> {
        self.insert_mirror(
            key,
            quota_bytes,
            priority,
            "INSERT INTO mirrors (log_id, quota_bytes, priority, added_ms, by_key) \
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT (log_id) DO NOTHING",
        )
        .await
    }

    /// Runs `insert` (binding log row, quota, priority, now) for `key`, creating the log if
    /// needed, and returns the mirror record. Refused for a log this node writes.
    async fn insert_mirror(
        &self,
        key: &LogKey,
        quota_bytes: Option<u64>,
        priority: i32,
        insert: &'static str,
    ) -> Result<MirrorRow, StoreError> {
        if self.writes(key) {
            return Err(StoreError::Malformed(
                "cannot mirror a log this node writes",
            ));
        }
        let row = self.ensure_log(key).await?;
        let quota = quota_bytes.map(to_i64).transpose()?;
        on_db!(&self.db, pool, DB => {
            sqlx::query(insert)
                .bind(row.id)
                .bind(quota)
                .bind(i64::from(priority))
                .bind(to_i64(now_ms())?)
                .execute(pool)
                .await?;
        });
        self.mirror(key)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("mirror {key} vanished after insert")))
    }

    /// The mirror record of `key`, if it is mirrored.
    pub async fn mirror(&self, key: &LogKey) -> Result<Option<MirrorRow>, StoreError> {
        Ok(self.mirrors().await?.into_iter().find(|m| m.key == *key))
    }

    /// Every mirrored log, ordered by key.
    pub async fn mirrors(&self) -> Result<Vec<MirrorRow>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT l.key, m.quota_bytes, m.priority, m.evicted_below, m.added_ms, m.last_sync_ms, \
                 m.by_key FROM mirrors m JOIN logs l ON l.id = m.log_id ORDER BY l.key",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<MirrorTuple, sqlx::Error> {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter().map(mirror_from_row).collect()
    }

    /// Notes that `key` was just brought up to date from a peer.
    pub async fn mirror_synced(&self, key: &LogKey) -> Result<(), StoreError> {
        let Some(row) = self.log_row(key).await? else {
            return Ok(());
        };
        on_db!(&self.db, pool, DB => {
            sqlx::query("UPDATE mirrors SET last_sync_ms = $1 WHERE log_id = $2")
                .bind(to_i64(now_ms())?)
                .bind(row.id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Moves a mirror's eviction mark up to `below` (never down): entries below it are not
    /// fetched again.
    pub(crate) async fn raise_eviction_mark(
        &self,
        key: &LogKey,
        below: u64,
    ) -> Result<(), StoreError> {
        let Some(row) = self.log_row(key).await? else {
            return Ok(());
        };
        on_db!(&self.db, pool, DB => {
            sqlx::query("UPDATE mirrors SET evicted_below = $1 WHERE log_id = $2 AND evicted_below < $1")
                .bind(to_i64(below)?)
                .bind(row.id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stops mirroring `key` and deletes everything held for it (entries, nodes, root, fork
    /// evidence, the topics it carried). Returns whether it was mirrored. Refused for a log this
    /// process writes.
    pub async fn remove_mirror(&self, key: &LogKey) -> Result<bool, StoreError> {
        if self.writes(key) {
            return Err(StoreError::Malformed(
                "cannot delete a log this node writes",
            ));
        }
        let Some(row) = self.log_row(key).await? else {
            return Ok(false);
        };
        in_write_tx!(&self.db, tx, DB => {
            let removed = sqlx::query("DELETE FROM mirrors WHERE log_id = $1")
                .bind(row.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if removed == 1 {
                for statement in DELETE_LOG {
                    sqlx::query(*statement).bind(row.id).execute(&mut *tx).await?;
                }
                sqlx::query(super::topics::FORGET_UNUSED_TOPICS)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(removed == 1)
        })
    }

    /// The entry bytes held for each of `keys` (0 for an unknown log).
    pub async fn entry_bytes(&self, keys: &[LogKey]) -> Result<HashMap<LogKey, u64>, StoreError> {
        let mut out = HashMap::with_capacity(keys.len());
        for key in keys {
            let Some(row) = self.log_row(key).await? else {
                out.insert(*key, 0);
                continue;
            };
            let bytes: i64 = on_db!(&self.db, pool, DB => {
                sqlx::query(
                    "SELECT CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) FROM entries WHERE log_id = $1",
                )
                .bind(row.id)
                .fetch_one(pool)
                .await?
                .try_get(0)?
            });
            out.insert(*key, to_u64(bytes)?);
        }
        Ok(out)
    }

    /// Evicts the oldest held entries of mirrored log `key` until at least `bytes` of entry
    /// bytes are freed (or nothing is left): their bytes go, the tree nodes they carried stay (as
    /// `nodes` rows), and the mirror's eviction mark moves past them. Refused for a log this
    /// process writes or that is not mirrored.
    pub async fn evict_oldest(&self, key: &LogKey, bytes: u64) -> Result<EvictReport, StoreError> {
        if self.writes(key) {
            return Err(StoreError::Malformed("cannot evict a log this node writes"));
        }
        let mirror = self
            .mirror(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let row = self
            .log_row(key)
            .await?
            .ok_or(StoreError::LogNotFound { key: *key })?;
        let mut report = EvictReport {
            evicted_below: mirror.evicted_below,
            ..EvictReport::default()
        };
        while report.bytes < bytes {
            let rows = on_db!(&self.db, pool, DB => {
                sqlx::query(
                    "SELECT idx, CAST(length(data) AS BIGINT), tree FROM entries WHERE log_id = $1 \
                     ORDER BY idx LIMIT $2",
                )
                .bind(row.id)
                .bind(EVICT_STEP)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> {
                    Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?, r.try_get::<Vec<u8>, _>(2)?))
                })
                .collect::<Result<Vec<_>, _>>()?
            });
            if rows.is_empty() {
                break;
            }
            let mut chosen: Vec<u64> = Vec::new();
            let mut nodes: Vec<(u64, Node)> = Vec::new();
            let mut freed = 0u64;
            for (idx, size, blob) in rows {
                if report.bytes + freed >= bytes {
                    break;
                }
                let entry = to_u64(idx)?;
                if blob.len() != tree_blob_len(entry) {
                    return Err(StoreError::Corrupt(format!(
                        "tree nodes of entry {entry} of {key} have the wrong size"
                    )));
                }
                for (k, i) in tree::completed_by(entry).into_iter().enumerate() {
                    nodes.push((i, decode_node(&blob[k * NODE_BYTES..(k + 1) * NODE_BYTES])));
                }
                chosen.push(entry);
                freed += to_u64(size)?;
            }
            let Some(&last) = chosen.last() else { break };
            let below = report.evicted_below.max(last + 1);
            in_write_tx!(&self.db, tx, DB => {
                for chunk in nodes.chunks(super::INSERT_CHUNK) {
                    let mut qb = QueryBuilder::<DB>::new("INSERT INTO nodes (log_id, idx, hash, size) ");
                    qb.push_values(chunk, |mut b, (i, n)| {
                        b.push_bind(row.id)
                            .push_bind(*i as i64)
                            .push_bind(n.hash.as_slice())
                            .push_bind(n.size as i64);
                    });
                    qb.push(" ON CONFLICT (log_id, idx) DO NOTHING");
                    qb.build().execute(&mut *tx).await?;
                }
                for chunk in chosen.chunks(LOOKUP_CHUNK) {
                    let mut qb = QueryBuilder::<DB>::new("DELETE FROM entries WHERE log_id = ");
                    qb.push_bind(row.id);
                    qb.push(" AND idx IN (");
                    let mut sep = qb.separated(", ");
                    for &i in chunk {
                        sep.push_bind(to_i64(i)?);
                    }
                    sep.push_unseparated(")");
                    qb.build().execute(&mut *tx).await?;
                }
                sqlx::query("UPDATE mirrors SET evicted_below = $1 WHERE log_id = $2")
                    .bind(to_i64(below)?)
                    .bind(row.id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })?;
            report.entries += chosen.len() as u64;
            report.bytes += freed;
            report.evicted_below = below;
        }
        if report.entries > 0 {
            tracing::info!(
                log = %key,
                entries = report.entries,
                bytes = report.bytes,
                evicted_below = report.evicted_below,
                "evicted mirrored entries over quota"
            );
        }
        Ok(report)
    }
}
