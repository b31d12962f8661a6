//! An in-process virtual network for the DHT: thousands of nodes, no sockets.
//!
//! Every simulated node has a real [`RoutingTable`] and runs real [`LookupState`] lookups; only
//! the wire is replaced by function calls. A request to a live node is answered at once (the
//! queried node also records the requester, as a real node's [`super::rpc::Responder`] does once
//! the requester has echoed an address token); a request to a dead node fails, which stands for its timeout. Pending evictions are
//! resolved by "pinging" the oldest contact, that is, asking whether it is alive.
//!
//! [`Simulation::run`] reproduces the benchmark of issue 3: nodes join one after another (a few
//! random bootstrap nodes, a self-lookup, then a refresh of every bucket not yet full, as a real
//! node does), a fraction of them then disappears without telling anyone, optionally fresh
//! nodes join the damaged network, and random live nodes look up the ids of random live nodes.
//! Node ids are BLAKE3 of real ed25519 keys, addresses are random IPv4 ones (so the diversity
//! limits are in force but rarely bind, as on the internet).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::id::{IdHashBuilder, NodeId};
use super::lookup::{LookupConfig, LookupOutcome, LookupState};
use super::routing::{Contact, InsertOutcome, RoutingConfig, RoutingTable};
use crate::peer::PeerId;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes that join before the churn.
    pub nodes: usize,
    /// Fraction of nodes removed silently after the joins (0.2 = 20%).
    pub churn: f64,
    /// Fresh nodes joining after the churn, as a fraction of `nodes`.
    pub fresh_after_churn: f64,
    /// Lookups measured after the churn.
    pub lookups: usize,
    /// Bootstrap nodes each joining node is given.
    pub bootstrap_seeds: usize,
    /// Seed of the simulation's randomness (same seed, same run).
    pub seed: u64,
    /// Routing-table limits of every node.
    pub routing: RoutingConfig,
    /// Lookup parameters of every node.
    pub lookup: LookupConfig,
}

impl SimConfig {
    /// The set-up for `nodes` nodes: 20% churn, 1,000 lookups, 3 bootstrap nodes each.
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            churn: 0.2,
            fresh_after_churn: 0.0,
            lookups: 1_000,
            bootstrap_seeds: 3,
            seed: 0x6b17_4d48,
            routing: RoutingConfig::default(),
            lookup: LookupConfig::default(),
        }
    }
}

/// The measured result of a simulation.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// Nodes that joined in total (including fresh ones after the churn).
    pub joined: usize,
    /// Nodes alive when the lookups ran.
    pub live: usize,
    /// Lookups run.
    pub lookups: usize,
    /// Lookups in which the target node itself answered.
    pub found_target: usize,
    /// Lookups that returned exactly the target's k closest live nodes.
    pub found_k_closest: usize,
    /// Of the target's k closest live nodes, how many the lookups returned, summed.
    pub k_closest_overlap: usize,
    /// Hop count of each lookup (see [`super::lookup`] for the definition), sorted.
    pub hops: Vec<u16>,
    /// Queries sent by each lookup, sorted.
    pub queries: Vec<usize>,
    /// Failed (timed-out) queries over all lookups.
    pub failed_queries: usize,
    /// Mean routing-table size over live nodes.
    pub mean_table_len: f64,
    /// Wall time of the joins (including the fresh ones).
    pub bootstrap_time: Duration,
    /// Wall time of the measured lookups.
    pub lookup_time: Duration,
}

impl SimReport {
    /// Share of lookups that found the target node.
    pub fn success_rate(&self) -> f64 {
        self.found_target as f64 / self.lookups.max(1) as f64
    }

    /// Share of lookups that found the target's exact k closest live nodes.
    pub fn k_closest_rate(&self) -> f64 {
        self.found_k_closest as f64 / self.lookups.max(1) as f64
    }

    /// Mean share of the target's k closest live nodes that a lookup returned.
    pub fn k_closest_recall(&self, k: usize) -> f64 {
        self.k_closest_overlap as f64 / (self.lookups.max(1) * k) as f64
    }

    /// The `q`-quantile of the hop counts (0.5 = median).
    pub fn hops_quantile(&self, q: f64) -> u16 {
        quantile(&self.hops, q)
    }

    /// The `q`-quantile of queries per lookup.
    pub fn queries_quantile(&self, q: f64) -> usize {
        quantile(&self.queries, q)
    }
}

fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

struct SimNode {
    contact: Contact,
    table: RoutingTable,
    alive: bool,
}

/// The virtual network.
pub struct Simulation {
    config: SimConfig,
    nodes: Vec<SimNode>,
    index: HashMap<NodeId, u32, IdHashBuilder>,
    rng: StdRng,
    now_ms: u64,
}

impl Simulation {
    /// An empty network.
    pub fn new(config: SimConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config,
            nodes: Vec::new(),
            index: HashMap::default(),
            rng,
            now_ms: 1,
        }
    }

    fn fresh_contact(&mut self) -> Contact {
        let key = ed25519_dalek::SigningKey::generate(&mut self.rng);
        let peer =
            PeerId::from_bytes(key.verifying_key().as_bytes()).expect("generated keys are valid");
        // A random public-looking IPv4 address (first octet 1..=223: no 0/8, no multicast).
        let ip = Ipv4Addr::new(
            self.rng.gen_range(1..=223),
            self.rng.r#gen(),
            self.rng.r#gen(),
            self.rng.gen_range(1..=254),
        );
        Contact::with_id(
            NodeId::of_peer(&peer),
            peer,
            SocketAddr::V4(SocketAddrV4::new(ip, 4000)),
        )
    }

    /// Node `at` records that it heard from `contact`; a pending eviction is settled at once by
    /// checking whether the oldest contact is still alive (the ping).
    fn observe(&mut self, at: usize, contact: Contact) {
        if let InsertOutcome::PendingEviction { oldest } = self.nodes[at].table.insert(contact) {
            let alive = self
                .index
                .get(&oldest.id)
                .is_some_and(|&i| self.nodes[i as usize].alive);
            self.nodes[at].table.resolve_eviction(&oldest.id, alive);
        }
    }

    /// Runs one lookup for `target` from node `from` to completion.
    fn lookup(&mut self, from: usize, target: NodeId) -> (LookupOutcome, bool) {
        let k = self.config.lookup.k;
        // Seed with more than k: if some of our closest contacts are dead, the next ones are
        // already candidates instead of being lost with our own table.
        let seeds = self.nodes[from].table.closest(&target, 2 * k);
        let me = self.nodes[from].contact;
        let mut state = LookupState::new(target, seeds, self.config.lookup).excluding(me.id);
        while !state.is_finished() {
            let queries = state.next_queries(self.now_ms);
            if queries.is_empty() {
                break; // cannot happen with immediate answers; kept as a guard
            }
            for query in queries {
                let at = self.index[&query.id] as usize;
                if self.nodes[at].alive {
                    self.observe(at, me);
                    let answer = self.nodes[at].table.closest(&target, k);
                    state.on_response(&query.id, answer);
                    self.observe(from, query);
                } else {
                    // Stands for the query's timeout; the dead contact is dropped.
                    state.on_failure(&query.id);
                    self.nodes[from].table.remove(&query.id);
                }
            }
        }
        self.nodes[from].table.mark_lookup(&target, self.now_ms);
        (state.outcome(), state.found_target())
    }

    /// Adds a node and joins it the way a real node joins: bootstrap contacts, a lookup of its
    /// own id, then a refresh of every bucket that is not yet full, up to the deepest one used.
    fn join(&mut self) {
        let contact = self.fresh_contact();
        let at = self.nodes.len();
        let live: Vec<usize> = if at == 0 {
            Vec::new()
        } else {
            (0..self.config.bootstrap_seeds * 4)
                .map(|_| self.rng.gen_range(0..at))
                .filter(|&i| self.nodes[i].alive)
                .take(self.config.bootstrap_seeds)
                .collect()
        };
        self.nodes.push(SimNode {
            contact,
            table: RoutingTable::new(contact.id, self.config.routing.clone()),
            alive: true,
        });
        self.index.insert(contact.id, at as u32);
        for seed in live {
            let seed_contact = self.nodes[seed].contact;
            self.observe(at, seed_contact);
        }
        if at == 0 {
            return;
        }
        self.lookup(at, contact.id);
        let k = self.config.routing.k;
        let due = self.nodes[at]
            .table
            .buckets_to_refresh(self.now_ms, u64::MAX);
        for index in due {
            if self.nodes[at].table.bucket(index).len() >= k {
                self.nodes[at].table.mark_refreshed(index, self.now_ms);
                continue;
            }
            let target = self.nodes[at].table.refresh_target(index, &mut self.rng);
            self.lookup(at, target);
        }
        self.now_ms += 10;
    }

    /// The k closest live nodes to `target` other than `asking` (a lookup never returns the node
    /// that runs it), by brute force: the ground truth.
    fn true_closest(&self, target: &NodeId, asking: usize, k: usize) -> Vec<NodeId> {
        let mut all: Vec<(super::id::Distance, NodeId)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.alive && *i != asking)
            .map(|(_, n)| n)
            .map(|n| (n.contact.id.distance(target), n.contact.id))
            .collect();
        if all.len() > k {
            all.select_nth_unstable_by(k, |a, b| a.0.cmp(&b.0));
            all.truncate(k);
        }
        all.sort_unstable_by_key(|a| a.0);
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// Runs the whole scenario and measures the lookups.
    pub fn run(config: SimConfig) -> SimReport {
        let mut sim = Simulation::new(config.clone());
        let started = Instant::now();
        for _ in 0..config.nodes {
            sim.join();
        }
        let mut order: Vec<usize> = (0..sim.nodes.len()).collect();
        order.shuffle(&mut sim.rng);
        let removed = (config.nodes as f64 * config.churn).round() as usize;
        for &i in &order[..removed] {
            sim.nodes[i].alive = false;
        }
        let fresh = (config.nodes as f64 * config.fresh_after_churn).round() as usize;
        for _ in 0..fresh {
            sim.join();
        }
        let bootstrap_time = started.elapsed();

        let live: Vec<usize> = (0..sim.nodes.len())
            .filter(|&i| sim.nodes[i].alive)
            .collect();
        let mean_table_len = live
            .iter()
            .map(|&i| sim.nodes[i].table.len())
            .sum::<usize>() as f64
            / live.len() as f64;
        let started = Instant::now();
        let mut report = SimReport {
            joined: sim.nodes.len(),
            live: live.len(),
            lookups: config.lookups,
            found_target: 0,
            found_k_closest: 0,
            k_closest_overlap: 0,
            hops: Vec::with_capacity(config.lookups),
            queries: Vec::with_capacity(config.lookups),
            failed_queries: 0,
            mean_table_len,
            bootstrap_time,
            lookup_time: Duration::ZERO,
        };
        let mut truth_time = Duration::ZERO;
        for _ in 0..config.lookups {
            let from = live[sim.rng.gen_range(0..live.len())];
            let target_node = loop {
                let t = live[sim.rng.gen_range(0..live.len())];
                if t != from {
                    break t;
                }
            };
            let target = sim.nodes[target_node].contact.id;
            let (outcome, found) = sim.lookup(from, target);
            let truth_started = Instant::now();
            let truth = sim.true_closest(&target, from, config.lookup.k);
            truth_time += truth_started.elapsed();
            let got: Vec<NodeId> = outcome.closest.iter().map(|c| c.id).collect();
            report.found_target += usize::from(found);
            report.found_k_closest += usize::from(got == truth);
            report.k_closest_overlap += truth.iter().filter(|id| got.contains(id)).count();
            report.hops.push(outcome.hops);
            report.queries.push(outcome.queried);
            report.failed_queries += outcome.failed;
        }
        report.lookup_time = started.elapsed().saturating_sub(truth_time);
        report.hops.sort_unstable();
        report.queries.sort_unstable();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_network_finds_everyone() {
        let mut config = SimConfig::new(60);
        config.lookups = 100;
        config.churn = 0.0;
        let report = Simulation::run(config);
        assert_eq!(report.found_target, 100);
        assert_eq!(report.found_k_closest, 100);
    }
}
