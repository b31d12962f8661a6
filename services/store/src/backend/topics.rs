//! Rooms' discovery topics (tables `topics`, `log_topics`, `topic_mirrors`, migration 5): which
//! logs carry which topics (with their writers' signed tags), and the topics this node mirrors.
//!
//! Only [`TopicKey`]s are kept, never a room's topic itself (see [`crate::topic`]). A topic row
//! lives while a log carries it or it is mirrored; the last tag or the mirror going takes it
//! along. Every tag is verified before it is stored, and bounded: a log carries at most
//! [`MAX_LOG_TOPICS`] topics, a topic lists at most [`MAX_TOPIC_LOGS`] logs.

use serde::Serialize;
use sqlx::Row;

use super::mirror::{DELETE_LOG, now_ms};
use super::{Db, Store, release_writer, take_writer, to_i64, to_u64};
use crate::error::StoreError;
use crate::log::LogKey;
use crate::topic::{MAX_LOG_TOPICS, MAX_TOPIC_LOGS, TopicId, TopicKey, TopicTag};

/// Inside a write transaction `$tx`: the row id of topic `$topic` (its id `$id`), inserting the
/// topic first if it is new.
macro_rules! topic_row {
    ($tx:ident, $id:expr, $topic:expr) => {{
        sqlx::query("INSERT INTO topics (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind($id.as_bytes().as_slice())
            .bind($topic.as_bytes().as_slice())
            .execute(&mut *$tx)
            .await?;
        let row: i64 = sqlx::query("SELECT id FROM topics WHERE name = $1")
            .bind($id.as_bytes().as_slice())
            .fetch_one(&mut *$tx)
            .await?
            .try_get(0)?;
        row
    }};
}

/// Drops topic rows nothing refers to any more.
pub(crate) const FORGET_UNUSED_TOPICS: &str = "DELETE FROM topics WHERE \
     NOT EXISTS (SELECT 1 FROM log_topics lt WHERE lt.topic = topics.id) \
     AND NOT EXISTS (SELECT 1 FROM topic_mirrors tm WHERE tm.topic = topics.id)";

/// A mirrored topic's stored policy and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicMirrorRow {
    #[serde(skip)]
    pub topic: TopicKey,
    pub id: TopicId,
    /// Each log found under the topic is mirrored with this quota of its own (`None`: only the
    /// node's total quota applies).
    pub quota_bytes: Option<u64>,
    /// And this eviction priority.
    pub priority: i32,
    /// When the topic mirror was added (unix ms).
    pub added_ms: u64,
    /// When peers were last asked for the topic's logs (unix ms).
    pub last_check_ms: Option<u64>,
}

/// A topic and where it stands here, for [`Store::topics`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRow {
    pub topic: TopicKey,
    /// Logs held under it.
    pub logs: u64,
    pub mirrored: bool,
}

fn topic_key(name: &[u8], key: &[u8]) -> Result<TopicKey, StoreError> {
    let key = TopicKey::from_bytes(
        key.try_into()
            .map_err(|_| StoreError::Corrupt("stored topic key is not 32 bytes".into()))?,
    );
    if key.id().as_bytes().as_slice() != name {
        return Err(StoreError::Corrupt(format!(
            "stored topic {} does not match its key",
            hex::encode(name)
        )));
    }
    Ok(key)
}

fn signature(bytes: &[u8]) -> Result<[u8; 64], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("stored topic tag signature is not 64 bytes".into()))
}

impl Store {
    /// The row id and key of topic `id`, if a log here carries it or it is mirrored.
    async fn topic_row(&self, id: &TopicId) -> Result<Option<(i64, TopicKey)>, StoreError> {
        let row = on_db!(&self.db, pool, DB => {
            sqlx::query("SELECT id, name, key FROM topics WHERE name = $1")
                .bind(id.as_bytes().as_slice())
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<(i64, Vec<u8>, Vec<u8>), sqlx::Error> {
                    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
                })
                .transpose()?
        });
        row.map(|(rid, name, key)| Ok((rid, topic_key(&name, &key)?)))
            .transpose()
    }

    /// The key of topic `id`, if a log here carries it or it is mirrored: what lets this node
    /// check a peer's proof that it knows the topic.
    pub async fn topic(&self, id: &TopicId) -> Result<Option<TopicKey>, StoreError> {
        Ok(self.topic_row(id).await?.map(|(_, key)| key))
    }

    /// Every topic held (carried by a log or mirrored), ordered by id.
    pub async fn topics(&self) -> Result<Vec<TopicRow>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT t.name, t.key, \
                 (SELECT COUNT(*) FROM log_topics lt WHERE lt.topic = t.id), \
                 (SELECT COUNT(*) FROM topic_mirrors tm WHERE tm.topic = t.id) \
                 FROM topics t ORDER BY t.name",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<(Vec<u8>, Vec<u8>, i64, i64), sqlx::Error> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(name, key, logs, mirrored)| {
                Ok(TopicRow {
                    topic: topic_key(&name, &key)?,
                    logs: to_u64(logs)?,
                    mirrored: mirrored > 0,
                })
            })
            .collect()
    }

    /// Puts `tag`'s log under `topic` (creating the log if it is not held yet), after checking
    /// the writer's signature. `own`: this node's writer made the tag. Returns whether the tag
    /// is new. Refused (changing nothing) if the signature is bad
    /// ([`StoreError::BadSignature`]), or the log carries [`MAX_LOG_TOPICS`] topics or the topic
    /// lists [`MAX_TOPIC_LOGS`] logs already ([`StoreError::TopicLimit`]).
    pub async fn tag_log(
        &self,
        topic: &TopicKey,
        tag: &TopicTag,
        own: bool,
    ) -> Result<bool, StoreError> {
        let id = topic.id();
        tag.verify(&id)?;
        let log = self.ensure_log(&tag.key).await?;
        in_write_tx!(&self.db, tx, DB => {
            let topic_row = topic_row!(tx, id, topic);
            // The counts below decide; two writers (other connections, other store processes
            // on one PostgreSQL) must not both read "one below the limit". SQLite's
            // `BEGIN IMMEDIATE` already lets one writer in at a time; on PostgreSQL the topic's
            // row and the log's are locked, always in that order, until commit.
            if <DB as sqlx::Database>::NAME == "PostgreSQL" {
                sqlx::query("SELECT id FROM topics WHERE id = $1 FOR UPDATE")
                    .bind(topic_row)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT id FROM logs WHERE id = $1 FOR UPDATE")
                    .bind(log.id)
                    .execute(&mut *tx)
                    .await?;
            }
            let held: Option<i64> = sqlx::query(
                "SELECT own FROM log_topics WHERE topic = $1 AND log_id = $2",
            )
            .bind(topic_row)
            .bind(log.id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
            if let Some(was_own) = held {
                if own && was_own == 0 {
                    sqlx::query("UPDATE log_topics SET own = 1 WHERE topic = $1 AND log_id = $2")
                        .bind(topic_row)
                        .bind(log.id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                return Ok(false);
            }
            let carried: i64 = sqlx::query("SELECT COUNT(*) FROM log_topics WHERE log_id = $1")
                .bind(log.id)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if carried >= MAX_LOG_TOPICS as i64 {
                return Err(StoreError::TopicLimit(format!(
                    "log {} carries {MAX_LOG_TOPICS} topics already",
                    tag.key
                )));
            }
            let listed: i64 = sqlx::query("SELECT COUNT(*) FROM log_topics WHERE topic = $1")
                .bind(topic_row)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if listed >= MAX_TOPIC_LOGS as i64 {
                return Err(StoreError::TopicLimit(format!(
                    "topic {id} lists {MAX_TOPIC_LOGS} logs already"
                )));
            }
            sqlx::query(
                "INSERT INTO log_topics (topic, log_id, signature, own) VALUES ($1, $2, $3, $4)",
            )
            .bind(topic_row)
            .bind(log.id)
            .bind(tag.signature.as_slice())
            .bind(i64::from(own))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Takes `key`'s log out of topic `id`. Returns whether it carried it.
    pub async fn untag_log(&self, key: &LogKey, id: &TopicId) -> Result<bool, StoreError> {
        let (Some(log), Some((topic_row, _))) =
            (self.log_row(key).await?, self.topic_row(id).await?)
        else {
            return Ok(false);
        };
        in_write_tx!(&self.db, tx, DB => {
            let removed = sqlx::query("DELETE FROM log_topics WHERE topic = $1 AND log_id = $2")
                .bind(topic_row)
                .bind(log.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(FORGET_UNUSED_TOPICS).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(removed == 1)
        })
    }

    /// The tags of the logs held under topic `id`, ordered by log key (at most
    /// [`MAX_TOPIC_LOGS`]); empty for a topic not held.
    pub async fn topic_tags(&self, id: &TopicId) -> Result<Vec<TopicTag>, StoreError> {
        Ok(self
            .topic_tags_owned(id)
            .await?
            .into_iter()
            .map(|(tag, _)| tag)
            .collect())
    }

    /// [`Self::topic_tags`], each with whether this node's writer made it.
    pub async fn topic_tags_owned(
        &self,
        id: &TopicId,
    ) -> Result<Vec<(TopicTag, bool)>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT l.key, lt.signature, lt.own FROM log_topics lt \
                 JOIN topics t ON t.id = lt.topic JOIN logs l ON l.id = lt.log_id \
                 WHERE t.name = $1 ORDER BY l.key LIMIT $2",
            )
            .bind(id.as_bytes().as_slice())
            .bind(MAX_TOPIC_LOGS as i64)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<(Vec<u8>, Vec<u8>, i64), sqlx::Error> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        let mut tags = rows
            .into_iter()
            .map(|(key, sig, own)| {
                let tag = TopicTag {
                    key: LogKey::from_slice(&key)
                        .map_err(|e| StoreError::Corrupt(format!("stored log key: {e}")))?,
                    signature: signature(&sig)?,
                };
                Ok((tag, own != 0))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The database's byte order is the keys' order; sorted here too so a wire answer is
        // canonical whatever the collation.
        tags.sort_by_key(|(t, _)| t.key);
        Ok(tags)
    }

    /// The topics `key`'s log carries, ordered by id, each with whether this node's writer
    /// tagged it.
    pub async fn log_topics(&self, key: &LogKey) -> Result<Vec<(TopicId, bool)>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT t.name, lt.own FROM log_topics lt \
                 JOIN topics t ON t.id = lt.topic JOIN logs l ON l.id = lt.log_id \
                 WHERE l.key = $1 ORDER BY t.name",
            )
            .bind(key.as_bytes().as_slice())
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<(Vec<u8>, i64), sqlx::Error> { Ok((r.try_get(0)?, r.try_get(1)?)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(name, own)| {
                Ok((
                    TopicId::from_slice(&name)
                        .map_err(|_| StoreError::Corrupt("stored topic id".into()))?,
                    own != 0,
                ))
            })
            .collect()
    }

    /// Records `topic` as mirrored with this policy (updating the policy if it is mirrored
    /// already, and with it the policy of every log mirrored only because the topic listed it).
    pub async fn set_topic_mirror(
        &self,
        topic: &TopicKey,
        quota_bytes: Option<u64>,
        priority: i32,
    ) -> Result<TopicMirrorRow, StoreError> {
        let id = topic.id();
        let quota = quota_bytes.map(to_i64).transpose()?;
        let added = to_i64(now_ms())?;
        in_write_tx!(&self.db, tx, DB => {
            let topic_row = topic_row!(tx, id, topic);
            sqlx::query(
                "INSERT INTO topic_mirrors (topic, quota_bytes, priority, added_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (topic) DO UPDATE SET \
                 quota_bytes = excluded.quota_bytes, priority = excluded.priority",
            )
            .bind(topic_row)
            .bind(quota)
            .bind(i64::from(priority))
            .bind(added)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE mirrors SET quota_bytes = $1, priority = $2 WHERE by_key = 0 \
                 AND log_id IN (SELECT log_id FROM log_topics WHERE topic = $3)",
            )
            .bind(quota)
            .bind(i64::from(priority))
            .bind(topic_row)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })?;
        self.topic_mirrors()
            .await?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| StoreError::Corrupt(format!("topic mirror {id} vanished after insert")))
    }

    /// Every mirrored topic, ordered by id.
    pub async fn topic_mirrors(&self) -> Result<Vec<TopicMirrorRow>, StoreError> {
        type Tuple = (Vec<u8>, Vec<u8>, Option<i64>, i64, i64, Option<i64>);
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT t.name, t.key, m.quota_bytes, m.priority, m.added_ms, m.last_check_ms \
                 FROM topic_mirrors m JOIN topics t ON t.id = m.topic ORDER BY t.name",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<Tuple, sqlx::Error> {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(name, key, quota, priority, added, last)| {
                let topic = topic_key(&name, &key)?;
                Ok(TopicMirrorRow {
                    id: topic.id(),
                    topic,
                    quota_bytes: quota.map(to_u64).transpose()?,
                    priority: i32::try_from(priority).map_err(|_| {
                        StoreError::Corrupt(format!("topic mirror priority {priority}"))
                    })?,
                    added_ms: to_u64(added)?,
                    last_check_ms: last.map(to_u64).transpose()?,
                })
            })
            .collect()
    }

    /// Notes that peers were just asked for topic `id`'s logs.
    pub async fn topic_checked(&self, id: &TopicId) -> Result<(), StoreError> {
        let Some((topic_row, _)) = self.topic_row(id).await? else {
            return Ok(());
        };
        on_db!(&self.db, pool, DB => {
            sqlx::query("UPDATE topic_mirrors SET last_check_ms = $1 WHERE topic = $2")
                .bind(to_i64(now_ms())?)
                .bind(topic_row)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stops mirroring topic `id`, in one transaction: every log mirrored only because this
    /// topic listed it (not asked for by key, not listed by another mirrored topic, not written
    /// here) is deleted with everything held of it, and the topic is forgotten for every other
    /// log not tagged by this node's own writer (so the node stops announcing and answering for
    /// it unless its own logs carry it). `None` if the topic was not mirrored; else the logs
    /// deleted.
    pub async fn remove_topic_mirror(
        &self,
        id: &TopicId,
    ) -> Result<Option<Vec<LogKey>>, StoreError> {
        let Some((topic_row, _)) = self.topic_row(id).await? else {
            return Ok(None);
        };
        let dropped = in_write_tx!(&self.db, tx, DB => {
            let removed = sqlx::query("DELETE FROM topic_mirrors WHERE topic = $1")
                .bind(topic_row)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if removed == 0 {
                return Ok(None);
            }
            let candidates = sqlx::query(
                "SELECT l.id, l.key FROM log_topics lt \
                 JOIN mirrors m ON m.log_id = lt.log_id JOIN logs l ON l.id = lt.log_id \
                 WHERE lt.topic = $1 AND m.by_key = 0 \
                 AND NOT EXISTS (SELECT 1 FROM log_topics o WHERE o.log_id = lt.log_id AND o.own <> 0) \
                 AND NOT EXISTS (SELECT 1 FROM log_topics o JOIN topic_mirrors tm ON tm.topic = o.topic \
                                 WHERE o.log_id = lt.log_id)",
            )
            .bind(topic_row)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| -> Result<(i64, Vec<u8>), sqlx::Error> { Ok((r.try_get(0)?, r.try_get(1)?)) })
            .collect::<Result<Vec<_>, _>>()?;
            let mut dropped = Vec::with_capacity(candidates.len());
            for (log_id, key) in candidates {
                let key = LogKey::from_slice(&key)
                    .map_err(|e| StoreError::Corrupt(format!("stored log key: {e}")))?;
                if self.writes(&key) {
                    continue;
                }
                for statement in DELETE_LOG {
                    sqlx::query(*statement).bind(log_id).execute(&mut *tx).await?;
                }
                dropped.push(key);
            }
            sqlx::query("DELETE FROM log_topics WHERE topic = $1 AND own = 0")
                .bind(topic_row)
                .execute(&mut *tx)
                .await?;
            sqlx::query(FORGET_UNUSED_TOPICS).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Some(dropped))
        })?;
        Ok(dropped)
    }
}
