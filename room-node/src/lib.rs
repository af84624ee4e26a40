//! Partyline room node: serves the live rooms whose slots it owns.
//!
//! Owns the room actors ([`room`]), the y-sync protocol ([`protocol`];
//! untrusted bytes pass [`decoding`], [`update_check`] and [`depth`] first),
//! persistence ([`storage`]: the embedded file store, or a Redis log and
//! object storage), the ownership check on every gateway stream and
//! the server-API calls ([`service`]) and the gRPC server that carries
//! them ([`grpc`]), the app's webhooks ([`hooks`]),
//! JSON rendering of documents ([`render`], weighed first by
//! [`render::budget`]) and its metrics
//! ([`telemetry`]). It never speaks WebSocket (the gateway does) and never
//! decides placement (the coordinator does).
//!
//! [`run`] serves gRPC on a listener until the shutdown token fires, then
//! waits for every room to write its final snapshot.

pub mod backoff;
pub mod config;
pub mod decoding;
pub mod depth;
pub mod events;
pub mod grpc;
pub mod hooks;
pub mod memory;
pub mod ownership;
pub mod protocol;
pub mod registry;
pub mod render;
pub mod restore;
pub mod room;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod update_check;

#[cfg(test)]
mod fuzz_tests;

use std::sync::Arc;

use partyline_proto::link::LinkAuth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{RoomMode, RoomNodeConfig, RoomPolicy};

/// What a room node works with beside its settings, built by the caller:
/// where rooms are stored, and the app's webhooks (state callback, initial
/// content; `None` when neither URL is configured). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Resources {
    /// The rooms' logs and snapshots.
    pub storage: storage::NodeStorage,
    /// The app's webhooks.
    pub hooks: Option<std::sync::Arc<hooks::Hooks>>,
    /// Renders running at once ([`RoomNodeConfig::render_concurrency`]).
    pub renders: render::Renders,
}

/// `at` in Unix milliseconds (0 before the epoch).
pub fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Resources {
    /// The lifecycle-event queue, when `--events-url` is set.
    pub fn events(&self) -> Option<&std::sync::Arc<events::Events>> {
        self.hooks.as_ref().and_then(|hooks| hooks.events())
    }

    /// `storage` and no webhooks.
    pub fn new(storage: storage::NodeStorage) -> Self {
        Self {
            storage,
            hooks: None,
            renders: render::Renders::new(render::DEFAULT_RENDER_CONCURRENCY),
        }
    }
}
pub use ownership::{Ownership, SlotMapWatch};

/// Serves the room node on `listener` until `shutdown` is cancelled,
/// keeping rooms in `resources`' storage and releasing them as the slot map moves
/// them away. Every request must carry `link`'s secret (UNAUTHENTICATED
/// otherwise). With file storage the caller holds the
/// [`storage::DataDirLock`] of `config.data_dir`, or sets
/// [`RoomNodeConfig::room_locks`] when nodes share the directory.
pub async fn run(
    listener: TcpListener,
    config: RoomNodeConfig,
    resources: Resources,
    slot_map: SlotMapWatch,
    link: LinkAuth,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    if let Some(sync_queue) = resources.storage.sync_queue() {
        tracker.spawn(sync_logs(
            sync_queue,
            config.fsync_interval,
            shutdown.clone(),
        ));
    }
    telemetry::observe_epoch(slot_map.clone());
    telemetry::metrics();
    let ownership = Ownership::new(config.node_id.clone(), slot_map);
    let registry = registry::Registry::new(
        config.clone(),
        ownership.clone(),
        resources,
        tracker.clone(),
        shutdown.clone(),
    );
    tracker.spawn(release_moved_rooms(
        registry.clone(),
        ownership.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(purge_expired_rooms(
        registry.clone(),
        sweep_interval(config.delete_retention),
        shutdown.clone(),
    ));
    let service = service::RoomNodeService::new(registry, ownership, config.link_queue);
    let server = partyline_proto::link::room_node_server(service, link);
    grpc::serve(listener, tonic::service::Routes::new(server), shutdown).await;
    tracker.close();
    tracker.wait().await;
}

/// Whether node `node_id` can serve rooms: the slot map lists it, and its
/// storage answers (Redis `PING`, or the data directory is there). For
/// `/readyz`.
pub async fn check_ready(
    node_id: &partyline_proto::NodeId,
    storage: &storage::NodeStorage,
    slot_map: &SlotMapWatch,
) -> Result<(), String> {
    let listed = slot_map
        .borrow()
        .as_ref()
        .is_some_and(|map| map.nodes().iter().any(|node| &node.id == node_id));
    if !listed {
        return Err("not in the slot map yet".to_owned());
    }
    storage.check_reachable().await
}

/// Releases the rooms each new slot map moves away from this node.
async fn release_moved_rooms(
    registry: registry::Registry,
    mut ownership: Ownership,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            changed = ownership.changed() => if !changed { return },
            _ = shutdown.cancelled() => return,
        }
        let released = registry.release_unowned().await;
        if released > 0 {
            tracing::info!(
                epoch = ownership.epoch().get(),
                rooms = released,
                "released rooms whose slots moved away"
            );
        }
    }
}

/// Deleted rooms listed per sweep.
const SWEEP_LIMIT: usize = 1000;

/// How often the owner looks for deleted rooms to purge: a quarter of the
/// retention, between 1 s and a minute.
fn sweep_interval(retention: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    if retention.is_zero() {
        return Duration::from_secs(60);
    }
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Purges the deleted rooms this node owns once their retention ended.
async fn purge_expired_rooms(
    registry: registry::Registry,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match registry.purge_expired(SWEEP_LIMIT).await {
            Ok(0) => {}
            Ok(purged) => {
                tracing::info!(rooms = purged, "purged deleted rooms whose retention ended")
            }
            Err(error) => tracing::warn!(%error, "listing expired deleted rooms failed"),
        }
    }
}

/// fsyncs every room log with new appends once per `interval`, and a last
/// time at shutdown (rooms write their final snapshots first; those sync
/// their own segments).
async fn sync_logs(
    queue: storage::SyncQueue,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.cancelled() => true,
        };
        let queue = queue.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || queue.sync_all()).await {
            tracing::error!(%error, "log sync task failed");
        }
        if stopping {
            return;
        }
    }
}
