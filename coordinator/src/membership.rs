//! Which room nodes are alive, from their heartbeats.
//!
//! Owns the table of nodes heard from and when. Pure: no I/O, and the clock
//! is passed in, so the rules are unit-tested without sleeping. It knows
//! nothing of slots, leadership or NATS; the leader feeds it heartbeats and
//! asks it who is live.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use partyline_proto::{NodeId, NodeInfo};

use crate::cluster::Heartbeat;

/// Live room nodes, as far as heartbeats tell.
#[derive(Debug, Clone)]
pub struct Membership {
    dead_after: Duration,
    members: BTreeMap<NodeId, Member>,
}

#[derive(Debug, Clone)]
struct Member {
    grpc_url: String,
    draining: bool,
    last_seen: Instant,
}

/// One member as the admin listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Id and endpoint.
    pub info: NodeInfo,
    /// The node's last heartbeat asked for no slots.
    pub draining: bool,
    /// Time since its last heartbeat (zero while a grace period lasts).
    pub last_seen_age: Duration,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// A node not known before.
    Joined,
    /// A known node whose endpoint or draining flag changed.
    Changed,
    /// A known node, nothing new.
    Unchanged,
}

impl Membership {
    /// An empty table; nodes silent for `dead_after` are expired.
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            members: BTreeMap::new(),
        }
    }

    /// Records a heartbeat received at `now`.
    pub fn observe(&mut self, heartbeat: &Heartbeat, now: Instant) -> Observed {
        match self.members.get_mut(&heartbeat.id) {
            Some(member) => {
                // Never move a clock back: a grace period granted by
                // `reset_clocks` may lie in the future.
                member.last_seen = member.last_seen.max(now);
                let changed =
                    member.grpc_url != heartbeat.grpc_url || member.draining != heartbeat.draining;
                member.grpc_url.clone_from(&heartbeat.grpc_url);
                member.draining = heartbeat.draining;
                if changed {
                    Observed::Changed
                } else {
                    Observed::Unchanged
                }
            }
            None => {
                self.members.insert(
                    heartbeat.id.clone(),
                    Member {
                        grpc_url: heartbeat.grpc_url.clone(),
                        draining: heartbeat.draining,
                        last_seen: now,
                    },
                );
                Observed::Joined
            }
        }
    }

    /// Adds `node` as if heard at `now`, unless it is already known.
    ///
    /// A new leader seeds the nodes of the stored map this way, so a node it
    /// has not heard yet gets a full `dead_after` to prove it is alive
    /// instead of losing its slots at once.
    pub fn presume_alive(&mut self, node: &NodeInfo, now: Instant) -> bool {
        if self.members.contains_key(&node.id) {
            return false;
        }
        self.members.insert(
            node.id.clone(),
            Member {
                grpc_url: node.grpc_url.clone(),
                draining: false,
                last_seen: now,
            },
        );
        true
    }

    /// Removes the nodes silent for `dead_after` or longer; returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let dead: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, member)| {
                now.saturating_duration_since(member.last_seen) >= self.dead_after
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.members.remove(id);
        }
        dead
    }

    /// When the next node expires if it stays silent: the earliest
    /// `last_seen + dead_after`, or `None` with no node known.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members
            .values()
            .map(|member| member.last_seen + self.dead_after)
            .min()
    }

    /// Counts every known node as heard at `now` (or later, if already so).
    ///
    /// Called after a NATS reconnect and on becoming leader: whatever we
    /// could not hear in the meantime is not the nodes' fault. Passing an
    /// instant in the future extends the grace.
    pub fn reset_clocks(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            member.last_seen = member.last_seen.max(now);
        }
    }

    /// The live nodes that accept slots (not draining), sorted by id.
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        self.members
            .iter()
            .filter(|(_, member)| !member.draining)
            .map(|(id, member)| NodeInfo {
                id: id.clone(),
                grpc_url: member.grpc_url.clone(),
            })
            .collect()
    }

    /// Every live node, draining or not, sorted by id.
    pub fn members(&self, now: Instant) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|(id, member)| MemberStatus {
                info: NodeInfo {
                    id: id.clone(),
                    grpc_url: member.grpc_url.clone(),
                },
                draining: member.draining,
                last_seen_age: now.saturating_duration_since(member.last_seen),
            })
            .collect()
    }

    /// Whether `id` is live (draining or not).
    pub fn contains(&self, id: &NodeId) -> bool {
        self.members.contains_key(id)
    }

    /// How many nodes are live (draining or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no node is live.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD_AFTER: Duration = Duration::from_secs(3);

    fn heartbeat(id: &str, draining: bool) -> Heartbeat {
        Heartbeat {
            id: NodeId::new(id),
            grpc_url: format!("http://{id}:7001"),
            draining,
        }
    }

    fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn heartbeats_make_nodes_live_and_silence_expires_them() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        assert_eq!(
            members.observe(&heartbeat("b", false), t0),
            Observed::Joined
        );
        assert_eq!(
            members.observe(&heartbeat("a", false), t0),
            Observed::Joined
        );
        assert_eq!(
            members.observe(&heartbeat("a", false), t0 + Duration::from_secs(2)),
            Observed::Unchanged
        );
        assert_eq!(ids(&members.live_nodes()), ["a", "b"]);
        // "b", silent since t0, is the next to expire.
        assert_eq!(members.next_expiry(), Some(t0 + DEAD_AFTER));

        assert!(members.expire(t0 + Duration::from_millis(2999)).is_empty());
        assert_eq!(
            members.expire(t0 + Duration::from_secs(3)),
            [NodeId::new("b")]
        );
        assert_eq!(ids(&members.live_nodes()), ["a"]);
        assert_eq!(
            members.next_expiry(),
            Some(t0 + Duration::from_secs(2) + DEAD_AFTER)
        );
        assert!(members.expire(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(members.expire(t0 + Duration::from_secs(5)).len(), 1);
        assert!(members.is_empty());
        assert_eq!(members.next_expiry(), None);
    }

    #[test]
    fn draining_nodes_are_listed_but_not_placed() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        members.observe(&heartbeat("b", false), t0);
        assert_eq!(
            members.observe(&heartbeat("b", true), t0 + Duration::from_secs(1)),
            Observed::Changed
        );
        assert_eq!(ids(&members.live_nodes()), ["a"]);
        let listing = members.members(t0 + Duration::from_secs(2));
        assert_eq!(listing.len(), 2);
        assert!(!listing[0].draining);
        assert_eq!(listing[0].last_seen_age, Duration::from_secs(2));
        assert!(listing[1].draining);
        assert_eq!(listing[1].last_seen_age, Duration::from_secs(1));
        assert_eq!(
            members.observe(&heartbeat("b", false), t0 + Duration::from_secs(2)),
            Observed::Changed
        );
        assert_eq!(ids(&members.live_nodes()), ["a", "b"]);
    }

    #[test]
    fn a_new_endpoint_is_a_change() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        let mut moved = heartbeat("a", false);
        moved.grpc_url = "http://elsewhere:7001".to_owned();
        assert_eq!(members.observe(&moved, t0), Observed::Changed);
        assert_eq!(members.live_nodes()[0].grpc_url, "http://elsewhere:7001");
    }

    #[test]
    fn reset_clocks_forgives_the_time_nobody_could_be_heard() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        members.observe(&heartbeat("b", false), t0 + Duration::from_secs(1));
        // NATS was down for 10 s; we reconnect at t0 + 10 s.
        let back = t0 + Duration::from_secs(10);
        members.reset_clocks(back);
        assert!(members
            .expire(back + Duration::from_millis(2999))
            .is_empty());
        assert_eq!(members.expire(back + DEAD_AFTER).len(), 2);
    }

    #[test]
    fn a_grace_in_the_future_is_not_shortened_by_heartbeats() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        members.reset_clocks(t0 + Duration::from_secs(2));
        members.observe(&heartbeat("a", false), t0 + Duration::from_secs(1));
        // The clock never goes back; an earlier reset does not shorten it either.
        members.reset_clocks(t0);
        assert!(members.expire(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(members.members(t0)[0].last_seen_age, Duration::ZERO);
        assert_eq!(members.expire(t0 + Duration::from_secs(5)).len(), 1);
    }

    #[test]
    fn presumed_nodes_get_a_full_dead_after() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", true), t0);
        let b = heartbeat("b", false).node_info();
        assert!(members.presume_alive(&b, t0 + Duration::from_secs(1)));
        // Known nodes keep what their heartbeat said.
        assert!(!members.presume_alive(&heartbeat("a", false).node_info(), t0));
        assert_eq!(ids(&members.live_nodes()), ["b"]);
        assert!(members.contains(&NodeId::new("b")));
        assert_eq!(members.len(), 2);
        assert_eq!(
            members.expire(t0 + Duration::from_secs(3)),
            [NodeId::new("a")]
        );
        assert_eq!(
            members.expire(t0 + Duration::from_secs(4)),
            [NodeId::new("b")]
        );
    }
}
