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
//! [`SyncRoom`] owns the document and awareness and turns one inbound frame
//! into an [`Outcome`]: frames to send and updates to log. The room actor
//! decides when the outcome leaves (after the log append), so this module
//! never sees a socket, a clock or a file.

use bytes::Bytes;
use yrs::encoding::read::Read;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update};

/// Why a client frame was refused. The session is closed with
/// [`partyline_proto::close::PROTOCOL_ERROR`]; the room is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Empty binary frame.
    #[error("empty frame")]
    Empty,
    /// The frame is not a y-sync message (bad varint, truncated buffer…).
    #[error("undecodable message: {0}")]
    Decode(#[from] yrs::encoding::read::Error),
    /// A message type stock clients never send.
    #[error("unsupported message type {0}")]
    UnsupportedType(u8),
    /// Bytes left after the one message a frame may carry.
    #[error("trailing bytes after the message")]
    TrailingBytes,
    /// The update decoded but yrs refused to integrate it.
    #[error("update rejected: {0}")]
    Update(#[from] yrs::error::UpdateError),
    /// yrs panicked decoding the frame (its debug assertions reject some
    /// values, e.g. client ids over 53 bits, by panicking).
    #[error("undecodable message")]
    DecodePanic,
    /// The update nests values deeper than yrs can decode safely.
    #[error("update refused: {0}")]
    UnsafeUpdate(#[from] crate::update_check::UpdateCheckError),
}

/// Runs a yrs decoder, turning its panics into an error: decoding touches
/// no room state, so nothing is left half-done.
fn decode_guarded<T>(decode: impl FnOnce() -> T) -> Result<T, ProtocolError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .map_err(|_| ProtocolError::DecodePanic)
}

/// Decodes a Yjs update v1 from outside (a client, the HTTP API, a hook)
/// without risking the process: nesting checked before yrs recurses into
/// it, and yrs's panics turned into an error.
pub fn decode_update(bytes: &[u8]) -> Result<Update, ProtocolError> {
    crate::update_check::check_update(bytes)?;
    Ok(decode_guarded(|| Update::decode_v1(bytes))??)
}

/// What handling one frame asks the room to do, in order.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Frames for the session that sent the message.
    pub reply: Vec<Bytes>,
    /// Frames for every session of the room, the sender included.
    pub broadcast: Vec<Bytes>,
    /// Document updates (Yjs update v1) to append to the log before any
    /// frame of this outcome leaves.
    pub log: Vec<Bytes>,
    /// Awareness client ids the session now speaks for.
    pub awareness_added: Vec<ClientID>,
    /// Awareness client ids the session announced gone.
    pub awareness_removed: Vec<ClientID>,
    /// A read-only session tried to write; the update was dropped.
    pub write_denied: bool,
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
}

/// A room's document and awareness.
pub struct SyncRoom {
    awareness: Awareness,
}

impl SyncRoom {
    /// A room over an already-loaded document.
    pub fn new(doc: Doc) -> Self {
        Self {
            awareness: Awareness::new(doc),
        }
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

    /// Handles one binary frame from a session.
    pub fn handle_frame(&mut self, frame: &[u8], access: Access) -> Result<Outcome, ProtocolError> {
        if frame.is_empty() {
            return Err(ProtocolError::Empty);
        }
        let (message, trailing) = decode_guarded(|| {
            let mut decoder = DecoderV1::from(frame);
            let message = Message::decode(&mut decoder);
            (message, decoder.read_u8().is_ok())
        })?;
        let message = message?;
        if trailing {
            return Err(ProtocolError::TrailingBytes);
        }
        let mut outcome = Outcome::default();
        match message {
            Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                outcome.reply.push(self.step2_for(&state_vector));
            }
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                self.apply_update(update, access, &mut outcome)?;
            }
            Message::Awareness(update) => self.apply_awareness(update, &mut outcome),
            Message::AwarenessQuery => outcome.reply.extend(self.awareness_snapshot()),
            // Clients only ever receive auth messages; one sent to us is
            // harmless and ignored, as y-websocket's server does.
            Message::Auth(_) => {}
            Message::Custom(tag, _) => return Err(ProtocolError::UnsupportedType(tag)),
        }
        Ok(outcome)
    }

    /// Removes the awareness states a closed session spoke for and returns
    /// the removal to broadcast to the remaining sessions.
    pub fn remove_awareness(&mut self, clients: &[ClientID]) -> Option<Bytes> {
        for &client in clients {
            self.awareness.remove_state(client);
        }
        let update = self
            .awareness
            .update_with_clients(clients.iter().copied())
            .ok()?;
        (!update.clients.is_empty()).then(|| encode(&Message::Awareness(update)))
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
        let update = decode_update(&bytes)?;
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
        };
        if let Some(reason) = reason {
            outcome.write_denied = true;
            outcome
                .reply
                .push(encode(&Message::Auth(Some(reason.to_owned()))));
            return Ok(());
        }
        self.doc().transact_mut().apply_update(update)?;
        // The echo is `[sync, update, varint len, update…]`: encode it once
        // and log its tail, rather than copying the update a second time.
        let update_len = bytes.len();
        let echo = encode(&Message::Sync(SyncMessage::Update(bytes)));
        outcome.log.push(echo.slice(echo.len() - update_len..));
        outcome.broadcast.push(echo);
        Ok(())
    }

    fn apply_awareness(&mut self, update: AwarenessUpdate, outcome: &mut Outcome) {
        for (&client, entry) in &update.clients {
            if entry.json.as_ref() == "null" {
                outcome.awareness_removed.push(client);
            } else {
                outcome.awareness_added.push(client);
            }
        }
        let echo = encode(&Message::Awareness(update.clone()));
        // Stale clocks are ignored by `apply_update`; that is not an error,
        // and the echo still goes out so the sender hears its renewal.
        let _ = self.awareness.apply_update(update);
        outcome.broadcast.push(echo);
    }
}

/// Encodes one y-sync message as one frame.
pub fn encode(message: &Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

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
        let outcome = room.handle_frame(&peer.step1(), Access::ReadWrite).unwrap();
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
        let outcome = room.handle_frame(&frame, Access::ReadWrite).unwrap();
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
            .handle_frame(&late.step1(), Access::ReadWrite)
            .unwrap()
            .reply;
        late.receive(&reply[0]);
        assert_eq!(late.text(), "hello");
    }

    #[test]
    fn read_only_writes_are_dropped_and_told() {
        let mut room = SyncRoom::new(Doc::new());
        let reader = Peer::new(3);
        let outcome = room
            .handle_frame(&reader.insert("nope"), Access::ReadOnly)
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
        let outcome = room.handle_frame(&frame, Access::ReadOnly).unwrap();
        assert!(!outcome.write_denied && outcome.log.is_empty() && outcome.broadcast.is_empty());
    }

    #[test]
    fn awareness_is_echoed_tracked_and_removed() {
        let mut room = SyncRoom::new(Doc::new());
        let mut peer_awareness = Awareness::new(Doc::with_client_id(7));
        peer_awareness.set_local_state_raw(r#"{"user":"ann"}"#);
        let frame = Message::Awareness(peer_awareness.update().unwrap()).encode_v1();
        let outcome = room.handle_frame(&frame, Access::ReadOnly).unwrap();
        assert_eq!(outcome.broadcast.len(), 1);
        assert_eq!(outcome.awareness_added, vec![ClientID::new(7)]);
        // A renewal with the same clock still echoes.
        let again = room.handle_frame(&frame, Access::ReadOnly).unwrap();
        assert_eq!(again.broadcast.len(), 1);
        assert_eq!(room.handshake().len(), 2, "snapshot follows step1");
        let removal = room.remove_awareness(&[ClientID::new(7)]).unwrap();
        match Message::decode_v1(&removal).unwrap() {
            Message::Awareness(update) => {
                assert_eq!(update.clients[&ClientID::new(7)].json.as_ref(), "null")
            }
            other => panic!("expected awareness, got {other:?}"),
        }
        assert!(room.awareness_snapshot().is_none());
    }

    #[test]
    fn bad_frames_are_refused_without_changing_the_doc() {
        let mut room = SyncRoom::new(Doc::new());
        let before = room.encode_state();
        let bad: [&[u8]; 5] = [&[], &[0x80], &[0, 2, 0xff, 0xff], &[9, 1, 1], &[3, 0]];
        for frame in bad {
            assert!(
                room.handle_frame(frame, Access::ReadWrite).is_err(),
                "{frame:?} accepted"
            );
        }
        assert_eq!(room.encode_state(), before);
    }
}
