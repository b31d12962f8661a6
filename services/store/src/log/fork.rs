//! Fork evidence: two statements signed by one log key that cannot both be true.
//!
//! A writer that signs two different roots for the same length, or a longer root that does not
//! extend a shorter one it signed, has forked its log (a stolen key, a restored backup, a bug, or
//! malice). Either way readers can no longer trust a single history, so the log is marked forked
//! and the evidence is kept and served: anyone holding only the public key can check it with
//! [`ForkEvidence::verify`].
//!
//! - [`ForkEvidence::SameLength`]: two signed roots, same length, different hashes.
//! - [`ForkEvidence::ConflictingNode`]: two [`NodeClaim`]s about the same tree node (under two
//!   signed roots of possibly different lengths) with different values. A full node never changes
//!   as a log grows, so an honest writer never signs both.
//!
//! Encoding (`to_bytes`): `version 1 ‖ kind` then kind 1: `root ‖ root`; kind 2:
//! `claim ‖ claim` where a claim is `root ‖ index u64 LE ‖ hash ‖ size u64 LE ‖ proof`. Roots are
//! [`SignedRoot::to_bytes`], proofs [`Proof::to_bytes`]. Decoding verifies everything.

use serde::{Deserialize, Serialize};

use super::proof::{Proof, Targets};
use super::root::{LogKey, SIGNED_ROOT_BYTES, SignedRoot};
use super::tree::Node;
use crate::error::StoreError;

const VERSION: u8 = 1;
const KIND_SAME_LENGTH: u8 = 1;
const KIND_CONFLICTING_NODE: u8 = 2;

/// "Under `root`, node `index` is `node`", with the proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeClaim {
    pub root: SignedRoot,
    pub index: u64,
    pub node: Node,
    pub proof: Proof,
}

impl NodeClaim {
    /// Builds a claim from a holder's nodes under `root`.
    pub fn build(
        root: SignedRoot,
        index: u64,
        mut lookup: impl FnMut(u64) -> Option<Node>,
    ) -> Result<Self, StoreError> {
        let node = lookup(index).ok_or(StoreError::NotHeld { index })?;
        let proof = Proof::build(root.length(), &Targets::node(index), lookup)?;
        Ok(NodeClaim {
            root,
            index,
            node,
            proof,
        })
    }

    pub fn verify(&self) -> Result<(), StoreError> {
        let empty: [&[u8]; 0] = [];
        let v = self.proof.verify(&self.root, 0, &empty, &[self.index])?;
        if v.nodes.get(&self.index) != Some(&self.node) {
            return Err(StoreError::BadProof);
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.root.to_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.node.hash);
        out.extend_from_slice(&self.node.size.to_le_bytes());
        out.extend_from_slice(&self.proof.to_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<(Self, &[u8]), StoreError> {
        const BAD: StoreError = StoreError::Malformed("truncated node claim");
        let root = SignedRoot::from_bytes(bytes.get(..SIGNED_ROOT_BYTES).ok_or(BAD)?)?;
        let rest = &bytes[SIGNED_ROOT_BYTES..];
        let fixed = rest.get(..48).ok_or(BAD)?;
        let index = u64::from_le_bytes(fixed[..8].try_into().expect("8"));
        let node = Node {
            hash: fixed[8..40].try_into().expect("32"),
            size: u64::from_le_bytes(fixed[40..48].try_into().expect("8")),
        };
        let (proof, rest) = Proof::decode(&rest[48..])?;
        Ok((
            NodeClaim {
                root,
                index,
                node,
                proof,
            },
            rest,
        ))
    }
}

/// Proof that a log's writer forked it.
// Evidence is rare and short-lived in memory; boxing the roots would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkEvidence {
    SameLength {
        a: SignedRoot,
        b: SignedRoot,
    },
    ConflictingNode {
        a: Box<NodeClaim>,
        b: Box<NodeClaim>,
    },
}

impl ForkEvidence {
    /// The forked log.
    pub fn key(&self) -> LogKey {
        match self {
            ForkEvidence::SameLength { a, .. } => a.key(),
            ForkEvidence::ConflictingNode { a, .. } => a.root.key(),
        }
    }

    /// Checks that the evidence proves a fork of [`Self::key`]'s log.
    pub fn verify(&self) -> Result<(), StoreError> {
        const NOT: StoreError = StoreError::Malformed("not evidence of a fork");
        match self {
            ForkEvidence::SameLength { a, b } => {
                // Signatures were verified when the roots were made.
                if a.key() != b.key() || a.length() != b.length() || a.hash() == b.hash() {
                    return Err(NOT);
                }
            }
            ForkEvidence::ConflictingNode { a, b } => {
                if a.root.key() != b.root.key() || a.index != b.index || a.node == b.node {
                    return Err(NOT);
                }
                a.verify()?;
                b.verify()?;
            }
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            ForkEvidence::SameLength { a, b } => {
                out.push(KIND_SAME_LENGTH);
                out.extend_from_slice(&a.to_bytes());
                out.extend_from_slice(&b.to_bytes());
            }
            ForkEvidence::ConflictingNode { a, b } => {
                out.push(KIND_CONFLICTING_NODE);
                a.encode(&mut out);
                b.encode(&mut out);
            }
        }
        out
    }

    /// Decodes and verifies.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        const BAD: StoreError = StoreError::Malformed("bad fork evidence encoding");
        if bytes.first() != Some(&VERSION) {
            return Err(BAD);
        }
        let evidence = match bytes.get(1) {
            Some(&KIND_SAME_LENGTH) => {
                if bytes.len() != 2 + 2 * SIGNED_ROOT_BYTES {
                    return Err(BAD);
                }
                let a = SignedRoot::from_bytes(&bytes[2..2 + SIGNED_ROOT_BYTES])?;
                let b = SignedRoot::from_bytes(&bytes[2 + SIGNED_ROOT_BYTES..])?;
                ForkEvidence::SameLength { a, b }
            }
            Some(&KIND_CONFLICTING_NODE) => {
                let (a, rest) = NodeClaim::decode(&bytes[2..])?;
                let (b, rest) = NodeClaim::decode(rest)?;
                if !rest.is_empty() {
                    return Err(BAD);
                }
                ForkEvidence::ConflictingNode {
                    a: Box::new(a),
                    b: Box::new(b),
                }
            }
            _ => return Err(BAD),
        };
        evidence.verify()?;
        Ok(evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::root::{Ed25519Signer, UnsignedRoot};
    use crate::log::tree::{self, Appender};
    use std::collections::HashMap;

    fn build(signer: &Ed25519Signer, entries: &[&[u8]]) -> (SignedRoot, HashMap<u64, Node>) {
        let mut a = Appender::new();
        let mut nodes = Vec::new();
        for e in entries {
            a.append(e, &mut nodes).unwrap();
        }
        let u = UnsignedRoot {
            key: signer.log_key(),
            length: a.length(),
            hash: a.root_hash(),
        };
        (
            SignedRoot::new(u, signer.sign(&u)).unwrap(),
            nodes.into_iter().collect(),
        )
    }

    proptest::proptest! {
        /// Decoding never panics, whatever the bytes: it returns evidence that verifies or an
        /// error. Half the cases start from valid evidence with a few bytes changed.
        #[test]
        fn decoding_junk_never_panics(
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            edits in proptest::collection::vec((0usize..2000, proptest::num::u8::ANY), 1..4),
        ) {
            let _ = ForkEvidence::from_bytes(&junk);
            let _ = Proof::decode(&junk);
            let _ = SignedRoot::from_bytes(&junk);
            let s = Ed25519Signer::from_seed([5; 32]);
            let (short, short_nodes) = build(&s, &[b"a", b"b", b"c"]);
            let (long, long_nodes) = build(&s, &[b"a", b"x", b"c", b"d", b"e"]);
            let ev = ForkEvidence::ConflictingNode {
                a: Box::new(NodeClaim::build(short, 1, |i| short_nodes.get(&i).copied()).unwrap()),
                b: Box::new(NodeClaim::build(long, 1, |i| long_nodes.get(&i).copied()).unwrap()),
            };
            let mut bytes = ev.to_bytes();
            for (at, v) in edits {
                let at = at % bytes.len();
                bytes[at] = v;
            }
            if let Ok(decoded) = ForkEvidence::from_bytes(&bytes) {
                proptest::prop_assert!(decoded.verify().is_ok());
            }
        }
    }

    #[test]
    fn same_length_evidence_verifies_and_round_trips() {
        let s = Ed25519Signer::from_seed([1; 32]);
        let (a, _) = build(&s, &[b"one", b"two"]);
        let (b, _) = build(&s, &[b"one", b"TWO"]);
        let ev = ForkEvidence::SameLength { a, b };
        ev.verify().unwrap();
        assert_eq!(ForkEvidence::from_bytes(&ev.to_bytes()).unwrap(), ev);
        // Not a fork: the same root twice.
        assert!(ForkEvidence::SameLength { a, b: a }.verify().is_err());
        // Not a fork: two logs.
        let (c, _) = build(&Ed25519Signer::from_seed([2; 32]), &[b"x", b"y"]);
        assert!(ForkEvidence::SameLength { a, b: c }.verify().is_err());
    }

    #[test]
    fn conflicting_node_evidence_across_lengths() {
        let s = Ed25519Signer::from_seed([3; 32]);
        let (short, short_nodes) = build(&s, &[b"a", b"b", b"c", b"d"]);
        let (long, long_nodes) = build(&s, &[b"a", b"B", b"c", b"d", b"e", b"f"]);
        // Node 3 covers entries 0..4 in both trees and differs.
        let a = NodeClaim::build(short, 3, |i| short_nodes.get(&i).copied()).unwrap();
        let b = NodeClaim::build(long, 3, |i| long_nodes.get(&i).copied()).unwrap();
        let ev = ForkEvidence::ConflictingNode {
            a: Box::new(a.clone()),
            b: Box::new(b.clone()),
        };
        ev.verify().unwrap();
        let bytes = ev.to_bytes();
        assert_eq!(ForkEvidence::from_bytes(&bytes).unwrap(), ev);
        for bit in (0..bytes.len() * 8).step_by(7) {
            let mut x = bytes.clone();
            x[bit / 8] ^= 1 << (bit % 8);
            assert!(ForkEvidence::from_bytes(&x).is_err(), "bit {bit}");
        }
        // A claim with a node the root does not contain fails.
        let mut lie = a.clone();
        lie.node = b.node;
        assert!(lie.verify().is_err());
        // Agreeing claims are not evidence.
        let node_4 = tree::leaf_index(2);
        let a4 = NodeClaim::build(short, node_4, |i| short_nodes.get(&i).copied()).unwrap();
        let b4 = NodeClaim::build(long, node_4, |i| long_nodes.get(&i).copied()).unwrap();
        assert!(
            ForkEvidence::ConflictingNode {
                a: Box::new(a4),
                b: Box::new(b4)
            }
            .verify()
            .is_err()
        );
    }
}
