//! Slot placement by rendezvous (highest-random-weight) hashing.
//!
//! Every slot scores every live node with `mix(hash(node id), slot)` and goes
//! to the highest score. A node joining takes only the slots it now wins
//! (about 1/(n+1) of them) and a node leaving gives up only its own, so
//! placement moves the minimum expected number of slots without consulting
//! the previous map, and any process computes the same map from the same
//! node list. Pure: no I/O, no clock.

use partyline_proto::{NodeInfo, SlotMap, SlotMapError, SLOTS};

/// Computes the slot map at `epoch` over `nodes` (live, non-draining).
///
/// The result does not depend on the order of `nodes`.
pub fn assign(epoch: u64, nodes: &[NodeInfo]) -> Result<SlotMap, SlotMapError> {
    let mut nodes = nodes.to_vec();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes.dedup_by(|a, b| a.id == b.id);
    let node_hashes: Vec<u64> = nodes
        .iter()
        .map(|n| fnv1a(n.id.as_str().as_bytes()))
        .collect();
    let owners = (0..SLOTS)
        .map(|slot| {
            let (index, _) = node_hashes
                .iter()
                .enumerate()
                .max_by_key(|(_, &node_hash)| splitmix64(node_hash ^ u64::from(slot)))
                .unwrap_or((0, &0));
            index as u16
        })
        .collect();
    SlotMap::new(epoch, nodes, owners)
}

/// FNV-1a, 64-bit: a fixed, documented hash for node ids.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads nearby inputs (consecutive slots) over
/// the whole range so scores are independent per slot.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use partyline_proto::{NodeId, Slot};

    /// Nodes with these ids, as tests across the crate build them.
    pub(crate) fn nodes(ids: &[&str]) -> Vec<NodeInfo> {
        ids.iter()
            .map(|id| NodeInfo {
                id: NodeId::new(*id),
                grpc_url: format!("http://{id}:7001"),
            })
            .collect()
    }

    fn owner_ids(map: &SlotMap) -> Vec<String> {
        Slot::all().map(|s| map.owner(s).id.to_string()).collect()
    }

    fn moved(a: &SlotMap, b: &SlotMap) -> usize {
        owner_ids(a)
            .iter()
            .zip(owner_ids(b))
            .filter(|(x, y)| *x != y)
            .count()
    }

    #[test]
    fn no_nodes_is_an_error() {
        assert_eq!(assign(1, &[]), Err(SlotMapError::NoNodes));
    }

    #[test]
    fn spreads_slots_within_one_and_a_half_fair_shares() {
        for n in 1..=8 {
            let ids: Vec<String> = (0..n).map(|i| format!("room-node-{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let map = assign(1, &nodes(&refs)).unwrap();
            let fair = f64::from(SLOTS) / n as f64;
            for count in map.slot_counts() {
                assert!(
                    (count as f64) <= 1.5 * fair && (count as f64) >= 0.5 * fair,
                    "{n} nodes: a node owns {count} slots, fair share {fair}"
                );
            }
        }
    }

    #[test]
    fn order_of_nodes_does_not_matter() {
        let a = assign(3, &nodes(&["a", "b", "c"])).unwrap();
        let b = assign(3, &nodes(&["c", "a", "b", "a"])).unwrap();
        assert_eq!(owner_ids(&a), owner_ids(&b));
        assert_eq!(a.nodes().len(), 3);
    }

    #[test]
    fn a_joining_node_takes_only_its_share() {
        let before = assign(1, &nodes(&["n1", "n2", "n3"])).unwrap();
        let after = assign(2, &nodes(&["n1", "n2", "n3", "n4"])).unwrap();
        let moved = moved(&before, &after);
        // Every moved slot went to the new node; about a quarter move.
        for (old, new) in owner_ids(&before).iter().zip(owner_ids(&after)) {
            assert!(old == &new || new == "n4", "slot moved from {old} to {new}");
        }
        assert!(
            moved <= usize::from(SLOTS) * 30 / 100,
            "{moved} slots moved"
        );
        assert!(
            moved >= usize::from(SLOTS) * 15 / 100,
            "{moved} slots moved"
        );
    }

    #[test]
    fn a_leaving_node_gives_up_only_its_own_slots() {
        let before = assign(1, &nodes(&["n1", "n2", "n3", "n4"])).unwrap();
        let after = assign(2, &nodes(&["n1", "n2", "n4"])).unwrap();
        for (old, new) in owner_ids(&before).iter().zip(owner_ids(&after)) {
            assert!(old == &new || old == "n3", "slot moved from {old} to {new}");
        }
    }
}
