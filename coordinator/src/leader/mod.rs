//! What the leading coordinator does: turn membership into slot maps.
//!
//! Owns the decision ([`next_map`], pure and unit-tested) and the loop that
//! applies it: every coordinator follows heartbeats (so a standby that takes
//! over already knows who is alive); the leader alone expires dead nodes,
//! follows the drain marks, publishes new maps with a compare-and-set on the
//! `slotmap` key, and answers the admin subjects. It never decides who leads
//! (that is [`crate::election`]) and never touches documents or clients.
//!
//! One file per concern: the event loop and the state it carries here;
//! `decide` (the next map, pure), `due` (when the loop next wakes, pure),
//! `view` (what every coordinator keeps: membership from heartbeats),
//! `duties` (what only the leader does: resync, expiry, publishing) and
//! `answers` (the admin replies). The public items are re-exported here,
//! so `crate::leader::X` stays the one path to each.

mod answers;
mod decide;
mod due;
mod duties;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use partyline_proto::link::LinkAuth;
use partyline_proto::{NodeId, SlotMap};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::membership::Membership;
use crate::{next_of, CoordinatorConfig, CoordinatorError};

pub use decide::{moved_slots, next_map, Mode};

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

/// What woke the loop.
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

/// What the loop carries from one event to the next: the membership view
/// and, while leading, the leader's bookkeeping. Each submodule adds the
/// methods of its concern.
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
