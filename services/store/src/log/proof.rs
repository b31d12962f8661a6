//! Proofs against a signed root.
//!
//! A proof shows that some entries (a contiguous range, possibly empty) and some *revealed* nodes
//! belong to the tree a [`SignedRoot`] signs. Prover and verifier walk the same path: from each
//! peak of the signed length, descend into every node that has a proven entry or a revealed node
//! strictly below it; every other node on the way is taken whole from the proof. The verifier
//! computes leaves from the entry bytes, hashes upward, and compares the root hash it gets with
//! the signed one. The proof is therefore just the list of those whole nodes, in walk order: no
//! indices to forge, and a proof for `[start, end)` at length `n` has `O(log n)` nodes.
//!
//! Revealed nodes serve two purposes: an *upgrade* reveals the peaks of a shorter root the
//! receiver already holds (so the receiver checks that the longer root extends what it has), and a
//! [`super::NodeClaim`] reveals one node (the half of fork evidence that says "under this root,
//! node `i` is `h`").
//!
//! Everything the verifier computed or took is returned as [`Verified`]: after the root hash
//! matched, every one of those nodes is proven, and a sparse holder may store them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::root::SignedRoot;
use super::tree::{self, Node};
use super::{MAX_BATCH_ENTRIES, MAX_ENTRY_BYTES};
use crate::error::StoreError;

/// The most nodes a proof may carry (far more than any honest proof needs: `O(log n)` per
/// revealed node and range edge).
pub const MAX_PROOF_NODES: usize = 1024;

/// What is being proven at a given length: entries `[start, start + count)` and the nodes in
/// `reveal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    pub start: u64,
    pub count: u64,
    pub reveal: Vec<u64>,
}

impl Targets {
    /// Entries `[start, start + count)`.
    pub fn range(start: u64, count: u64) -> Self {
        Targets {
            start,
            count,
            reveal: Vec::new(),
        }
    }

    /// Entries `[start, start + count)`, and the peaks of a tree of `known_length` entries (an
    /// upgrade from a root the receiver holds).
    pub fn range_upgrading_from(start: u64, count: u64, known_length: u64) -> Self {
        Targets {
            start,
            count,
            reveal: tree::full_roots(known_length),
        }
    }

    /// One node.
    pub fn node(index: u64) -> Self {
        Targets {
            start: 0,
            count: 0,
            reveal: vec![index],
        }
    }

    fn end(&self) -> u64 {
        self.start + self.count
    }

    /// Checks that the targets fit a tree of `length` entries.
    fn check(&self, length: u64) -> Result<(), StoreError> {
        let end = self
            .start
            .checked_add(self.count)
            .ok_or(StoreError::OutOfRange)?;
        if end > length {
            return Err(StoreError::OutOfRange);
        }
        if self.reveal.len() > 64 {
            return Err(StoreError::Malformed("too many revealed nodes"));
        }
        for (k, &r) in self.reveal.iter().enumerate() {
            if tree::depth(r) >= 63 || tree::span(r).1 > length {
                return Err(StoreError::OutOfRange);
            }
            // Revealed nodes must be disjoint: neither may lie under the other.
            for &other in &self.reveal[k + 1..] {
                let (a, b) = tree::span(r);
                let (c, d) = tree::span(other);
                if a < d && c < b {
                    return Err(StoreError::Malformed("revealed nodes overlap"));
                }
            }
        }
        Ok(())
    }

    fn data_under(&self, index: u64) -> bool {
        let (a, b) = tree::span(index);
        self.count > 0 && a < self.end() && self.start < b
    }

    fn reveal_strictly_under(&self, index: u64) -> bool {
        let (a, b) = tree::span(index);
        self.reveal.iter().any(|&r| {
            let (c, d) = tree::span(r);
            r != index && a <= c && d <= b
        })
    }
}

/// The nodes a verifier cannot compute itself, in walk order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub nodes: Vec<Node>,
}

/// What a verified proof established: the root it was checked against and every node on the
/// walk (entry leaves, computed parents, nodes taken from the proof, revealed nodes, peaks).
#[derive(Clone, Debug)]
pub struct Verified {
    pub root: SignedRoot,
    pub nodes: BTreeMap<u64, Node>,
}

/// What the walk does at a node it does not descend into.
enum Step {
    /// Descend into the children (or compute the leaf from data).
    Descend,
    /// Take the node whole.
    Take,
}

fn step(targets: &Targets, index: u64) -> Step {
    if targets.data_under(index) || targets.reveal_strictly_under(index) {
        Step::Descend
    } else {
        Step::Take
    }
}

/// The indices of the nodes a prover must supply for `targets` at `length`, in walk order.
pub fn required_nodes(length: u64, targets: &Targets) -> Result<Vec<u64>, StoreError> {
    targets.check(length)?;
    fn walk(targets: &Targets, index: u64, out: &mut Vec<u64>) {
        match step(targets, index) {
            Step::Take => out.push(index),
            Step::Descend => {
                if let Some((l, r)) = tree::children(index) {
                    walk(targets, l, out);
                    walk(targets, r, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for peak in tree::full_roots(length) {
        walk(targets, peak, &mut out);
    }
    Ok(out)
}

impl Proof {
    /// Builds the proof for `targets` at `length` from a holder's nodes. A node the holder does not
    /// have is [`StoreError::NotHeld`].
    pub fn build(
        length: u64,
        targets: &Targets,
        mut lookup: impl FnMut(u64) -> Option<Node>,
    ) -> Result<Proof, StoreError> {
        let nodes = required_nodes(length, targets)?
            .into_iter()
            .map(|i| lookup(i).ok_or(StoreError::NotHeld { index: i }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Proof { nodes })
    }

    /// Verifies that `entries` are entries `[start, start + entries.len())` and that the nodes at
    /// `reveal` are as the proof says, under `root`.
    pub fn verify<E: AsRef<[u8]>>(
        &self,
        root: &SignedRoot,
        start: u64,
        entries: &[E],
        reveal: &[u64],
    ) -> Result<Verified, StoreError> {
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(StoreError::BatchTooLarge {
                count: entries.len(),
            });
        }
        if self.nodes.len() > MAX_PROOF_NODES {
            return Err(StoreError::Malformed("proof has too many nodes"));
        }
        for e in entries {
            let size = e.as_ref().len();
            if size > MAX_ENTRY_BYTES {
                return Err(StoreError::EntryTooLarge { size });
            }
        }
        let targets = Targets {
            start,
            count: entries.len() as u64,
            reveal: reveal.to_vec(),
        };
        targets.check(root.length())?;

        struct Walk<'a, E> {
            targets: &'a Targets,
            entries: &'a [E],
            proof: std::slice::Iter<'a, Node>,
            nodes: BTreeMap<u64, Node>,
        }
        impl<E: AsRef<[u8]>> Walk<'_, E> {
            fn visit(&mut self, index: u64) -> Result<Node, StoreError> {
                let node = match step(self.targets, index) {
                    Step::Take => *self.proof.next().ok_or(StoreError::BadProof)?,
                    Step::Descend => match tree::children(index) {
                        None => {
                            let entry = index / 2 - self.targets.start;
                            Node::leaf(self.entries[entry as usize].as_ref())
                        }
                        Some((l, r)) => {
                            let left = self.visit(l)?;
                            let right = self.visit(r)?;
                            Node::parent(&left, &right).ok_or(StoreError::BadProof)?
                        }
                    },
                };
                self.nodes.insert(index, node);
                Ok(node)
            }
        }

        let mut walk = Walk {
            targets: &targets,
            entries,
            proof: self.nodes.iter(),
            nodes: BTreeMap::new(),
        };
        let mut peaks = Vec::new();
        for peak in tree::full_roots(root.length()) {
            peaks.push(walk.visit(peak)?);
        }
        if walk.proof.next().is_some() {
            return Err(StoreError::BadProof);
        }
        let hash = tree::root_hash(root.length(), &peaks).ok_or(StoreError::BadProof)?;
        if &hash != root.hash() {
            return Err(StoreError::BadProof);
        }
        Ok(Verified {
            root: *root,
            nodes: walk.nodes,
        })
    }

    /// `count (u32 LE) ‖ (hash ‖ size u64 LE) per node`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.nodes.len() * 40);
        out.extend_from_slice(&(self.nodes.len() as u32).to_le_bytes());
        for n in &self.nodes {
            out.extend_from_slice(&n.hash);
            out.extend_from_slice(&n.size.to_le_bytes());
        }
        out
    }

    /// Decodes a proof from the front of `bytes`; returns it and the rest.
    pub fn decode(bytes: &[u8]) -> Result<(Proof, &[u8]), StoreError> {
        const BAD: StoreError = StoreError::Malformed("truncated proof");
        let count = u32::from_le_bytes(bytes.get(..4).ok_or(BAD)?.try_into().expect("4")) as usize;
        if count > MAX_PROOF_NODES {
            return Err(StoreError::Malformed("proof has too many nodes"));
        }
        let body = bytes.get(4..4 + count * 40).ok_or(BAD)?;
        let nodes = body
            .chunks_exact(40)
            .map(|c| Node {
                hash: c[..32].try_into().expect("32"),
                size: u64::from_le_bytes(c[32..].try_into().expect("8")),
            })
            .collect();
        Ok((Proof { nodes }, &bytes[4 + count * 40..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::root::{Ed25519Signer, UnsignedRoot};
    use crate::log::tree::Appender;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A whole log in memory: its entries, every node, and signed roots.
    struct Fixture {
        signer: Ed25519Signer,
        entries: Vec<Vec<u8>>,
        nodes: HashMap<u64, Node>,
        appender: Appender,
    }

    impl Fixture {
        fn new(n: usize, seed: u8) -> Self {
            let mut f = Fixture {
                signer: Ed25519Signer::from_seed([seed; 32]),
                entries: Vec::new(),
                nodes: HashMap::new(),
                appender: Appender::new(),
            };
            for i in 0..n {
                f.push(format!("entry {i} {}", "x".repeat(i % 13)).into_bytes());
            }
            f
        }

        fn push(&mut self, e: Vec<u8>) {
            let mut new = Vec::new();
            self.appender.append(&e, &mut new).unwrap();
            self.nodes.extend(new);
            self.entries.push(e);
        }

        fn root(&self) -> SignedRoot {
            let u = UnsignedRoot {
                key: self.signer.log_key(),
                length: self.appender.length(),
                hash: self.appender.root_hash(),
            };
            SignedRoot::new(u, self.signer.sign(&u)).unwrap()
        }

        fn prove(&self, targets: &Targets) -> Proof {
            Proof::build(self.appender.length(), targets, |i| {
                self.nodes.get(&i).copied()
            })
            .unwrap()
        }
    }

    #[test]
    fn single_entry_and_range_proofs_verify_for_every_position() {
        for n in 1..=33usize {
            let f = Fixture::new(n, 1);
            let root = f.root();
            for start in 0..n {
                for end in start..=n.min(start + 5) {
                    let t = Targets::range(start as u64, (end - start) as u64);
                    let p = f.prove(&t);
                    let v = p
                        .verify(&root, start as u64, &f.entries[start..end], &[])
                        .unwrap();
                    // Every node the walk established is the real node.
                    for (i, node) in &v.nodes {
                        assert_eq!(f.nodes[i], *node);
                    }
                    // A range proof is logarithmic.
                    assert!(p.nodes.len() <= 2 * 64);
                }
            }
        }
    }

    #[test]
    fn upgrade_reveals_the_old_peaks() {
        let mut f = Fixture::new(5, 2);
        let old_peaks: Vec<Node> = tree::full_roots(5).iter().map(|i| f.nodes[i]).collect();
        for i in 5..21 {
            f.push(vec![i as u8; 10]);
        }
        let root = f.root();
        let t = Targets::range_upgrading_from(18, 3, 5);
        let p = f.prove(&t);
        let v = p.verify(&root, 18, &f.entries[18..21], &t.reveal).unwrap();
        for (i, old) in tree::full_roots(5).iter().zip(&old_peaks) {
            assert_eq!(v.nodes[i], *old);
        }
        // An empty-range upgrade works too.
        let t = Targets::range_upgrading_from(0, 0, 5);
        let p = f.prove(&t);
        let empty: [&[u8]; 0] = [];
        assert!(p.verify(&root, 0, &empty, &t.reveal).is_ok());
    }

    #[test]
    fn missing_nodes_are_reported_by_index() {
        let f = Fixture::new(8, 3);
        let t = Targets::range(0, 1);
        let needed = required_nodes(8, &t).unwrap();
        assert_eq!(needed, vec![2, 5, 11]);
        let err = Proof::build(8, &t, |i| (i != 5).then(|| f.nodes[&i])).unwrap_err();
        assert!(matches!(err, StoreError::NotHeld { index: 5 }));
    }

    #[test]
    fn targets_outside_the_tree_are_refused() {
        let f = Fixture::new(4, 4);
        let root = f.root();
        assert!(matches!(
            required_nodes(4, &Targets::range(3, 2)),
            Err(StoreError::OutOfRange)
        ));
        assert!(matches!(
            required_nodes(4, &Targets::node(9)),
            Err(StoreError::OutOfRange)
        ));
        let p = f.prove(&Targets::range(0, 4));
        assert!(p.verify(&root, 1, &f.entries, &[]).is_err());
        assert!(matches!(
            p.verify(&root, u64::MAX, &f.entries[..1], &[]),
            Err(StoreError::OutOfRange)
        ));
    }

    #[test]
    fn oversized_entries_are_refused_before_hashing() {
        let f = Fixture::new(2, 5);
        let big = vec![0u8; MAX_ENTRY_BYTES + 1];
        let p = f.prove(&Targets::range(0, 1));
        assert!(matches!(
            p.verify(&f.root(), 0, &[big], &[]),
            Err(StoreError::EntryTooLarge { .. })
        ));
    }

    fn case() -> impl Strategy<Value = (usize, usize, usize, u64)> {
        (1usize..80).prop_flat_map(|n| {
            (Just(n), 0..n)
                .prop_flat_map(move |(n, s)| (Just(n), Just(s), (s + 1)..=n, any::<u64>()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn valid_proofs_verify_and_every_corruption_fails((n, start, end, pick) in case()) {
            let f = Fixture::new(n, 9);
            let root = f.root();
            let t = Targets::range(start as u64, (end - start) as u64);
            let p = f.prove(&t);
            let entries = &f.entries[start..end];
            prop_assert!(p.verify(&root, start as u64, entries, &[]).is_ok());

            // Any bit flip in the proof bytes fails (to decode or to verify).
            let bytes = p.to_bytes();
            let bit = (pick % (bytes.len() as u64 * 8)) as usize;
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let ok = match Proof::decode(&flipped) {
                Ok((q, rest)) => rest.is_empty() && q.verify(&root, start as u64, entries, &[]).is_ok(),
                Err(_) => false,
            };
            prop_assert!(!ok, "bit {} flipped and still verified", bit);

            // Any bit flip in any entry fails.
            let mut bad: Vec<Vec<u8>> = entries.to_vec();
            let e = (pick as usize) % bad.len();
            if bad[e].is_empty() {
                bad[e].push(0);
            } else {
                let b = (pick as usize / 7) % (bad[e].len() * 8);
                bad[e][b / 8] ^= 1 << (b % 8);
            }
            prop_assert!(p.verify(&root, start as u64, &bad, &[]).is_err());

            // The same entries at another index fail.
            for other in [start as u64 + 1, (start as u64).wrapping_sub(1)] {
                if other != start as u64 {
                    prop_assert!(p.verify(&root, other, entries, &[]).is_err());
                }
            }
            // A root of another length fails, even correctly signed.
            for len in [n as u64 + 1, n as u64 - 1] {
                let u = UnsignedRoot { key: root.key(), length: len, hash: *root.hash() };
                let other = SignedRoot::new(u, f.signer.sign(&u)).unwrap();
                prop_assert!(p.verify(&other, start as u64, entries, &[]).is_err());
            }
            // Dropping, adding or swapping a proof node fails.
            if !p.nodes.is_empty() {
                let mut fewer = p.clone();
                fewer.nodes.pop();
                prop_assert!(fewer.verify(&root, start as u64, entries, &[]).is_err());
            }
            let mut more = p.clone();
            more.nodes.push(Node { hash: [0; 32], size: 0 });
            prop_assert!(more.verify(&root, start as u64, entries, &[]).is_err());
            if p.nodes.len() >= 2 && p.nodes[0] != p.nodes[1] {
                let mut swapped = p.clone();
                swapped.nodes.swap(0, 1);
                prop_assert!(swapped.verify(&root, start as u64, entries, &[]).is_err());
            }
            // Dropping an entry from the end fails.
            if entries.len() > 1 {
                prop_assert!(p.verify(&root, start as u64, &entries[..entries.len() - 1], &[]).is_err());
            }
        }

        #[test]
        fn node_claims_verify_for_every_full_node((n, _s, _e, pick) in case()) {
            let f = Fixture::new(n, 10);
            let root = f.root();
            let full: Vec<u64> = f.nodes.keys().copied().collect();
            let index = full[(pick as usize) % full.len()];
            let t = Targets::node(index);
            let p = f.prove(&t);
            let empty: [&[u8]; 0] = [];
            let v = p.verify(&root, 0, &empty, &[index]).unwrap();
            prop_assert_eq!(v.nodes[&index], f.nodes[&index]);
        }
    }
}
