//! What only the leader does: re-reading the map and drain marks when it
//! starts leading or NATS comes back, expiring silent nodes, following the
//! drain marks, and publishing new maps with a compare-and-set.
//!
//! Owns every write to the `{cluster}-map` bucket a coordinator makes. It
//! must not decide the map itself (that is [`super::decide`]) nor who leads
//! (that is [`crate::election`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use partyline_proto::{NodeId, NodeInfo, SLOTS};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::decide::{moved_slots, next_map, Mode};
use super::{LeaderStreams, State, RETRY};
use crate::admin::RebalanceReport;
use crate::cluster::{encode_slot_map, DRAIN_KEY_PREFIX, SLOT_MAP_KEY};

impl State {
    pub(super) async fn set_leading(&mut self, leading: bool, streams: &mut LeaderStreams) {
        if leading == self.leading {
            return;
        }
        self.leading = leading;
        *streams = LeaderStreams::default();
        if leading {
            info!(coordinator = %self.id, "leading: resynchronizing the slot map");
            self.needs_resync = true;
            streams.subscribe_admin(&self.cluster).await;
        } else {
            info!(coordinator = %self.id, "standing by");
        }
    }

    pub(super) async fn tick(&mut self, streams: &mut LeaderStreams) {
        self.evaluate_at = None;
        self.retry_at = None;
        self.last_tick = Instant::now();
        if !self.cluster.is_connected() {
            // Frozen: silence now says nothing about the nodes.
            return;
        }
        if self.leading && self.needs_resync {
            if let Err(err) = self.resync(streams).await {
                debug!(coordinator = %self.id, error = %err, "resync failed; retrying");
                self.retry_at = Some(Instant::now() + RETRY);
                return;
            }
        }
        let now = Instant::now();
        let expired = self.membership.expire(now.into_std());
        if !self.leading {
            return;
        }
        for node in &expired.removed {
            info!(coordinator = %self.id, %node, "node expired: no heartbeat within dead_after");
        }
        for node in &expired.taken_over {
            info!(coordinator = %self.id, %node, "a new incarnation took the node over in place (the previous one was silent for dead_after)");
        }
        if let Some(until) = self.warm_until {
            if now < until {
                return;
            }
            self.warm_until = None;
        }
        let mode = if self.config.rebalance_on_join {
            Mode::Rebalance
        } else {
            Mode::Sticky
        };
        if let Err(err) = self.publish(mode).await {
            debug!(coordinator = %self.id, error = %err, "slot map not published");
            self.retry_at = Some(Instant::now() + RETRY);
        }
        self.store_claim_digests().await;
    }

    /// Stores which claim holds each node ([`Membership::claim_digests`](crate::membership::Membership::claim_digests))
    /// when that changed, so a coordinator that starts later binds the
    /// mapped nodes to the same processes. A failure is retried next tick.
    async fn store_claim_digests(&mut self) {
        let digests = self.membership.claim_digests();
        if self.stored_digests.as_ref() == Some(&digests) {
            return;
        }
        match self.cluster.write_claim_digests(&digests).await {
            Ok(()) => self.stored_digests = Some(digests),
            Err(err) => {
                debug!(coordinator = %self.id, error = %err, "claim digests not stored");
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }

    /// Re-reads the map and the drain marks after becoming leader or after
    /// NATS came back.
    pub(super) async fn resync(&mut self, streams: &mut LeaderStreams) -> Result<(), String> {
        let store = self
            .cluster
            .create_map_store()
            .await
            .map_err(|e| e.to_string())?;
        // Watch first, then list: a change between the two shows up in the
        // watch, which is applied after the listing.
        let watch = store
            .watch(format!("{DRAIN_KEY_PREFIX}>"))
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut drains = BTreeSet::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(node) = key.strip_prefix(DRAIN_KEY_PREFIX) {
                drains.insert(NodeId::new(node));
            }
        }
        self.reread_map().await?;
        let digests = self
            .cluster
            .read_claim_digests()
            .await
            .map_err(|e| e.to_string())?;
        streams.drains = Some(watch);
        self.drains = drains;
        let now = Instant::now().into_std();
        if let Some((map, _)) = &self.current {
            // Nodes of the stored map we have not heard yet get a full
            // dead_after before losing their slots.
            for node in map.nodes() {
                let digest = digests.get(&node.id).map(String::as_str);
                if self.membership.presume_alive(node, digest, now) {
                    debug!(coordinator = %self.id, node = %node.id, "presumed alive from the stored map");
                }
            }
        }
        self.membership.reset_clocks(now);
        // Whatever is stored may be another leader's: write ours when it
        // differs.
        self.stored_digests = Some(digests);
        self.needs_resync = false;
        info!(
            coordinator = %self.id,
            epoch = self.current.as_ref().map_or(0, |(map, _)| map.epoch()),
            nodes = ?self.membership.live_nodes().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            drained = ?self.drains.iter().map(NodeId::as_str).collect::<Vec<_>>(),
            "leader view resynchronized"
        );
        Ok(())
    }

    async fn reread_map(&mut self) -> Result<(), String> {
        match self.cluster.read_slot_map().await {
            Ok(map) => {
                self.current = map.map(|(map, revision)| (Arc::new(map), revision));
                if let Some((map, _)) = &self.current {
                    crate::telemetry::set_map(map.epoch(), map.nodes().len());
                }
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        }
    }

    pub(super) fn drain_entry(&mut self, entry: &kv::Entry) {
        let Some(node) = entry.key.strip_prefix(DRAIN_KEY_PREFIX) else {
            return;
        };
        let node = NodeId::new(node);
        let changed = match entry.operation {
            kv::Operation::Put => self.drains.insert(node.clone()),
            kv::Operation::Delete | kv::Operation::Purge => self.drains.remove(&node),
        };
        if changed {
            info!(coordinator = %self.id, %node, draining = self.drains.contains(&node), "drain mark changed");
            self.changed();
        }
    }

    /// Live nodes that may own slots: not draining by heartbeat nor by mark.
    fn placeable(&self) -> Vec<NodeInfo> {
        self.membership
            .live_nodes()
            .into_iter()
            .filter(|node| !self.drains.contains(&node.id))
            .collect()
    }

    /// Publishes the next map if it differs; returns (epoch, moved slots)
    /// of the map now in force.
    pub(super) async fn publish(&mut self, mode: Mode) -> Result<RebalanceReport, String> {
        let current = self.current.as_ref().map(|(map, _)| map.as_ref());
        let live = self.placeable();
        let Some(next) = next_map(current, &live, mode) else {
            return match current {
                Some(map) => Ok(RebalanceReport {
                    epoch: map.epoch(),
                    moved_slots: 0,
                }),
                None => Err("no slot map yet and no live node to place slots on".to_owned()),
            };
        };
        let moved = current.map_or(usize::from(SLOTS), |map| moved_slots(map, &next));
        let store = self
            .cluster
            .create_map_store()
            .await
            .map_err(|e| e.to_string())?;
        let value = encode_slot_map(&next);
        // Compare-and-set: of two coordinators that both think they lead,
        // only one write can land on a given revision.
        let written = match &self.current {
            Some((_, revision)) => {
                store
                    .update(SLOT_MAP_KEY, value, *revision)
                    .await
                    .map_err(|err| {
                        (
                            err.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            err.to_string(),
                        )
                    })
            }
            None => store.create(SLOT_MAP_KEY, value).await.map_err(|err| {
                (
                    err.kind() == kv::CreateErrorKind::AlreadyExists,
                    err.to_string(),
                )
            }),
        };
        match written {
            Ok(revision) => {
                info!(
                    coordinator = %self.id,
                    epoch = next.epoch(),
                    nodes = ?next.nodes().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
                    slots = ?next.slot_counts(),
                    moved_slots = moved,
                    "published a new slot map"
                );
                let report = RebalanceReport {
                    epoch: next.epoch(),
                    moved_slots: moved,
                };
                crate::telemetry::set_map(next.epoch(), next.nodes().len());
                crate::telemetry::metrics()
                    .slot_moves
                    .add(moved as u64, &[]);
                self.current = Some((Arc::new(next), revision));
                Ok(report)
            }
            Err((conflict, err)) => {
                if conflict {
                    warn!(coordinator = %self.id, "slot map changed under us; re-reading it");
                    self.reread_map().await?;
                }
                Err(err)
            }
        }
    }
}
