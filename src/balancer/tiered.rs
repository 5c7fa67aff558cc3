//! Priority tiers of weighted members: `ai-proxy-multi`'s instance selection.
//!
//! Members are grouped by `priority`, highest first. A request is served by the first tier that
//! has a member it may use (healthy, not yet tried); inside a tier the pick is smooth weighted
//! round robin, or consistent hashing on a request key (`chash`) so one client sticks to one
//! member. Pingora's load balancer selects among backends identified by address and weight, which
//! would merge two instances of one provider host (two keys, two models), so selection here works
//! on member indices, with pingora-ketama's ring for hashing.

use std::net::{Ipv6Addr, SocketAddr};

use pingora_ketama::{Bucket, Continuum};

use super::swrr::SmoothWrr;

#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub priority: i64,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RoundRobin,
    Chash,
}

struct Tier {
    /// Tiers are already ordered by it; kept so tests can check the order.
    #[cfg_attr(not(test), allow(dead_code))]
    priority: i64,
    /// Member indices of this tier, in config order.
    members: Vec<usize>,
    wrr: SmoothWrr,
    /// `chash`: the ring over this tier's members, each placed by a stable id derived from its
    /// name (so adding an instance does not remap the others).
    ring: Option<(Continuum, Vec<(SocketAddr, usize)>)>,
}

/// Tiers, member indices and rings are fixed when it is built; its only mutable state is each
/// tier's smooth-WRR counters, behind `SmoothWrr`'s mutex. So one balancer may be shared by
/// several compiled objects whose members are the same, in the same order (`balancer::state`).
pub struct TieredBalancer {
    tiers: Vec<Tier>,
}

/// A stable ring position for a member: ketama places nodes by address, so each member gets a
/// synthetic IPv6 address hashed from its name (FNV-1a, stable across processes and versions).
fn ring_id(name: &str) -> SocketAddr {
    let fnv = |seed: u64| {
        let mut h = seed;
        for b in name.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let hi = fnv(0xcbf2_9ce4_8422_2325);
    let lo = fnv(0x8422_2325_cbf2_9ce4);
    SocketAddr::new(
        Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo)).into(),
        1,
    )
}

impl TieredBalancer {
    pub fn new(members: &[Member], algorithm: Algorithm) -> TieredBalancer {
        let mut priorities: Vec<i64> = members.iter().map(|m| m.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let tiers = priorities
            .into_iter()
            .map(|priority| {
                let idx: Vec<usize> = (0..members.len())
                    .filter(|i| members[*i].priority == priority)
                    .collect();
                let weights: Vec<u32> = idx.iter().map(|i| members[*i].weight).collect();
                let ring = (algorithm == Algorithm::Chash).then(|| {
                    let all_zero = weights.iter().all(|w| *w == 0);
                    let mut ids = Vec::new();
                    let buckets: Vec<Bucket> = idx
                        .iter()
                        .zip(&weights)
                        .filter(|(_, w)| all_zero || **w > 0)
                        .map(|(i, w)| {
                            let id = ring_id(&members[*i].name);
                            ids.push((id, *i));
                            Bucket::new(id, if all_zero { 1 } else { *w })
                        })
                        .collect();
                    (Continuum::new(&buckets), ids)
                });
                Tier {
                    priority,
                    wrr: SmoothWrr::new(&weights),
                    members: idx,
                    ring,
                }
            })
            .collect();
        TieredBalancer { tiers }
    }

    /// Priorities, highest first.
    #[cfg(test)]
    fn priorities(&self) -> Vec<i64> {
        self.tiers.iter().map(|t| t.priority).collect()
    }

    /// The member to use, from the highest tier where `usable` accepts one. `key` is the `chash`
    /// key (ignored by round robin; without a key `chash` falls back to round robin).
    pub fn pick(&self, key: Option<&[u8]>, usable: impl Fn(usize) -> bool) -> Option<usize> {
        for tier in &self.tiers {
            if !tier.members.iter().any(|m| usable(*m)) {
                continue; // leave a tier only when none of its members can serve
            }
            if let (Some((ring, ids)), Some(key)) = (&tier.ring, key) {
                if let Some(m) = pick_hashed(ring, ids, key, &usable) {
                    return Some(m);
                }
            }
            if let Some(i) = tier.wrr.next_where(|i| usable(tier.members[i])) {
                return Some(tier.members[i]);
            }
        }
        None
    }
}

fn pick_hashed(
    ring: &Continuum,
    ids: &[(SocketAddr, usize)],
    key: &[u8],
    usable: &impl Fn(usize) -> bool,
) -> Option<usize> {
    // The ring has many points per member; walking it from the key's point finds the next member
    // clockwise, which is what keeps a client on its instance while others come and go.
    let mut idx = ring.node_idx(key);
    let mut seen = 0usize;
    while let Some(addr) = ring.get_addr(&mut idx) {
        if let Some((_, m)) = ids.iter().find(|(a, _)| a == addr) {
            if usable(*m) {
                return Some(*m);
            }
        }
        seen += 1;
        if seen > 160 * 64 {
            break;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, i64, u32)]) -> Vec<Member> {
        spec.iter()
            .map(|(n, p, w)| Member {
                name: n.to_string(),
                priority: *p,
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn smooth_inside_a_tier() {
        let b = TieredBalancer::new(&members(&[("a", 0, 8), ("b", 0, 2)]), Algorithm::RoundRobin);
        for _ in 0..10 {
            let picks: Vec<usize> = (0..10).map(|_| b.pick(None, |_| true).unwrap()).collect();
            // Interleaved, not AAAAAAAABB.
            assert_eq!(picks, vec![0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
        }
    }

    #[test]
    fn highest_priority_first_and_left_only_when_exhausted() {
        let b = TieredBalancer::new(
            &members(&[
                ("low", 0, 1),
                ("high1", 5, 1),
                ("high2", 5, 1),
                ("mid", 2, 1),
            ]),
            Algorithm::RoundRobin,
        );
        assert_eq!(b.priorities(), vec![5, 2, 0]);
        for _ in 0..6 {
            assert!([1, 2].contains(&b.pick(None, |_| true).unwrap()));
        }
        assert_eq!(b.pick(None, |i| i != 1), Some(2));
        assert_eq!(b.pick(None, |i| i != 1 && i != 2), Some(3));
        assert_eq!(b.pick(None, |i| i == 0), Some(0));
        assert_eq!(b.pick(None, |_| false), None);
    }

    #[test]
    fn chash_is_sticky_and_spreads() {
        let m = members(&[("a", 0, 1), ("b", 0, 1), ("c", 0, 1)]);
        let b = TieredBalancer::new(&m, Algorithm::Chash);
        let mut seen = std::collections::HashSet::new();
        for user in 0..60 {
            let key = format!("user-{user}");
            let first = b.pick(Some(key.as_bytes()), |_| true).unwrap();
            for _ in 0..5 {
                assert_eq!(b.pick(Some(key.as_bytes()), |_| true), Some(first));
            }
            seen.insert(first);
            // An unusable member sends its clients elsewhere, deterministically.
            let other = b.pick(Some(key.as_bytes()), |i| i != first).unwrap();
            assert_ne!(other, first);
            assert_eq!(b.pick(Some(key.as_bytes()), |i| i != first), Some(other));
        }
        assert_eq!(seen.len(), 3, "60 keys should reach all 3 members");
    }

    #[test]
    fn chash_positions_do_not_depend_on_order() {
        let ab = TieredBalancer::new(&members(&[("a", 0, 1), ("b", 0, 1)]), Algorithm::Chash);
        let ba = TieredBalancer::new(&members(&[("b", 0, 1), ("a", 0, 1)]), Algorithm::Chash);
        for k in 0..50 {
            let key = format!("k{k}");
            let x = ab.pick(Some(key.as_bytes()), |_| true).unwrap();
            let y = ba.pick(Some(key.as_bytes()), |_| true).unwrap();
            assert_eq!(["a", "b"][x], ["b", "a"][y]);
        }
    }
}
