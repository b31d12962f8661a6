//! The flat tree: the Merkle tree over a log's entries, laid out as hypercore lays it out.
//!
//! Every node has an index in one flat sequence. Leaf `i` (entry `i`) is at index `2i`; the
//! parent of two siblings sits between them, so the nodes of depth `d` are at the indices whose
//! lowest `d` bits are ones and whose bit `d` is zero:
//!
//! ```text
//!  depth 2:             3
//!  depth 1:     1               5
//!  depth 0: 0       2       4       6      (entries 0, 1, 2, 3)
//! ```
//!
//! A node is *full* once every leaf under it exists; only full nodes are ever hashed, so a node's
//! hash never changes as the log grows. A log of length `n` is summarised by its *peaks*
//! ([`full_roots`]): the full nodes, largest first, whose spans tile `[0, n)` (one per set bit of
//! `n`). Appending only needs the peaks ([`Appender`]).
//!
//! Hashes are BLAKE3 with one domain byte each, so a leaf can never be read as a parent or a
//! root: `leaf = H(0x00 ‖ len ‖ data)`, `parent = H(0x01 ‖ left ‖ right ‖ size)` where `size` is
//! the total number of entry bytes under the node, and `root = H(0x02 ‖ length ‖ byte_length ‖
//! (index ‖ size ‖ hash) for each peak)`. All integers are little-endian u64.

use serde::{Deserialize, Serialize};

const LEAF: u8 = 0x00;
const PARENT: u8 = 0x01;
const ROOT: u8 = 0x02;

/// A BLAKE3 hash in the tree.
pub type Hash = [u8; 32];

/// A tree node's value: its hash and the number of entry bytes under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    pub hash: Hash,
    pub size: u64,
}

impl Node {
    /// The leaf for one entry.
    pub fn leaf(data: &[u8]) -> Node {
        let size = data.len() as u64;
        let mut h = blake3::Hasher::new();
        h.update(&[LEAF]);
        h.update(&size.to_le_bytes());
        h.update(data);
        Node {
            hash: *h.finalize().as_bytes(),
            size,
        }
    }

    /// The parent of two sibling nodes, or `None` if the sizes overflow (only a forged node can
    /// claim that many bytes).
    pub fn parent(left: &Node, right: &Node) -> Option<Node> {
        let size = left.size.checked_add(right.size)?;
        let mut h = blake3::Hasher::new();
        h.update(&[PARENT]);
        h.update(&left.hash);
        h.update(&right.hash);
        h.update(&size.to_le_bytes());
        Some(Node {
            hash: *h.finalize().as_bytes(),
            size,
        })
    }
}

/// The root hash of a tree of `length` entries, from its peaks in [`full_roots`] order. Returns
/// `None` if the peak count does not match the length or the sizes overflow.
pub fn root_hash(length: u64, peaks: &[Node]) -> Option<Hash> {
    let indices = full_roots(length);
    if indices.len() != peaks.len() {
        return None;
    }
    let mut byte_length = 0u64;
    for p in peaks {
        byte_length = byte_length.checked_add(p.size)?;
    }
    let mut h = blake3::Hasher::new();
    h.update(&[ROOT]);
    h.update(&length.to_le_bytes());
    h.update(&byte_length.to_le_bytes());
    for (index, peak) in indices.iter().zip(peaks) {
        h.update(&index.to_le_bytes());
        h.update(&peak.size.to_le_bytes());
        h.update(&peak.hash);
    }
    Some(*h.finalize().as_bytes())
}

/// The depth of a node: 0 for leaves.
pub fn depth(index: u64) -> u32 {
    index.trailing_ones()
}

/// The leaf index of entry `entry`.
pub fn leaf_index(entry: u64) -> u64 {
    entry * 2
}

/// The entries under a node, as a half-open range `[start, end)`.
pub fn span(index: u64) -> (u64, u64) {
    let d = depth(index);
    let width = 1u64 << d;
    // The leftmost leaf is `index - (width - 1)`, which is even; halve to get the entry.
    let start = (index + 1 - width) / 2;
    (start, start + width)
}

/// The two children of a node, or `None` for a leaf.
pub fn children(index: u64) -> Option<(u64, u64)> {
    let d = depth(index);
    if d == 0 {
        return None;
    }
    let half = 1u64 << (d - 1);
    Some((index - half, index + half))
}

/// The parent of a node.
pub fn parent(index: u64) -> u64 {
    let d = depth(index);
    let offset = index >> (d + 1);
    index_at(d + 1, offset >> 1)
}

/// The sibling of a node (the other child of its parent).
pub fn sibling(index: u64) -> u64 {
    let d = depth(index);
    let offset = index >> (d + 1);
    index_at(d, offset ^ 1)
}

/// The index of the node at `depth` and `offset`.
pub fn index_at(depth: u32, offset: u64) -> u64 {
    (((offset << 1) | 1) << depth) - 1
}

/// The entry whose append completes a node: the rightmost entry under it.
pub fn completing_entry(index: u64) -> u64 {
    span(index).1 - 1
}

/// The nodes the append of entry `entry` completes, by depth: its leaf, then each parent of
/// which it is the rightmost entry (one per trailing one bit of `entry`). Every node is in
/// exactly one entry's list, at position `depth(node)`.
pub fn completed_by(entry: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(1 + entry.trailing_ones() as usize);
    let mut index = leaf_index(entry);
    out.push(index);
    for _ in 0..entry.trailing_ones() {
        index = parent(index);
        out.push(index);
    }
    out
}

/// The peaks of a tree of `length` entries: full nodes, largest (leftmost) first.
pub fn full_roots(length: u64) -> Vec<u64> {
    let mut roots = Vec::with_capacity(length.count_ones() as usize);
    let mut start = 0u64;
    for d in (0..64u32).rev() {
        let width = 1u64 << d;
        if length & width != 0 {
            roots.push(index_at(d, start >> d));
            start += width;
        }
    }
    roots
}

/// Builds the tree as entries are appended, knowing only the current peaks.
#[derive(Clone, Debug)]
pub struct Appender {
    length: u64,
    /// Peaks of the tree so far with their indices, largest first.
    peaks: Vec<(u64, Node)>,
}

impl Appender {
    /// An empty tree.
    pub fn new() -> Self {
        Appender {
            length: 0,
            peaks: Vec::new(),
        }
    }

    /// A tree of `length` entries with these peaks (in [`full_roots`] order). Returns `None` if
    /// the number of peaks does not fit the length.
    pub fn from_peaks(length: u64, peaks: Vec<Node>) -> Option<Self> {
        let indices = full_roots(length);
        if indices.len() != peaks.len() {
            return None;
        }
        Some(Appender {
            length,
            peaks: indices.into_iter().zip(peaks).collect(),
        })
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    /// Total entry bytes.
    pub fn byte_length(&self) -> u64 {
        self.peaks.iter().map(|(_, n)| n.size).sum()
    }

    pub fn peaks(&self) -> Vec<Node> {
        self.peaks.iter().map(|(_, n)| *n).collect()
    }

    /// The root hash of the tree so far.
    pub fn root_hash(&self) -> Hash {
        root_hash(self.length, &self.peaks())
            .expect("an appender's peaks always fit its length and size")
    }

    /// Appends one entry and pushes every node it completes (the leaf, then each new parent)
    /// onto `new_nodes`. Returns `None` (and changes nothing) if the byte length would overflow.
    pub fn append(&mut self, data: &[u8], new_nodes: &mut Vec<(u64, Node)>) -> Option<()> {
        self.byte_length().checked_add(data.len() as u64)?;
        if self.length >= super::MAX_LOG_LENGTH {
            return None;
        }
        let mut index = leaf_index(self.length);
        let mut node = Node::leaf(data);
        new_nodes.push((index, node));
        // Merge with the last peak while it is this node's left sibling.
        while let Some(&(last_index, last)) = self.peaks.last() {
            if last_index != sibling(index) || last_index > index {
                break;
            }
            self.peaks.pop();
            node = Node::parent(&last, &node).expect("checked the total byte length above");
            index = parent(index);
            new_nodes.push((index, node));
        }
        self.peaks.push((index, node));
        self.length += 1;
        Some(())
    }
}

impl Default for Appender {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_hypercore_flat_tree() {
        assert_eq!(index_at(0, 0), 0);
        assert_eq!(index_at(0, 1), 2);
        assert_eq!(index_at(1, 0), 1);
        assert_eq!(index_at(1, 1), 5);
        assert_eq!(index_at(2, 0), 3);
        assert_eq!(index_at(3, 0), 7);
        assert_eq!(depth(7), 3);
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(1), 5);
        assert_eq!(sibling(4), 6);
        assert_eq!(children(3), Some((1, 5)));
        assert_eq!(children(1), Some((0, 2)));
        assert_eq!(children(4), None);
        assert_eq!(span(3), (0, 4));
        assert_eq!(span(5), (2, 4));
        assert_eq!(span(8), (4, 5));
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(1), vec![0]);
        assert_eq!(full_roots(3), vec![1, 4]);
        assert_eq!(full_roots(5), vec![3, 8]);
        assert_eq!(full_roots(7), vec![3, 9, 12]);
        assert_eq!(full_roots(8), vec![7]);
    }

    #[test]
    fn every_node_is_between_its_children_and_spans_their_union() {
        for i in 0..2048u64 {
            if let Some((l, r)) = children(i) {
                assert!(l < i && i < r);
                assert_eq!(parent(l), i);
                assert_eq!(parent(r), i);
                assert_eq!(sibling(l), r);
                assert_eq!(sibling(r), l);
                assert_eq!(span(l).0, span(i).0);
                assert_eq!(span(r).1, span(i).1);
                assert_eq!(span(l).1, span(r).0);
            }
        }
    }

    #[test]
    fn every_node_is_completed_by_exactly_one_entry_at_its_depth() {
        let mut seen = std::collections::HashSet::new();
        for entry in 0..256u64 {
            for (d, i) in completed_by(entry).into_iter().enumerate() {
                assert_eq!(depth(i) as usize, d);
                assert_eq!(completing_entry(i), entry);
                assert!(seen.insert(i));
            }
        }
        // Every full node of a 256-entry tree, nothing else.
        assert_eq!(seen.len(), 511);
        // The appender emits, for each entry, exactly that entry's list.
        let mut a = Appender::new();
        for entry in 0..100u64 {
            let mut new = Vec::new();
            a.append(&entry.to_le_bytes(), &mut new).unwrap();
            let indices: Vec<u64> = new.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, completed_by(entry));
        }
    }

    /// The root of `n` entries computed naively (build every full node bottom-up).
    fn naive_root(entries: &[Vec<u8>]) -> Hash {
        use std::collections::HashMap;
        let mut nodes: HashMap<u64, Node> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            nodes.insert(leaf_index(i as u64), Node::leaf(e));
        }
        for d in 1..20u32 {
            let mut offset = 0;
            loop {
                let i = index_at(d, offset);
                let (_, end) = span(i);
                if end > entries.len() as u64 {
                    break;
                }
                let (l, r) = children(i).unwrap();
                let p = Node::parent(&nodes[&l], &nodes[&r]).unwrap();
                nodes.insert(i, p);
                offset += 1;
            }
        }
        let n = entries.len() as u64;
        let peaks: Vec<Node> = full_roots(n).iter().map(|i| nodes[i]).collect();
        root_hash(n, &peaks).unwrap()
    }

    #[test]
    fn appender_agrees_with_a_naive_build_and_emits_each_node_once() {
        let entries: Vec<Vec<u8>> = (0..70u32).map(|i| vec![i as u8; i as usize % 9]).collect();
        let mut a = Appender::new();
        let mut all = Vec::new();
        for (n, e) in entries.iter().enumerate() {
            a.append(e, &mut all).unwrap();
            assert_eq!(a.length(), n as u64 + 1);
            assert_eq!(
                a.root_hash(),
                naive_root(&entries[..=n]),
                "length {}",
                n + 1
            );
            // Restarting from the peaks gives the same appender.
            let b = Appender::from_peaks(a.length(), a.peaks()).unwrap();
            assert_eq!(b.root_hash(), a.root_hash());
        }
        let mut indices: Vec<u64> = all.iter().map(|(i, _)| *i).collect();
        indices.sort();
        indices.dedup();
        assert_eq!(indices.len(), all.len(), "a node was emitted twice");
        // 70 leaves produce 70 leaves + (70 - popcount(70)) parents.
        assert_eq!(all.len(), 70 + 70 - 70u32.count_ones() as usize);
    }

    #[test]
    fn domains_are_separated() {
        // A leaf over bytes that look like a parent's input is not that parent.
        let a = Node::leaf(b"a");
        let b = Node::leaf(b"b");
        let p = Node::parent(&a, &b).unwrap();
        let mut fake = Vec::new();
        fake.extend_from_slice(&a.hash);
        fake.extend_from_slice(&b.hash);
        fake.extend_from_slice(&p.size.to_le_bytes());
        assert_ne!(Node::leaf(&fake).hash, p.hash);
        assert_ne!(root_hash(1, &[a]).unwrap(), a.hash);
        // The root commits to the length: the same peak gives another root at another length,
        // and a peak count that does not fit the length gives none.
        assert_ne!(root_hash(2, &[a]), root_hash(1, &[a]));
        assert!(root_hash(3, &[a]).is_none());
    }
}
