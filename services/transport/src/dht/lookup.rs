//! The iterative lookup as a sans-IO state machine.
//!
//! [`LookupState`] runs Kademlia's parallel iterative FIND_NODE: it keeps the candidates it has
//! heard of sorted by distance to the target, hands out up to `alpha` queries at a time
//! ([`LookupState::next_queries`]), and is fed the outcome of each one: the contacts a node
//! returned ([`LookupState::on_response`]), or its failure ([`LookupState::on_failure`], or a
//! timeout noticed by [`LookupState::expire`]). It finishes when the `k` closest candidates that
//! did not fail have all answered, so a dead node among the closest is routed around rather than
//! ending the lookup. The same code runs in the in-process simulator and, later, over UDP: the
//! driver owns the clock, the sockets and the transaction ids.
//!
//! **Hops.** Each candidate carries the depth of the path by which it was learnt: the seeds
//! from our own table are at depth 1 (one message away), a contact returned by a node at depth
//! `d` is at depth `d + 1`. The lookup's hop count is the depth of the closest node that
//! answered: the number of sequential request/response rounds needed to reach it with
//! unlimited parallelism. It is not the number of messages sent, which is reported separately.

use std::collections::HashSet;

use super::id::{Distance, IdHashBuilder, NodeId};
use super::routing::Contact;

/// Parameters of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupConfig {
    /// Queries in flight at once (Kademlia's alpha).
    pub alpha: usize,
    /// How many closest nodes the lookup converges on.
    pub k: usize,
    /// A query not answered within this many milliseconds counts as failed.
    pub timeout_ms: u64,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            alpha: 3,
            k: 20,
            timeout_ms: 2_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    NotQueried,
    InFlight { sent_at_ms: u64 },
    Answered,
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    contact: Contact,
    distance: Distance,
    depth: u16,
    progress: Progress,
}

/// What a finished (or abandoned) lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupOutcome {
    /// Up to `k` closest nodes that answered, closest first.
    pub closest: Vec<Contact>,
    /// Depth of the path to the closest node that answered (see the module docs); 0 if none did.
    pub hops: u16,
    /// Queries sent.
    pub queried: usize,
    /// Queries that failed or timed out.
    pub failed: usize,
}

/// One iterative lookup for `target`.
#[derive(Clone, Debug)]
pub struct LookupState {
    target: NodeId,
    config: LookupConfig,
    /// Sorted by distance, closest first; bounded (see `MAX_CANDIDATES_FACTOR`).
    candidates: Vec<Candidate>,
    /// Every id ever added. Ids are BLAKE3 of keys, computed by us, so the cheap id hasher is
    /// safe enough; a lookup holds a few hundred at most.
    seen: HashSet<NodeId, IdHashBuilder>,
    in_flight: usize,
    queried: usize,
    failed: usize,
}

/// The candidate list keeps at most `k` times this many entries: candidates further than that are
/// never queried by a lookup that converges on k.
const MAX_CANDIDATES_FACTOR: usize = 4;

impl LookupState {
    /// A lookup for `target` starting from `seeds`: our own table's closest contacts to it, best
    /// 2k of them, so that dead contacts among the first k are replaced from our own knowledge
    /// (the candidate list keeps up to 4k).
    pub fn new(
        target: NodeId,
        seeds: impl IntoIterator<Item = Contact>,
        config: LookupConfig,
    ) -> Self {
        let mut state = Self {
            target,
            config,
            candidates: Vec::new(),
            seen: HashSet::default(),
            in_flight: 0,
            queried: 0,
            failed: 0,
        };
        state.add(seeds, 1);
        state
    }

    /// The same lookup, never querying `local` (our own id, which other nodes may return).
    pub fn excluding(mut self, local: NodeId) -> Self {
        self.seen.insert(local);
        self.candidates.retain(|c| c.contact.id != local);
        self
    }

    /// The id being looked up.
    pub fn target(&self) -> NodeId {
        self.target
    }

    fn add(&mut self, contacts: impl IntoIterator<Item = Contact>, depth: u16) {
        for contact in contacts {
            if !self.seen.insert(contact.id) {
                continue;
            }
            let distance = contact.id.distance(&self.target);
            let pos = self.candidates.partition_point(|c| c.distance < distance);
            if pos >= self.config.k * MAX_CANDIDATES_FACTOR {
                continue;
            }
            self.candidates.insert(
                pos,
                Candidate {
                    contact,
                    distance,
                    depth,
                    progress: Progress::NotQueried,
                },
            );
        }
        // Trim the far end, but never forget a query in flight.
        let cap = self.config.k * MAX_CANDIDATES_FACTOR;
        while self.candidates.len() > cap {
            let last = self.candidates.len() - 1;
            if matches!(self.candidates[last].progress, Progress::InFlight { .. }) {
                break;
            }
            self.candidates.pop();
        }
    }

    /// The next nodes to query (at most `alpha` in flight), marked as sent at `now_ms`. Only the
    /// `k` closest candidates that have not failed are ever queried: anything further cannot
    /// change the result.
    pub fn next_queries(&mut self, now_ms: u64) -> Vec<Contact> {
        let mut out = Vec::new();
        let mut live_seen = 0;
        for candidate in &mut self.candidates {
            if self.in_flight >= self.config.alpha || live_seen >= self.config.k {
                break;
            }
            match candidate.progress {
                Progress::Failed => continue,
                Progress::NotQueried => {
                    candidate.progress = Progress::InFlight { sent_at_ms: now_ms };
                    self.in_flight += 1;
                    self.queried += 1;
                    out.push(candidate.contact);
                }
                Progress::InFlight { .. } | Progress::Answered => {}
            }
            live_seen += 1;
        }
        out
    }

    fn find_in_flight(&mut self, id: &NodeId) -> Option<&mut Candidate> {
        self.candidates
            .iter_mut()
            .find(|c| c.contact.id == *id && matches!(c.progress, Progress::InFlight { .. }))
    }

    /// `from` answered with `contacts`. Answers from nodes we did not query, or already heard
    /// from, are ignored (the driver should also have matched the transaction id).
    pub fn on_response(&mut self, from: &NodeId, contacts: impl IntoIterator<Item = Contact>) {
        let Some(candidate) = self.find_in_flight(from) else {
            return;
        };
        candidate.progress = Progress::Answered;
        let depth = candidate.depth.saturating_add(1);
        self.in_flight -= 1;
        self.add(contacts.into_iter().take(self.config.k), depth);
    }

    /// The query to `from` failed (unreachable, or an invalid answer).
    pub fn on_failure(&mut self, from: &NodeId) {
        if let Some(candidate) = self.find_in_flight(from) {
            candidate.progress = Progress::Failed;
            self.in_flight -= 1;
            self.failed += 1;
        }
    }

    /// Fails every query sent more than `timeout_ms` before `now_ms`; returns the nodes that
    /// timed out (the driver may drop them from its routing table).
    pub fn expire(&mut self, now_ms: u64) -> Vec<NodeId> {
        let timeout = self.config.timeout_ms;
        let mut expired = Vec::new();
        for candidate in &mut self.candidates {
            if let Progress::InFlight { sent_at_ms } = candidate.progress
                && now_ms.saturating_sub(sent_at_ms) >= timeout
            {
                candidate.progress = Progress::Failed;
                expired.push(candidate.contact.id);
            }
        }
        self.in_flight -= expired.len();
        self.failed += expired.len();
        expired
    }

    /// Queries currently in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether the lookup is over: the `k` closest candidates that did not fail have all
    /// answered, or there is nobody left to ask.
    pub fn is_finished(&self) -> bool {
        let mut live_seen = 0;
        for candidate in &self.candidates {
            if live_seen >= self.config.k {
                break;
            }
            match candidate.progress {
                Progress::Failed => continue,
                Progress::Answered => live_seen += 1,
                Progress::NotQueried | Progress::InFlight { .. } => return false,
            }
        }
        true
    }

    /// Whether the target itself answered (a lookup for an existing node's id).
    pub fn found_target(&self) -> bool {
        self.candidates
            .first()
            .is_some_and(|c| c.contact.id == self.target && c.progress == Progress::Answered)
    }

    /// What the lookup found so far.
    pub fn outcome(&self) -> LookupOutcome {
        let answered: Vec<&Candidate> = self
            .candidates
            .iter()
            .filter(|c| c.progress == Progress::Answered)
            .take(self.config.k)
            .collect();
        LookupOutcome {
            closest: answered.iter().map(|c| c.contact).collect(),
            hops: answered.first().map_or(0, |c| c.depth),
            queried: self.queried,
            failed: self.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::routing::{RoutingConfig, RoutingTable};
    use crate::peer::PeerId;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashMap;

    fn contact(rng: &mut StdRng, n: u32) -> Contact {
        let key = ed25519_dalek::SigningKey::generate(rng);
        let peer = PeerId::from_bytes(key.verifying_key().as_bytes()).unwrap();
        Contact::new(
            peer,
            format!("10.{}.{}.1:4000", (n >> 8) as u8, n as u8)
                .parse()
                .unwrap(),
        )
    }

    /// 200 nodes, each knowing everyone (limits off); 20 of them dead. A lookup from any node
    /// must find exactly the true 20 closest live nodes.
    #[test]
    fn converges_on_the_true_closest_and_routes_around_the_dead() {
        let mut rng = StdRng::seed_from_u64(11);
        let nodes: Vec<Contact> = (0..200).map(|n| contact(&mut rng, n)).collect();
        let dead: HashSet<NodeId> = nodes[..20].iter().map(|c| c.id).collect();
        // Small, partial tables: each node knows 30 random others.
        let mut tables: HashMap<NodeId, RoutingTable> = HashMap::new();
        for c in &nodes {
            let mut t = RoutingTable::new(c.id, RoutingConfig::default());
            for other in nodes.iter().filter(|o| o.id != c.id) {
                if rand::Rng::gen_bool(&mut rng, 0.3) {
                    t.insert(*other);
                }
            }
            tables.insert(c.id, t);
        }
        let start = nodes[100];
        let target = NodeId::random(&mut rng);
        let seeds = tables[&start.id].closest(&target, 20);
        let mut lookup = LookupState::new(target, seeds, LookupConfig::default());
        let mut now = 0;
        while !lookup.is_finished() {
            let queries = lookup.next_queries(now);
            assert!(!queries.is_empty() || lookup.in_flight() > 0);
            for q in queries {
                if dead.contains(&q.id) {
                    continue; // never answers: it will time out
                }
                let answer = tables[&q.id].closest(&target, 20);
                lookup.on_response(&q.id, answer);
            }
            now += 2_500;
            lookup.expire(now);
            assert!(now < 1_000_000, "lookup does not terminate");
        }
        let mut live: Vec<Contact> = nodes
            .iter()
            .filter(|c| !dead.contains(&c.id))
            .copied()
            .collect();
        live.sort_by_key(|c| c.id.distance(&target));
        let outcome = lookup.outcome();
        assert_eq!(outcome.closest, live[..20].to_vec());
        assert!(outcome.hops >= 1);
        assert!(outcome.queried >= 20);
    }

    #[test]
    fn parallelism_is_bounded_by_alpha() {
        let mut rng = StdRng::seed_from_u64(12);
        let seeds: Vec<Contact> = (0..10).map(|n| contact(&mut rng, n)).collect();
        let mut lookup = LookupState::new(
            NodeId::random(&mut rng),
            seeds.clone(),
            LookupConfig::default(),
        )
        .excluding(seeds[0].id);
        lookup.on_response(&seeds[0].id, vec![seeds[0]]);
        assert_eq!(lookup.next_queries(0).len(), 3);
        assert!(lookup.next_queries(0).is_empty());
        lookup.on_response(&seeds[1].id, vec![seeds[0]]);
        assert!(
            lookup.next_queries(0).iter().all(|c| c.id != seeds[0].id),
            "our own id is never queried"
        );
        let mut lookup = LookupState::new(NodeId::random(&mut rng), seeds, LookupConfig::default());
        assert_eq!(lookup.next_queries(0).len(), 3);
        assert!(lookup.next_queries(0).is_empty());
        let expired = lookup.expire(1_999);
        assert!(expired.is_empty());
        assert_eq!(lookup.expire(2_000).len(), 3);
        assert_eq!(lookup.next_queries(2_000).len(), 3);
        assert_eq!(lookup.outcome().failed, 3);
    }

    #[test]
    fn unsolicited_answers_are_ignored() {
        let mut rng = StdRng::seed_from_u64(13);
        let seeds: Vec<Contact> = (0..2).map(|n| contact(&mut rng, n)).collect();
        let stranger = contact(&mut rng, 9);
        let mut lookup = LookupState::new(
            NodeId::random(&mut rng),
            seeds.clone(),
            LookupConfig::default(),
        );
        lookup.on_response(&stranger.id, vec![stranger]);
        lookup.on_response(&seeds[0].id, vec![stranger]); // not sent yet
        assert_eq!(lookup.outcome().closest, vec![]);
        assert_eq!(lookup.next_queries(0).len(), 2);
    }

    #[test]
    fn finds_the_target_node_and_counts_hops() {
        // A chain: node i knows only node i+1; the target is at the end.
        let mut rng = StdRng::seed_from_u64(14);
        let nodes: Vec<Contact> = (0..5).map(|n| contact(&mut rng, n)).collect();
        let target = nodes[4].id;
        let mut lookup = LookupState::new(target, vec![nodes[1]], LookupConfig::default());
        let mut now = 0;
        while !lookup.is_finished() {
            for q in lookup.next_queries(now) {
                let i = nodes.iter().position(|c| c.id == q.id).unwrap();
                let next: Vec<Contact> = nodes.get(i + 1).copied().into_iter().collect();
                lookup.on_response(&q.id, next);
            }
            now += 1;
        }
        assert!(lookup.found_target());
        assert_eq!(lookup.outcome().hops, 4);
    }
}
