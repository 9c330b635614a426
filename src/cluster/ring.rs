//! Which node owns a key: rendezvous (highest random weight) hashing over
//! the live members. Pure.
//!
//! Every key is first reduced to its placement hash (the one that already
//! places it on a shard, `model::placement`), so a worker and its own task
//! queue (`worker:<id>`, whose task ids embed that same hash) always land
//! on the same node. Rendezvous hashing moves only the keys of a node that
//! joins or leaves (about 1/N of them), and needs nothing but the member
//! list: every node computes the same owner from the same view.

/// A node's weight for a key: a 64-bit mix (splitmix64's finaliser) of the
/// key's hash and the node's seed (the placement hash of its id).
pub(crate) fn weight(key_hash: u64, node_seed: u64) -> u64 {
    let mut z = key_hash ^ node_seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The index in `seeds` of the node with the highest weight for `key_hash`
/// (ties, which need equal seeds, go to the lower index); None when empty.
pub(crate) fn owner(key_hash: u64, seeds: &[u64]) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for (i, &s) in seeds.iter().enumerate() {
        let w = weight(key_hash, s);
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::placement::placement_hash;

    fn seeds(ids: &[&str]) -> Vec<u64> {
        ids.iter().map(|i| placement_hash(i)).collect()
    }

    #[test]
    fn empty_has_no_owner_and_one_node_owns_all() {
        assert_eq!(owner(42, &[]), None);
        let s = seeds(&["a"]);
        for k in 0..100u64 {
            assert_eq!(owner(placement_hash(&k.to_string()), &s), Some(0));
        }
    }

    #[test]
    fn spread_is_even_and_a_leaving_node_moves_only_its_keys() {
        let three = seeds(&["node-a", "node-b", "node-c"]);
        let two = seeds(&["node-a", "node-c"]);
        let n = 30_000u64;
        let mut counts = [0usize; 3];
        let mut moved_wrongly = 0;
        for k in 0..n {
            let h = placement_hash(&format!("worker-{k}"));
            let o3 = owner(h, &three).unwrap();
            counts[o3] += 1;
            let o2 = owner(h, &two).unwrap();
            // node-a is index 0 in both, node-c is 2 then 1.
            let same = matches!((o3, o2), (0, 0) | (2, 1));
            if o3 != 1 && !same {
                moved_wrongly += 1;
            }
        }
        assert_eq!(moved_wrongly, 0, "keys of staying nodes must not move");
        for c in counts {
            let share = c as f64 / n as f64;
            assert!((0.30..0.37).contains(&share), "share {share} of {counts:?}");
        }
    }

    #[test]
    fn order_of_members_does_not_change_the_owner_node() {
        let ab = ["x", "y", "z"];
        let ba = ["z", "x", "y"];
        let (s1, s2) = (seeds(&ab), seeds(&ba));
        for k in 0..1000u64 {
            let h = placement_hash(&k.to_string());
            assert_eq!(ab[owner(h, &s1).unwrap()], ba[owner(h, &s2).unwrap()]);
        }
    }
}
