//! Where a key lives: the hash that places a worker id or a queue key on a
//! shard. Pure and shard-count independent, so the shard layer, the task
//! ids (which embed the hash) and startup recovery all agree.

/// Fixed seeds: a worker id maps to the same shard in every run of the same
/// binary, which keeps placement reproducible across restarts.
const OWNER_SEEDS: [u64; 4] = [
    0x9e37_79b9_7f4a_7c15,
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
];

/// A shard-count-independent hash placing `key` (a worker id, a queue key).
pub(crate) fn placement_hash(key: &str) -> u64 {
    ahash::RandomState::with_seeds(
        OWNER_SEEDS[0],
        OWNER_SEEDS[1],
        OWNER_SEEDS[2],
        OWNER_SEEDS[3],
    )
    .hash_one(key)
}

/// The shard that owns `worker_id` when there are `shards` shards.
pub fn owner_of(worker_id: &str, shards: usize) -> usize {
    (placement_hash(worker_id) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_in_range_and_stable() {
        for n in 1..9 {
            for id in ["a", "gpu-17", "ümlaut", ""] {
                let o = owner_of(id, n);
                assert!(o < n);
                assert_eq!(o, owner_of(id, n));
            }
        }
        // Zero shards is treated as one rather than dividing by zero.
        assert_eq!(owner_of("x", 0), 0);
    }
}
