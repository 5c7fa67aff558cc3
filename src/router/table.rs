//! The uri index: which routes are candidates for a path, in APISIX order.
//!
//! Exact uris live in a hash map. Prefix uris (`/a/*`, stored as `/a/`) live
//! in a compressed byte trie (radix tree), the structure lua-resty-radixtree
//! uses. A trie rather than "one hash lookup per existing prefix length":
//! the walk costs O(path length) however many prefixes and distinct prefix
//! lengths there are (400 prefixes of varied depth easily have 30+ lengths,
//! each of which would cost a hash of the path prefix), it finds every
//! matching prefix in one pass, and on a miss it usually stops after a byte
//! or two.
//!
//! Everything is pre-merged at build time so that a lookup only walks
//! ready-made lists:
//! * each bucket (one uri pattern) holds its route indices sorted by priority
//!   (higher first), ties in config order;
//! * each trie node with a bucket knows the nearest ancestor with a bucket
//!   (`up`), so "longer prefix first" is a linked walk, with no stack or
//!   allocation;
//! * each exact bucket knows the deepest prefix node that matches its own
//!   path (`next`), so an exact hit whose candidates all fail continues with
//!   the prefix candidates without walking the trie.
//!
//! Chains are links rather than copied lists: a catch-all `/*` with many
//! routes would otherwise be copied into every exact bucket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const NONE: u32 = u32::MAX;

/// A route's uri after validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum UriPat {
    Exact(String),
    /// The text before the trailing `*`.
    Prefix(String),
}

#[derive(Debug)]
struct Bucket {
    start: u32,
    end: u32,
    /// Trie node to continue with, or NONE.
    next: u32,
}

#[derive(Debug)]
struct Node {
    label: Box<[u8]>,
    /// First byte of each child's label, sorted; parallel to `children`.
    child_bytes: Vec<u8>,
    children: Vec<u32>,
    /// This node's own candidates in `cands` (empty when no prefix ends here).
    start: u32,
    end: u32,
    /// Nearest ancestor that has candidates, or NONE.
    up: u32,
}

impl Node {
    fn new(label: &[u8]) -> Node {
        Node {
            label: label.into(),
            child_bytes: Vec::new(),
            children: Vec::new(),
            start: 0,
            end: 0,
            up: NONE,
        }
    }

    fn has_bucket(&self) -> bool {
        self.start < self.end
    }
}

#[derive(Debug)]
pub(crate) struct Table {
    exact: HashMap<Box<str>, Bucket, FastBuild>,
    nodes: Vec<Node>,
    /// All candidate lists back to back (route indices).
    cands: Vec<u32>,
}

impl Table {
    /// `items` are (route index, uri) in config order; `priority` gives a
    /// route's priority. Route indices must fit in u32 (checked by the caller).
    pub(crate) fn build(items: &[(u32, &UriPat)], priority: impl Fn(u32) -> i64) -> Table {
        // Group by pattern, keeping first-seen order of patterns and routes.
        let mut groups: HashMap<&UriPat, Vec<u32>> = HashMap::new();
        let mut order: Vec<&UriPat> = Vec::new();
        for &(route, pat) in items {
            let g = groups.entry(pat).or_insert_with(|| {
                order.push(pat);
                Vec::new()
            });
            // A route listing the same uri twice is one candidate.
            if !g.contains(&route) {
                g.push(route);
            }
        }

        let mut table = Table {
            exact: HashMap::default(),
            nodes: vec![Node::new(b"")],
            cands: Vec::new(),
        };
        let push = |cands: &mut Vec<u32>, mut routes: Vec<u32>| -> (u32, u32) {
            // Stable: equal priorities keep config order.
            routes.sort_by_key(|&r| std::cmp::Reverse(priority(r)));
            let start = cands.len() as u32;
            cands.extend(routes);
            (start, cands.len() as u32)
        };

        // Prefixes first: exact buckets need the finished trie for `next`.
        for pat in &order {
            if let UriPat::Prefix(p) = pat {
                let node = table.insert(p.as_bytes()) as usize;
                let (start, end) = push(&mut table.cands, groups.remove(*pat).unwrap_or_default());
                table.nodes[node].start = start;
                table.nodes[node].end = end;
            }
        }
        table.link_up();
        for pat in &order {
            if let UriPat::Exact(p) = pat {
                let (start, end) = push(&mut table.cands, groups.remove(*pat).unwrap_or_default());
                let next = table.deepest(p.as_bytes());
                table
                    .exact
                    .insert(p.as_str().into(), Bucket { start, end, next });
            }
        }
        table.exact.shrink_to_fit();
        table
    }

    /// Inserts a key into the radix tree (splitting edges as needed) and
    /// returns its node. Iterative, so a deep chain of nested prefixes cannot
    /// exhaust the stack.
    fn insert(&mut self, key: &[u8]) -> u32 {
        let mut cur = 0usize;
        let mut pos = 0usize;
        loop {
            if pos == key.len() {
                return cur as u32;
            }
            let b = key[pos];
            match self.nodes[cur].child_bytes.binary_search(&b) {
                Err(slot) => {
                    let id = self.nodes.len();
                    self.nodes.push(Node::new(&key[pos..]));
                    self.nodes[cur].child_bytes.insert(slot, b);
                    self.nodes[cur].children.insert(slot, id as u32);
                    return id as u32;
                }
                Ok(slot) => {
                    let child = self.nodes[cur].children[slot] as usize;
                    let label = &self.nodes[child].label;
                    let common = label
                        .iter()
                        .zip(&key[pos..])
                        .take_while(|(a, b)| a == b)
                        .count();
                    if common < label.len() {
                        // Split: a new node takes the shared part and adopts the child.
                        let mid = self.nodes.len();
                        let mut m = Node::new(&label[..common]);
                        let rest: Box<[u8]> = label[common..].into();
                        m.child_bytes.push(rest[0]);
                        m.children.push(child as u32);
                        self.nodes[child].label = rest;
                        self.nodes.push(m);
                        self.nodes[cur].children[slot] = mid as u32;
                        cur = mid;
                    } else {
                        cur = child;
                    }
                    pos += common;
                }
            }
        }
    }

    /// Sets every node's `up` link (explicit stack, no recursion).
    fn link_up(&mut self) {
        let mut stack = vec![(0usize, NONE)];
        while let Some((n, up)) = stack.pop() {
            self.nodes[n].up = up;
            let below = if self.nodes[n].has_bucket() {
                n as u32
            } else {
                up
            };
            stack.extend(self.nodes[n].children.iter().map(|&c| (c as usize, below)));
        }
    }

    /// The deepest node with candidates whose key is a prefix of `path`.
    #[inline]
    fn deepest(&self, path: &[u8]) -> u32 {
        let mut cur = 0usize;
        let mut pos = 0usize;
        let mut best = if self.nodes[0].has_bucket() { 0 } else { NONE };
        while pos < path.len() {
            let node = &self.nodes[cur];
            let Ok(slot) = node.child_bytes.binary_search(&path[pos]) else {
                break;
            };
            let child = node.children[slot] as usize;
            let label = &self.nodes[child].label;
            if !path[pos..].starts_with(label) {
                break;
            }
            pos += label.len();
            cur = child;
            if self.nodes[child].has_bucket() {
                best = child as u32;
            }
        }
        best
    }

    /// Calls `f` with each candidate route for `path`, in APISIX order, until
    /// `f` returns `Some`.
    #[inline]
    pub(crate) fn visit<R>(&self, path: &str, f: &mut impl FnMut(u32) -> Option<R>) -> Option<R> {
        let mut node = NONE;
        let mut exact_hit = false;
        if !self.exact.is_empty() {
            if let Some(b) = self.exact.get(path) {
                for &r in &self.cands[b.start as usize..b.end as usize] {
                    if let Some(x) = f(r) {
                        return Some(x);
                    }
                }
                node = b.next;
                exact_hit = true;
            }
        }
        if !exact_hit && self.nodes.len() > 1 {
            node = self.deepest(path.as_bytes());
        }
        while node != NONE {
            let n = &self.nodes[node as usize];
            for &r in &self.cands[n.start as usize..n.end as usize] {
                if let Some(x) = f(r) {
                    return Some(x);
                }
            }
            node = n.up;
        }
        None
    }
}

/// Hash for the read-only lookup maps (exact uris, hosts): FxHash-style
/// word-at-a-time mixing with a final avalanche. An unkeyed hash is safe
/// here because the maps are built once from trusted config and never grow
/// with requests: a client can only choose lookup keys, which costs it at
/// most the probe length the config's own keys produce.
pub(crate) type FastBuild = BuildHasherDefault<FastHasher>;

#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FastHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    #[inline]
    fn finish(&self) -> u64 {
        // murmur3 fmix64: spreads the multiply's high-bit entropy to the low
        // bits that pick the bucket.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(t: &Table, path: &str) -> Vec<u32> {
        let mut out = Vec::new();
        t.visit::<()>(path, &mut |r| {
            out.push(r);
            None
        });
        out
    }

    #[test]
    fn trie_splits_and_chains() {
        let pats = [
            UriPat::Prefix("/".into()),
            UriPat::Prefix("/api/v1/".into()),
            UriPat::Prefix("/api/".into()),
            UriPat::Prefix("/api/v2/".into()),
            UriPat::Prefix("/ap".into()),
            UriPat::Exact("/api/v1/x".into()),
        ];
        let items: Vec<(u32, &UriPat)> = pats
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p))
            .collect();
        let t = Table::build(&items, |_| 0);
        assert_eq!(ids(&t, "/api/v1/x"), vec![5, 1, 2, 4, 0]);
        assert_eq!(ids(&t, "/api/v1/y"), vec![1, 2, 4, 0]);
        assert_eq!(ids(&t, "/api/v2"), vec![2, 4, 0]);
        assert_eq!(ids(&t, "/apx"), vec![4, 0]);
        assert_eq!(ids(&t, "/a"), vec![0]);
        assert_eq!(ids(&t, ""), Vec::<u32>::new());
        assert_eq!(ids(&t, "x"), Vec::<u32>::new());
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let pats: Vec<UriPat> = (1..3000)
            .map(|n| UriPat::Prefix(format!("/{}", "a".repeat(n))))
            .collect();
        let items: Vec<(u32, &UriPat)> = pats
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p))
            .collect();
        let t = Table::build(&items, |_| 0);
        let got = ids(&t, &format!("/{}", "a".repeat(5000)));
        assert_eq!(got.len(), 2999);
        assert_eq!(got[0], 2998);
    }
}
