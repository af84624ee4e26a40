//! What the leading coordinator does: turn membership into slot maps.
//!
//! Owns the decision ([`next_map`], pure and unit-tested) and the loop that
//! applies it: every coordinator follows heartbeats (so a standby that takes
//! over already knows who is alive); the leader alone expires dead nodes,
//! follows the drain marks, publishes new maps with a compare-and-set on the
//! `slotmap` key, and answers the admin subjects. It never decides who leads
//! (that is [`crate::election`]) and never touches documents or clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use partyline_proto::link::LinkAuth;
use partyline_proto::{NodeId, NodeInfo, Slot, SlotMap, SLOTS};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admin::{NodeStatus, NodesReport, RebalanceReport, Reply};
use crate::cluster::{
    encode_slot_map, Cluster, Heartbeat, DRAIN_KEY_PREFIX, RECONNECT_DELAY_MAX, SLOT_MAP_KEY,
};
use crate::membership::{Membership, Observed, REFUSAL_WARN_EVERY};
use crate::placement::assign;
use crate::{next_of, CoordinatorConfig, CoordinatorError};

/// How long a starting coordinator waits for the stored map to seed its
/// membership from.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);

/// How soon a failed resync or map write is tried again.
pub const RETRY: Duration = Duration::from_millis(250);

/// How long the leader gathers changes (joins, drain marks) before it
/// places slots, so nodes started together get one new epoch, not one each.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Longest time between two looks at the map, however many events come in
/// between. The loop otherwise looks only when something can change the
/// map (a node's deadline passing, a join or drain mark once [`SETTLE`]d,
/// the end of warm-up, a retry), so this is a backstop: a change no event
/// announced is still acted on within it.
pub const RECHECK: Duration = Duration::from_secs(1);

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

/// Runs the membership view and, while `leading` is true, the leader's
/// duties, until `shutdown`.
pub async fn run(
    cluster: Cluster,
    id: String,
    config: CoordinatorConfig,
    link: LinkAuth,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut heartbeats = cluster
        .client()
        .subscribe(cluster.heartbeat_subject())
        .await
        .map_err(CoordinatorError::Subscribe)?;
    let mut connects = cluster.connections();
    let mut state = State::new(cluster, id, config, link);
    // Before the first heartbeat is looked at (they queue meanwhile).
    state.seed_from_stored_map().await;
    let mut streams = LeaderStreams::default();
    // Re-armed each turn to the state's next deadline: a fixed 250 ms tick
    // woke both coordinators four times a second for nothing, and noticed
    // a dead node up to a tick late.
    let wake = tokio::time::sleep_until(state.next_wake(Instant::now()));
    tokio::pin!(wake);
    let mut leading_open = true;
    let mut connects_open = true;
    loop {
        wake.as_mut().reset(state.next_wake(Instant::now()));
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            message = heartbeats.next() => match message {
                Some(message) => Event::Heartbeat(message),
                // Only a closed client ends a subscription.
                None => break,
            },
            changed = leading.changed(), if leading_open => match changed {
                Ok(()) => Event::Leading(*leading.borrow_and_update()),
                Err(_) => {
                    leading_open = false;
                    Event::Leading(false)
                }
            },
            changed = connects.changed(), if connects_open => {
                connects_open = changed.is_ok();
                Event::Reconnected
            }
            () = &mut wake => Event::Tick,
            request = next_of(&mut streams.nodes) => Event::NodesRequest(request),
            request = next_of(&mut streams.rebalance) => Event::RebalanceRequest(request),
            entry = next_of(&mut streams.drains) => Event::Drain(entry),
        };
        match event {
            Event::Heartbeat(message) => state.heartbeat(&message),
            Event::Leading(now_leading) => state.set_leading(now_leading, &mut streams).await,
            Event::Reconnected => state.reconnected(),
            Event::Tick => state.tick(&mut streams).await,
            // A request has a reply subject. Without one it is not an
            // operator asking (a KV watch pointed at the subject delivers
            // such messages): acting on it would let anyone who can
            // create a consumer rebalance at will.
            Event::NodesRequest(Some(request)) | Event::RebalanceRequest(Some(request))
                if request.reply.is_none() =>
            {
                debug!(subject = %request.subject, "ignoring an admin message without a reply subject");
            }
            Event::NodesRequest(Some(request)) => state.answer_nodes(&request).await,
            Event::RebalanceRequest(Some(request)) => {
                state.answer_rebalance(&request, &mut streams).await;
            }
            Event::Drain(Some(Ok(entry))) => state.drain_entry(&entry),
            Event::Drain(Some(Err(err))) => {
                debug!(error = %err, "drain watch failed; resynchronizing");
                streams.drains = None;
                state.needs_resync = true;
            }
            Event::NodesRequest(None) | Event::RebalanceRequest(None) | Event::Drain(None) => {
                // A subscription or watch ended under us: start over.
                streams = LeaderStreams::default();
                state.needs_resync = state.leading;
                if state.leading {
                    streams.subscribe_admin(&state.cluster).await;
                }
            }
        }
    }
    Ok(())
}

enum Event {
    Heartbeat(Message),
    Leading(bool),
    Reconnected,
    Tick,
    NodesRequest(Option<Message>),
    RebalanceRequest(Option<Message>),
    Drain(Option<Result<kv::Entry, kv::WatcherError>>),
}

/// What only the leader listens to.
#[derive(Default)]
struct LeaderStreams {
    nodes: Option<Subscriber>,
    rebalance: Option<Subscriber>,
    drains: Option<kv::Watch>,
}

impl LeaderStreams {
    async fn subscribe_admin(&mut self, cluster: &Cluster) {
        let client = cluster.client();
        match client.subscribe(cluster.admin_nodes_subject()).await {
            Ok(subscriber) => self.nodes = Some(subscriber),
            Err(err) => warn!(error = %err, "cannot serve admin nodes"),
        }
        match client.subscribe(cluster.admin_rebalance_subject()).await {
            Ok(subscriber) => self.rebalance = Some(subscriber),
            Err(err) => warn!(error = %err, "cannot serve admin rebalance"),
        }
    }
}

struct State {
    cluster: Cluster,
    id: String,
    config: CoordinatorConfig,
    /// With a secret, heartbeats without its proof are refused.
    link: LinkAuth,
    /// When an unproven heartbeat was last warned about.
    unproven_warned_at: Option<Instant>,
    membership: Membership,
    /// Nodes with a `drain.{id}` key.
    drains: BTreeSet<NodeId>,
    /// The newest map we know of and its KV revision.
    current: Option<(Arc<SlotMap>, u64)>,
    leading: bool,
    /// Map and drain marks must be re-read before acting.
    needs_resync: bool,
    /// No map change before this: until then we may not have heard every
    /// live node yet (fresh start, or NATS just came back). `None` once a
    /// tick has looked after it, so a warm-up that passed while an event
    /// kept the loop busy is still due.
    warm_until: Option<Instant>,
    /// Something that may change the map happened since the last look;
    /// look at this instant.
    evaluate_at: Option<Instant>,
    /// A resync or map write failed; try again at this instant.
    retry_at: Option<Instant>,
    /// When [`State::tick`] last ran; the [`RECHECK`] backstop counts from
    /// it, not from the last event (heartbeats come more often than that).
    last_tick: Instant,
    /// The claim digests last read or written by this leader (`None`:
    /// unknown, write them).
    stored_digests: Option<BTreeMap<NodeId, String>>,
}

impl State {
    fn new(cluster: Cluster, id: String, config: CoordinatorConfig, link: LinkAuth) -> Self {
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
    async fn seed_from_stored_map(&mut self) {
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
    fn next_wake(&self, now: Instant) -> Instant {
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

    fn heartbeat(&mut self, message: &Message) {
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

    async fn set_leading(&mut self, leading: bool, streams: &mut LeaderStreams) {
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

    fn reconnected(&mut self) {
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
    fn changed(&mut self) {
        self.evaluate_at
            .get_or_insert_with(|| Instant::now() + SETTLE);
    }

    async fn tick(&mut self, streams: &mut LeaderStreams) {
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

    /// Stores which claim holds each node ([`Membership::claim_digests`])
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
    async fn resync(&mut self, streams: &mut LeaderStreams) -> Result<(), String> {
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

    fn drain_entry(&mut self, entry: &kv::Entry) {
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
    async fn publish(&mut self, mode: Mode) -> Result<RebalanceReport, String> {
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

    async fn answer_nodes(&self, request: &Message) {
        let now = Instant::now().into_std();
        let reply = if self.leading {
            let counts: HashMap<&NodeId, usize> = match &self.current {
                Some((map, _)) => map
                    .nodes()
                    .iter()
                    .map(|n| &n.id)
                    .zip(map.slot_counts())
                    .collect(),
                None => HashMap::new(),
            };
            Reply::Done(NodesReport {
                leader: self.id.clone(),
                nodes: self
                    .membership
                    .members(now)
                    .into_iter()
                    .map(|member| NodeStatus {
                        slots: counts.get(&member.info.id).copied().unwrap_or(0),
                        draining: member.draining || self.drains.contains(&member.info.id),
                        last_seen_ms: u64::try_from(member.last_seen_age.as_millis())
                            .unwrap_or(u64::MAX),
                        id: member.info.id.to_string(),
                        grpc_url: member.info.grpc_url,
                    })
                    .collect(),
            })
        } else {
            Reply::Failed {
                error: "not the leader".to_owned(),
            }
        };
        self.respond(request, &reply).await;
    }

    async fn answer_rebalance(&mut self, request: &Message, streams: &mut LeaderStreams) {
        let reply = if !self.leading {
            Reply::Failed {
                error: "not the leader".to_owned(),
            }
        } else {
            if self.needs_resync && self.cluster.is_connected() {
                if let Err(err) = self.resync(streams).await {
                    debug!(coordinator = %self.id, error = %err, "resync failed");
                }
            }
            if self.needs_resync || self.warm_until.is_some_and(|until| Instant::now() < until) {
                Reply::Failed {
                    error: "the leader is still gathering heartbeats; retry in a moment".to_owned(),
                }
            } else {
                match self.publish(Mode::Rebalance).await {
                    Ok(report) => {
                        info!(coordinator = %self.id, epoch = report.epoch, moved_slots = report.moved_slots, "rebalanced on request");
                        Reply::Done(report)
                    }
                    Err(error) => {
                        // The tick tries again (a conflict re-read the map,
                        // which may need a sticky correction of its own).
                        self.retry_at = Some(Instant::now() + RETRY);
                        Reply::Failed { error }
                    }
                }
            }
        };
        self.respond(request, &reply).await;
    }

    async fn respond<T: Serialize>(&self, request: &Message, reply: &T) {
        let Some(subject) = request.reply.clone() else {
            return;
        };
        let payload = serde_json::to_vec(reply).expect("admin replies serialize");
        if let Err(err) = self.cluster.client().publish(subject, payload.into()).await {
            debug!(error = %err, "admin reply not sent");
        }
    }
}

/// What a coordinator's loop waits for; [`Due::next_wake`] picks the
/// earliest. Separate from [`State`] so the choice is tested without NATS.
#[derive(Debug, Clone, Copy)]
struct Due {
    connected: bool,
    leading: bool,
    needs_resync: bool,
    /// When the next node expires if it stays silent.
    expiry: Option<Instant>,
    evaluate_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// The end of warm-up, while a tick still waits for it.
    warm_until: Option<Instant>,
    last_tick: Instant,
}

impl Due {
    fn next_wake(&self, now: Instant) -> Instant {
        let backstop = self.last_tick + RECHECK;
        if !self.connected {
            // Frozen: nothing expires and nothing is written until the
            // reconnect event.
            return backstop;
        }
        let due = if !self.leading {
            [self.expiry, None, None, None]
        } else if self.needs_resync {
            // A tick does nothing else until the resync succeeds, so no
            // other deadline (an overdue node, a passed warm-up) may make
            // it retry sooner than `retry_at`.
            [Some(self.retry_at.unwrap_or(now)), None, None, None]
        } else {
            [
                self.expiry,
                self.evaluate_at,
                self.retry_at,
                self.warm_until,
            ]
        };
        due.into_iter().flatten().fold(backstop, Instant::min)
    }
}

/// How long a view must have been listening before the leader acts on it:
/// long enough for every live node to have sent one heartbeat.
fn warm_up(config: &CoordinatorConfig) -> Duration {
    config.heartbeat_interval * 3 / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::nodes;

    fn idle_leader(last_tick: Instant) -> Due {
        Due {
            connected: true,
            leading: true,
            needs_resync: false,
            expiry: None,
            evaluate_at: None,
            retry_at: None,
            warm_until: None,
            last_tick,
        }
    }

    #[test]
    fn the_backstop_counts_from_the_last_tick_not_from_the_last_event() {
        let t0 = Instant::now();
        let due = idle_leader(t0);
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
        // Heartbeats every 0.4 s must not push it out.
        assert_eq!(due.next_wake(t0 + RECHECK * 2), t0 + RECHECK);
    }

    #[test]
    fn a_failed_resync_waits_for_its_retry_even_with_a_node_overdue() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.expiry = Some(t0 - Duration::from_secs(1));
        due.warm_until = Some(t0 - Duration::from_secs(1));
        due.needs_resync = true;
        // Not tried yet: at once.
        assert_eq!(due.next_wake(t0), t0);
        due.retry_at = Some(t0 + RETRY);
        assert_eq!(due.next_wake(t0), t0 + RETRY);
        // Once resynced, the overdue node is handled at once.
        due.needs_resync = false;
        due.retry_at = None;
        assert_eq!(due.next_wake(t0), t0 - Duration::from_secs(1));
    }

    #[test]
    fn a_passed_warm_up_still_wakes_the_leader() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.warm_until = Some(t0 + Duration::from_millis(1500));
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
        due.last_tick = t0 + RECHECK;
        assert_eq!(
            due.next_wake(t0 + RECHECK),
            t0 + Duration::from_millis(1500)
        );
        // An event kept the loop busy past it: still due, now.
        let late = t0 + Duration::from_secs(2);
        assert_eq!(due.next_wake(late), t0 + Duration::from_millis(1500));
    }

    #[test]
    fn standbys_wait_only_for_expiries_and_a_frozen_view_for_nothing() {
        let t0 = Instant::now();
        let mut due = idle_leader(t0);
        due.leading = false;
        due.evaluate_at = Some(t0);
        due.retry_at = Some(t0);
        due.expiry = Some(t0 + Duration::from_millis(300));
        assert_eq!(due.next_wake(t0), t0 + Duration::from_millis(300));
        due.connected = false;
        due.leading = true;
        assert_eq!(due.next_wake(t0), t0 + RECHECK);
    }

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
