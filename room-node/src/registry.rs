//! The live rooms of this node: room name → running actor, in a
//! [`Directory`].
//!
//! The directory holds only handles; each room's state lives in its actor.
//! A room is spawned on first attach and leaves the directory when its
//! actor exits (idle, shutdown, failure or panic), so the next attach loads
//! it again from storage. An attach that meets a room on its way out waits
//! for it to be gone (it finishes its snapshot first, so the next load has
//! everything), then checks ownership again: the slot may have moved
//! meanwhile. Ownership is otherwise decided once, by the caller.

use std::sync::Arc;

use partyline_proto::directory::{Directory, Live};

use partyline_proto::{Epoch, RoomName};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::RoomNodeConfig;
use crate::ownership::{NotOwner, Ownership};
use crate::room::{
    self, ExitReason, LinkId, LinkInbound, LinkSender, Rejected, RoomCommand, RoomHandle,
};
use crate::Resources;

/// Why a link could not attach to a room.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The room kept failing to load or unloading past the deadline.
    #[error("room {0} is unavailable")]
    Unavailable(RoomName),
    /// The room's slot is not this node's; a `NotOwner` frame was sent on
    /// the link before it was dropped.
    #[error(transparent)]
    NotOwner(#[from] NotOwner),
}

/// Why a server-API call on a room failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The room's slot is not this node's.
    #[error(transparent)]
    NotOwner(#[from] NotOwner),
    /// The room has no stored state and is not loaded.
    #[error("room {0} not found")]
    NotFound(RoomName),
    /// No room policy matches the name and the node refuses such rooms.
    #[error("room {0} is not allowed: no room policy matches its name")]
    NotAllowed(RoomName),
    /// The room kept failing to load or unloading past the deadline, or
    /// its storage could not be asked.
    #[error("room {0} is unavailable: {1}")]
    Unavailable(RoomName, String),
    /// The room is deleted; `POST /v1/rooms/{room}/restore` brings it
    /// back until it is purged.
    #[error("room {0} is deleted (restorable until it is purged)")]
    Deleted(RoomName),
}

/// Live rooms. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    rooms: Directory<RoomHandle>,
    config: Arc<RoomNodeConfig>,
    ownership: Ownership,
    resources: Resources,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Returns freed memory to the OS after unloads; `None` when off.
    trimmer: Option<crate::memory::Trimmer>,
}

impl Registry {
    /// An empty registry whose actors stop on `cancel` and are tracked by
    /// `tracker` (so shutdown can wait for their final snapshots).
    pub fn new(
        config: Arc<RoomNodeConfig>,
        ownership: Ownership,
        resources: Resources,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let trimmer = config
            .memory_trim_delay
            .map(|delay| crate::memory::Trimmer::spawn(delay, &tracker, cancel.clone()));
        Self {
            rooms: Directory::new(),
            config,
            ownership,
            resources,
            tracker,
            cancel,
            trimmer,
        }
    }

    /// Number of rooms in memory.
    pub fn live_rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Attaches a gateway stream to `room`, loading the room if needed.
    /// From then on the room actor reads `inbound` itself. Ownership is
    /// decided here, the gateway stream's one door, and again only after
    /// waiting for a room on its way out (its slot may move meanwhile); a
    /// node that does not own the room sends `NotOwner` on the link.
    pub async fn attach(
        &self,
        room: &RoomName,
        link: LinkId,
        gateway: &Arc<str>,
        mut tx: LinkSender,
        mut inbound: LinkInbound,
    ) -> Result<(), AttachError> {
        let deadline = tokio::time::Instant::now() + room::ATTACH_DEADLINE;
        loop {
            let epoch = match self.ownership.check(room) {
                Ok(epoch) => epoch,
                Err(not_owner) => {
                    let _ = tx.try_send(Ok(not_owner.frame()));
                    return Err(not_owner.into());
                }
            };
            if !self.config.allows(room.as_str()) {
                // Refused without loading the room (or asking load_url).
                let refusal = room::Refusal {
                    code: partyline_proto::close::ROOM_NOT_ALLOWED,
                    reason: "no room policy matches this room name",
                    metric: "not_allowed",
                };
                self.tracker.spawn(room::refuse_link(
                    tx,
                    inbound,
                    self.config.node_id.to_string(),
                    epoch,
                    self.cancel.clone(),
                    refusal,
                ));
                return Ok(());
            }
            let (handle, live) = self.get_or_spawn(room, epoch);
            let (reply_tx, reply_rx) = oneshot::channel();
            let command = RoomCommand::AttachLink {
                link,
                gateway: gateway.clone(),
                tx,
                inbound,
                reply: reply_tx,
            };
            // An actor that is unloading hands the stream back; one that
            // died mid-way took it along and the gateway will reconnect.
            let rejected = match handle.send(command).await {
                Ok(()) => match reply_rx.await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(rejected)) => rejected,
                    Err(_) => return Err(AttachError::Unavailable(room.clone())),
                },
                Err(RoomCommand::AttachLink { tx, inbound, .. }) => Rejected { tx, inbound },
                Err(_) => unreachable!("attach sends AttachLink"),
            };
            (tx, inbound) = (rejected.tx, rejected.inbound);
            if !self.wait_for_exit(&live, deadline).await {
                return Err(AttachError::Unavailable(room.clone()));
            }
        }
    }

    /// Waits for a room on its way out to be gone; `false` when the
    /// deadline or shutdown came first.
    async fn wait_for_exit(&self, live: &Live, deadline: tokio::time::Instant) -> bool {
        tokio::select! {
            () = live.exited() => !self.cancel.is_cancelled(),
            () = tokio::time::sleep_until(deadline) => false,
            () = self.cancel.cancelled() => false,
        }
    }

    /// Rooms with stored state (see
    /// [`crate::storage::NodeStorage::list_rooms`]).
    pub async fn list_rooms(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), crate::storage::StorageError> {
        self.resources
            .storage
            .list_rooms(prefix, after, limit)
            .await
    }

    /// `room`'s stored versions, newest first (from the shared storage).
    pub async fn versions(
        &self,
        room: &RoomName,
    ) -> Result<Vec<crate::storage::Version>, crate::storage::StorageError> {
        self.resources.storage.versions(&self.config, room).await
    }

    /// The state of `room`'s version `id`, `None` when there is none.
    pub async fn fetch_version(
        &self,
        room: &RoomName,
        id: &str,
    ) -> Result<Option<Vec<u8>>, crate::storage::StorageError> {
        self.resources
            .storage
            .fetch_version(&self.config, room, id)
            .await
    }

    /// Whether `room` has stored state (from the shared storage).
    pub async fn has_state(&self, room: &RoomName) -> Result<bool, crate::storage::StorageError> {
        self.resources.storage.has_state(&self.config, room).await
    }

    /// Formatting bytes a render or a restore may copy.
    pub fn max_render_bytes(&self) -> u64 {
        self.config.max_render_bytes
    }

    /// The node's renders, a few at a time.
    pub fn renders(&self) -> &crate::render::Renders {
        &self.resources.renders
    }

    /// Persistence mode of `room` by its name.
    pub fn mode_of(&self, room: &RoomName) -> crate::config::RoomMode {
        self.config.mode_of(room.as_str())
    }

    /// This node's id.
    pub fn node_id(&self) -> &partyline_proto::NodeId {
        &self.config.node_id
    }

    /// Whether `room` is in memory.
    pub fn is_loaded(&self, room: &RoomName) -> bool {
        self.rooms.contains(room)
    }

    /// Asks `room`'s actor something (server API), loading the room first
    /// if needed. With `create` false, a room that is neither loaded nor
    /// stored is `NotFound` rather than loaded empty. Ownership is checked
    /// here, and again after waiting for a room on its way out.
    pub async fn call<T>(
        &self,
        room: &RoomName,
        create: bool,
        command: impl Fn(oneshot::Sender<T>) -> RoomCommand,
    ) -> Result<T, CallError> {
        let deadline = tokio::time::Instant::now() + room::ATTACH_DEADLINE;
        loop {
            let epoch = self.ownership.check(room)?;
            if create && !self.config.allows(room.as_str()) {
                return Err(CallError::NotAllowed(room.clone()));
            }
            if !create && !self.is_loaded(room) {
                let stored = self
                    .resources
                    .storage
                    .has_state(&self.config, room)
                    .await
                    .map_err(|e| CallError::Unavailable(room.clone(), e.to_string()))?;
                if !stored {
                    return Err(CallError::NotFound(room.clone()));
                }
            }
            let (handle, live) = self.get_or_spawn(room, epoch);
            let (reply_tx, reply_rx) = oneshot::channel();
            // A closed channel or a dropped reply: the actor was unloading
            // (or failed); wait for it to go, then ask a fresh one.
            if handle.send(command(reply_tx)).await.is_ok() {
                if let Ok(answer) = reply_rx.await {
                    return Ok(answer);
                }
            }
            if handle.is_deleted() {
                return Err(CallError::Deleted(room.clone()));
            }
            if !self.wait_for_exit(&live, deadline).await {
                return Err(CallError::Unavailable(
                    room.clone(),
                    "the room did not answer".to_owned(),
                ));
            }
        }
    }

    /// Purges the deleted rooms this node owns whose retention ended (of
    /// the first `limit` expired ones storage lists); returns how many.
    pub async fn purge_expired(&self, limit: usize) -> Result<usize, crate::storage::StorageError> {
        let now = crate::unix_ms(std::time::SystemTime::now());
        let expired = self
            .resources
            .storage
            .expired_tombstones(now, limit)
            .await?;
        let mut purged = 0;
        for name in expired {
            let Ok(room) = RoomName::new(name) else {
                continue;
            };
            if self.ownership.check(&room).is_err() {
                continue;
            }
            let how = room::DeleteHow::Expired;
            match self
                .call(&room, false, |reply| RoomCommand::Delete { how, reply })
                .await
            {
                Ok(Ok(_)) => purged += 1,
                Ok(Err(error)) => {
                    tracing::warn!(room = %room, %error, "purging an expired deleted room failed")
                }
                Err(error) => {
                    tracing::debug!(room = %room, %error, "expired deleted room not purged")
                }
            }
        }
        Ok(purged)
    }

    /// Releases every live room whose slot the current map gives to
    /// another node (see [`RoomCommand::Release`]); returns how many.
    pub async fn release_unowned(&self) -> usize {
        let moved: Vec<(RoomName, RoomHandle, Epoch)> = self
            .rooms
            .handles()
            .into_iter()
            .filter_map(|(room, handle)| match self.ownership.check(&room) {
                Ok(_) => None,
                Err(not_owner) => Some((room, handle, not_owner.epoch)),
            })
            .collect();
        let count = moved.len();
        for (room, handle, epoch) in moved {
            if handle.send(RoomCommand::Release { epoch }).await.is_err() {
                tracing::debug!(room = %room, "room was already unloading");
            }
        }
        count
    }

    fn get_or_spawn(&self, room: &RoomName, epoch: Epoch) -> (RoomHandle, Live) {
        self.rooms.get_or_spawn(room, |live| {
            let (handle, actor) = room::spawn_actor(
                room.clone(),
                self.config.clone(),
                self.resources.clone(),
                epoch,
                self.cancel.child_token(),
            );
            let task = self.tracker.spawn(actor);
            let registry = self.clone();
            let (room, live) = (room.clone(), live.clone());
            self.tracker.spawn(async move {
                let exit = task.await;
                if let Some(events) = registry.resources.events() {
                    let event = match &exit {
                        Ok(exit) => exit.event(),
                        Err(_) => Some(("room.unloaded", "panicked")),
                    };
                    if let Some((kind, reason)) = event {
                        events.emit(kind, room.as_str(), serde_json::json!({ "reason": reason }));
                    }
                }
                log_exit(&room, exit);
                registry.rooms.exited(&room, &live);
                if let Some(trimmer) = &registry.trimmer {
                    trimmer.room_unloaded();
                }
            });
            handle
        })
    }
}

/// Logs why a room's actor ended.
fn log_exit(room: &RoomName, exit: Result<ExitReason, tokio::task::JoinError>) {
    match exit {
        Ok(ExitReason::Idle) => tracing::debug!(room = %room, "room unloaded after idle timeout"),
        Ok(ExitReason::Shutdown) => tracing::debug!(room = %room, "room stopped for shutdown"),
        Ok(ExitReason::Released) => tracing::debug!(room = %room, "room handed to its new owner"),
        Ok(ExitReason::Deleted(how)) => {
            tracing::debug!(room = %room, how = ?how, "deleted room unloaded")
        }
        Ok(ExitReason::Restored) => tracing::debug!(room = %room, "restored room's stand-in ended"),
        Ok(ExitReason::Refusing) => tracing::debug!(room = %room, "deleted room's stand-in ended"),
        Ok(ExitReason::Failed(error)) => tracing::error!(room = %room, %error, "room failed"),
        Err(join) if join.is_panic() => {
            tracing::error!(room = %room, "room actor panicked; its sessions were closed")
        }
        Err(join) => tracing::error!(room = %room, %join, "room actor ended abnormally"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use partyline_proto::pb::{self, gateway_frame, node_frame};
    use partyline_proto::{NodeId, NodeInfo, SlotMap};
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

    type NodeRx = mpsc::Receiver<Result<pb::NodeFrame, tonic::Status>>;

    /// A fake gateway stream: frames in, frames out.
    struct Link {
        to_room: mpsc::Sender<Result<pb::GatewayFrame, tonic::Status>>,
        from_room: NodeRx,
    }

    impl Link {
        async fn attach(registry: &Registry, room: &str, link: LinkId) -> Self {
            let (to_room, inbound) = mpsc::channel(64);
            let (tx, from_room) = mpsc::channel(64);
            let room = RoomName::new(room).unwrap();
            registry
                .attach(
                    &room,
                    link,
                    &"g".into(),
                    tx,
                    Box::pin(ReceiverStream::new(inbound)),
                )
                .await
                .unwrap();
            let mut link = Self { to_room, from_room };
            assert!(matches!(
                link.next().await,
                Some(node_frame::Kind::Attached(_))
            ));
            link
        }

        async fn send(&self, kind: gateway_frame::Kind) {
            self.to_room
                .send(Ok(pb::GatewayFrame { kind: Some(kind) }))
                .await
                .unwrap();
        }

        async fn message(&self, session_id: u64, message: Message) {
            self.send(gateway_frame::Kind::ClientMessage(pb::ClientMessage {
                session_id,
                payload: message.encode_v1().into(),
                kind: pb::FrameKind::Binary as i32,
                traceparent: String::new(),
                more: false,
            }))
            .await;
        }

        async fn next(&mut self) -> Option<node_frame::Kind> {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.from_room.recv())
                .await
                .expect("room answered in time")?;
            frame.ok()?.kind
        }

        /// Opens a session, asks for the whole doc and returns its text `t`.
        async fn read_text(&mut self, session_id: u64) -> String {
            self.send(gateway_frame::Kind::OpenSession(pb::OpenSession {
                session_id,
                identity: String::new(),
                permission: pb::Permission::ReadWrite as i32,
            }))
            .await;
            self.message(
                session_id,
                Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
            )
            .await;
            let doc = Doc::new();
            loop {
                let Some(node_frame::Kind::Deliver(deliver)) = self.next().await else {
                    continue;
                };
                if let Ok(Message::Sync(SyncMessage::SyncStep2(update))) =
                    Message::decode_v1(&deliver.payload)
                {
                    doc.transact_mut()
                        .apply_update(Update::decode_v1(&update).unwrap())
                        .unwrap();
                    let text = doc.get_or_insert_text("t");
                    return text.get_string(&doc.transact());
                }
            }
        }
    }

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId::new(id),
            grpc_url: format!("http://{id}"),
        }
    }

    type MapTx = tokio::sync::watch::Sender<Option<Arc<SlotMap>>>;

    /// A map giving every slot to `id`, and the sender to change it.
    fn owner_of_everything(id: &str) -> (MapTx, Ownership) {
        let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(SlotMap::single(1, node(id)))));
        (tx, Ownership::new(NodeId::new(id), rx))
    }

    /// A registry of node `id` owning every slot, its data in `dir`, and
    /// the sender that changes its map.
    fn registry(id: &str, dir: &std::path::Path) -> (MapTx, Registry) {
        tuned_registry(id, dir, |_| {})
    }

    /// [`registry`] with its config changed by `tune`.
    fn tuned_registry(
        id: &str,
        dir: &std::path::Path,
        tune: impl FnOnce(&mut RoomNodeConfig),
    ) -> (MapTx, Registry) {
        let mut config = RoomNodeConfig::new(NodeId::new(id), dir.to_owned());
        tune(&mut config);
        let config = Arc::new(config);
        let (map_tx, ownership) = owner_of_everything(id);
        let resources = Resources::new(crate::storage::NodeStorage::files(&config));
        let registry = Registry::new(
            config,
            ownership,
            resources,
            TaskTracker::new(),
            CancellationToken::new(),
        );
        (map_tx, registry)
    }

    fn update(text: &str) -> Message {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, text);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Message::Sync(SyncMessage::Update(update))
    }

    #[tokio::test]
    async fn a_panicking_room_ends_only_its_own_streams_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let (_map_tx, registry) = registry("test", dir.path());
        let mut doomed = Link::attach(&registry, "doomed", 1).await;
        let mut healthy = Link::attach(&registry, "healthy", 2).await;
        for (link, text) in [(&doomed, "kept"), (&healthy, "fine")] {
            link.send(gateway_frame::Kind::OpenSession(pb::OpenSession {
                session_id: 9,
                identity: String::new(),
                permission: pb::Permission::ReadWrite as i32,
            }))
            .await;
            link.message(9, update(text)).await;
        }
        // The echo means the update is in the log.
        for link in [&mut doomed, &mut healthy] {
            loop {
                if let Some(node_frame::Kind::Broadcast(_)) = link.next().await {
                    break;
                }
            }
        }

        let (handle, _) = registry.get_or_spawn(&RoomName::new("doomed").unwrap(), Epoch::new(1));
        handle.send(RoomCommand::Panic).await.ok().unwrap();
        // The doomed room's stream ends; the other room keeps serving.
        while doomed.next().await.is_some() {}
        assert_eq!(healthy.read_text(10).await, "fine");
        // The next attach loads the room again, with everything it logged.
        let mut reloaded = loop {
            if registry.live_rooms() == 1 {
                break Link::attach(&registry, "doomed", 3).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(reloaded.read_text(11).await, "kept");
    }

    #[tokio::test]
    async fn a_session_without_a_permission_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_map_tx, registry) = registry("a", dir.path());
        let mut link = Link::attach(&registry, "guarded", 1).await;
        for permission in [pb::Permission::Unspecified as i32, 77] {
            link.send(gateway_frame::Kind::OpenSession(pb::OpenSession {
                session_id: 5,
                identity: String::new(),
                permission,
            }))
            .await;
            let Some(node_frame::Kind::EndSession(end)) = link.next().await else {
                panic!("the session was not ended");
            };
            assert_eq!(
                (end.session_id, end.close_code),
                (5, u32::from(partyline_proto::close::POLICY_VIOLATION))
            );
            // Its write reaches nothing: the room knows no session 5.
            link.message(5, update("forged")).await;
        }
        assert_eq!(link.read_text(6).await, "");
    }

    #[tokio::test]
    async fn a_room_whose_slot_moves_is_released_with_its_state_vector() {
        let dir = tempfile::tempdir().unwrap();
        let (map_tx, registry) = registry("a", dir.path());
        let mut link = Link::attach(&registry, "moving", 1).await;
        link.send(gateway_frame::Kind::OpenSession(pb::OpenSession {
            session_id: 1,
            identity: String::new(),
            permission: pb::Permission::ReadWrite as i32,
        }))
        .await;
        link.message(1, update("kept")).await;
        loop {
            if let Some(node_frame::Kind::Broadcast(_)) = link.next().await {
                break;
            }
        }

        map_tx.send_replace(Some(Arc::new(SlotMap::single(2, node("b")))));
        assert_eq!(registry.release_unowned().await, 1);
        let released = loop {
            match link.next().await {
                Some(node_frame::Kind::Released(released)) => break released,
                Some(_) => continue,
                None => panic!("stream ended without Released"),
            }
        };
        assert_eq!(released.epoch, 2);
        let Message::Sync(SyncMessage::SyncStep1(sv)) =
            Message::decode_v1(&released.resync).unwrap()
        else {
            panic!("resync is not a SyncStep1");
        };
        assert_eq!(sv.len(), 1, "the state vector covers the one writer");
        assert!(
            link.next().await.is_none(),
            "the stream ends after Released"
        );

        // A new stream is refused with the epoch that moved the room.
        let (tx, mut rx) = mpsc::channel(4);
        let (_to_room, inbound) = mpsc::channel(4);
        let refused = registry
            .attach(
                &RoomName::new("moving").unwrap(),
                9,
                &"g".into(),
                tx,
                Box::pin(ReceiverStream::new(inbound)),
            )
            .await;
        assert!(matches!(
            refused,
            Err(AttachError::NotOwner(NotOwner { epoch })) if epoch == Epoch::new(2)
        ));
        assert!(matches!(
            rx.recv().await.unwrap().unwrap().kind,
            Some(node_frame::Kind::NotOwner(pb::NotOwner { epoch: 2 }))
        ));
        // What the room accepted was snapshotted for the next owner.
        let (_, loaded) = crate::storage::RoomFiles::open(
            dir.path(),
            "moving",
            crate::storage::SyncQueue::default(),
        )
        .unwrap();
        assert!(!loaded.updates.is_empty());
    }

    /// Writes `text` through a new link's session 1 and waits for its echo.
    async fn write_through(registry: &Registry, room: &str, link: LinkId, text: &str) -> Link {
        let mut link = Link::attach(registry, room, link).await;
        open_writer(&link).await;
        link.message(1, update(text)).await;
        while !matches!(link.next().await, Some(node_frame::Kind::Broadcast(_))) {}
        link
    }

    /// Waits until no room is in memory.
    async fn all_unloaded(registry: &Registry) {
        while registry.live_rooms() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The close code of the next session end on `link`.
    async fn next_end(link: &mut Link) -> u32 {
        loop {
            match link.next().await {
                Some(node_frame::Kind::EndSession(end)) => return end.close_code,
                Some(_) => continue,
                None => panic!("the stream ended without ending the session"),
            }
        }
    }

    #[tokio::test]
    async fn a_deleted_room_refuses_sessions_until_restored_and_a_purge_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_map_tx, registry) = registry("a", dir.path());
        let name = RoomName::new("soft").unwrap();
        let mut link = write_through(&registry, "soft", 1, "kept").await;
        let delete = |how| move |reply| RoomCommand::Delete { how, reply };
        let deleted = registry
            .call(&name, false, delete(room::DeleteHow::Tombstone))
            .await;
        let purge_at = deleted
            .unwrap()
            .unwrap()
            .purge_at_ms
            .expect("kept, not purged");
        let week = crate::config::DEFAULT_DELETE_RETENTION.as_millis() as u64;
        let now = crate::unix_ms(std::time::SystemTime::now());
        assert!(purge_at > now + week - 60_000 && purge_at <= now + week);
        assert_eq!(
            next_end(&mut link).await,
            u32::from(partyline_proto::close::ROOM_DELETED)
        );
        all_unloaded(&registry).await;

        // Deleted: a new session is refused with 4404, the API says so,
        // the room is not listed, and its data is still on disk.
        let mut refused = Link::attach(&registry, "soft", 2).await;
        open_writer(&refused).await;
        assert_eq!(
            next_end(&mut refused).await,
            u32::from(partyline_proto::close::ROOM_DELETED)
        );
        let info = registry
            .call(&name, false, |reply| RoomCommand::Info { reply })
            .await;
        assert!(
            matches!(info, Err(CallError::Deleted(_))),
            "{:?}",
            info.err()
        );
        assert!(registry.has_state(&name).await.unwrap());
        assert_eq!(
            registry.list_rooms("", "", 10).await.unwrap().0,
            Vec::<String>::new()
        );
        // Deleting again answers the same retention.
        let again = registry
            .call(&name, false, delete(room::DeleteHow::Tombstone))
            .await;
        assert_eq!(again.unwrap().unwrap().purge_at_ms, Some(purge_at));

        // Restored: everything it held is back, and it is listed again.
        let restore = |reply| RoomCommand::Restore { reply };
        assert!(registry.call(&name, false, restore).await.unwrap().unwrap());
        // The stand-in's links end with it.
        while refused.next().await.is_some() {}
        all_unloaded(&registry).await;
        let mut back = Link::attach(&registry, "soft", 3).await;
        assert_eq!(back.read_text(7).await, "kept");
        assert_eq!(registry.list_rooms("", "", 10).await.unwrap().0, ["soft"]);
        // A room that is not deleted is not restored.
        assert!(!registry.call(&name, false, restore).await.unwrap().unwrap());

        // Purged: nothing is left, not even the index entry.
        let purged = registry
            .call(&name, false, delete(room::DeleteHow::Purge))
            .await;
        assert_eq!(purged.unwrap().unwrap().purge_at_ms, None);
        all_unloaded(&registry).await;
        assert!(!registry.has_state(&name).await.unwrap());
        let room_dir = crate::storage::RoomFiles::room_dir(dir.path(), "soft");
        assert!(!room_dir.exists(), "room files left after a purge");
        let info = registry
            .call(&name, false, |reply| RoomCommand::Info { reply })
            .await;
        assert!(matches!(info, Err(CallError::NotFound(_))));
    }

    #[tokio::test]
    async fn the_owner_purges_a_deleted_room_once_its_retention_ended() {
        let dir = tempfile::tempdir().unwrap();
        let (_map_tx, registry) = tuned_registry("a", dir.path(), |config| {
            config.delete_retention = Duration::from_millis(300);
        });
        for (i, room) in ["expiring", "restored"].into_iter().enumerate() {
            write_through(&registry, room, i as u64, room).await;
            let name = RoomName::new(room).unwrap();
            let how = room::DeleteHow::Tombstone;
            let deleted = registry.call(&name, false, |reply| RoomCommand::Delete { how, reply });
            assert!(deleted.await.unwrap().unwrap().purge_at_ms.is_some());
        }
        all_unloaded(&registry).await;
        let restored = RoomName::new("restored").unwrap();
        let restore = |reply| RoomCommand::Restore { reply };
        assert!(registry
            .call(&restored, false, restore)
            .await
            .unwrap()
            .unwrap());
        // Not yet: the retention has not ended.
        assert_eq!(registry.purge_expired(10).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(registry.purge_expired(10).await.unwrap(), 1);
        assert!(!registry
            .has_state(&RoomName::new("expiring").unwrap())
            .await
            .unwrap());
        // The restored room stays, and its index entry is gone.
        assert!(registry.has_state(&restored).await.unwrap());
        assert_eq!(registry.purge_expired(10).await.unwrap(), 0);
        let index = std::fs::read_dir(dir.path().join("tombstones"))
            .unwrap()
            .count();
        assert_eq!(index, 0, "tombstone index entries left");
    }

    /// A registry of node "m" owning every slot, its rooms in `memory`,
    /// holding at most `hold` bytes while the log is down.
    fn in_memory(memory: &crate::storage::memory::MemoryStorage, hold: u64) -> Registry {
        let mut config = RoomNodeConfig::new(NodeId::new("m"), "/nonexistent".into());
        config.log_buffer_bytes = hold;
        let (map_tx, ownership) = owner_of_everything("m");
        // The map never changes; its sender may go.
        drop(map_tx);
        Registry::new(
            Arc::new(config),
            ownership,
            Resources::new(crate::storage::NodeStorage::memory(memory.clone())),
            TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    /// Opens read-write session 1 on `link`.
    async fn open_writer(link: &Link) {
        link.send(gateway_frame::Kind::OpenSession(pb::OpenSession {
            session_id: 1,
            identity: String::new(),
            permission: pb::Permission::ReadWrite as i32,
        }))
        .await;
    }

    /// What a writer sees of its write.
    #[derive(Debug)]
    enum Seen {
        /// The write was logged and sent to every session.
        Echoed,
        /// The write was refused with this auth message.
        Refused(String),
    }

    /// The next echo or refusal on `link`, skipping other frames (the
    /// room's sync messages to the session).
    async fn next_seen(link: &mut Link) -> Seen {
        loop {
            match link.next().await.expect("the link is open") {
                node_frame::Kind::Broadcast(_) => return Seen::Echoed,
                node_frame::Kind::Deliver(deliver) => {
                    if let Ok(Message::Auth(Some(reason))) = Message::decode_v1(&deliver.payload) {
                        return Seen::Refused(reason);
                    }
                }
                _ => {}
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_outage_holds_writes_unacknowledged_until_the_log_takes_them() {
        let memory = crate::storage::memory::MemoryStorage::default();
        let registry = in_memory(&memory, 1 << 20);
        let mut link = Link::attach(&registry, "held", 1).await;
        open_writer(&link).await;
        link.message(1, update("a")).await;
        assert!(matches!(next_seen(&mut link).await, Seen::Echoed));
        assert_eq!(memory.log("held").len(), 1);

        memory.set_down(true);
        link.message(1, update("b")).await;
        // Paused time runs on while the room retries: ten seconds of
        // retries, and nothing of the write is echoed or logged.
        tokio::time::sleep(Duration::from_secs(10)).await;
        while let Ok(frame) = link.from_room.try_recv() {
            assert!(
                !matches!(frame.unwrap().kind, Some(node_frame::Kind::Broadcast(_))),
                "a write was acknowledged while the log was down"
            );
        }
        assert_eq!(memory.log("held").len(), 1);
        let tries = memory.appends("held");
        assert!(
            (10..=60).contains(&tries),
            "{tries} appends in 10 s: retried on its timer, not in a loop"
        );

        memory.set_down(false);
        assert!(matches!(next_seen(&mut link).await, Seen::Echoed));
        assert_eq!(
            memory.log("held").len(),
            2,
            "the held write is logged, once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_hold_refuses_writes_with_the_log_unavailable_message() {
        let memory = crate::storage::memory::MemoryStorage::default();
        // One update fills the hold.
        let registry = in_memory(&memory, 1);
        let mut link = Link::attach(&registry, "full", 1).await;
        open_writer(&link).await;
        memory.set_down(true);
        link.message(1, update("held")).await;
        // Its append fails (a batch of its own), then the hold is full.
        while memory.appends("full") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        link.message(1, update("refused")).await;
        let Seen::Refused(reason) = next_seen(&mut link).await else {
            panic!("a write was echoed while the log was down");
        };
        assert_eq!(reason, crate::protocol::LOG_UNAVAILABLE_REASON);
        memory.set_down(false);
        assert!(matches!(next_seen(&mut link).await, Seen::Echoed));
        assert_eq!(memory.log("full").len(), 1, "only the held write is logged");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_append_releases_the_room_without_acknowledging_the_write() {
        let memory = crate::storage::memory::MemoryStorage::default();
        let registry = in_memory(&memory, 1 << 20);
        let mut link = Link::attach(&registry, "fenced", 1).await;
        open_writer(&link).await;
        memory.fence(5);
        link.message(1, update("lost here, resent to the new owner"))
            .await;
        loop {
            match link.next().await {
                Some(node_frame::Kind::Released(released)) => {
                    assert_eq!(released.epoch, 5);
                    break;
                }
                Some(node_frame::Kind::Broadcast(_)) => panic!("a fenced write was echoed"),
                Some(_) => continue,
                None => panic!("the stream ended without a release"),
            }
        }
        assert!(memory.log("fenced").is_empty());
    }
}
