//! What every coordinator keeps, leading or not: membership from the
//! heartbeats it hears (seeded from the stored map on start), and when its
//! loop must next look.
//!
//! Owns how a heartbeat is taken or refused and logged, and what a NATS
//! reconnect does to the clocks. It must not write to NATS: publishing is
//! the leader's ([`super::duties`]).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::Message;
use partyline_proto::link::LinkAuth;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::due::{warm_up, Due};
use super::{State, SETTLE};
use crate::cluster::{Cluster, Heartbeat, RECONNECT_DELAY_MAX};
use crate::membership::{Membership, Observed, REFUSAL_WARN_EVERY};
use crate::CoordinatorConfig;

/// How long a starting coordinator waits for the stored map to seed its
/// membership from.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);

impl State {
    pub(super) fn new(
        cluster: Cluster,
        id: String,
        config: CoordinatorConfig,
        link: LinkAuth,
    ) -> Self {
        let now = Instant::now();
        let warm_until = Some(now + warm_up(&config));

        Self {
            membership: Membership::new(config.dead_after),
            cluster,
            id,
            config,
            link,
            unproven_warned_at: None,
            drains: BTreeSet::new(),
            current: None,
            leading: false,
            needs_resync: false,
            warm_until,
            evaluate_at: None,
            retry_at: None,
            last_tick: now,
            stored_digests: None,
        }
    }

    /// Presumes the nodes of the stored map alive, bound to no claim yet,
    /// as a new leader does ([`Membership::presume_alive`]).
    ///
    /// Every coordinator does this once on start: otherwise the first
    /// heartbeat it hears for a node would register the node, from
    /// whoever sent it and with whatever endpoint, and a standby that
    /// later leads would publish that. Seeded, a heartbeat naming another
    /// endpoint than the map's is only a challenger. Without an answer
    /// within [`SEED_TIMEOUT`] (NATS down) it starts unseeded.
    pub(super) async fn seed_from_stored_map(&mut self) {
        let stored = tokio::time::timeout(SEED_TIMEOUT, async {
            let map = self.cluster.read_slot_map().await?;
            let digests = self.cluster.read_claim_digests().await?;
            Ok::<_, crate::ClusterError>(map.map(|(map, _)| (map, digests)))
        })
        .await;
        let (map, digests) = match stored {
            Ok(Ok(Some(stored))) => stored,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                warn!(coordinator = %self.id, error = %err, "cannot read the stored slot map; the first heartbeat of each node registers it");
                return;
            }
            Err(_) => {
                warn!(coordinator = %self.id, "NATS did not answer; the first heartbeat of each node registers it");
                return;
            }
        };
        let now = Instant::now().into_std();
        for node in map.nodes() {
            let digest = digests.get(&node.id).map(String::as_str);
            self.membership.presume_alive(node, digest, now);
        }
        debug!(coordinator = %self.id, epoch = map.epoch(), nodes = map.nodes().len(), digests = digests.len(), "membership seeded from the stored map");
    }

    /// When the loop must next run [`State::tick`] if no event comes first.
    pub(super) fn next_wake(&self, now: Instant) -> Instant {
        Due {
            connected: self.cluster.is_connected(),
            leading: self.leading,
            needs_resync: self.needs_resync,
            expiry: self.membership.next_expiry().map(Instant::from),
            evaluate_at: self.evaluate_at,
            retry_at: self.retry_at,
            warm_until: self.warm_until,
            last_tick: self.last_tick,
        }
        .next_wake(now)
    }

    pub(super) fn heartbeat(&mut self, message: &Message) {
        let heartbeat: Heartbeat = match serde_json::from_slice(&message.payload) {
            Ok(heartbeat) => heartbeat,
            Err(err) => {
                debug!(error = %err, "ignoring a malformed heartbeat");
                return;
            }
        };
        if !heartbeat.proven(self.cluster.name(), &self.link) {
            self.refuse_unproven(&heartbeat);
            return;
        }
        let now = Instant::now().into_std();
        let bound_url = self.membership.grpc_url(&heartbeat.id).map(str::to_owned);
        let observed = self.membership.observe(&heartbeat, now);
        if !matches!(observed, Observed::Unchanged | Observed::Refused { .. }) {
            self.changed();
        }
        match observed {
            Observed::Joined | Observed::Changed | Observed::TakenOver | Observed::Left
                if self.leading =>
            {
                let what = match observed {
                    Observed::Joined => "node joined",
                    Observed::Changed => "node changed",
                    Observed::Left => "node left (its process stopped on purpose)",
                    _ => "a new incarnation took the node over (the previous one was silent for dead_after)",
                };
                info!(
                    coordinator = %self.id,
                    node = %heartbeat.id,
                    grpc_url = %heartbeat.grpc_url,
                    draining = heartbeat.draining,
                    "{what}"
                );
            }
            Observed::Refused { warn } => {
                crate::telemetry::metrics().heartbeats_refused.add(1, &[]);
                if warn && self.leading {
                    warn!(
                        coordinator = %self.id,
                        node = %heartbeat.id,
                        grpc_url = %heartbeat.grpc_url,
                        registered_url = bound_url.as_deref().unwrap_or_default(),
                        draining = heartbeat.draining,
                        "refused a heartbeat: another live incarnation holds this node id (or it names another endpoint); kept as a challenger until that one is silent for dead_after"
                    );
                } else {
                    debug!(coordinator = %self.id, node = %heartbeat.id, grpc_url = %heartbeat.grpc_url, "refused a heartbeat");
                }
            }
            _ => {}
        }
    }

    /// A heartbeat without a valid proof of the link secret: from a node
    /// with another secret (or none), or a forger. Counted; warned about at
    /// most every [`REFUSAL_WARN_EVERY`].
    fn refuse_unproven(&mut self, heartbeat: &Heartbeat) {
        crate::telemetry::metrics().heartbeats_refused.add(1, &[]);
        let now = Instant::now();
        let due = self
            .unproven_warned_at
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARN_EVERY);
        if due && self.leading {
            self.unproven_warned_at = Some(now);
            warn!(
                coordinator = %self.id,
                node = %heartbeat.id,
                grpc_url = %heartbeat.grpc_url,
                proof = heartbeat.proof.is_some(),
                "refused a heartbeat without a valid proof of the link secret \
                 (check --grpc-secret-file on room nodes and coordinators)"
            );
        } else {
            debug!(coordinator = %self.id, node = %heartbeat.id, "refused an unproven heartbeat");
        }
    }

    pub(super) fn reconnected(&mut self) {
        let now = Instant::now();
        // Nodes reconnect on their own schedule, up to RECONNECT_DELAY_MAX
        // after us, and then need a heartbeat interval to speak up.
        let grace = RECONNECT_DELAY_MAX + self.config.heartbeat_interval;
        self.membership.reset_clocks((now + grace).into_std());
        let warm = now + warm_up(&self.config);
        self.warm_until = Some(self.warm_until.map_or(warm, |until| until.max(warm)));
        // The server may have lost our watch consumer; re-read everything.
        self.needs_resync = self.leading;
    }

    /// Something the map depends on changed: look again once it settled.
    pub(super) fn changed(&mut self) {
        self.evaluate_at
            .get_or_insert_with(|| Instant::now() + SETTLE);
    }
}
