//! The Kademlia routing table: 256 k-buckets of contacts, kept sans-IO.
//!
//! Bucket `i` holds contacts whose id shares exactly `i` leading bits with ours. Each bucket
//! keeps at most `k` contacts ordered least-recently-seen first. When a new contact arrives for a
//! full bucket the table does not drop anyone by itself: it parks the newcomer as the bucket's
//! pending replacement and returns [`InsertOutcome::PendingEviction`] naming the oldest contact.
//! The driver pings that contact and calls [`RoutingTable::resolve_eviction`] with the result:
//! if it answered it stays (old, long-lived contacts are the most likely to stay up, and an
//! attacker cannot flush them out by flooding us with new ids); if not, the newcomer takes its
//! slot.
//!
//! **Diversity against eclipse attacks.** An attacker with a few IP addresses must not be able
//! to fill a bucket, or the table, with its nodes. Contacts are grouped by network prefix (/24 for
//! IPv4, /48 for IPv6); a bucket admits at most [`RoutingConfig::max_per_prefix_per_bucket`] of
//! one prefix and the whole table at most [`RoutingConfig::max_per_prefix_in_table`].
//!
//! The table survives restarts as a [`RoutingSnapshot`] (serde); restoring one revalidates every
//! entry through the same insertion path, so a tampered snapshot cannot bypass the limits.

use std::net::SocketAddr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::id::{Distance, NodeId};
use crate::peer::PeerId;

/// Number of buckets: one per bit of the id.
pub const BUCKETS: usize = 256;

/// A node we can reach: its key, the id derived from it, and the UDP address it answered from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Contact {
    /// The DHT id, always `NodeId::of_peer(&peer)`.
    pub id: NodeId,
    /// The node's ed25519 key, used to dial it over QUIC and to check its records.
    pub peer: PeerId,
    /// Where it answers DHT messages.
    pub addr: SocketAddr,
}

impl Contact {
    /// A contact for `peer` at `addr`, with its id derived from the key.
    pub fn new(peer: PeerId, addr: SocketAddr) -> Self {
        Self {
            id: NodeId::of_peer(&peer),
            peer,
            addr,
        }
    }

    fn distance_to(&self, target: &NodeId) -> Distance {
        self.id.distance(target)
    }

    /// A contact whose id the caller has already derived (the simulator, which creates many).
    pub(crate) fn with_id(id: NodeId, peer: PeerId, addr: SocketAddr) -> Self {
        Self { id, peer, addr }
    }
}

/// Limits of the routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Contacts per bucket (Kademlia's k).
    pub k: usize,
    /// At most this many contacts of one /24 (IPv4) or /48 (IPv6) prefix in one bucket.
    pub max_per_prefix_per_bucket: usize,
    /// At most this many contacts of one prefix in the whole table.
    pub max_per_prefix_in_table: usize,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            k: 20,
            max_per_prefix_per_bucket: 2,
            max_per_prefix_in_table: 10,
        }
    }
}

impl RoutingConfig {
    /// No prefix limits: for tests and labs where every node lives on one loopback or LAN prefix.
    /// Never for nodes on the internet.
    pub fn without_diversity_limits() -> Self {
        Self {
            max_per_prefix_per_bucket: usize::MAX,
            max_per_prefix_in_table: usize::MAX,
            ..Self::default()
        }
    }
}

/// Why a contact was not added.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Refusal {
    /// The contact is this node.
    #[error("contact is the local node")]
    SelfContact,
    /// The address cannot be a remote node's (unspecified address, port 0, multicast).
    #[error("unusable address")]
    BadAddress,
    /// The bucket already holds the maximum for the contact's network prefix.
    #[error("too many contacts from this prefix in the bucket")]
    PrefixFullInBucket,
    /// The table already holds the maximum for the contact's network prefix.
    #[error("too many contacts from this prefix in the table")]
    PrefixFullInTable,
    /// The bucket is full and already waits on an eviction check for another newcomer.
    #[error("bucket full with an eviction already pending")]
    BucketBusy,
}

/// What [`RoutingTable::insert`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InsertOutcome {
    /// The contact is new and was added.
    Inserted,
    /// The contact was known; it is now the most recently seen (its address is updated).
    Updated,
    /// The bucket is full: the contact waits as the replacement while the driver pings `oldest`
    /// and reports the result to [`RoutingTable::resolve_eviction`].
    PendingEviction {
        /// The least-recently-seen contact of the bucket, to be pinged.
        oldest: Contact,
    },
    /// The contact was refused.
    Refused(Refusal),
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Least-recently-seen first.
    contacts: Vec<Contact>,
    /// A newcomer waiting for the oldest contact to fail a ping (boxed: rarely set, and the
    /// simulator holds millions of buckets).
    pending: Option<Box<Contact>>,
    /// When the bucket was last refreshed (a lookup into its range), in the driver's milliseconds.
    refreshed_at_ms: u64,
}

/// The routing table of one node.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    local: NodeId,
    config: RoutingConfig,
    /// Grown on demand: buckets deeper than the deepest one used cost nothing (a node in a
    /// network of n uses about log2(n / k) + a few of the 256).
    buckets: Vec<Bucket>,
    len: usize,
    /// The prefix of every contact, sorted (one entry per contact), so counting a prefix in the
    /// whole table is a binary search rather than a scan.
    prefixes: Vec<u64>,
}

/// The network prefix a contact is grouped by for diversity, as one comparable number: /24 for
/// IPv4, /48 for IPv6 (IPv4-mapped IPv6 addresses count as IPv4). The top byte tells the families
/// apart. Cheap on purpose: it runs over the whole table for every new contact.
fn prefix_of(addr: &SocketAddr) -> u64 {
    const V4: u64 = 4 << 56;
    const V6: u64 = 6 << 56;
    match addr {
        SocketAddr::V4(a) => V4 | u64::from(u32::from(*a.ip()) >> 8),
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => V4 | u64::from(u32::from(v4) >> 8),
            None => V6 | (u128::from(*a.ip()) >> 80) as u64,
        },
    }
}

/// Whether a remote node could be at `addr`.
pub fn is_usable_address(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

impl RoutingTable {
    /// An empty table for the node with id `local`.
    pub fn new(local: NodeId, config: RoutingConfig) -> Self {
        Self {
            local,
            config,
            buckets: Vec::new(),
            len: 0,
            prefixes: Vec::new(),
        }
    }

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.local
    }

    /// The limits in force.
    pub fn config(&self) -> &RoutingConfig {
        &self.config
    }

    /// Number of contacts held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no contact.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Contacts of bucket `index`, least-recently-seen first.
    pub fn bucket(&self, index: usize) -> &[Contact] {
        self.buckets
            .get(index)
            .map(|b| b.contacts.as_slice())
            .unwrap_or(&[])
    }

    /// Every contact, bucket by bucket.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.buckets.iter().flat_map(|b| b.contacts.iter())
    }

    /// The contact with id `id`, if held.
    pub fn get(&self, id: &NodeId) -> Option<&Contact> {
        let index = self.local.bucket_index(id)?;
        self.buckets
            .get(index)?
            .contacts
            .iter()
            .find(|c| c.id == *id)
    }

    /// Records that `contact` was seen (it sent us a valid message or answered one): adds it,
    /// refreshes it, parks it for a pending eviction, or refuses it.
    pub fn insert(&mut self, contact: Contact) -> InsertOutcome {
        let Some(index) = self.local.bucket_index(&contact.id) else {
            return InsertOutcome::Refused(Refusal::SelfContact);
        };
        if !is_usable_address(&contact.addr) {
            return InsertOutcome::Refused(Refusal::BadAddress);
        }
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        let k = self.config.k;
        let bucket = &self.buckets[index];
        if let Some(pos) = bucket.contacts.iter().position(|c| c.id == contact.id) {
            let old = bucket.contacts[pos];
            if old.addr != contact.addr && prefix_of(&old.addr) != prefix_of(&contact.addr) {
                // A known id moving to another prefix must pass the limits there.
                if let Some(refusal) = self.prefix_refusal(index, &contact.addr) {
                    return InsertOutcome::Refused(refusal);
                }
            }
            let bucket = &mut self.buckets[index];
            bucket.contacts.remove(pos);
            bucket.contacts.push(contact);
            if old.addr != contact.addr {
                self.forget_prefix(&old.addr);
                self.note_prefix(&contact.addr);
            }
            return InsertOutcome::Updated;
        }
        if let Some(refusal) = self.prefix_refusal(index, &contact.addr) {
            return InsertOutcome::Refused(refusal);
        }
        let bucket = &mut self.buckets[index];
        if bucket.contacts.len() < k {
            // Grow in small steps up to exactly k: most buckets of a large network hold few
            // contacts, and the simulator keeps 100,000 tables in memory.
            if bucket.contacts.len() == bucket.contacts.capacity() {
                let extra = bucket
                    .contacts
                    .len()
                    .clamp(4, 8)
                    .min(k - bucket.contacts.len());
                bucket.contacts.reserve_exact(extra);
            }
            bucket.contacts.push(contact);
            self.len += 1;
            self.note_prefix(&contact.addr);
            return InsertOutcome::Inserted;
        }
        match &bucket.pending {
            Some(p) if p.id != contact.id => InsertOutcome::Refused(Refusal::BucketBusy),
            _ => {
                bucket.pending = Some(Box::new(contact));
                InsertOutcome::PendingEviction {
                    oldest: bucket.contacts[0],
                }
            }
        }
    }

    fn prefix_refusal(&self, index: usize, addr: &SocketAddr) -> Option<Refusal> {
        let prefix = prefix_of(addr);
        let in_bucket = self.buckets[index]
            .contacts
            .iter()
            .filter(|c| prefix_of(&c.addr) == prefix)
            .count();
        if in_bucket >= self.config.max_per_prefix_per_bucket {
            return Some(Refusal::PrefixFullInBucket);
        }
        let first = self.prefixes.partition_point(|p| *p < prefix);
        let in_table = self.prefixes[first..].partition_point(|p| *p == prefix);
        if in_table >= self.config.max_per_prefix_in_table {
            return Some(Refusal::PrefixFullInTable);
        }
        None
    }

    fn note_prefix(&mut self, addr: &SocketAddr) {
        let prefix = prefix_of(addr);
        let at = self.prefixes.partition_point(|p| *p < prefix);
        self.prefixes.insert(at, prefix);
    }

    fn forget_prefix(&mut self, addr: &SocketAddr) {
        let prefix = prefix_of(addr);
        let at = self.prefixes.partition_point(|p| *p < prefix);
        if self.prefixes.get(at) == Some(&prefix) {
            self.prefixes.remove(at);
        }
    }

    /// Settles a [`InsertOutcome::PendingEviction`]: `oldest_answered` says whether the pinged
    /// contact replied. If it did it becomes most-recently-seen and the newcomer is dropped;
    /// otherwise it is removed and the newcomer takes its place (if it still passes the limits).
    pub fn resolve_eviction(&mut self, oldest: &NodeId, oldest_answered: bool) {
        let Some(index) = self.local.bucket_index(oldest) else {
            return;
        };
        let Some(bucket) = self.buckets.get_mut(index) else {
            return;
        };
        let pending = bucket.pending.take();
        if oldest_answered {
            if let Some(pos) = bucket.contacts.iter().position(|c| c.id == *oldest) {
                let c = bucket.contacts.remove(pos);
                bucket.contacts.push(c);
            }
            return;
        }
        self.remove(oldest);
        if let Some(newcomer) = pending {
            self.insert(*newcomer);
        }
    }

    /// Drops a contact (it failed to answer). If its bucket had a pending newcomer, the newcomer
    /// takes the slot.
    pub fn remove(&mut self, id: &NodeId) -> Option<Contact> {
        let index = self.local.bucket_index(id)?;
        let bucket = self.buckets.get_mut(index)?;
        let pos = bucket.contacts.iter().position(|c| c.id == *id)?;
        let removed = bucket.contacts.remove(pos);
        let pending = bucket.pending.take();
        self.len -= 1;
        self.forget_prefix(&removed.addr);
        if let Some(newcomer) = pending {
            self.insert(*newcomer);
        }
        Some(removed)
    }

    /// Up to `count` contacts closest to `target` by XOR distance, closest first.
    ///
    /// Walks the buckets in order of distance instead of sorting the whole table: with `b` the
    /// bucket `target` falls in, contacts of bucket `b` share more leading bits with the target
    /// than any other, then come all deeper buckets together, then buckets `b - 1` down to 0,
    /// each strictly further than the one before.
    pub fn closest(&self, target: &NodeId, count: usize) -> Vec<Contact> {
        let mut out: Vec<Contact> = Vec::with_capacity(count.min(self.len));
        let mut group: Vec<(Distance, &Contact)> = Vec::new();
        let take_group = |group: &mut Vec<(Distance, &Contact)>, out: &mut Vec<Contact>| {
            group.sort_unstable_by_key(|a| a.0);
            let room = count - out.len();
            out.extend(group.drain(..).take(room).map(|(_, c)| *c));
        };
        let with_distance = |c| (Contact::distance_to(c, target), c);
        match self.local.bucket_index(target) {
            Some(b) => {
                if let Some(bucket) = self.buckets.get(b) {
                    group.extend(bucket.contacts.iter().map(with_distance));
                    take_group(&mut group, &mut out);
                }
                if out.len() < count {
                    for bucket in self.buckets.iter().skip(b + 1) {
                        group.extend(bucket.contacts.iter().map(with_distance));
                    }
                    take_group(&mut group, &mut out);
                }
                for bucket in self.buckets.iter().take(b).rev() {
                    if out.len() >= count {
                        break;
                    }
                    group.extend(bucket.contacts.iter().map(with_distance));
                    take_group(&mut group, &mut out);
                }
            }
            None => {
                for bucket in self.buckets.iter().rev() {
                    if out.len() >= count {
                        break;
                    }
                    group.extend(bucket.contacts.iter().map(with_distance));
                    take_group(&mut group, &mut out);
                }
            }
        }
        out
    }

    /// Notes that bucket `index` was refreshed (a lookup for an id in its range ran) at `now_ms`.
    pub fn mark_refreshed(&mut self, index: usize, now_ms: u64) {
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        self.buckets[index].refreshed_at_ms = now_ms;
    }

    /// Notes a lookup for `target` ran: the bucket it falls in counts as refreshed.
    pub fn mark_lookup(&mut self, target: &NodeId, now_ms: u64) {
        if let Some(index) = self.local.bucket_index(target) {
            self.mark_refreshed(index, now_ms);
        }
    }

    /// Buckets that need a refresh at `now_ms`: those not refreshed for `interval_ms`, from the
    /// far half of the key space down to one past the deepest bucket in use (deeper buckets are
    /// empty by nature in a network of this size and are covered by the self-lookup).
    pub fn buckets_to_refresh(&self, now_ms: u64, interval_ms: u64) -> Vec<usize> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.contacts.is_empty())
            .map_or(0, |i| i + 1);
        (0..=deepest.min(BUCKETS - 1))
            .filter(|&i| {
                let at = self.buckets.get(i).map_or(0, |b| b.refreshed_at_ms);
                now_ms.saturating_sub(at) >= interval_ms || at == 0
            })
            .collect()
    }

    /// A random id in bucket `index`, to look up when refreshing it.
    pub fn refresh_target(&self, index: usize, rng: &mut impl Rng) -> NodeId {
        self.local.random_in_bucket(index, rng)
    }

    /// The table as a serialisable snapshot (contacts least-recently-seen first per bucket, so a
    /// restore keeps the eviction order).
    pub fn to_snapshot(&self) -> RoutingSnapshot {
        RoutingSnapshot {
            version: RoutingSnapshot::VERSION,
            local_id: self.local,
            contacts: self
                .iter()
                .map(|c| SnapshotContact {
                    peer: *c.peer.as_bytes(),
                    addr: c.addr,
                })
                .collect(),
        }
    }

    /// Rebuilds a table from a snapshot taken by the node with id `local`. Every entry is
    /// revalidated: the key must be a valid ed25519 key, the address usable, the entry not this
    /// node and not a duplicate; such faults refuse the whole snapshot (it is corrupt or forged).
    /// Entries that exceed the limits of `config` (which may be stricter than when the snapshot
    /// was taken) are dropped and counted in the returned report.
    pub fn from_snapshot(
        local: NodeId,
        config: RoutingConfig,
        snapshot: &RoutingSnapshot,
    ) -> Result<(Self, RestoreReport), SnapshotError> {
        if snapshot.version != RoutingSnapshot::VERSION {
            return Err(SnapshotError::UnknownVersion(snapshot.version));
        }
        if snapshot.local_id != local {
            return Err(SnapshotError::OtherNode);
        }
        let mut table = Self::new(local, config);
        let mut report = RestoreReport::default();
        for (index, entry) in snapshot.contacts.iter().enumerate() {
            let peer =
                PeerId::from_bytes(&entry.peer).map_err(|_| SnapshotError::InvalidEntry {
                    index,
                    reason: "invalid key",
                })?;
            let contact = Contact::new(peer, entry.addr);
            if table.get(&contact.id).is_some() {
                return Err(SnapshotError::InvalidEntry {
                    index,
                    reason: "duplicate",
                });
            }
            match table.insert(contact) {
                InsertOutcome::Inserted => report.restored += 1,
                InsertOutcome::Updated => unreachable!("duplicates are refused above"),
                InsertOutcome::PendingEviction { .. } => {
                    table.drop_pending(&contact.id);
                    report.dropped += 1;
                }
                InsertOutcome::Refused(Refusal::SelfContact) => {
                    return Err(SnapshotError::InvalidEntry {
                        index,
                        reason: "local node",
                    });
                }
                InsertOutcome::Refused(Refusal::BadAddress) => {
                    return Err(SnapshotError::InvalidEntry {
                        index,
                        reason: "unusable address",
                    });
                }
                InsertOutcome::Refused(_) => report.dropped += 1,
            }
        }
        Ok((table, report))
    }

    fn drop_pending(&mut self, id: &NodeId) {
        if let Some(index) = self.local.bucket_index(id)
            && let Some(bucket) = self.buckets.get_mut(index)
        {
            bucket.pending = None;
        }
    }
}

/// A routing table at rest (serde; the node stores it as JSON or in its database).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingSnapshot {
    /// Format version, [`RoutingSnapshot::VERSION`].
    pub version: u32,
    /// The node the table belongs to: a table is only meaningful around its own id.
    pub local_id: NodeId,
    /// Contacts, bucket by bucket, least-recently-seen first.
    pub contacts: Vec<SnapshotContact>,
}

impl RoutingSnapshot {
    /// The current snapshot format.
    pub const VERSION: u32 = 1;
}

/// One contact at rest: the id is not stored, it is recomputed from the key on restore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotContact {
    /// The ed25519 public key.
    pub peer: [u8; 32],
    /// Its last known DHT address.
    pub addr: SocketAddr,
}

/// What a restore kept and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Entries back in the table.
    pub restored: usize,
    /// Valid entries dropped by the current limits (full buckets, prefix limits).
    pub dropped: usize,
}

/// Why a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Written by an unknown format version.
    #[error("unknown routing snapshot version {0}")]
    UnknownVersion(u32),
    /// Taken by another node (its buckets are laid out around another id).
    #[error("routing snapshot belongs to another node")]
    OtherNode,
    /// An entry is invalid: the snapshot is corrupt or forged.
    #[error("routing snapshot entry {index}: {reason}")]
    InvalidEntry {
        /// Position of the entry.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};

    fn peer(rng: &mut StdRng) -> PeerId {
        let key = ed25519_dalek::SigningKey::generate(rng);
        PeerId::from_bytes(key.verifying_key().as_bytes()).unwrap()
    }

    /// A contact in bucket `index` of `local`, at a fresh /24.
    fn contact_in_bucket(local: &NodeId, index: usize, rng: &mut StdRng, n: u32) -> Contact {
        loop {
            let c = Contact::new(peer(rng), addr_v4(n));
            if local.bucket_index(&c.id) == Some(index) {
                return c;
            }
        }
    }

    fn addr_v4(n: u32) -> SocketAddr {
        // One /24 per n: 10.x.y.1.
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 1),
            4000,
        ))
    }

    #[test]
    fn insert_update_and_refuse_self() {
        let mut rng = StdRng::seed_from_u64(1);
        let me = peer(&mut rng);
        let local = NodeId::of_peer(&me);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        assert_eq!(
            table.insert(Contact::new(me, addr_v4(1))),
            InsertOutcome::Refused(Refusal::SelfContact)
        );
        let c = Contact::new(peer(&mut rng), addr_v4(2));
        assert_eq!(table.insert(c), InsertOutcome::Inserted);
        assert_eq!(table.insert(c), InsertOutcome::Updated);
        assert_eq!(table.len(), 1);
        let bad = Contact::new(peer(&mut rng), "0.0.0.0:1".parse().unwrap());
        assert_eq!(
            table.insert(bad),
            InsertOutcome::Refused(Refusal::BadAddress)
        );
        assert_eq!(table.remove(&c.id), Some(c));
        assert!(table.is_empty());
    }

    #[test]
    fn full_bucket_pings_the_oldest_and_keeps_it_if_alive() {
        let mut rng = StdRng::seed_from_u64(2);
        let local = NodeId::random(&mut rng);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        let contacts: Vec<Contact> = (0..20)
            .map(|n| contact_in_bucket(&local, 0, &mut rng, n))
            .collect();
        for c in &contacts {
            assert_eq!(table.insert(*c), InsertOutcome::Inserted);
        }
        // Seeing contact 0 again makes contact 1 the oldest.
        assert_eq!(table.insert(contacts[0]), InsertOutcome::Updated);
        let newcomer = contact_in_bucket(&local, 0, &mut rng, 100);
        assert_eq!(
            table.insert(newcomer),
            InsertOutcome::PendingEviction {
                oldest: contacts[1]
            }
        );
        // A second newcomer is refused while the eviction is pending.
        let other = contact_in_bucket(&local, 0, &mut rng, 101);
        assert_eq!(
            table.insert(other),
            InsertOutcome::Refused(Refusal::BucketBusy)
        );
        // The oldest answered: it stays, newest now; the newcomer is dropped.
        table.resolve_eviction(&contacts[1].id, true);
        assert_eq!(table.bucket(0).last(), Some(&contacts[1]));
        assert!(table.get(&newcomer.id).is_none());
        assert_eq!(table.len(), 20);
    }

    #[test]
    fn full_bucket_replaces_the_oldest_if_it_is_dead() {
        let mut rng = StdRng::seed_from_u64(3);
        let local = NodeId::random(&mut rng);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        let contacts: Vec<Contact> = (0..20)
            .map(|n| contact_in_bucket(&local, 1, &mut rng, n))
            .collect();
        for c in &contacts {
            table.insert(*c);
        }
        let newcomer = contact_in_bucket(&local, 1, &mut rng, 100);
        let InsertOutcome::PendingEviction { oldest } = table.insert(newcomer) else {
            panic!("expected a pending eviction");
        };
        assert_eq!(oldest, contacts[0]);
        table.resolve_eviction(&oldest.id, false);
        assert!(table.get(&oldest.id).is_none());
        assert_eq!(table.get(&newcomer.id), Some(&newcomer));
        assert_eq!(table.len(), 20);
    }

    #[test]
    fn prefix_limits_per_bucket_and_per_table() {
        let mut rng = StdRng::seed_from_u64(4);
        let local = NodeId::random(&mut rng);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        let same_prefix =
            |host: u8| -> SocketAddr { format!("203.0.113.{host}:5000").parse().unwrap() };
        // Two per bucket from 203.0.113.0/24.
        let mut in_bucket0 = Vec::new();
        for host in 1..=3u8 {
            let mut c = contact_in_bucket(&local, 0, &mut rng, 0);
            c.addr = same_prefix(host);
            in_bucket0.push(table.insert(c));
        }
        assert_eq!(
            in_bucket0,
            vec![
                InsertOutcome::Inserted,
                InsertOutcome::Inserted,
                InsertOutcome::Refused(Refusal::PrefixFullInBucket)
            ]
        );
        // Ten in the table: 2 in each of buckets 0..5.
        let mut host = 10u8;
        for index in 1..5 {
            for _ in 0..2 {
                let mut c = contact_in_bucket(&local, index, &mut rng, 0);
                c.addr = same_prefix(host);
                host += 1;
                assert_eq!(table.insert(c), InsertOutcome::Inserted);
            }
        }
        let mut c = contact_in_bucket(&local, 5, &mut rng, 0);
        c.addr = same_prefix(200);
        assert_eq!(
            table.insert(c),
            InsertOutcome::Refused(Refusal::PrefixFullInTable)
        );
        // Another prefix is fine.
        c.addr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(table.insert(c), InsertOutcome::Inserted);
        // IPv6 groups by /48; IPv4-mapped addresses count as their IPv4 /24.
        let v6 = |last: u16| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last)),
                1,
            )
        };
        let mut results = Vec::new();
        for last in 1..=3 {
            let mut c = contact_in_bucket(&local, 6, &mut rng, 0);
            c.addr = v6(last);
            results.push(table.insert(c));
        }
        assert_eq!(
            results[2],
            InsertOutcome::Refused(Refusal::PrefixFullInBucket)
        );
        let mut mapped = contact_in_bucket(&local, 0, &mut rng, 0);
        mapped.addr = "[::ffff:203.0.113.99]:1".parse().unwrap();
        assert_eq!(
            table.insert(mapped),
            InsertOutcome::Refused(Refusal::PrefixFullInBucket)
        );
    }

    #[test]
    fn closest_returns_sorted_by_distance() {
        let mut rng = StdRng::seed_from_u64(5);
        let local = NodeId::random(&mut rng);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        for n in 0..300 {
            table.insert(Contact::new(peer(&mut rng), addr_v4(n)));
        }
        for round in 0..50 {
            let target = if round == 0 {
                local
            } else {
                NodeId::random(&mut rng)
            };
            for count in [1, 20, 1000] {
                let closest = table.closest(&target, count);
                let mut all: Vec<Contact> = table.iter().copied().collect();
                all.sort_by_key(|c| c.id.distance(&target));
                all.truncate(count);
                assert_eq!(closest, all);
            }
        }
    }

    #[test]
    fn refresh_bookkeeping() {
        let mut rng = StdRng::seed_from_u64(6);
        let local = NodeId::random(&mut rng);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        for n in 0..50 {
            table.insert(Contact::new(peer(&mut rng), addr_v4(n)));
        }
        let due = table.buckets_to_refresh(1_000, 900_000);
        assert!(due.contains(&0));
        for index in &due {
            let target = table.refresh_target(*index, &mut rng);
            table.mark_lookup(&target, 1_000);
        }
        assert!(table.buckets_to_refresh(2_000, 900_000).is_empty());
        assert_eq!(table.buckets_to_refresh(1_000 + 900_000, 900_000), due);
    }

    #[test]
    fn snapshot_round_trip_and_refusals() {
        let mut rng = StdRng::seed_from_u64(7);
        let me = peer(&mut rng);
        let local = NodeId::of_peer(&me);
        let mut table = RoutingTable::new(local, RoutingConfig::default());
        for n in 0..100 {
            table.insert(Contact::new(peer(&mut rng), addr_v4(n)));
        }
        let snapshot = table.to_snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: RoutingSnapshot = serde_json::from_str(&json).unwrap();
        let (restored, report) =
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &back).unwrap();
        assert_eq!(
            report,
            RestoreReport {
                restored: table.len(),
                dropped: 0
            }
        );
        assert_eq!(restored.to_snapshot(), snapshot);

        let other = NodeId::random(&mut rng);
        assert_eq!(
            RoutingTable::from_snapshot(other, RoutingConfig::default(), &snapshot).unwrap_err(),
            SnapshotError::OtherNode
        );
        let mut bad = snapshot.clone();
        bad.version = 2;
        assert!(matches!(
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &bad),
            Err(SnapshotError::UnknownVersion(2))
        ));
        let mut bad = snapshot.clone();
        bad.contacts[3].peer = [0u8; 32]; // a small-order point
        assert!(matches!(
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &bad),
            Err(SnapshotError::InvalidEntry { index: 3, .. })
        ));
        let mut bad = snapshot.clone();
        bad.contacts[4].addr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &bad),
            Err(SnapshotError::InvalidEntry { index: 4, .. })
        ));
        let mut bad = snapshot.clone();
        bad.contacts.push(bad.contacts[0].clone());
        assert!(matches!(
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &bad),
            Err(SnapshotError::InvalidEntry {
                reason: "duplicate",
                ..
            })
        ));
        let mut bad = snapshot.clone();
        bad.contacts[0].peer = *me.as_bytes();
        assert!(matches!(
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &bad),
            Err(SnapshotError::InvalidEntry {
                reason: "local node",
                ..
            })
        ));
        // A forged snapshot of one prefix cannot bypass the diversity limits.
        let mut forged = snapshot.clone();
        for (i, c) in forged.contacts.iter_mut().enumerate() {
            c.addr = format!("203.0.113.{}:1", i % 250 + 1).parse().unwrap();
        }
        let (restored, report) =
            RoutingTable::from_snapshot(local, RoutingConfig::default(), &forged).unwrap();
        assert_eq!(restored.len(), 10);
        assert_eq!(report.dropped, forged.contacts.len() - 10);
    }
}
