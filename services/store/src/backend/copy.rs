//! Copying every log from one store to another (SQLite ⇄ PostgreSQL), the base of
//! `kith store migrate`, mailbox records included. Nothing is copied on trust: each held range travels as a remote put
//! would, entries with a proof against the source's signed root, and the destination verifies
//! it before storing. A log whose source data fails verification stops the copy with the error.
//! Files follow the logs: each file's outboard (checked against its id by the destination), then
//! its held blocks, each verified against the outboard as it is read. Mirrors, mirrored topics
//! and logs' topic tags (signatures checked again) come along.

use serde::Serialize;

use super::{PutOutcome, Store};
use crate::error::StoreError;
use crate::log::Targets;

/// Entries per copied batch.
const COPY_BATCH: u64 = 1024;

/// What a copy moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub logs: u64,
    pub entries: u64,
    /// The copied entries' bytes.
    pub entry_bytes: u64,
    pub fork_evidence: u64,
    /// Mailbox records copied (not held in the destination before).
    pub mailbox_records: u64,
    /// Mirrored logs whose policy and eviction mark were carried over.
    pub mirrors: u64,
    /// Logs recorded as the node's own (never mirrored or evicted) in the destination too.
    pub own_logs: u64,
    /// Logs' topic tags carried over (each signature verified on the way in).
    pub topic_tags: u64,
    /// Mirrored topics whose policy was carried over.
    pub topic_mirrors: u64,
    /// Files copied (whole or the part held).
    pub files: u64,
    pub file_blocks: u64,
    /// The copied blocks' ciphertext bytes.
    pub file_bytes: u64,
}

/// Copies every log of `from` into `to`, verifying every batch on the way in. Logs already in
/// `to` are extended; a log whose history contradicts the one in `to` ends up forked there
/// (with the evidence), exactly as if it had arrived from a peer.
pub async fn copy_store(from: &Store, to: &Store) -> Result<CopyReport, StoreError> {
    let mut report = CopyReport::default();
    for info in from.list_logs().await? {
        report.logs += 1;
        let held_there = to.create_log(&info.key).await?;
        // A log already forked in `to` takes no entries; it only gets the evidence.
        if let (Some(root), false) = (info.root, held_there.forked) {
            let known = held_there.length;
            let mut copied_any = false;
            'ranges: for (start, end) in from.held(&info.key).await?.iter() {
                let mut at = start;
                while at < end {
                    let to_end = (at + COPY_BATCH).min(end);
                    // The first batch upgrades the destination from what it holds.
                    let upgrade_from = (!copied_any && known < root.length()).then_some(known);
                    let (r, entries, proof) = from
                        .get_range_with_proof(&info.key, at, to_end, upgrade_from)
                        .await?;
                    if let PutOutcome::Forked(_) = to.put_remote(&r, at, &entries, &proof).await? {
                        break 'ranges;
                    }
                    copied_any = true;
                    report.entries += to_end - at;
                    report.entry_bytes += entries.iter().map(|e| e.len() as u64).sum::<u64>();
                    at = to_end;
                }
            }
            if !copied_any && !to.log_info(&info.key).await?.forked {
                // Nothing held: carry the root alone, with its peaks.
                let targets = match known {
                    k if k < root.length() => Targets::range_upgrading_from(0, 0, k),
                    _ => Targets::range(0, 0),
                };
                let (r, proof) = from.prove(&info.key, &targets).await?;
                let empty: [&[u8]; 0] = [];
                to.put_remote(&r, 0, &empty, &proof).await?;
            }
        }
        for evidence in from.fork_evidence(&info.key).await? {
            to.add_fork_evidence(evidence).await?;
            report.fork_evidence += 1;
        }
    }
    // The node's own logs stay its own.
    for key in from.own_logs() {
        to.mark_own(&key).await?;
        report.own_logs += 1;
    }
    // Mirrored topics, then mirrors, keep their policy, how they were added and what they
    // evicted (so it is not fetched again); then the topics logs carry, every tag checked.
    for t in from.topic_mirrors().await? {
        to.set_topic_mirror(&t.topic, t.quota_bytes, t.priority)
            .await?;
        report.topic_mirrors += 1;
    }
    for m in from.mirrors().await? {
        if m.by_key {
            to.set_mirror(&m.key, m.quota_bytes, m.priority).await?;
        } else {
            to.adopt_mirror(&m.key, m.quota_bytes, m.priority).await?;
        }
        to.raise_eviction_mark(&m.key, m.evicted_below).await?;
        report.mirrors += 1;
    }
    for t in from.topics().await? {
        for (tag, own) in from.topic_tags_owned(&t.topic.id()).await? {
            to.tag_log(&t.topic, &tag, own).await?;
            report.topic_tags += 1;
        }
    }
    let mut after = None;
    loop {
        let page = from.mailbox_export(after, 256).await?;
        let Some((_, _, last)) = page.last() else {
            break;
        };
        after = Some(last.id);
        for (mailbox, depositor, record) in &page {
            if to.mailbox_import(mailbox, depositor, record).await? {
                report.mailbox_records += 1;
            }
        }
    }
    for info in from.list_files().await? {
        let (blocks, bytes) = crate::files::store::copy_file(from, to, &info.id).await?;
        report.files += 1;
        report.file_blocks += blocks;
        report.file_bytes += bytes;
    }
    Ok(report)
}
