//! Which room nodes are alive, from their heartbeats, and which process
//! may speak for each.
//!
//! Owns the table of nodes heard from and when. Pure: no I/O, and the clock
//! is passed in, so the rules are unit-tested without sleeping. It knows
//! nothing of slots, leadership or NATS; the leader feeds it heartbeats and
//! asks it who is live.
//!
//! **The claim rule.** Every room node process sends a random claim of its
//! own in its heartbeats ([`crate::cluster::new_claim`]). A live node id is
//! bound to the claim of the heartbeat that registered it; only heartbeats
//! with that claim and the same endpoint renew it or change its draining
//! flag. Any other heartbeat for the id changes nothing (not the endpoint,
//! not draining, not the time it was last heard) and is kept as a
//! *challenger*. Once the bound claim has been silent for `dead_after` (the
//! process is dead), a challenger with the same endpoint takes the id over
//! in place (a restarted process keeps its slots); without one the node
//! expires like any silent node, and a heartbeat with another endpoint then
//! registers it afresh. A node a coordinator only knows from the stored
//! map ([`Membership::presume_alive`]) is bound by the first heartbeat
//! naming the map's endpoint whose claim matches the stored digest of the
//! claim that held it ([`Membership::claim_digests`], which the leader
//! stores), or by the first one naming that endpoint when no digest was
//! stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use partyline_proto::{NodeId, NodeInfo};
use sha2::{Digest, Sha256};

use crate::cluster::Heartbeat;

/// Most challengers kept per node; a new one replaces the one heard least
/// recently, so forged claims cannot grow the table.
pub const MAX_CHALLENGERS: usize = 8;

/// A refused heartbeat is worth a warning at most this often per node
/// (and once per challenger).
pub const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

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
    binding: Binding,
    /// Other incarnations heard while the bound one lives.
    challengers: Vec<Challenger>,
    /// When a refusal for this node was last worth a warning.
    warned_at: Option<Instant>,
}

/// Whose heartbeats renew a member.
#[derive(Clone, PartialEq, Eq)]
enum Binding {
    /// Known from the stored map only: the first heartbeat with the map's
    /// endpoint (and, when a digest was stored, a claim of that digest)
    /// binds it.
    Presumed(Option<String>),
    /// The claim of the incarnation that registered it (`None`: a node
    /// older than claims).
    Claim(Option<String>),
}

#[derive(Clone)]
struct Challenger {
    claim: Option<String>,
    grpc_url: String,
    draining: bool,
    last_seen: Instant,
}

/// Without the claim.
impl std::fmt::Debug for Challenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenger")
            .field("grpc_url", &self.grpc_url)
            .field("draining", &self.draining)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Presumed(None) => f.write_str("Presumed"),
            Self::Presumed(Some(digest)) => write!(f, "Presumed({digest})"),
            Self::Claim(None) => f.write_str("Unclaimed"),
            Self::Claim(Some(_)) => f.write_str("Claim(***)"),
        }
    }
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
    /// A known node whose draining flag changed.
    Changed,
    /// A known node, nothing new.
    Unchanged,
    /// A new incarnation with the node's endpoint took the id over: the
    /// bound one had been silent for `dead_after`.
    TakenOver,
    /// The incarnation that held the id said it leaves: the id is free.
    Left,
    /// Not from the incarnation that holds the id: nothing changed. `warn`
    /// says whether this refusal is worth a warning (a challenger not seen
    /// before, and none warned about for this node within
    /// [`REFUSAL_WARN_EVERY`]).
    Refused {
        /// Log it at warn rather than debug.
        warn: bool,
    },
}

/// What [`Membership::expire`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Nodes silent for `dead_after`, gone.
    pub removed: Vec<NodeId>,
    /// Nodes whose bound incarnation was silent for `dead_after` and that a
    /// challenger with the same endpoint took over in place.
    pub taken_over: Vec<NodeId>,
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
        if heartbeat.leaving {
            return self.leave(heartbeat);
        }
        let Some(member) = self.members.get_mut(&heartbeat.id) else {
            self.members.insert(
                heartbeat.id.clone(),
                Member {
                    grpc_url: heartbeat.grpc_url.clone(),
                    draining: heartbeat.draining,
                    last_seen: now,
                    binding: Binding::Claim(heartbeat.claim.clone()),
                    challengers: Vec::new(),
                    warned_at: None,
                },
            );
            return Observed::Joined;
        };
        let same_url = member.grpc_url == heartbeat.grpc_url;
        if member.held_by(heartbeat) {
            member.binding = Binding::Claim(heartbeat.claim.clone());
            // Never move a clock back: a grace period granted by
            // `reset_clocks` may lie in the future.
            member.last_seen = member.last_seen.max(now);
            let changed = member.draining != heartbeat.draining;
            member.draining = heartbeat.draining;
            return if changed {
                Observed::Changed
            } else {
                Observed::Unchanged
            };
        }
        if same_url && now.saturating_duration_since(member.last_seen) >= self.dead_after {
            // The bound incarnation is dead and not expired yet: a new one
            // at the same endpoint needs no better rival.
            member.take_over(heartbeat.claim.clone(), heartbeat.draining, now);
            return Observed::TakenOver;
        }
        let new = match member
            .challengers
            .iter_mut()
            .find(|c| c.claim == heartbeat.claim && c.grpc_url == heartbeat.grpc_url)
        {
            Some(challenger) => {
                challenger.draining = heartbeat.draining;
                challenger.last_seen = challenger.last_seen.max(now);
                false
            }
            None => {
                if member.challengers.len() >= MAX_CHALLENGERS {
                    let stalest = member
                        .challengers
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, c)| c.last_seen)
                        .map(|(i, _)| i)
                        .expect("the list is full");
                    member.challengers.swap_remove(stalest);
                }
                member.challengers.push(Challenger {
                    claim: heartbeat.claim.clone(),
                    grpc_url: heartbeat.grpc_url.clone(),
                    draining: heartbeat.draining,
                    last_seen: now,
                });
                true
            }
        };
        let warn = new
            && member
                .warned_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_WARN_EVERY);
        if warn {
            member.warned_at = Some(now);
        }
        Observed::Refused { warn }
    }

    /// A leaving heartbeat: frees the id when it comes with the claim that
    /// holds it (an unclaimed or presumed binding proves nothing, and is
    /// left to expire); a leaving challenger is forgotten.
    fn leave(&mut self, heartbeat: &Heartbeat) -> Observed {
        let Some(member) = self.members.get_mut(&heartbeat.id) else {
            return Observed::Unchanged;
        };
        // Stricter than renewing: an unclaimed binding proves nothing.
        let proven = heartbeat.claim.is_some()
            && !matches!(member.binding, Binding::Presumed(None))
            && member.held_by(heartbeat);
        if proven {
            self.members.remove(&heartbeat.id);
            return Observed::Left;
        }
        member
            .challengers
            .retain(|c| c.claim != heartbeat.claim || c.grpc_url != heartbeat.grpc_url);
        Observed::Refused { warn: false }
    }

    /// Adds `node` as if heard at `now`, unless it is already known.
    ///
    /// Coordinators seed the nodes of the stored map this way, so a node
    /// not heard yet gets a full `dead_after` to prove it is alive instead
    /// of losing its slots at once. It is bound to no claim yet: the first
    /// heartbeat naming `node`'s endpoint binds it, and with `digest` (the
    /// stored [`claim_digest`] of the claim that held it) only one whose
    /// claim has that digest.
    pub fn presume_alive(&mut self, node: &NodeInfo, digest: Option<&str>, now: Instant) -> bool {
        if self.members.contains_key(&node.id) {
            return false;
        }
        self.members.insert(
            node.id.clone(),
            Member {
                grpc_url: node.grpc_url.clone(),
                draining: false,
                last_seen: now,
                binding: Binding::Presumed(digest.map(str::to_owned)),
                challengers: Vec::new(),
                warned_at: None,
            },
        );
        true
    }

    /// Handles the nodes whose bound incarnation has been silent for
    /// `dead_after` or longer: taken over in place by a live challenger
    /// with the same endpoint (the most recently heard), else removed.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let dead_after = self.dead_after;
        let alive = |seen: Instant| now.saturating_duration_since(seen) < dead_after;
        let mut expired = Expired::default();
        for (id, member) in &mut self.members {
            member.challengers.retain(|c| alive(c.last_seen));
            if alive(member.last_seen) {
                continue;
            }
            let successor = member
                .challengers
                .iter()
                .filter(|c| c.grpc_url == member.grpc_url)
                .max_by_key(|c| c.last_seen)
                .cloned();
            match successor {
                Some(next) => {
                    member.take_over(next.claim, next.draining, next.last_seen);
                    expired.taken_over.push(id.clone());
                }
                None => expired.removed.push(id.clone()),
            }
        }
        for id in &expired.removed {
            self.members.remove(id);
        }
        expired
    }

    /// When the next node expires if it stays silent: the earliest
    /// `last_seen + dead_after`, or `None` with no node known.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.members
            .values()
            .map(|member| member.last_seen + self.dead_after)
            .min()
    }

    /// Counts every known node (and challenger) as heard at `now` (or
    /// later, if already so).
    ///
    /// Called after a NATS reconnect and on becoming leader: whatever we
    /// could not hear in the meantime is not the nodes' fault. Passing an
    /// instant in the future extends the grace.
    pub fn reset_clocks(&mut self, now: Instant) {
        for member in self.members.values_mut() {
            member.last_seen = member.last_seen.max(now);
            for challenger in &mut member.challengers {
                challenger.last_seen = challenger.last_seen.max(now);
            }
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

    /// The digest ([`claim_digest`]) of the claim each live node is bound
    /// to (a presumed one's stored digest), by node id; nodes older than
    /// claims and presumed ones without a digest are left out.
    ///
    /// The leader stores it next to the slot map, so a coordinator that
    /// starts later binds each mapped node to the same process, not to the
    /// first heartbeat it hears. A digest tells nothing about the claim.
    pub fn claim_digests(&self) -> BTreeMap<NodeId, String> {
        self.members
            .iter()
            .filter_map(|(id, member)| match &member.binding {
                Binding::Claim(Some(claim)) => Some((id.clone(), claim_digest(claim))),
                Binding::Presumed(Some(digest)) => Some((id.clone(), digest.clone())),
                _ => None,
            })
            .collect()
    }

    /// The endpoint `id` is registered with, if it is live.
    pub fn grpc_url(&self, id: &NodeId) -> Option<&str> {
        self.members.get(id).map(|member| member.grpc_url.as_str())
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

/// The hex SHA-256 of a claim: what may be stored where other roles can
/// read it (the claim itself would let them speak for the node).
pub fn claim_digest(claim: &str) -> String {
    Sha256::digest(claim.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Member {
    /// Whether `heartbeat` comes from the incarnation that holds the id:
    /// the registered URL and the bound claim (or its stored digest; any
    /// claim when the node was presumed from a map without one).
    fn held_by(&self, heartbeat: &Heartbeat) -> bool {
        self.grpc_url == heartbeat.grpc_url
            && match &self.binding {
                Binding::Presumed(None) => true,
                Binding::Presumed(Some(digest)) => {
                    heartbeat.claim.as_deref().map(claim_digest).as_ref() == Some(digest)
                }
                Binding::Claim(claim) => *claim == heartbeat.claim,
            }
    }

    /// Binds the member to a new incarnation heard at `seen`.
    fn take_over(&mut self, claim: Option<String>, draining: bool, seen: Instant) {
        self.binding = Binding::Claim(claim);
        self.draining = draining;
        self.last_seen = seen;
        self.challengers.clear();
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
            claim: Some(format!("claim-of-{id}")),
            leaving: false,
            proof: None,
        }
    }

    /// `heartbeat(id, draining)` from another incarnation, at `url`.
    fn other(id: &str, claim: &str, url: &str, draining: bool) -> Heartbeat {
        Heartbeat {
            claim: Some(claim.to_owned()),
            grpc_url: url.to_owned(),
            ..heartbeat(id, draining)
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

        assert!(members
            .expire(t0 + Duration::from_millis(2999))
            .removed
            .is_empty());
        assert_eq!(
            members.expire(t0 + Duration::from_secs(3)).removed,
            [NodeId::new("b")]
        );
        assert_eq!(ids(&members.live_nodes()), ["a"]);
        assert_eq!(
            members.next_expiry(),
            Some(t0 + Duration::from_secs(2) + DEAD_AFTER)
        );
        assert!(members
            .expire(t0 + Duration::from_millis(4999))
            .removed
            .is_empty());
        assert_eq!(members.expire(t0 + Duration::from_secs(5)).removed.len(), 1);
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
    fn no_heartbeat_moves_a_live_node_to_another_endpoint() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        // Not even one with its own claim: an incarnation keeps its endpoint.
        let mut moved = heartbeat("a", false);
        moved.grpc_url = "http://elsewhere:7001".to_owned();
        assert_eq!(
            members.observe(&moved, t0),
            Observed::Refused { warn: true }
        );
        assert_eq!(members.live_nodes()[0].grpc_url, "http://a:7001");
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
            .removed
            .is_empty());
        assert_eq!(members.expire(back + DEAD_AFTER).removed.len(), 2);
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
        assert!(members
            .expire(t0 + Duration::from_millis(4999))
            .removed
            .is_empty());
        assert_eq!(members.members(t0)[0].last_seen_age, Duration::ZERO);
        assert_eq!(members.expire(t0 + Duration::from_secs(5)).removed.len(), 1);
    }

    #[test]
    fn presumed_nodes_get_a_full_dead_after() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", true), t0);
        let b = heartbeat("b", false).node_info();
        assert!(members.presume_alive(&b, None, t0 + Duration::from_secs(1)));
        // Known nodes keep what their heartbeat said.
        assert!(!members.presume_alive(&heartbeat("a", false).node_info(), None, t0));
        assert_eq!(ids(&members.live_nodes()), ["b"]);
        assert!(members.contains(&NodeId::new("b")));
        assert_eq!(members.len(), 2);
        assert_eq!(
            members.expire(t0 + Duration::from_secs(3)).removed,
            [NodeId::new("a")]
        );
        assert_eq!(
            members.expire(t0 + Duration::from_secs(4)).removed,
            [NodeId::new("b")]
        );
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn another_claim_changes_nothing_while_the_node_lives() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        // Another process claims "a": elsewhere, or at a's own endpoint
        // asking to drain it. Refused; warned about once.
        let elsewhere = other("a", "forged", "http://evil:7001", false);
        let drain = other("a", "forged", "http://a:7001", true);
        assert_eq!(
            members.observe(&elsewhere, t0 + SECOND),
            Observed::Refused { warn: true }
        );
        assert_eq!(
            members.observe(&drain, t0 + SECOND),
            Observed::Refused { warn: false }
        );
        assert_eq!(
            members.observe(&elsewhere, t0 + 2 * SECOND),
            Observed::Refused { warn: false }
        );
        assert_eq!(members.live_nodes(), [heartbeat("a", false).node_info()]);
        // Nor did they keep "a" alive: its own last heartbeat was at t0.
        assert_eq!(
            members.members(t0 + 2 * SECOND)[0].last_seen_age,
            2 * SECOND
        );
        assert_eq!(members.next_expiry(), Some(t0 + DEAD_AFTER));
        // The node's own heartbeats still count.
        assert_eq!(
            members.observe(&heartbeat("a", true), t0 + 2 * SECOND),
            Observed::Changed
        );
        assert!(members.live_nodes().is_empty());
        assert_eq!(
            members.members(t0 + 2 * SECOND)[0].info.grpc_url,
            "http://a:7001"
        );
    }

    #[test]
    fn a_restarted_process_takes_over_in_place_once_the_old_one_is_silent() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        let restarted = other("a", "second-life", "http://a:7001", false);
        for s in 1..=2 {
            assert!(matches!(
                members.observe(&restarted, t0 + s * SECOND),
                Observed::Refused { .. }
            ));
        }
        // The old claim has been silent for dead_after: the node is not
        // removed (its slots stay), the new incarnation holds it.
        let expired = members.expire(t0 + DEAD_AFTER);
        assert_eq!(expired.removed, []);
        assert_eq!(expired.taken_over, [NodeId::new("a")]);
        assert_eq!(members.members(t0 + DEAD_AFTER)[0].last_seen_age, SECOND);
        assert_eq!(
            members.observe(&restarted, t0 + DEAD_AFTER),
            Observed::Unchanged
        );
        // Now the old claim is the stranger.
        assert!(matches!(
            members.observe(&heartbeat("a", true), t0 + DEAD_AFTER),
            Observed::Refused { .. }
        ));
        assert_eq!(ids(&members.live_nodes()), ["a"]);
    }

    #[test]
    fn a_heartbeat_after_the_old_claim_died_takes_over_before_the_expiry_runs() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        let restarted = other("a", "second-life", "http://a:7001", true);
        assert_eq!(
            members.observe(&restarted, t0 + DEAD_AFTER),
            Observed::TakenOver
        );
        assert!(members.live_nodes().is_empty(), "its draining flag counts");
        assert_eq!(members.expire(t0 + DEAD_AFTER), Expired::default());
    }

    #[test]
    fn another_endpoint_gets_the_id_only_after_the_node_expired() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        let moved = other("a", "second-life", "http://a-moved:7001", false);
        for s in 1..=3 {
            assert!(matches!(
                members.observe(&moved, t0 + s * SECOND),
                Observed::Refused { .. }
            ));
        }
        assert_eq!(members.live_nodes()[0].grpc_url, "http://a:7001");
        // Not a take-over in place: the node expires (its slots move) ...
        let expired = members.expire(t0 + DEAD_AFTER);
        assert_eq!(expired.removed, [NodeId::new("a")]);
        assert!(members.is_empty());
        // ... and its next heartbeat registers it at the new endpoint.
        assert_eq!(
            members.observe(&moved, t0 + DEAD_AFTER + SECOND),
            Observed::Joined
        );
        assert_eq!(members.live_nodes()[0].grpc_url, "http://a-moved:7001");
    }

    #[test]
    fn a_silent_challenger_does_not_take_over() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0 + SECOND);
        let restarted = other("a", "short-life", "http://a:7001", false);
        members.observe(&restarted, t0 + SECOND);
        // It spoke once, dead_after before the old claim went silent too.
        let expired = members.expire(t0 + SECOND + DEAD_AFTER);
        assert_eq!(expired.removed, [NodeId::new("a")]);
    }

    #[test]
    fn a_presumed_node_is_bound_by_the_first_heartbeat_with_its_endpoint() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        let a = heartbeat("a", false).node_info();
        assert!(members.presume_alive(&a, None, t0));
        let elsewhere = other("a", "forged", "http://evil:7001", false);
        assert_eq!(
            members.observe(&elsewhere, t0),
            Observed::Refused { warn: true }
        );
        assert_eq!(members.live_nodes(), std::slice::from_ref(&a));
        assert_eq!(
            members.observe(&heartbeat("a", false), t0),
            Observed::Unchanged
        );
        // Bound now: another claim at the same endpoint is a challenger.
        let twin = other("a", "twin", "http://a:7001", true);
        assert!(matches!(
            members.observe(&twin, t0 + SECOND),
            Observed::Refused { .. }
        ));
        assert_eq!(members.live_nodes(), [a]);
    }

    fn leaving(heartbeat: Heartbeat) -> Heartbeat {
        Heartbeat {
            leaving: true,
            ..heartbeat
        }
    }

    #[test]
    fn only_the_claim_holder_can_say_a_node_leaves() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        assert_eq!(
            members.observe(&heartbeat("a", false), t0),
            Observed::Joined
        );
        // A forger's goodbye (another claim, or none) changes nothing.
        let forged = other("a", "forged", "http://a:7001", false);
        assert!(matches!(
            members.observe(&leaving(forged), t0),
            Observed::Refused { .. }
        ));
        let unclaimed = Heartbeat {
            claim: None,
            ..heartbeat("a", false)
        };
        assert!(matches!(
            members.observe(&leaving(unclaimed), t0),
            Observed::Refused { .. }
        ));
        assert_eq!(ids(&members.live_nodes()), ["a"]);
        // An unknown id's goodbye registers nothing.
        assert_eq!(
            members.observe(&leaving(heartbeat("b", false)), t0),
            Observed::Unchanged
        );
        assert!(!members.contains(&NodeId::new("b")));

        // The holder's goodbye frees the id: the next incarnation joins at
        // once instead of waiting out dead_after as a challenger.
        assert_eq!(
            members.observe(&leaving(heartbeat("a", true)), t0 + SECOND),
            Observed::Left
        );
        assert!(members.is_empty());
        let next = other("a", "next", "http://a:7001", false);
        assert_eq!(members.observe(&next, t0 + SECOND), Observed::Joined);
    }

    #[test]
    fn a_presumed_node_cannot_be_made_to_leave_without_its_digest() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        let node = NodeInfo {
            id: NodeId::new("a"),
            grpc_url: "http://a:7001".to_owned(),
        };
        members.presume_alive(&node, None, t0);
        assert!(matches!(
            members.observe(&leaving(heartbeat("a", false)), t0),
            Observed::Refused { .. }
        ));
        assert!(members.contains(&NodeId::new("a")));
    }

    #[test]
    fn unclaimed_heartbeats_are_one_claim_of_their_own() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        let old = Heartbeat {
            claim: None,
            ..heartbeat("a", false)
        };
        assert_eq!(members.observe(&old, t0), Observed::Joined);
        assert_eq!(members.observe(&old, t0 + SECOND), Observed::Unchanged);
        assert!(matches!(
            members.observe(&heartbeat("a", true), t0 + SECOND),
            Observed::Refused { .. }
        ));
        // And an unclaimed forgery is refused by a claimed node.
        members.observe(&heartbeat("b", false), t0);
        let forged = Heartbeat {
            claim: None,
            ..heartbeat("b", true)
        };
        assert!(matches!(
            members.observe(&forged, t0),
            Observed::Refused { .. }
        ));
        assert_eq!(ids(&members.live_nodes()), ["a", "b"]);
    }

    #[test]
    fn refusals_are_warned_about_sparingly_and_challengers_are_bounded() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        let mut warnings = 0;
        for i in 0..100 {
            let forged = other("a", &format!("forged-{i}"), "http://evil:7001", true);
            if members.observe(&forged, t0) == (Observed::Refused { warn: true }) {
                warnings += 1;
            }
        }
        assert_eq!(warnings, 1);
        assert!(members.members[&NodeId::new("a")].challengers.len() <= MAX_CHALLENGERS);
        // A new challenger after REFUSAL_WARN_EVERY is worth a warning again;
        // an old one is not.
        let later = t0 + REFUSAL_WARN_EVERY;
        let known = other("a", "forged-99", "http://evil:7001", true);
        assert_eq!(
            members.observe(&known, later),
            Observed::Refused { warn: false }
        );
        let fresh = other("a", "fresh", "http://evil:7001", true);
        assert_eq!(
            members.observe(&fresh, later),
            Observed::Refused { warn: true }
        );
    }

    #[test]
    fn reset_clocks_keeps_challengers_as_alive_as_the_nodes() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        members.observe(&heartbeat("a", false), t0);
        members.observe(&other("a", "second-life", "http://a:7001", false), t0);
        // NATS was down for 10 s.
        let back = t0 + 10 * SECOND;
        members.reset_clocks(back);
        assert_eq!(members.expire(back + SECOND), Expired::default());
        // Still the challenger it was (a new one would be warned about).
        assert_eq!(
            members.observe(
                &other("a", "second-life", "http://a:7001", false),
                back + 2 * SECOND
            ),
            Observed::Refused { warn: false }
        );
        let expired = members.expire(back + DEAD_AFTER);
        assert_eq!(expired.taken_over, [NodeId::new("a")]);
    }

    #[test]
    fn a_presumed_node_with_a_stored_digest_is_bound_only_by_its_claim() {
        let t0 = Instant::now();
        let mut before = Membership::new(DEAD_AFTER);
        before.observe(&heartbeat("a", false), t0);
        let digests = before.claim_digests();
        assert_eq!(digests.len(), 1);
        let digest = &digests[&NodeId::new("a")];
        assert_eq!(digest, &claim_digest("claim-of-a"));
        assert!(!digest.contains("claim-of-a"));

        // A coordinator starting later, from the stored map and digests.
        let mut members = Membership::new(DEAD_AFTER);
        let a = heartbeat("a", false).node_info();
        assert!(members.presume_alive(&a, Some(digest), t0));
        assert_eq!(members.claim_digests(), digests);
        // Another claim at a's own endpoint, even first, binds nothing.
        let twin = other("a", "forged", "http://a:7001", true);
        assert!(matches!(
            members.observe(&twin, t0),
            Observed::Refused { .. }
        ));
        assert_eq!(members.live_nodes(), std::slice::from_ref(&a));
        assert_eq!(
            members.observe(&heartbeat("a", false), t0),
            Observed::Unchanged
        );
        assert!(matches!(
            members.observe(&twin, t0 + SECOND),
            Observed::Refused { .. }
        ));
        assert_eq!(members.live_nodes(), [a]);
        assert_eq!(members.claim_digests(), digests);
    }

    #[test]
    fn a_presumed_node_whose_process_restarted_meanwhile_is_taken_over() {
        let t0 = Instant::now();
        let mut members = Membership::new(DEAD_AFTER);
        let a = heartbeat("a", false).node_info();
        members.presume_alive(&a, Some(&claim_digest("an-old-life")), t0);
        // Its process restarted while no coordinator listened: a new
        // claim, the same endpoint. It holds the id once the presumed one
        // has been silent for dead_after, as any successor would.
        let restarted = heartbeat("a", false);
        assert!(matches!(
            members.observe(&restarted, t0),
            Observed::Refused { .. }
        ));
        members.observe(&restarted, t0 + 2 * SECOND);
        let expired = members.expire(t0 + DEAD_AFTER);
        assert_eq!(expired.taken_over, [NodeId::new("a")]);
        assert_eq!(
            members.claim_digests()[&NodeId::new("a")],
            claim_digest("claim-of-a")
        );
    }
}
