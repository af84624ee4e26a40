//! The leader's one decision, pure: which slot map should replace the
//! current one given the live nodes ([`next_map`]).
//!
//! Owns the two placement modes and what counts as a change. It must not
//! do I/O or read the clock: the loop hands it everything, so every rule
//! here is unit-tested.

use std::collections::HashMap;

use partyline_proto::{NodeId, NodeInfo, Slot, SlotMap};

use crate::placement::assign;

/// How the next map treats the current owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Place every slot afresh by rendezvous hashing over the live nodes: a
    /// joining node takes its share at once (about 1/n of the slots move).
    Rebalance,
    /// Keep every slot whose owner is still live; only orphaned slots (owner
    /// dead or draining) go to their rendezvous winner among the live nodes.
    Sticky,
}

/// The map that should replace `current` given the `live` (and not
/// draining) nodes, or `None` when nothing would change.
///
/// A new map has epoch `current + 1` (1 for the first) and lists exactly the
/// live nodes. No live node means no new map: an empty map is never
/// published, the current one stays. "Change" means some slot's owner id or
/// owner URL differs; a node that owns nothing is not a change.
pub fn next_map(current: Option<&SlotMap>, live: &[NodeInfo], mode: Mode) -> Option<SlotMap> {
    let epoch = current.map_or(1, |map| map.epoch() + 1);
    // `assign` sorts and deduplicates the nodes and fails only on none.
    let target = assign(epoch, live).ok()?;
    let proposed = match (mode, current) {
        (Mode::Sticky, Some(current)) => {
            let nodes = target.nodes().to_vec();
            let index: HashMap<&NodeId, u16> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| (&node.id, i as u16))
                .collect();
            let owners = Slot::all()
                .map(|slot| match index.get(&current.owner(slot).id) {
                    Some(&kept) => kept,
                    None => index[&target.owner(slot).id],
                })
                .collect();
            SlotMap::new(epoch, nodes, owners).expect("owners index the live nodes")
        }
        _ => target,
    };
    match current {
        Some(current) if same_assignment(current, &proposed) => None,
        _ => Some(proposed),
    }
}

/// Slots whose owner id differs between `before` and `after`.
pub fn moved_slots(before: &SlotMap, after: &SlotMap) -> usize {
    Slot::all()
        .filter(|&slot| before.owner(slot).id != after.owner(slot).id)
        .count()
}

fn same_assignment(a: &SlotMap, b: &SlotMap) -> bool {
    Slot::all().all(|slot| a.owner(slot) == b.owner(slot))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::nodes;
    use partyline_proto::SLOTS;

    fn owner_of(map: &SlotMap, slot: Slot) -> &str {
        map.owner(slot).id.as_str()
    }

    #[test]
    fn the_first_map_is_epoch_one_over_the_live_nodes() {
        for mode in [Mode::Rebalance, Mode::Sticky] {
            let map = next_map(None, &nodes(&["a", "b", "c"]), mode).unwrap();
            assert_eq!(map.epoch(), 1);
            assert_eq!(map, assign(1, &nodes(&["a", "b", "c"])).unwrap());
        }
    }

    #[test]
    fn no_live_nodes_never_yields_a_map() {
        assert_eq!(next_map(None, &[], Mode::Rebalance), None);
        let current = assign(3, &nodes(&["a"])).unwrap();
        assert_eq!(next_map(Some(&current), &[], Mode::Rebalance), None);
        assert_eq!(next_map(Some(&current), &[], Mode::Sticky), None);
    }

    #[test]
    fn unchanged_membership_keeps_the_epoch() {
        let live = nodes(&["a", "b", "c"]);
        let current = assign(7, &live).unwrap();
        assert_eq!(next_map(Some(&current), &live, Mode::Rebalance), None);
        assert_eq!(next_map(Some(&current), &live, Mode::Sticky), None);
        // Order and duplicates of the live list do not matter.
        let shuffled = nodes(&["c", "a", "b", "a"]);
        assert_eq!(next_map(Some(&current), &shuffled, Mode::Rebalance), None);
    }

    #[test]
    fn a_new_url_is_a_change_even_without_moves() {
        let current = assign(2, &nodes(&["a", "b"])).unwrap();
        let mut live = nodes(&["a", "b"]);
        live[1].grpc_url = "http://b-new:7001".to_owned();
        for mode in [Mode::Rebalance, Mode::Sticky] {
            let next = next_map(Some(&current), &live, mode).unwrap();
            assert_eq!(next.epoch(), 3);
            assert_eq!(moved_slots(&current, &next), 0);
            assert!(next
                .nodes()
                .iter()
                .any(|n| n.grpc_url == "http://b-new:7001"));
        }
    }

    #[test]
    fn rebalance_gives_a_joining_node_its_share_and_moves_little() {
        let current = assign(1, &nodes(&["a", "b", "c"])).unwrap();
        let next = next_map(
            Some(&current),
            &nodes(&["a", "b", "c", "d"]),
            Mode::Rebalance,
        )
        .unwrap();
        assert_eq!(next.epoch(), 2);
        let moved = moved_slots(&current, &next);
        assert!(moved <= usize::from(SLOTS) * 30 / 100, "{moved} moved");
        for slot in Slot::all() {
            let (old, new) = (owner_of(&current, slot), owner_of(&next, slot));
            assert!(old == new || new == "d", "slot {slot} moved {old} -> {new}");
        }
    }

    #[test]
    fn sticky_ignores_joins_but_reassigns_orphans() {
        let current = assign(1, &nodes(&["a", "b", "c"])).unwrap();
        // A join alone changes nothing.
        assert_eq!(
            next_map(Some(&current), &nodes(&["a", "b", "c", "d"]), Mode::Sticky),
            None
        );
        // "b" died: only its slots move, and never to the idle "d" unless
        // "d" wins them by rendezvous.
        let live = nodes(&["a", "c", "d"]);
        let next = next_map(Some(&current), &live, Mode::Sticky).unwrap();
        let winners = assign(2, &live).unwrap();
        for slot in Slot::all() {
            let old = owner_of(&current, slot);
            let new = owner_of(&next, slot);
            if old == "b" {
                assert_eq!(new, owner_of(&winners, slot));
            } else {
                assert_eq!(old, new);
            }
        }
        assert_eq!(moved_slots(&current, &next), current.slot_counts()[1]);
        assert!(next.nodes().iter().all(|n| n.id.as_str() != "b"));
    }

    #[test]
    fn rebalance_after_sticky_reaches_the_fresh_assignment() {
        let live = nodes(&["a", "b", "c", "d"]);
        let current = assign(1, &nodes(&["a", "b", "c"])).unwrap();
        let next = next_map(Some(&current), &live, Mode::Rebalance).unwrap();
        assert!(same_assignment(&next, &assign(2, &live).unwrap()));
    }

    #[test]
    fn a_departed_node_gives_up_only_its_slots() {
        let current = assign(4, &nodes(&["a", "b", "c", "d"])).unwrap();
        let next = next_map(Some(&current), &nodes(&["a", "b", "d"]), Mode::Rebalance).unwrap();
        assert_eq!(next.epoch(), 5);
        for slot in Slot::all() {
            let (old, new) = (owner_of(&current, slot), owner_of(&next, slot));
            assert!(old == new || old == "c", "slot {slot} moved {old} -> {new}");
            assert_ne!(new, "c");
        }
    }
}
