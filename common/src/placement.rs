//! Hall-aware placement: which dataservers hold the k+m shards of a stripe.
//!
//! A pure function of (live dataservers with hall and free space, stripe id). It uses
//! weighted rendezvous hashing: every (stripe, node) pair gets a pseudo-random score
//! scaled by the node's free space, nodes are taken best score first, and a node is
//! skipped when its hall already holds m shards of the stripe (DESIGN.md invariant 4).
//! The per-hall cap is a partition matroid, so taking the best allowed node each time
//! finds a placement whenever one exists. Rendezvous hashing keeps placements stable
//! when a node joins or leaves, and spreads stripes in proportion to free space.

use std::collections::HashMap;

use thiserror::Error;

use crate::ids::{HallId, NodeId, StripeId};

/// What placement needs to know about one live dataserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub hall: HallId,
    pub free_bytes: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    #[error(
        "cannot place {needed} shards with at most {per_hall_max} per hall: only {placeable} \
         fit on {nodes} dataservers with free space in {halls} halls"
    )]
    Insufficient {
        needed: usize,
        per_hall_max: usize,
        placeable: usize,
        nodes: usize,
        halls: usize,
    },
    #[error("dataserver {0} is listed twice")]
    DuplicateNode(NodeId),
}

/// How many shards of one stripe the candidates can hold at most under the hall rule.
pub fn placeable_shards(candidates: &[Candidate], per_hall_max: usize) -> usize {
    let mut per_hall: HashMap<&HallId, usize> = HashMap::new();
    for c in candidates.iter().filter(|c| c.free_bytes > 0) {
        *per_hall.entry(&c.hall).or_default() += 1;
    }
    per_hall.values().map(|&n| n.min(per_hall_max)).sum()
}

/// Chooses `shards` distinct dataservers for `stripe`, at most `per_hall_max` in any
/// hall. Position i of the result holds shard i. Nodes with no free space are skipped.
pub fn place(
    candidates: &[Candidate],
    stripe: StripeId,
    shards: usize,
    per_hall_max: usize,
) -> Result<Vec<NodeId>, PlacementError> {
    let mut seen = HashMap::with_capacity(candidates.len());
    for c in candidates {
        if seen.insert(c.node, ()).is_some() {
            return Err(PlacementError::DuplicateNode(c.node));
        }
    }
    let mut scored: Vec<(f64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.free_bytes > 0)
        .map(|c| (score(stripe, c.node, c.free_bytes), c))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.node.cmp(&b.1.node)));

    let mut per_hall: HashMap<&HallId, usize> = HashMap::new();
    let mut chosen = Vec::with_capacity(shards);
    for (_, c) in scored {
        if chosen.len() == shards {
            break;
        }
        let used = per_hall.entry(&c.hall).or_default();
        if *used < per_hall_max {
            *used += 1;
            chosen.push(c.node);
        }
    }
    if chosen.len() < shards {
        let halls = candidates
            .iter()
            .filter(|c| c.free_bytes > 0)
            .map(|c| &c.hall)
            .collect::<std::collections::HashSet<_>>();
        return Err(PlacementError::Insufficient {
            needed: shards,
            per_hall_max,
            placeable: placeable_shards(candidates, per_hall_max),
            nodes: candidates.iter().filter(|c| c.free_bytes > 0).count(),
            halls: halls.len(),
        });
    }
    Ok(chosen)
}

/// Weighted rendezvous score (lower wins): -ln(u) / weight with u uniform in (0, 1]
/// from a hash of (stripe, node). The expected share of a node is its weight's share.
fn score(stripe: StripeId, node: NodeId, free_bytes: u64) -> f64 {
    let h = mix(mix(stripe.0 as u64 ^ mix((stripe.0 >> 64) as u64)) ^ u64::from(node.0));
    // 53 random bits to a float in (0, 1].
    let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
    -u.ln() / free_bytes as f64
}

/// Which of `partitions` parts stripe `stripe` falls in, the same on every build: how
/// nodes split per-stripe work (rebuild) among themselves without talking to each other.
pub fn partition_of(stripe: StripeId, partitions: u32) -> u32 {
    let h = mix(stripe.0 as u64 ^ mix((stripe.0 >> 64) as u64));
    // The remainder is below `partitions`, a u32.
    (h % u64::from(partitions.max(1))) as u32
}

/// splitmix64's finalizer. Written here rather than taken from std's hasher because
/// placement must give the same answer on every build and every platform.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stripes_spread_evenly_over_partitions() {
        let mut counts = [0u32; 7];
        for i in 0..70_000u128 {
            let p = partition_of(StripeId(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)), 7);
            counts[p as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        assert_eq!(partition_of(StripeId(42), 1), 0);
        assert_eq!(partition_of(StripeId(42), 0), 0);
    }

    fn topology(nodes_per_hall: &[usize], free: impl Fn(usize) -> u64) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (h, &n) in nodes_per_hall.iter().enumerate() {
            for _ in 0..n {
                let i = out.len();
                out.push(Candidate {
                    node: NodeId(i as u32),
                    hall: HallId::new(format!("hall-{h}")).unwrap(),
                    free_bytes: free(i),
                });
            }
        }
        out
    }

    fn hall_of(cands: &[Candidate], node: NodeId) -> &HallId {
        &cands.iter().find(|c| c.node == node).unwrap().hall
    }

    proptest! {
        /// Over random topologies: a placement, when one exists, has k+m distinct nodes
        /// with free space and at most m per hall; and an error is returned exactly when
        /// the hall rule cannot be met.
        #[test]
        fn keeps_the_hall_rule(
            halls in proptest::collection::vec(0usize..5, 1..7),
            free in proptest::collection::vec(0u64..4, 0..40),
            k in 1usize..7, m in 1usize..4, stripe in any::<u128>(),
        ) {
            let cands = topology(&halls, |i| free.get(i).copied().unwrap_or(1) << 30);
            match place(&cands, StripeId(stripe), k + m, m) {
                Ok(nodes) => {
                    prop_assert_eq!(nodes.len(), k + m);
                    let mut per_hall: HashMap<&HallId, usize> = HashMap::new();
                    for (i, n) in nodes.iter().enumerate() {
                        prop_assert!(!nodes[..i].contains(n), "node {} chosen twice", n);
                        prop_assert!(cands.iter().any(|c| c.node == *n && c.free_bytes > 0));
                        *per_hall.entry(hall_of(&cands, *n)).or_default() += 1;
                    }
                    prop_assert!(per_hall.values().all(|&c| c <= m), "{:?}", per_hall);
                }
                Err(PlacementError::Insufficient { placeable, .. }) => {
                    prop_assert!(placeable < k + m);
                    prop_assert_eq!(placeable, placeable_shards(&cands, m));
                }
                Err(e) => prop_assert!(false, "unexpected {}", e),
            }
        }

        /// With equal halls and equal free space, every node gets close to its fair
        /// share of shards.
        #[test]
        fn spreads_load_evenly(halls in 3usize..6, per_hall in 1usize..5, seed in any::<u64>()) {
            let (k, m) = (4, 2);
            let cands = topology(&vec![per_hall; halls], |_| 1 << 40);
            prop_assume!(placeable_shards(&cands, m) >= k + m);
            let stripes = 3000;
            let mut count = vec![0usize; cands.len()];
            for s in 0..stripes {
                let stripe = StripeId(u128::from(seed) << 32 | s as u128);
                for n in place(&cands, stripe, k + m, m).unwrap() {
                    count[n.0 as usize] += 1;
                }
            }
            let fair = (stripes * (k + m)) as f64 / cands.len() as f64;
            for (node, &c) in count.iter().enumerate() {
                prop_assert!((c as f64 - fair).abs() < 0.15 * fair, "node {} got {} shards, fair share {}", node, c, fair);
            }
        }
    }

    #[test]
    fn favours_nodes_with_more_free_space() {
        // Six halls of one node, so the hall rule never binds; node 0 has 4x the space.
        let cands = topology(&[1; 12], |i| if i == 0 { 4 << 30 } else { 1 << 30 });
        let mut count = [0usize; 12];
        for s in 0..4000u128 {
            for n in place(&cands, StripeId(s), 3, 2).unwrap() {
                count[n.0 as usize] += 1;
            }
        }
        let others = count[1..].iter().sum::<usize>() as f64 / 11.0;
        assert!(count[0] as f64 > 2.0 * others, "{count:?}");
    }

    #[test]
    fn reports_impossible_topologies() {
        // Two halls can hold at most 2 + 2 shards of a 4+2 stripe.
        let cands = topology(&[3, 3], |_| 1 << 30);
        assert_eq!(
            place(&cands, StripeId(1), 6, 2),
            Err(PlacementError::Insufficient {
                needed: 6,
                per_hall_max: 2,
                placeable: 4,
                nodes: 6,
                halls: 2
            })
        );
        let mut dup = topology(&[2, 2, 2], |_| 1);
        dup[1].node = NodeId(0);
        assert_eq!(
            place(&dup, StripeId(1), 6, 2),
            Err(PlacementError::DuplicateNode(NodeId(0)))
        );
    }

    #[test]
    fn is_deterministic() {
        let cands = topology(&[2, 2, 2, 2], |i| (i as u64 + 1) << 30);
        let a = place(&cands, StripeId(42), 6, 2).unwrap();
        assert_eq!(a, place(&cands, StripeId(42), 6, 2).unwrap());
    }
}
