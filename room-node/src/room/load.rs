//! Starting a room: storage's load (for a room with nothing stored, the
//! initial-content hook when configured, whose answer is logged as the
//! room's first update so the hook is asked once per room), then the
//! actor built from what was loaded. A load that fails ends the actor
//! with [`ExitReason::Failed`] before it takes a command.

use partyline_proto::Epoch;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use partyline_proto::RoomName;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::actor::RoomActor;
use super::awareness::AwarenessThrottle;
use super::callback::StateCallback;
use super::handle::{ExitReason, RoomHandle};
use super::links::Links;
use super::pending::PendingLog;
use super::snapshots::Snapshots;
use crate::config::RoomNodeConfig;
use crate::protocol::SyncRoom;
use crate::storage::{self, LoadError};
use crate::Resources;

/// Starts loading `room` and returns its handle and actor future.
pub fn spawn_actor(
    room: RoomName,
    config: Arc<RoomNodeConfig>,
    resources: Resources,
    epoch: Epoch,
    cancel: CancellationToken,
) -> (RoomHandle, impl std::future::Future<Output = ExitReason>) {
    let (tx, rx) = mpsc::channel(config.room_queue);
    let deleted = Arc::new(AtomicBool::new(false));
    let handle = RoomHandle {
        tx,
        deleted: deleted.clone(),
    };
    // Held for the actor's life: one pointer in the future, not the whole
    // struct.
    let resources = Arc::new(resources);
    let actor = async move {
        let metrics = crate::telemetry::metrics();
        let started = Instant::now();
        // Rare states are boxed: a future is as large as its largest
        // state, and every live room holds one.
        let loaded = Box::pin(load_with_initial_content(&config, &resources, &room, epoch)).await;
        metrics
            .room_loads
            .add(1, &crate::telemetry::result(loaded.is_ok()));
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => return ExitReason::Failed(error),
        };
        if let Some(tombstone) = loaded.tombstone {
            super::deleted::mark(&deleted);
            let stand_in =
                super::deleted::serve(loaded, tombstone, room, config, epoch, cancel, rx);
            return Box::pin(stand_in).await;
        }
        metrics
            .load_duration
            .record(started.elapsed().as_secs_f64(), &[]);
        metrics.rooms_loaded.add(1, &[]);
        // Built outside this future: a local `Loaded` would stay in it
        // beside the running actor.
        actor_of(loaded, &resources, room, config, epoch, cancel, rx)
            .run()
            .await
    };
    (handle, actor)
}

/// The actor of a loaded room.
fn actor_of(
    loaded: storage::Loaded,
    resources: &Resources,
    room: RoomName,
    config: Arc<RoomNodeConfig>,
    epoch: Epoch,
    cancel: CancellationToken,
    rx: mpsc::Receiver<super::RoomCommand>,
) -> RoomActor {
    let policy = config.policy_of(room.as_str());
    let (sync, measured) = SyncRoom::with_limits(loaded.doc, config.limits);
    if measured.deepest_type > config.limits.max_type_depth {
        // Stored before the limit existed: served as it is.
        tracing::warn!(room = %room, depth = measured.deepest_type, limit = config.limits.max_type_depth, "document nests shared types past the limit");
    }
    let stores = !loaded.storage.is_ephemeral();
    // Here, not in the actor's future: its locals would grow every room's.
    if let Some(events) = resources.events() {
        let data =
            serde_json::json!({ "node": config.node_id.to_string(), "stored": loaded.stored });
        events.emit("room.loaded", room.as_str(), data);
    }
    RoomActor {
        pending: PendingLog::new(config.log_buffer_bytes),
        snapshots: Snapshots::new(
            room.clone(),
            epoch,
            config.snapshot_log_bytes,
            config.snapshot_log_updates,
        ),
        awareness: AwarenessThrottle::new(policy.awareness_throttle),
        callback: StateCallback::new(
            resources.hooks.as_deref(),
            stores,
            config.max_render_bytes,
            &resources.renders,
        ),
        events: resources.events().cloned(),
        links: Links::default(),
        doc_bytes: measured.state_bytes,
        room,
        config,
        epoch,
        cancel,
        rx,
        sync,
        storage: loaded.storage,
        _lock: loaded.lock,
        policy,
        releasing: None,
        deleting: Vec::new(),
    }
}

/// Loads `room`; a room with nothing stored asks the initial-content hook
/// (when configured) and logs its answer as the room's first update, so
/// the hook is asked once per room.
pub(super) async fn load_with_initial_content(
    config: &RoomNodeConfig,
    resources: &Resources,
    room: &RoomName,
    epoch: Epoch,
) -> Result<storage::Loaded, LoadError> {
    let mut loaded = resources.storage.load(config, room, epoch).await?;
    let Some(hooks) = &resources.hooks else {
        return Ok(loaded);
    };
    if loaded.stored || config.mode_of(room.as_str()) == crate::config::RoomMode::Ephemeral {
        return Ok(loaded);
    }
    if let Some(content) = hooks
        .initial_content(room.as_str(), config.max_doc_bytes_of(room.as_str()))
        .await?
    {
        use yrs::{Transact, WriteTxn};
        let applied = {
            let mut txn = loaded.doc.transact_mut();
            let applied = txn.apply_update(content.update).map_err(|e| e.to_string());
            // The room's document is empty: anything held back depends on
            // content that does not exist.
            match txn.prune_pending() {
                Some(_) => Err("it depends on content it does not carry".to_owned()),
                None => applied,
            }
        };
        if let Err(reason) = applied {
            return Err(crate::hooks::HookError::NotAnUpdate {
                url: hooks.config().load_url.clone().unwrap_or_default(),
                reason,
            }
            .into());
        }
        loaded.storage.append(&[content.body]).await?;
        loaded.stored = true;
        tracing::info!(room = %room, "new room filled from load_url");
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    /// Every live room holds its actor's future, so its size is memory per
    /// room; rare states (load, unload, release, delete) are boxed to keep
    /// it near the actor's own size.
    #[test]
    fn a_room_actor_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = std::sync::Arc::new(crate::config::RoomNodeConfig::new(
            partyline_proto::NodeId::new("n"),
            dir.path().to_owned(),
        ));
        let (_handle, actor) = super::spawn_actor(
            partyline_proto::RoomName::new("x").unwrap(),
            config.clone(),
            crate::Resources::new(crate::storage::NodeStorage::files(&config)),
            partyline_proto::Epoch::NONE,
            tokio_util::sync::CancellationToken::new(),
        );
        eprintln!(
            "RoomActor {} Snapshots {} Pending {} ExitReason {}",
            std::mem::size_of::<super::super::actor::RoomActor>(),
            std::mem::size_of::<super::super::snapshots::Snapshots>(),
            std::mem::size_of::<super::super::pending::PendingLog>(),
            std::mem::size_of::<super::super::handle::ExitReason>()
        );
        let size = std::mem::size_of_val(&actor);
        assert!(size <= 4096, "a room actor future takes {size} bytes");
    }
}
