//! Mailbox records in the database (see [`crate::mailbox`] for what they are and the limits).

use sqlx::Row;

use super::{Db, Store, release_writer, take_writer, to_i64, to_u64};
use crate::error::StoreError;
use crate::mailbox::{
    Deposited, MAX_BYTES_PER_MAILBOX, MAX_RECORDS_PER_DEPOSITOR, MAX_RECORDS_PER_MAILBOX,
    MailboxKey, Record, check_deposit, record_id,
};
use crate::net::PeerId;

/// Totals over the mailboxes kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MailboxStats {
    pub records: u64,
    pub bytes: u64,
}

/// PostgreSQL's advisory lock (an arbitrary constant key) that mailbox deposits take in turn.
const PG_MAILBOX_LOCK: &str = "SELECT pg_advisory_xact_lock(5484002)";

impl Store {
    /// Keeps `data` in `mailbox` for `ttl_seconds` (0: 48 hours), deposited by `depositor`, at
    /// time `now`. Refused (nothing kept) when the record is too large or the mailbox, the
    /// depositor's share of it, or the node's `quota` of mailbox bytes is full. Expired records
    /// are removed first. Depositing the same record again renews nothing and is not an error.
    pub async fn mailbox_put(
        &self,
        mailbox: &MailboxKey,
        depositor: &PeerId,
        data: &[u8],
        ttl_seconds: u64,
        now: u64,
        quota: u64,
    ) -> Result<Deposited, StoreError> {
        let ttl = check_deposit(data, ttl_seconds)?;
        let id = record_id(mailbox, data);
        let expires_at = now.saturating_add(ttl);
        let size = data.len() as u64;
        in_write_tx!(&self.db, tx, DB => {
            // The sums below decide, and the node's quota spans every mailbox: deposits take
            // turns. SQLite's `BEGIN IMMEDIATE` does that already; on PostgreSQL (other
            // connections, other store processes) an advisory lock held until commit.
            if <DB as sqlx::Database>::NAME == "PostgreSQL" {
                sqlx::query(PG_MAILBOX_LOCK).execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM mailbox_records WHERE expires_at <= $1")
                .bind(to_i64(now)?)
                .execute(&mut *tx)
                .await?;
            let existing = sqlx::query("SELECT expires_at FROM mailbox_records WHERE id = $1")
                .bind(&id[..])
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                let expires_at = to_u64(row.try_get::<i64, _>(0)?)?;
                tx.commit().await?;
                return Ok(Deposited { id, expires_at });
            }
            let r = sqlx::query(
                "SELECT \
                 (SELECT COUNT(*) FROM mailbox_records WHERE mailbox = $1), \
                 (SELECT CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) FROM mailbox_records WHERE mailbox = $1), \
                 (SELECT COUNT(*) FROM mailbox_records WHERE mailbox = $1 AND depositor = $2), \
                 (SELECT CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) FROM mailbox_records)",
            )
            .bind(&mailbox.as_bytes()[..])
            .bind(&depositor[..])
            .fetch_one(&mut *tx)
            .await?;
            let (records, bytes, mine, total) = (
                to_u64(r.try_get::<i64, _>(0)?)?,
                to_u64(r.try_get::<i64, _>(1)?)?,
                to_u64(r.try_get::<i64, _>(2)?)?,
                to_u64(r.try_get::<i64, _>(3)?)?,
            );
            if records >= MAX_RECORDS_PER_MAILBOX || bytes + size > MAX_BYTES_PER_MAILBOX {
                return Err(StoreError::MailboxFull(format!("mailbox {mailbox} is full")));
            }
            if mine >= MAX_RECORDS_PER_DEPOSITOR {
                return Err(StoreError::MailboxFull(format!(
                    "this depositor already has {MAX_RECORDS_PER_DEPOSITOR} records waiting in mailbox {mailbox}"
                )));
            }
            if total + size > quota {
                return Err(StoreError::MailboxFull("this node's mailbox quota is used up".into()));
            }
            sqlx::query(
                "INSERT INTO mailbox_records (id, mailbox, depositor, data, received_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id[..])
            .bind(&mailbox.as_bytes()[..])
            .bind(&depositor[..])
            .bind(data)
            .bind(to_i64(now)?)
            .bind(to_i64(expires_at)?)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Deposited { id, expires_at })
        })
    }

    /// The unexpired records of `mailbox` at `now`, oldest first, at most `limit`.
    pub async fn mailbox_fetch(
        &self,
        mailbox: &MailboxKey,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT id, data, received_at, expires_at FROM mailbox_records \
                 WHERE mailbox = $1 AND expires_at > $2 ORDER BY received_at, id LIMIT $3",
            )
            .bind(&mailbox.as_bytes()[..])
            .bind(to_i64(now)?)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<Vec<u8>, _>(0)?,
                    r.try_get::<Vec<u8>, _>(1)?,
                    r.try_get::<i64, _>(2)?,
                    r.try_get::<i64, _>(3)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        rows.into_iter()
            .map(|(id, data, received_at, expires_at)| {
                Ok(Record {
                    id: id
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("mailbox record id".into()))?,
                    data,
                    received_at: to_u64(received_at)?,
                    expires_at: to_u64(expires_at)?,
                })
            })
            .collect()
    }

    /// Removes records of `mailbox` by id; returns how many were there.
    pub async fn mailbox_ack(
        &self,
        mailbox: &MailboxKey,
        ids: &[[u8; 32]],
    ) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        in_write_tx!(&self.db, tx, DB => {
            let mut removed = 0;
            for id in ids {
                removed += sqlx::query("DELETE FROM mailbox_records WHERE mailbox = $1 AND id = $2")
                    .bind(&mailbox.as_bytes()[..])
                    .bind(&id[..])
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Removes every record expired at `now`; returns how many.
    pub async fn mailbox_expire(&self, now: u64) -> Result<u64, StoreError> {
        in_write_tx!(&self.db, tx, DB => {
            let removed = sqlx::query("DELETE FROM mailbox_records WHERE expires_at <= $1")
                .bind(to_i64(now)?)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Every kept record (expired ones included) after `after` in id order, at most `limit`: for
    /// copying a store.
    pub async fn mailbox_export(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<(MailboxKey, PeerId, Record)>, StoreError> {
        let after = after.map(|a| a.to_vec()).unwrap_or_default();
        let rows = on_db!(&self.db, pool, DB => {
            sqlx::query(
                "SELECT id, mailbox, depositor, data, received_at, expires_at FROM mailbox_records \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| -> Result<_, sqlx::Error> {
                Ok((
                    r.try_get::<Vec<u8>, _>(0)?,
                    r.try_get::<Vec<u8>, _>(1)?,
                    r.try_get::<Vec<u8>, _>(2)?,
                    r.try_get::<Vec<u8>, _>(3)?,
                    r.try_get::<i64, _>(4)?,
                    r.try_get::<i64, _>(5)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        let bad = |what: &str| StoreError::Corrupt(format!("mailbox record {what}"));
        rows.into_iter()
            .map(|(id, mailbox, depositor, data, received_at, expires_at)| {
                let mailbox = MailboxKey::from_slice(&mailbox).map_err(|_| bad("mailbox key"))?;
                let id: [u8; 32] = id.try_into().map_err(|_| bad("id"))?;
                if record_id(&mailbox, &data) != id {
                    return Err(bad("id does not match its data"));
                }
                let depositor: PeerId = depositor.try_into().map_err(|_| bad("depositor"))?;
                let record = Record {
                    id,
                    data,
                    received_at: to_u64(received_at)?,
                    expires_at: to_u64(expires_at)?,
                };
                Ok((mailbox, depositor, record))
            })
            .collect()
    }

    /// Keeps a record copied from another store as it was (its times included); a record
    /// already held is left alone. Its id must match its mailbox and data.
    pub async fn mailbox_import(
        &self,
        mailbox: &MailboxKey,
        depositor: &PeerId,
        record: &Record,
    ) -> Result<bool, StoreError> {
        if record_id(mailbox, &record.data) != record.id {
            return Err(StoreError::Malformed(
                "mailbox record id does not match its data",
            ));
        }
        check_deposit(&record.data, 0)?;
        in_write_tx!(&self.db, tx, DB => {
            let inserted = sqlx::query(
                "INSERT INTO mailbox_records (id, mailbox, depositor, data, received_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&record.id[..])
            .bind(&mailbox.as_bytes()[..])
            .bind(&depositor[..])
            .bind(&record.data)
            .bind(to_i64(record.received_at)?)
            .bind(to_i64(record.expires_at)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(inserted == 1)
        })
    }

    /// Records and bytes kept in mailboxes.
    pub async fn mailbox_stats(&self) -> Result<MailboxStats, StoreError> {
        let (records, bytes) = on_db!(&self.db, pool, DB => {
            let r = sqlx::query(
                "SELECT COUNT(*), CAST(COALESCE(SUM(length(data)), 0) AS BIGINT) FROM mailbox_records",
            )
            .fetch_one(pool)
            .await?;
            (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)
        });
        Ok(MailboxStats {
            records: to_u64(records)?,
            bytes: to_u64(bytes)?,
        })
    }
}
