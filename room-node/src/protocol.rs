//! The y-sync protocol as a room speaks it, sans I/O.
//!
//! Message flow for one session (DESIGN.md "Wire compatibility"):
//!
//! ```text
//! open      → server sends SyncStep1(doc state vector) and, if anyone is
//!             present, one awareness update with every known state
//! Step1(sv) ← client; server answers Step2(diff since sv), always, even empty
//! Step2(u) / Update(u) ← client; applied, logged, then echoed to every
//!             session as Update(u), the sender included
//! Awareness ← client; applied and echoed to every session, even when only
//!             the clock moved (a lone client's renewal is its keep-alive)
//! QueryAwareness ← client; answered with the awareness snapshot
//! close     → the session's awareness states are removed and the removal
//!             broadcast
//! ```
//!
//! Hostile input is bounded here: an update that would nest shared types
//! deeper than [`SyncLimits::max_type_depth`] is refused before yrs sees
//! it ([`crate::depth`]); an awareness client id belongs to the session
//! that announced it first, so no session can rewrite or erase another's
//! presence, and a session speaks for at most
//! [`SyncLimits::awareness_max_clients`] ids and
//! [`SyncLimits::awareness_max_bytes`] of state.
//!
//! [`SyncRoom`] owns the document and awareness and turns one inbound frame
//! into an [`Outcome`]: frames to send and updates to log. The room actor
//! decides when the outcome leaves (after the log append), so this module
//! never sees a socket, a clock or a file.

use bytes::Bytes;
use std::collections::HashMap;
use yrs::encoding::read::Read;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;

use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update, WriteTxn};

use crate::decoding::{
    claimed_counts_fit, decode_guarded, decode_update_with_blocks, deletes_only_known,
};
pub use crate::decoding::{decode_update, ProtocolError};
use crate::depth::{DepthError, DepthIndex};
use partyline_proto::ysync::SyncKind;

/// Identifies a session within its room (the actor's link and session id).
pub type SessionKey = (u64, u64);

/// Default for [`SyncLimits::awareness_max_clients`].
pub const DEFAULT_AWARENESS_MAX_CLIENTS: usize = 8;
/// Default for [`SyncLimits::awareness_max_bytes`].
pub const DEFAULT_AWARENESS_MAX_BYTES: usize = 64 * 1024;

/// What one room takes from its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// Deepest nesting of shared types (a top-level type is 1).
    pub max_type_depth: u16,
    /// Awareness client ids one session may speak for.
    pub awareness_max_clients: usize,
    /// Bytes of awareness state (JSON) one session may hold.
    pub awareness_max_bytes: usize,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            max_type_depth: crate::depth::DEFAULT_MAX_TYPE_DEPTH,
            awareness_max_clients: DEFAULT_AWARENESS_MAX_CLIENTS,
            awareness_max_bytes: DEFAULT_AWARENESS_MAX_BYTES,
        }
    }
}

/// The awareness a session speaks for.
#[derive(Debug, Default)]
struct Presence {
    /// Bytes of state per owned client id.
    states: HashMap<ClientID, usize>,
    /// Their sum.
    bytes: usize,
}

/// What handling one frame asks the room to do, in order.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The kind of message handled (`None`: one y-sync does not define).
    pub kind: Option<SyncKind>,
    /// Frames for the session that sent the message.
    pub reply: Vec<Bytes>,
    /// Frames for every session of the room, the sender included.
    pub broadcast: Vec<Bytes>,
    /// Document updates (Yjs update v1) to append to the log before any
    /// frame of this outcome leaves.
    pub log: Vec<Bytes>,
    /// Awareness entries dropped: another session owns the id, or the
    /// session is over its awareness limits.
    pub awareness_dropped: usize,
    /// A read-only session tried to write; the update was dropped.
    pub write_denied: bool,
    /// The frame was refused after yrs had taken part of its update: what
    /// it took is in `log` and `broadcast` (so every client and the log
    /// agree), and the session is to be closed with this.
    pub refused: Option<ProtocolError>,
    /// The update built on content the room does not have (a failover
    /// lost an unacknowledged edit it follows); it was dropped (or, when
    /// yrs integrated part of it and held the rest back, logged and sent
    /// whole, the rest dropped from the room's document) and the session
    /// was sent a SyncStep1, so its client sends everything the room lacks
    /// in one self-contained SyncStep2.
    pub missing_dependency: bool,
}

/// The kind of a decoded message.
fn kind_of(message: &Message) -> Option<SyncKind> {
    match message {
        Message::Sync(SyncMessage::SyncStep1(_)) => Some(SyncKind::SyncStep1),
        Message::Sync(SyncMessage::SyncStep2(_)) => Some(SyncKind::SyncStep2),
        Message::Sync(SyncMessage::Update(_)) => Some(SyncKind::Update),
        Message::Awareness(_) => Some(SyncKind::Awareness),
        Message::AwarenessQuery => Some(SyncKind::QueryAwareness),
        Message::Auth(_) => Some(SyncKind::Auth),
        Message::Custom(..) => None,
    }
}

/// The auth reason sent to a read-only session that writes.
pub const READ_ONLY_REASON: &str = "read-only: document updates are not accepted";
/// The auth reason sent when the update log is unreachable and the room's
/// hold buffer is full: the edit stays in the client and is asked for again
/// once the log is back.
pub const LOG_UNAVAILABLE_REASON: &str =
    "storage unavailable: document updates are refused until it is back";

/// The auth reason sent when the document is at its size limit.
pub const DOCUMENT_FULL_REASON: &str = "document too large: updates that grow it are refused";

/// The auth reason sent to a session that edits an ephemeral room's
/// document: such a room keeps nothing, so an edit would be lost at unload.
pub const EPHEMERAL_REASON: &str =
    "ephemeral room: document updates are not kept (awareness and custom messages only)";

/// Whether a session's document updates are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Updates are applied, logged and echoed.
    ReadWrite,
    /// The session may not write.
    ReadOnly,
    /// The room cannot log more updates right now.
    LogUnavailable,
    /// The document reached its size limit.
    DocumentFull,
    /// The room is ephemeral: it keeps no document.
    Ephemeral,
}

/// A room's document and awareness.
pub struct SyncRoom {
    awareness: Awareness,
    limits: SyncLimits,
    /// Parent depth of every item, for the nesting limit.
    depth: DepthIndex,
    /// Which session owns each awareness client id.
    owners: HashMap<ClientID, SessionKey>,
    /// What each session speaks for.
    presence: HashMap<SessionKey, Presence>,
    /// Set when yrs took part of a refused update in a form it cannot
    /// decode again: see [`Self::diverged`].
    diverged: bool,
}

impl SyncRoom {
    /// A room over an empty or already-loaded document, default limits.
    pub fn new(doc: Doc) -> Self {
        Self::with_limits(doc, SyncLimits::default()).0
    }

    /// A room over an already-loaded document, and the size of its state
    /// (measured anyway to index its depths). A document stored before the
    /// depth limit loads as it is; its deepest nesting is returned too.
    pub fn with_limits(doc: Doc, limits: SyncLimits) -> (Self, Loaded) {
        let (depth, deepest, state_bytes) = index_of(&doc);
        let room = Self {
            awareness: Awareness::new(doc),
            limits,
            depth,
            owners: HashMap::new(),
            presence: HashMap::new(),
            diverged: false,
        };
        let loaded = Loaded {
            state_bytes,
            deepest_type: deepest,
        };
        (room, loaded)
    }

    /// Whether the document no longer matches what was logged: yrs took
    /// part of a refused or held-back update, and what it took encodes to
    /// bytes it cannot decode (found by fuzzing: an update yrs half
    /// integrated), so it can be neither logged nor sent. The room must be
    /// dropped and loaded again from its log, which never held it.
    pub fn diverged(&self) -> bool {
        self.diverged
    }

    /// The document.
    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// SyncStep1 with the document's current state vector.
    pub fn sync_step1(&self) -> Bytes {
        let state_vector = self.doc().transact().state_vector();
        encode(&Message::Sync(SyncMessage::SyncStep1(state_vector)))
    }

    /// Frames a newly opened session receives first.
    pub fn handshake(&self) -> Vec<Bytes> {
        let mut frames = vec![self.sync_step1()];
        frames.extend(self.awareness_snapshot());
        frames
    }

    /// All present awareness states as one message, `None` when nobody is.
    pub fn awareness_snapshot(&self) -> Option<Bytes> {
        let update = self.awareness.update().ok()?;
        (!update.clients.is_empty()).then(|| encode(&Message::Awareness(update)))
    }

    /// Handles one binary frame from `session`.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        access: Access,
        session: SessionKey,
    ) -> Result<Outcome, ProtocolError> {
        if frame.is_empty() {
            return Err(ProtocolError::Empty);
        }
        claimed_counts_fit(frame)?;
        let (message, trailing) = decode_guarded(|| {
            let mut decoder = DecoderV1::from(frame);
            let message = Message::decode(&mut decoder);
            (message, decoder.read_u8().is_ok())
        })?;
        let message = message?;
        if trailing {
            return Err(ProtocolError::TrailingBytes);
        }
        let mut outcome = Outcome {
            kind: kind_of(&message),
            ..Outcome::default()
        };
        match message {
            Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                outcome.reply.push(self.step2_for(&state_vector));
            }
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                self.apply_update(update, access, &mut outcome)?;
            }
            Message::Awareness(update) => self.apply_awareness(update, session, &mut outcome),
            Message::AwarenessQuery => outcome.reply.extend(self.awareness_snapshot()),
            // Clients only ever receive auth messages; one sent to us is
            // harmless and ignored, as y-websocket's server does.
            Message::Auth(_) => {}
            Message::Custom(tag, _) => return Err(ProtocolError::UnsupportedType(tag)),
        }
        Ok(outcome)
    }

    /// Applies a Yjs update v1 from the server API as a client's update
    /// would be (same checks, log entry and echo), without wrapping it in
    /// a wire message first.
    pub fn apply_server_update(
        &mut self,
        update: Vec<u8>,
        access: Access,
    ) -> Result<Outcome, ProtocolError> {
        let mut outcome = Outcome {
            kind: Some(SyncKind::Update),
            ..Outcome::default()
        };
        self.apply_update(update, access, &mut outcome)?;
        Ok(outcome)
    }

    /// Removes the awareness states the closed `sessions` spoke for (and
    /// no other) and returns the removal to broadcast to the others.
    pub fn end_sessions(
        &mut self,
        sessions: impl IntoIterator<Item = SessionKey>,
    ) -> Option<Bytes> {
        let mut clients = Vec::new();
        for session in sessions {
            if let Some(presence) = self.presence.remove(&session) {
                clients.extend(presence.states.into_keys());
            }
        }
        if clients.is_empty() {
            return None;
        }
        for client in &clients {
            self.owners.remove(client);
            self.awareness.remove_state(*client);
        }
        let update = self
            .awareness
            .update_with_clients(clients.iter().copied())
            .ok()?;
        (!update.clients.is_empty()).then(|| encode(&Message::Awareness(update)))
    }

    /// Awareness client ids `session` speaks for.
    pub fn presence_of(&self, session: SessionKey) -> usize {
        self.presence.get(&session).map_or(0, |p| p.states.len())
    }

    /// The whole document as one Yjs update v1.
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn step2_for(&self, state_vector: &StateVector) -> Bytes {
        let diff = self
            .doc()
            .transact()
            .encode_state_as_update_v1(state_vector);
        encode(&Message::Sync(SyncMessage::SyncStep2(diff)))
    }

    fn apply_update(
        &mut self,
        bytes: Vec<u8>,
        access: Access,
        outcome: &mut Outcome,
    ) -> Result<(), ProtocolError> {
        let (update, blocks) = decode_update_with_blocks(&bytes)?;
        // Clients answer our SyncStep1 with a Step2 that is usually empty;
        // it carries nothing to apply, log or echo, and is not a write.
        if update.is_empty() {
            return Ok(());
        }
        let reason = match access {
            Access::ReadWrite => None,
            Access::ReadOnly => Some(READ_ONLY_REASON),
            Access::LogUnavailable => Some(LOG_UNAVAILABLE_REASON),
            Access::DocumentFull => Some(DOCUMENT_FULL_REASON),
            Access::Ephemeral => Some(EPHEMERAL_REASON),
        };
        if let Some(reason) = reason {
            outcome.write_denied = true;
            outcome
                .reply
                .push(encode(&Message::Auth(Some(reason.to_owned()))));
            return Ok(());
        }
        let checked = match self
            .depth
            .check(&blocks, self.limits.max_type_depth)
            .and_then(|checked| deletes_only_known(&update, &self.depth, &blocks).map(|()| checked))
        {
            Ok(checked) => checked,
            // yrs would hold it back as pending and integrate it later at
            // a depth nobody checked; asking for everything instead loses
            // nothing (the client keeps its edits until they are echoed).
            Err(DepthError::MissingDependency) => {
                outcome.missing_dependency = true;
                outcome.reply.push(self.sync_step1());
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        let (applied, held_back) = {
            let mut txn = self.doc().transact_mut();
            let applied = txn.apply_update(update);
            // What yrs could not integrate it keeps as pending, and
            // re-encoding a pending update can panic (found by fuzzing: a
            // block whose parent is a later block of the same client).
            // The checks above let no stock client's update get here; a
            // crafted one is cut to what yrs integrated.
            (applied, txn.prune_pending().is_some())
        };
        if let Err(error) = applied {
            return self.refused_midway(error, &blocks, outcome);
        }
        if held_back {
            // Logged and sent whole all the same: replaying it (a load
            // drops pending data after every update, as here) gives this
            // very document, which re-encoding what yrs took does not
            // always (found by fuzzing: items whose origins the same
            // update deleted came back deleted). The client is asked for
            // everything, as for a missing dependency.
            let sv = self.doc().transact().state_vector();
            let checked = checked.integrated(|client| sv.get(&ClientID::new(client)));
            self.depth.record(checked);
            outcome.missing_dependency = true;
            outcome.reply.push(self.sync_step1());
        } else {
            self.depth.record(checked);
        }
        // The echo is `[sync, update, varint len, update…]`: encode it once
        // and log its tail, rather than copying the update a second time.
        let update_len = bytes.len();
        let echo = encode(&Message::Sync(SyncMessage::Update(bytes)));
        outcome.log.push(echo.slice(echo.len() - update_len..));
        outcome.broadcast.push(echo);
        Ok(())
    }

    /// yrs refused an update midway: it may have integrated blocks before
    /// the one it refused. Those are logged and sent (or joiners would see
    /// content that a restart loses) and the session is to be closed; with
    /// none, the frame is refused as it is.
    fn refused_midway(
        &mut self,
        error: yrs::error::UpdateError,
        blocks: &[crate::update_check::BlockRef],
        outcome: &mut Outcome,
    ) -> Result<(), ProtocolError> {
        // The index, not yet updated, says where the update's clients
        // stood before it.
        let before = self.depth.ends(blocks);
        let taken = self.taken_since(&before);
        // Indexed again from what yrs now holds, not from what the update
        // said: an index ahead of yrs would pass blocks yrs then
        // integrates out of order (found by fuzzing: an overflow in its
        // skip handling). Only malformed updates come here.
        self.depth = index_of(self.doc()).0;
        match decode_guarded(|| Update::decode_v1(&taken)) {
            Ok(Ok(update)) if !update.is_empty() => {
                let taken_len = taken.len();
                let echo = encode(&Message::Sync(SyncMessage::Update(taken)));
                outcome.log.push(echo.slice(echo.len() - taken_len..));
                outcome.broadcast.push(echo);
                outcome.refused = Some(error.into());
                Ok(())
            }
            Ok(Ok(_)) => Err(error.into()),
            // What yrs took cannot be logged (found by fuzzing).
            Ok(Err(_)) | Err(_) => {
                self.diverged = true;
                Err(error.into())
            }
        }
    }

    /// What the document holds of `clients` past their clocks in `ends`,
    /// as one update.
    fn taken_since(&self, ends: &[(u64, u32)]) -> Vec<u8> {
        let txn = self.doc().transact();
        let base: StateVector = txn
            .state_vector()
            .iter()
            .map(|(client, &clock)| {
                let before = ends
                    .iter()
                    .find(|(c, _)| *c == client.get())
                    .map_or(clock, |&(_, end)| end);
                (*client, before)
            })
            .collect();
        txn.encode_state_as_update_v1(&base)
    }

    /// Applies and echoes the entries `session` may speak for: ids it
    /// owns, or new ones within its limits. The rest is dropped.
    fn apply_awareness(
        &mut self,
        mut update: AwarenessUpdate,
        session: SessionKey,
        outcome: &mut Outcome,
    ) {
        let before = update.clients.len();
        let presence = self.presence.entry(session).or_default();
        let limits = self.limits;
        let owners = &mut self.owners;
        let mut gone = Vec::new();
        update.clients.retain(|&client, entry| {
            // Removing a state bumps its clock: u32::MAX would overflow
            // (a panic where overflow checks are on; found by fuzzing).
            if entry.clock == u32::MAX {
                return false;
            }
            match owners.get(&client) {
                Some(owner) if *owner != session => return false,
                Some(_) => {}
                None => {
                    if presence.states.len() >= limits.awareness_max_clients {
                        return false;
                    }
                }
            }
            let removal = entry.json.as_ref() == "null";
            let old = presence.states.get(&client).copied().unwrap_or(0);
            let new = if removal { 0 } else { entry.json.len() };
            if presence.bytes - old + new > limits.awareness_max_bytes {
                return false;
            }
            presence.bytes = presence.bytes - old + new;
            if removal {
                // Gone from the room once applied; the id is free again.
                presence.states.remove(&client);
                gone.push(client);
            } else {
                presence.states.insert(client, new);
                owners.insert(client, session);
            }
            true
        });
        for client in gone {
            owners.remove(&client);
        }
        if presence.states.is_empty() {
            self.presence.remove(&session);
        }
        outcome.awareness_dropped = before - update.clients.len();
        if update.clients.is_empty() {
            return;
        }
        let echo = encode(&Message::Awareness(update.clone()));
        // Stale clocks are ignored by `apply_update`; that is not an error,
        // and the echo still goes out so the sender hears its renewal.
        let _ = self.awareness.apply_update(update);
        outcome.broadcast.push(echo);
    }
}

/// What [`SyncRoom::with_limits`] learnt of the loaded document.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// Bytes of its whole state as one update.
    pub state_bytes: u64,
    /// Its deepest shared type (a top-level type is 1).
    pub deepest_type: u16,
}

/// The depth index of `doc` as it is, its deepest type and the size of its
/// state. A document stored before the depth limit is indexed all the same.
fn index_of(doc: &Doc) -> (DepthIndex, u16, u64) {
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut blocks = Vec::new();
    let indexed = crate::update_check::scan_update(&state, |block| blocks.push(block))
        .ok()
        .and_then(|()| DepthIndex::of_state(&blocks).ok());
    // Our own encoding always scans; if yrs ever wrote something the scan
    // cannot read, every update would be refused as depending on unknown
    // content, so say so loudly.
    let (depth, deepest) = indexed.unwrap_or_else(|| {
        tracing::error!("document state not indexable; its updates will be refused");
        (DepthIndex::new(), 0)
    });
    (depth, deepest, state.len() as u64)
}

/// Encodes one y-sync message as one frame.
pub fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    /// The session every single-session test speaks as.
    const PEER: SessionKey = (0, 1);

    /// A client peer: a doc that speaks y-sync to the room.
    struct Peer {
        doc: Doc,
    }

    impl Peer {
        fn new(client_id: u64) -> Self {
            Self {
                doc: Doc::with_client_id(client_id),
            }
        }

        fn step1(&self) -> Vec<u8> {
            Message::Sync(SyncMessage::SyncStep1(self.doc.transact().state_vector())).encode_v1()
        }

        fn insert(&self, text: &str) -> Vec<u8> {
            let name = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = name.len(&txn);
            name.insert(&mut txn, len, text);
            let update = txn.encode_update_v1();
            Message::Sync(SyncMessage::Update(update)).encode_v1()
        }

        fn receive(&self, frame: &[u8]) {
            if let Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) =
                Message::decode_v1(frame).unwrap()
            {
                self.doc
                    .transact_mut()
                    .apply_update(Update::decode_v1(&u).unwrap())
                    .unwrap();
            }
        }

        fn text(&self) -> String {
            let name = self.doc.get_or_insert_text("t");
            name.get_string(&self.doc.transact())
        }
    }

    #[test]
    fn handshake_starts_with_step1_and_step1_always_gets_step2() {
        let mut room = SyncRoom::new(Doc::new());
        let hello = room.handshake();
        assert_eq!(hello.len(), 1, "no awareness yet, only step1");
        assert!(matches!(
            Message::decode_v1(&hello[0]).unwrap(),
            Message::Sync(SyncMessage::SyncStep1(_))
        ));
        let peer = Peer::new(1);
        let outcome = room
            .handle_frame(&peer.step1(), Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(outcome.reply.len(), 1);
        assert!(matches!(
            Message::decode_v1(&outcome.reply[0]).unwrap(),
            Message::Sync(SyncMessage::SyncStep2(_))
        ));
    }

    #[test]
    fn updates_are_logged_echoed_and_reach_a_late_joiner() {
        let mut room = SyncRoom::new(Doc::new());
        let writer = Peer::new(1);
        let frame = writer.insert("hello");
        let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
        assert_eq!(outcome.log.len(), 1);
        let Message::Sync(SyncMessage::Update(sent)) = Message::decode_v1(&frame).unwrap() else {
            panic!("insert sends an update")
        };
        assert_eq!(
            &outcome.log[0][..],
            &sent[..],
            "the log holds exactly the update"
        );
        assert_eq!(
            &outcome.broadcast[0][..],
            &frame[..],
            "the echo is the update message"
        );
        assert_eq!(outcome.broadcast.len(), 1, "echo goes to everyone");
        let late = Peer::new(2);
        let reply = room
            .handle_frame(&late.step1(), Access::ReadWrite, PEER)
            .unwrap()
            .reply;
        late.receive(&reply[0]);
        assert_eq!(late.text(), "hello");
    }

    #[test]
    fn the_outcome_names_the_kind_peek_reads_from_the_type_bytes() {
        let mut room = SyncRoom::new(Doc::new());
        let peer = Peer::new(1);
        let mut awareness = Awareness::new(Doc::with_client_id(7));
        awareness.set_local_state_raw(r#"{"user":"ann"}"#);
        let step2 = Message::Sync(SyncMessage::SyncStep2(Update::EMPTY_V1.to_vec())).encode_v1();
        let frames = [
            (peer.step1(), Some(SyncKind::SyncStep1)),
            (step2, Some(SyncKind::SyncStep2)),
            (peer.insert("x"), Some(SyncKind::Update)),
            (
                Message::Awareness(awareness.update().unwrap()).encode_v1(),
                Some(SyncKind::Awareness),
            ),
            (
                Message::AwarenessQuery.encode_v1(),
                Some(SyncKind::QueryAwareness),
            ),
            (Message::Auth(None).encode_v1(), Some(SyncKind::Auth)),
        ];
        for (frame, kind) in frames {
            assert_eq!(partyline_proto::ysync::message_kind(&frame), kind);
            let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
            assert_eq!(outcome.kind, kind);
        }
        let apply = room
            .apply_server_update(Update::EMPTY_V1.to_vec(), Access::ReadWrite)
            .unwrap();
        assert_eq!(apply.kind, Some(SyncKind::Update));
    }

    #[test]
    fn a_server_update_is_logged_and_echoed_as_a_client_update() {
        let mut server = SyncRoom::new(Doc::new());
        let mut client = SyncRoom::new(Doc::new());
        let frame = Peer::new(1).insert("hello");
        let Message::Sync(SyncMessage::Update(update)) = Message::decode_v1(&frame).unwrap() else {
            panic!("insert sends an update")
        };
        let applied = server
            .apply_server_update(update, Access::ReadWrite)
            .unwrap();
        let handled = client
            .handle_frame(&frame, Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(applied.log, handled.log);
        assert_eq!(applied.broadcast, handled.broadcast);
        assert_eq!(server.encode_state(), client.encode_state());
        let Message::Sync(SyncMessage::Update(other)) =
            Message::decode_v1(&Peer::new(2).insert("x")).unwrap()
        else {
            panic!("insert sends an update")
        };
        let denied = server
            .apply_server_update(other, Access::DocumentFull)
            .unwrap();
        assert!(denied.write_denied && denied.log.is_empty());
    }

    #[test]
    fn read_only_writes_are_dropped_and_told() {
        let mut room = SyncRoom::new(Doc::new());
        let reader = Peer::new(3);
        let outcome = room
            .handle_frame(&reader.insert("nope"), Access::ReadOnly, PEER)
            .unwrap();
        assert!(outcome.write_denied);
        assert!(outcome.log.is_empty() && outcome.broadcast.is_empty());
        assert!(matches!(
            Message::decode_v1(&outcome.reply[0]).unwrap(),
            Message::Auth(Some(_))
        ));
        assert_eq!(
            room.encode_state(),
            Doc::new()
                .transact()
                .encode_state_as_update_v1(&StateVector::default())
        );
    }

    #[test]
    fn empty_step2_is_not_a_write() {
        let mut room = SyncRoom::new(Doc::new());
        let frame = Message::Sync(SyncMessage::SyncStep2(Update::EMPTY_V1.to_vec())).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadOnly, PEER).unwrap();
        assert!(!outcome.write_denied && outcome.log.is_empty() && outcome.broadcast.is_empty());
    }

    #[test]
    fn awareness_is_echoed_tracked_and_removed() {
        let mut room = SyncRoom::new(Doc::new());
        let mut peer_awareness = Awareness::new(Doc::with_client_id(7));
        peer_awareness.set_local_state_raw(r#"{"user":"ann"}"#);
        let frame = Message::Awareness(peer_awareness.update().unwrap()).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadOnly, PEER).unwrap();
        assert_eq!(outcome.broadcast.len(), 1);
        assert_eq!(room.presence_of(PEER), 1);
        // A renewal with the same clock still echoes.
        let again = room.handle_frame(&frame, Access::ReadOnly, PEER).unwrap();
        assert_eq!(again.broadcast.len(), 1);
        assert_eq!(room.handshake().len(), 2, "snapshot follows step1");
        let removal = room.end_sessions([PEER]).unwrap();
        match Message::decode_v1(&removal).unwrap() {
            Message::Awareness(update) => {
                assert_eq!(update.clients[&ClientID::new(7)].json.as_ref(), "null")
            }
            other => panic!("expected awareness, got {other:?}"),
        }
        assert!(room.awareness_snapshot().is_none());
    }

    /// An awareness frame setting `state` for `client` (clock `clock`).
    fn presence(client: u64, clock: u32, state: &str) -> Vec<u8> {
        let mut update = AwarenessUpdate {
            clients: Default::default(),
        };
        update.clients.insert(
            ClientID::new(client),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock,
                json: state.into(),
            },
        );
        Message::Awareness(update).encode_v1()
    }

    fn state_of(room: &SyncRoom, client: u64) -> Option<String> {
        let snapshot = room.awareness_snapshot()?;
        let Message::Awareness(update) = Message::decode_v1(&snapshot).unwrap() else {
            panic!("awareness snapshot")
        };
        update
            .clients
            .get(&ClientID::new(client))
            .map(|e| e.json.to_string())
    }

    #[test]
    fn awareness_belongs_to_the_session_that_announced_it() {
        const VICTIM: SessionKey = (1, 1);
        const ATTACKER: SessionKey = (2, 9);
        let mut room = SyncRoom::new(Doc::new());
        let ours = room
            .handle_frame(
                &presence(7, 1, r#"{"user":"ann"}"#),
                Access::ReadWrite,
                VICTIM,
            )
            .unwrap();
        assert_eq!(ours.broadcast.len(), 1);
        // Another session rewriting or erasing id 7 changes nothing and
        // sends nothing.
        for spoof in [
            presence(7, 5, r#"{"user":"mallory"}"#),
            presence(7, 6, "null"),
        ] {
            let outcome = room
                .handle_frame(&spoof, Access::ReadOnly, ATTACKER)
                .unwrap();
            assert!(outcome.broadcast.is_empty());
            assert_eq!(outcome.awareness_dropped, 1);
        }
        assert_eq!(state_of(&room, 7).as_deref(), Some(r#"{"user":"ann"}"#));
        // The attacker's own id is fine; closing it removes only that id.
        room.handle_frame(&presence(99, 1, "{}"), Access::ReadOnly, ATTACKER)
            .unwrap();
        let removal = room.end_sessions([ATTACKER]).unwrap();
        let Message::Awareness(update) = Message::decode_v1(&removal).unwrap() else {
            panic!("awareness removal")
        };
        assert_eq!(
            update.clients.keys().copied().collect::<Vec<_>>(),
            vec![ClientID::new(99)]
        );
        assert_eq!(state_of(&room, 7).as_deref(), Some(r#"{"user":"ann"}"#));
        // Once the owner closes, the id is free for whoever comes next.
        room.end_sessions([VICTIM]).unwrap();
        let retaken = room
            .handle_frame(
                &presence(7, 8, r#"{"user":"ann again"}"#),
                Access::ReadWrite,
                ATTACKER,
            )
            .unwrap();
        assert_eq!(retaken.broadcast.len(), 1);
    }

    #[test]
    fn a_session_speaks_for_a_bounded_number_of_ids_and_bytes() {
        let limits = SyncLimits {
            awareness_max_clients: 2,
            awareness_max_bytes: 100,
            ..SyncLimits::default()
        };
        let (mut room, _) = SyncRoom::with_limits(Doc::new(), limits);
        for client in 1..=2 {
            room.handle_frame(&presence(client, 1, "{}"), Access::ReadOnly, PEER)
                .unwrap();
        }
        let third = room
            .handle_frame(&presence(3, 1, "{}"), Access::ReadOnly, PEER)
            .unwrap();
        assert_eq!(third.awareness_dropped, 1);
        // A clock that removal would overflow is never taken.
        let overflowing = room
            .handle_frame(&presence(1, u32::MAX, "{}"), Access::ReadOnly, PEER)
            .unwrap();
        assert_eq!(overflowing.awareness_dropped, 1);
        assert_eq!(room.presence_of(PEER), 2);
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(200));
        let refused = room
            .handle_frame(&presence(1, 2, &big), Access::ReadOnly, PEER)
            .unwrap();
        assert_eq!(refused.awareness_dropped, 1);
        assert_eq!(state_of(&room, 1).as_deref(), Some("{}"));
        // Announcing an id gone frees its place.
        room.handle_frame(&presence(2, 2, "null"), Access::ReadOnly, PEER)
            .unwrap();
        let now = room
            .handle_frame(&presence(3, 1, "{}"), Access::ReadOnly, PEER)
            .unwrap();
        assert_eq!(now.awareness_dropped, 0);
    }

    #[test]
    fn an_update_nesting_types_past_the_limit_is_refused_and_the_room_still_writes() {
        let limits = SyncLimits {
            max_type_depth: 8,
            ..SyncLimits::default()
        };
        let (mut room, _) = SyncRoom::with_limits(Doc::new(), limits);
        let writer = Doc::with_client_id(1);
        let mut parent = writer.get_or_insert_map("m");
        let mut last = None;
        for _ in 0..10 {
            let mut txn = writer.transact_mut();
            parent = yrs::Map::insert(&parent, &mut txn, "k", yrs::MapPrelim::default());
            last = Some(Message::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1());
            drop(txn);
            let result = room.handle_frame(last.as_ref().unwrap(), Access::ReadWrite, PEER);
            if result.is_err() {
                break;
            }
        }
        // Depths 2..=8 went in, the map at 9 did not.
        let refused = room.handle_frame(last.as_ref().unwrap(), Access::ReadWrite, PEER);
        assert!(matches!(
            refused,
            Err(ProtocolError::Depth(DepthError::TooDeep(8)))
        ));
        let other = Peer::new(2);
        let outcome = room
            .handle_frame(&other.insert("still writable"), Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(outcome.log.len(), 1);
    }

    #[test]
    fn deleting_clocks_the_room_lacks_asks_for_everything_instead_of_pending() {
        let mut room = SyncRoom::new(Doc::new());
        let writer = Peer::new(4);
        let outcome = room
            .handle_frame(&writer.insert("known"), Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(outcome.log.len(), 1);
        // No blocks; a delete set naming client 4's clocks 10..12, which
        // the room has never seen (it holds 0..5).
        let deletes = [0, 1, 4, 1, 10, 2];
        let frame = Message::Sync(SyncMessage::Update(deletes.to_vec())).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
        assert!(outcome.missing_dependency && outcome.log.is_empty());
        // An empty range of a client the room has never seen: yrs would
        // keep that pending too (found by fuzzing).
        for deletes in [[0, 1, 9, 1, 0, 0], [0, 1, 4, 1, 2, 0]] {
            let frame = Message::Sync(SyncMessage::Update(deletes.to_vec())).encode_v1();
            let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
            assert!(
                outcome.missing_dependency && outcome.log.is_empty(),
                "{deletes:?}"
            );
            assert!(!room.doc().transact().has_missing_updates());
        }
        // Deleting what the room holds still works.
        let known = [0, 1, 4, 1, 0, 2];
        let frame = Message::Sync(SyncMessage::Update(known.to_vec())).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
        assert!(!outcome.missing_dependency && outcome.log.len() == 1);
        let text = room.doc().get_or_insert_text("t");
        assert_eq!(text.get_string(&room.doc().transact()), "own");
    }

    #[test]
    fn an_update_following_one_the_room_lost_asks_for_everything_instead_of_pending() {
        let mut room = SyncRoom::new(Doc::new());
        let writer = Peer::new(4);
        let _lost = writer.insert("first ");
        let follows = writer.insert("second");
        let outcome = room
            .handle_frame(&follows, Access::ReadWrite, PEER)
            .unwrap();
        assert!(outcome.missing_dependency && outcome.log.is_empty());
        assert!(outcome.broadcast.is_empty(), "not echoed: not taken");
        let Message::Sync(SyncMessage::SyncStep1(room_sv)) =
            Message::decode_v1(&outcome.reply[0]).unwrap()
        else {
            panic!("a SyncStep1 for the client")
        };
        // The client answers with everything the room lacks.
        let diff = writer.doc.transact().encode_state_as_update_v1(&room_sv);
        let step2 = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
        let outcome = room.handle_frame(&step2, Access::ReadWrite, PEER).unwrap();
        assert!(!outcome.missing_dependency && outcome.log.len() == 1);
        let text = room.doc().get_or_insert_text("t");
        assert_eq!(text.get_string(&room.doc().transact()), "first second");
    }

    #[test]
    fn an_update_yrs_holds_back_in_part_is_logged_whole_and_the_room_still_answers() {
        let mut room = SyncRoom::new(Doc::new());
        // Found by fuzzing (fuzz/corpus/client_frame/regression-pending-
        // encode): client 43's clock 0 is a map at root "deep"; clock 1 a
        // type whose parent is its own clock 2, a later block yrs has not
        // integrated when it reaches clock 1, so it holds clocks 1..3 back
        // as pending. Answering a SyncStep1 then panicked in yrs.
        let update = [
            1, 3, 43, 0, 0x27, 1, 4, b'd', b'e', b'e', b'p', 1, b'&', 1, 0x27, 0, 43, 2, 1, b'k',
            5, 0x27, 0, 43, 0, 0, 0, 0, 0,
        ];
        let frame = Message::Sync(SyncMessage::SyncStep2(update.to_vec())).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadWrite, PEER).unwrap();
        assert!(
            outcome.missing_dependency,
            "the client is asked for everything"
        );
        assert!(!room.doc().transact().has_missing_updates());
        // yrs took clock 0 only; the update is logged and echoed whole,
        // and the log replays to the room's document.
        assert_eq!(outcome.log.len(), 1);
        assert_eq!(outcome.broadcast.len(), 1);
        let replayed = Doc::new();
        {
            let mut txn = replayed.transact_mut();
            let logged = Update::decode_v1(&outcome.log[0]).unwrap();
            txn.apply_update(logged).unwrap();
            assert!(txn.prune_pending().is_some(), "held back again on replay");
        }
        assert_eq!(
            replayed.transact().state_vector(),
            room.doc().transact().state_vector()
        );
        assert_eq!(
            room.doc().transact().state_vector().get(&ClientID::new(43)),
            1
        );
        // The room answers a SyncStep1 (this panicked) and still writes.
        let reader = Peer::new(5);
        let outcome = room
            .handle_frame(&reader.step1(), Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(outcome.reply.len(), 1);
        let outcome = room
            .handle_frame(&reader.insert("after"), Access::ReadWrite, PEER)
            .unwrap();
        assert_eq!(outcome.log.len(), 1);
    }

    #[test]
    fn a_frame_claiming_millions_of_entries_is_refused_before_yrs_reserves_them() {
        // Found by fuzzing: 7 and 8 bytes claiming 2^28 awareness or
        // state-vector entries made yrs reserve ~500 MB first.
        let mut room = SyncRoom::new(Doc::new());
        for frame in [
            &[1u8, 5, 0x80, 0x80, 0x80, 0x80, 1][..],
            &[0, 0, 5, 0x80, 0x80, 0x80, 0x80, 1][..],
        ] {
            assert!(matches!(
                room.handle_frame(frame, Access::ReadWrite, PEER),
                Err(ProtocolError::ImplausibleCount(268_435_456, 0))
            ));
        }
        // Real ones pass: a state vector of one client, one presence.
        let peer = Peer::new(5);
        peer.insert("x");
        assert!(room
            .handle_frame(&peer.step1(), Access::ReadWrite, PEER)
            .is_ok());
        let mut awareness = Awareness::new(Doc::with_client_id(5));
        awareness.set_local_state_raw("{}");
        let frame = Message::Awareness(awareness.update().unwrap()).encode_v1();
        assert!(room.handle_frame(&frame, Access::ReadWrite, PEER).is_ok());
    }

    #[test]
    fn a_parent_that_is_text_is_refused_before_yrs_takes_any_of_the_update() {
        // Found by fuzzing: client 43 creates map `deep`, a nested type in
        // it, then a map whose parent is (1, 1) - a character of "hello".
        // yrs took the first two blocks and then failed, so joiners were
        // served content that no log held.
        let doc = Doc::with_client_id(1);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "hello");
        let mut room = SyncRoom::new(doc);
        let before = room.encode_state();
        let frame = [
            0x00, 0x02, 0x1d, 0x01, 0x03, 0x2b, 0x00, 0x27, 0x01, 0x04, 0x64, 0x65, 0x65, 0x70,
            0x01, 0x6b, 0x01, 0x27, 0x00, 0x2b, 0x00, 0x01, 0x6b, 0x00, 0x27, 0x2b, 0x01, 0x01,
            0x01, 0x6b, 0x01, 0x00,
        ];
        assert!(matches!(
            room.handle_frame(&frame, Access::ReadWrite, PEER),
            Err(ProtocolError::Depth(DepthError::NotAType))
        ));
        assert_eq!(room.encode_state(), before, "nothing of it was taken");
    }

    #[test]
    fn bad_frames_are_refused_without_changing_the_doc() {
        let mut room = SyncRoom::new(Doc::new());
        let before = room.encode_state();
        let bad: [&[u8]; 5] = [&[], &[0x80], &[0, 2, 0xff, 0xff], &[9, 1, 1], &[3, 0]];
        for frame in bad {
            assert!(
                room.handle_frame(frame, Access::ReadWrite, PEER).is_err(),
                "{frame:?} accepted"
            );
        }
        assert_eq!(room.encode_state(), before);
    }
}
