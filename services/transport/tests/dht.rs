//! The DHT across modules: a simulated network under churn (the quick CI version of the
//! `dht_sim` benchmark), and lookups driven through the real wire path: requests encoded, decoded
//! by a [`Responder`], answered under the no-amplification rule, matched by transaction id and
//! fed to a [`LookupState`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use kith_transport::dht::message::MAX_DATAGRAM;
use kith_transport::dht::rpc::PendingRequests;
use kith_transport::dht::sim::{SimConfig, Simulation};
use kith_transport::dht::{
    Contact, DhtMessage, LookupConfig, LookupState, MessageBody, NodeId, RecordStore, Responder,
    RoutingConfig, RoutingTable, StoreConfig, Token,
};
use kith_transport::{PeerId, SecretKey};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[test]
fn simulated_network_of_500_finds_live_nodes_after_20_percent_churn() {
    let mut config = SimConfig::new(500);
    config.lookups = 300;
    config.fresh_after_churn = 0.05;
    let report = Simulation::run(config);
    assert_eq!(report.live, 425);
    assert!(
        report.success_rate() >= 0.99,
        "success {}",
        report.success_rate()
    );
    assert!(
        report.hops_quantile(0.5) <= 4,
        "median hops {}",
        report.hops_quantile(0.5)
    );
    assert!(
        report.k_closest_recall(20) >= 0.9,
        "recall {}",
        report.k_closest_recall(20)
    );
}

struct WireNode {
    peer: PeerId,
    addr: SocketAddr,
    responder: Responder,
}

/// 60 nodes on distinct /24s; every node has offered every other to its table (buckets keep
/// what fits); `dead` nodes never answer.
fn network(rng: &mut StdRng) -> Vec<WireNode> {
    let contacts: Vec<Contact> = (0..60u8)
        .map(|i| {
            let peer = SecretKey::from_bytes([i + 1; 32]).peer_id();
            Contact::new(peer, format!("10.0.{i}.1:4000").parse().unwrap())
        })
        .collect();
    contacts
        .iter()
        .map(|me| {
            let mut table = RoutingTable::new(me.id, RoutingConfig::default());
            for other in &contacts {
                table.insert(*other);
            }
            WireNode {
                peer: me.peer,
                addr: me.addr,
                responder: Responder::new(
                    me.peer,
                    table,
                    RecordStore::new(StoreConfig::default()),
                    rng,
                ),
            }
        })
        .collect()
}

#[test]
fn lookup_over_the_wire_codec_converges_and_routes_around_dead_nodes() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut nodes = network(&mut rng);
    let by_addr: HashMap<SocketAddr, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.addr, i)).collect();
    let dead: HashSet<usize> = [3, 17, 29, 41].into_iter().collect();
    let from = 0;
    let target_node = 50;
    let target = NodeId::of_peer(&nodes[target_node].peer);
    let me = (nodes[from].peer, nodes[from].addr);

    let mut pending = PendingRequests::default();
    let mut tokens: HashMap<SocketAddr, Token> = HashMap::new();
    let seeds = nodes[from].responder.table.closest(&target, 40);
    let mut lookup =
        LookupState::new(target, seeds, LookupConfig::default()).excluding(NodeId::of_peer(&me.0));
    let mut now_ms = 1_000_000;
    let mut padded = 0;
    let mut timed_out_ids = Vec::new();
    while !lookup.is_finished() {
        for query in lookup.next_queries(now_ms) {
            let token = tokens.get(&query.addr).copied();
            let mut request = pending.start(
                query.addr,
                Some(me.0),
                MessageBody::FindNode { target, token },
                now_ms,
                &mut rng,
            );
            if token.is_none() {
                // No token for this address yet: pad, so that a full answer is allowed.
                request = request.padded_to(MAX_DATAGRAM).unwrap();
                padded += 1;
            }
            let bytes = request.encode().unwrap();
            let at = by_addr[&query.addr];
            if dead.contains(&at) {
                continue; // lost: the query times out below
            }
            let decoded = DhtMessage::decode(&bytes).unwrap();
            let Some(answer) =
                nodes[at]
                    .responder
                    .handle_request(me.1, &decoded, bytes.len(), now_ms)
            else {
                continue;
            };
            let answer = DhtMessage::decode(&answer.encode().unwrap()).unwrap();
            pending.match_response(query.addr, &answer).unwrap();
            let MessageBody::Nodes {
                token,
                nodes: found,
            } = answer.body
            else {
                panic!("expected nodes");
            };
            if let Some(token) = token {
                tokens.insert(query.addr, token);
            }
            lookup.on_response(&query.id, found);
        }
        now_ms += LookupConfig::default().timeout_ms;
        for timed_out in lookup.expire(now_ms) {
            nodes[from].responder.table.remove(&timed_out);
            timed_out_ids.push(timed_out);
        }
        pending.expire(now_ms, LookupConfig::default().timeout_ms);
    }
    assert!(lookup.found_target());
    let mut live: Vec<NodeId> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !dead.contains(i) && *i != from)
        .map(|(_, n)| NodeId::of_peer(&n.peer))
        .collect();
    live.sort_by_key(|id| id.distance(&target));
    let outcome = lookup.outcome();
    let got: Vec<NodeId> = outcome.closest.iter().map(|c| c.id).collect();
    assert_eq!(got, live[..20].to_vec());
    assert_eq!(
        padded, outcome.queried,
        "every node was new to us, so every request was padded"
    );
    assert!(
        outcome.failed >= 1,
        "at least one dead node was among the closest"
    );
    // The dead nodes that timed out were dropped from our table.
    assert!(!timed_out_ids.is_empty());
    for id in &timed_out_ids {
        assert!(nodes[from].responder.table.get(id).is_none());
    }
}
