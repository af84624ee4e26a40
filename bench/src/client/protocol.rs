//! The client half of y-sync, sans I/O: what the npm y-websocket provider
//! does with each frame, without a socket or a clock.
//!
//! Message flow (DESIGN.md "Wire compatibility"):
//!
//! ```text
//! open        → SyncStep1(our state vector), then our awareness if set
//! Step1(sv)   ← server; answered with Step2(diff since sv), even when empty
//! Step2(u)    ← server; applied; the client is `synced` from now on
//! Update(u)   ← server; applied (our own edits come back as echoes)
//! Awareness   ← server; applied with the y-protocols clock rules
//! Query       ← server; answered with every awareness state we know
//! Auth(deny)  ← server; remembered (the npm client only logs it)
//! edit        → Update(u), one message per frame
//! close       → awareness `null` for our client id, if we had a state
//! ```
//!
//! Like y-websocket, only the first message of a frame is read; anything
//! after it is counted in [`ClientStats::trailing_bytes_frames`] and ignored.
//! Nothing here fails: bad input is counted in [`ClientStats`] and the
//! session goes on, as the npm client's does.
//!
//! Awareness is yrs's own [`Awareness`] (`Send` since the workspace enables
//! yrs's `sync` feature); it owns the document and applies y-protocols'
//! clock rules: a newer clock wins, an equal clock may only remove, and a
//! peer cannot remove our own state (yrs bumps our clock instead, so the
//! next renewal re-announces it).

use std::collections::BTreeMap;

use yrs::encoding::read::Read;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, TransactionMut, Update};

/// Counters of what a client received; tests assert on them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClientStats {
    /// Binary frames received.
    pub binary_frames: u64,
    /// Text frames received and ignored, as the npm clients ignore them.
    pub text_frames_ignored: u64,
    /// SyncStep2 and Update messages applied to the document.
    pub updates_applied: u64,
    /// Awareness messages applied.
    pub awareness_received: u64,
    /// Frames that were not a decodable y-sync message.
    pub decode_errors: u64,
    /// Updates that decoded but yrs refused to integrate.
    pub apply_errors: u64,
    /// Frames with bytes after their first message (stock clients drop them).
    pub trailing_bytes_frames: u64,
    /// Messages of a type the client does not know.
    pub unknown_messages: u64,
    /// The last auth "permission denied" reason the server sent.
    pub auth_denied: Option<String>,
}

/// What one inbound frame asks of the caller.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Frames to send back, in order, one message each.
    pub replies: Vec<Vec<u8>>,
    /// The document or the awareness states may have changed.
    pub changed: bool,
}

/// A y-websocket client's document (owned by its awareness), awareness and
/// sync status.
pub(crate) struct ClientProtocol {
    awareness: Awareness,
    synced: bool,
    stats: ClientStats,
}

impl ClientProtocol {
    /// A client over `doc`; its client id is the awareness id too.
    pub(super) fn new(doc: Doc) -> Self {
        Self {
            awareness: Awareness::new(doc),
            synced: false,
            stats: ClientStats::default(),
        }
    }

    pub(super) fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    pub(super) fn client_id(&self) -> u64 {
        self.awareness.client_id().get()
    }

    pub(super) fn is_synced(&self) -> bool {
        self.synced
    }

    pub(super) fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Frames to send right after the socket opens.
    pub(super) fn opening_frames(&self) -> Vec<Vec<u8>> {
        let state_vector = self.doc().transact().state_vector();
        let mut frames = vec![Message::Sync(SyncMessage::SyncStep1(state_vector)).encode_v1()];
        frames.extend(self.local_awareness_frame());
        frames
    }

    /// Counts a text frame; the npm clients ignore them.
    pub(super) fn text_frame(&mut self) {
        self.stats.text_frames_ignored += 1;
    }

    /// Handles one binary frame from the server.
    pub(super) fn handle_frame(&mut self, frame: &[u8]) -> Outcome {
        self.stats.binary_frames += 1;
        let mut decoder = DecoderV1::from(frame);
        let message = match Message::decode(&mut decoder) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "undecodable frame from server");
                self.stats.decode_errors += 1;
                return Outcome::default();
            }
        };
        if decoder.read_u8().is_ok() {
            self.stats.trailing_bytes_frames += 1;
        }
        let mut outcome = Outcome::default();
        match message {
            Message::Sync(SyncMessage::SyncStep1(state_vector)) => {
                outcome.replies.push(self.step2_for(&state_vector));
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                if self.apply(&update) {
                    self.synced = true;
                }
                outcome.changed = true;
            }
            Message::Sync(SyncMessage::Update(update)) => {
                self.apply(&update);
                outcome.changed = true;
            }
            Message::Awareness(update) => {
                self.stats.awareness_received += 1;
                self.apply_awareness(update);
                outcome.changed = true;
            }
            Message::AwarenessQuery => outcome.replies.extend(self.awareness_snapshot_frame()),
            Message::Auth(reason) => {
                if let Some(reason) = reason {
                    tracing::debug!(%reason, "server denied permission");
                    self.stats.auth_denied = Some(reason);
                }
            }
            Message::Custom(tag, _) => {
                tracing::debug!(tag, "unknown message type from server");
                self.stats.unknown_messages += 1;
            }
        }
        outcome
    }

    /// Runs `edit` in one transaction; returns its result and the frame
    /// carrying the transaction's update, if it changed anything.
    pub(super) fn edit<R>(
        &mut self,
        edit: impl FnOnce(&mut TransactionMut<'_>) -> R,
    ) -> (R, Option<Vec<u8>>) {
        let mut txn = self.doc().transact_mut();
        let result = edit(&mut txn);
        let update = txn.encode_update_v1();
        drop(txn);
        let frame = (update.as_slice() != Update::EMPTY_V1)
            .then(|| Message::Sync(SyncMessage::Update(update)).encode_v1());
        (result, frame)
    }

    /// Sets our awareness state (JSON text) and returns the frame announcing it.
    pub(super) fn set_local_state(&mut self, json: &str) -> Vec<u8> {
        self.awareness.set_local_state_raw(json);
        self.local_awareness_frame()
            .expect("our awareness state was just set")
    }

    /// Re-announces our state with a new clock, as y-protocols does every
    /// 15 s so peers do not time it out; `None` when we have no state.
    pub(super) fn renew_local_state(&mut self) -> Option<Vec<u8>> {
        let state = self.awareness.local_state_raw()?;
        self.awareness.set_local_state_raw(state);
        self.local_awareness_frame()
    }

    /// Removes our state and returns the `null` announcement, as the npm
    /// provider sends before it disconnects; `None` when we had no state.
    pub(super) fn leave(&mut self) -> Option<Vec<u8>> {
        // yrs bumps the clock (or records a removed entry) even when there
        // is no state to remove; y-protocols does nothing then, and neither
        // do we.
        self.awareness.local_state_raw()?;
        self.awareness.clean_local_state();
        self.awareness_frame([self.awareness.client_id()])
    }

    /// Every present awareness state (ours included), parsed as JSON.
    /// States that are not valid JSON are skipped.
    pub(super) fn awareness_states(&self) -> BTreeMap<u64, serde_json::Value> {
        self.awareness
            .iter()
            .filter_map(|(client_id, state)| {
                let json = state.data?;
                Some((client_id.get(), serde_json::from_str(&json).ok()?))
            })
            .collect()
    }

    fn step2_for(&self, state_vector: &StateVector) -> Vec<u8> {
        let update = self
            .doc()
            .transact()
            .encode_state_as_update_v1(state_vector);
        Message::Sync(SyncMessage::SyncStep2(update)).encode_v1()
    }

    /// Applies a v1 update; false if it could not be decoded or integrated.
    fn apply(&mut self, update: &[u8]) -> bool {
        let applied = Update::decode_v1(update)
            .map_err(|error| error.to_string())
            .and_then(|update| {
                self.doc()
                    .transact_mut()
                    .apply_update(update)
                    .map_err(|error| error.to_string())
            });
        match applied {
            Ok(()) => {
                self.stats.updates_applied += 1;
                true
            }
            Err(error) => {
                tracing::debug!(%error, "server update not applied");
                self.stats.apply_errors += 1;
                false
            }
        }
    }

    /// y-protocols `applyAwarenessUpdate`, as yrs implements it. Refused
    /// entries (stale clocks) are not an error.
    fn apply_awareness(&mut self, update: AwarenessUpdate) {
        if let Err(error) = self.awareness.apply_update(update) {
            tracing::debug!(%error, "server awareness update not applied");
        }
    }

    fn local_awareness_frame(&self) -> Option<Vec<u8>> {
        self.awareness.local_state_raw()?;
        self.awareness_frame([self.awareness.client_id()])
    }

    /// y-websocket answers a query with every state it knows; we include
    /// removed ones as `null` (with their clocks).
    fn awareness_snapshot_frame(&self) -> Option<Vec<u8>> {
        let known: Vec<ClientID> = self
            .awareness
            .iter()
            .map(|(client_id, _)| client_id)
            .collect();
        if known.is_empty() {
            return None;
        }
        self.awareness_frame(known)
    }

    /// One awareness message for `clients`, all of which must be known.
    fn awareness_frame(&self, clients: impl IntoIterator<Item = ClientID>) -> Option<Vec<u8>> {
        match self.awareness.update_with_clients(clients) {
            Ok(update) => Some(Message::Awareness(update).encode_v1()),
            Err(error) => {
                tracing::debug!(%error, "awareness update not encoded");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::sync::{DefaultProtocol, Protocol};
    use yrs::{GetString, Map, Text, WriteTxn};

    /// The JSON text y-protocols sends for a removed awareness state.
    const NULL_STATE: &str = "null";

    /// The (clock, JSON) entries of a frame holding one awareness message.
    fn awareness_entries(frame: &[u8]) -> BTreeMap<u64, (u32, String)> {
        match Message::decode_v1(frame).unwrap() {
            Message::Awareness(update) => update
                .clients
                .into_iter()
                .map(|(client_id, entry)| (client_id.get(), (entry.clock, entry.json.to_string())))
                .collect(),
            other => panic!("expected awareness, got {other:?}"),
        }
    }

    /// A yrs-based server peer: yrs's own y-sync implementation, sending
    /// one message per frame as DESIGN.md requires of ours.
    struct ServerPeer {
        awareness: Awareness,
    }

    impl ServerPeer {
        fn new(doc: Doc) -> Self {
            Self {
                awareness: Awareness::new(doc),
            }
        }

        /// SyncStep1 then, if anyone is present, an awareness snapshot.
        fn opening_frames(&self) -> Vec<Vec<u8>> {
            let state_vector = self.awareness.doc().transact().state_vector();
            let mut frames = vec![Message::Sync(SyncMessage::SyncStep1(state_vector)).encode_v1()];
            let update = self.awareness.update().unwrap();
            if !update.clients.is_empty() {
                frames.push(Message::Awareness(update).encode_v1());
            }
            frames
        }

        fn handle(&mut self, frame: &[u8]) -> Vec<Vec<u8>> {
            DefaultProtocol
                .handle(&mut self.awareness, frame)
                .unwrap()
                .into_iter()
                .map(|message| message.encode_v1())
                .collect()
        }
    }

    /// Delivers frames both ways until neither side has anything to say.
    fn exchange(
        client: &mut ClientProtocol,
        server: &mut ServerPeer,
        to_server: Vec<Vec<u8>>,
        to_client: Vec<Vec<u8>>,
    ) {
        let (mut to_server, mut to_client) = (to_server, to_client);
        for _ in 0..10 {
            if to_server.is_empty() && to_client.is_empty() {
                return;
            }
            let mut next_to_client = Vec::new();
            for frame in to_server.drain(..) {
                next_to_client.extend(server.handle(&frame));
            }
            let mut next_to_server = Vec::new();
            for frame in to_client.drain(..) {
                next_to_server.extend(client.handle_frame(&frame).replies);
            }
            to_client = next_to_client;
            to_server = next_to_server;
        }
        panic!("peers kept talking");
    }

    /// Both sides' opening frames (plus `extra` from the client), then the exchange.
    fn handshake(client: &mut ClientProtocol, server: &mut ServerPeer, extra: Vec<Vec<u8>>) {
        let mut to_server = client.opening_frames();
        to_server.extend(extra);
        let to_client = server.opening_frames();
        exchange(client, server, to_server, to_client);
    }

    fn server_with_text(text: &str) -> ServerPeer {
        let doc = Doc::with_client_id(1);
        let shared = doc.get_or_insert_text("t");
        shared.push(&mut doc.transact_mut(), text);
        ServerPeer::new(doc)
    }

    #[test]
    fn opening_frame_is_sync_step1_with_our_state_vector() {
        let client = ClientProtocol::new(Doc::with_client_id(2));
        let frames = client.opening_frames();
        assert_eq!(frames.len(), 1, "no awareness state yet, so only SyncStep1");
        match Message::decode_v1(&frames[0]).unwrap() {
            Message::Sync(SyncMessage::SyncStep1(sv)) => assert_eq!(sv, StateVector::default()),
            other => panic!("expected SyncStep1, got {other:?}"),
        }
    }

    #[test]
    fn handshake_pulls_server_state_and_marks_synced() {
        let mut server = server_with_text("hello");
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        assert!(!client.is_synced());
        handshake(&mut client, &mut server, Vec::new());
        assert!(client.is_synced(), "SyncStep2 received");
        let txn = client.doc().transact();
        assert_eq!(txn.get_text("t").unwrap().get_string(&txn), "hello");
        assert_eq!(client.stats().updates_applied, 1);
        assert_eq!(client.stats().decode_errors, 0);
    }

    #[test]
    fn handshake_pushes_offline_edits_to_server() {
        let mut server = server_with_text("server ");
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let (_, _) = client.edit(|txn| {
            let text = txn.get_or_insert_text("t");
            text.push(txn, "client");
        });
        handshake(&mut client, &mut server, Vec::new());
        let server_text = {
            let txn = server.awareness.doc().transact();
            txn.get_text("t").unwrap().get_string(&txn)
        };
        let client_text = {
            let txn = client.doc().transact();
            txn.get_text("t").unwrap().get_string(&txn)
        };
        assert_eq!(server_text, client_text);
        assert!(server_text.contains("client") && server_text.contains("server"));
    }

    #[test]
    fn empty_doc_handshake_still_syncs() {
        let mut server = ServerPeer::new(Doc::with_client_id(1));
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        handshake(&mut client, &mut server, Vec::new());
        assert!(client.is_synced());
    }

    #[test]
    fn edit_frame_is_one_update_message_the_server_applies() {
        let mut server = ServerPeer::new(Doc::with_client_id(1));
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let (len, frame) = client.edit(|txn| {
            let map = txn.get_or_insert_map("m");
            map.insert(txn, "k", "v");
            map.len(txn)
        });
        assert_eq!(len, 1);
        let frame = frame.expect("the edit changed the doc");
        let mut decoder = DecoderV1::from(frame.as_slice());
        assert!(matches!(
            Message::decode(&mut decoder).unwrap(),
            Message::Sync(SyncMessage::Update(_))
        ));
        assert!(
            decoder.read_u8().is_err(),
            "exactly one message in the frame"
        );
        assert!(server.handle(&frame).is_empty());
        let txn = server.awareness.doc().transact();
        let value = txn.get_map("m").unwrap().get(&txn, "k").unwrap();
        assert_eq!(value.to_string(&txn), "v");
    }

    #[test]
    fn no_op_edit_sends_nothing() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let ((), frame) = client.edit(|_| ());
        assert!(frame.is_none());
    }

    #[test]
    fn server_updates_apply_and_echoes_are_harmless() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let (_, frame) = client.edit(|txn| txn.get_or_insert_text("t").push(txn, "a"));
        let frame = frame.unwrap();
        // the server echoes our own update back to us
        let outcome = client.handle_frame(&frame);
        assert!(outcome.replies.is_empty());
        let txn = client.doc().transact();
        assert_eq!(txn.get_text("t").unwrap().get_string(&txn), "a");
    }

    #[test]
    fn awareness_roundtrip_with_yrs_peer() {
        let mut server = ServerPeer::new(Doc::with_client_id(1));
        server
            .awareness
            .set_local_state(serde_json::json!({"name": "server"}))
            .unwrap();
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let frame = client.set_local_state(r#"{"name":"client"}"#);
        handshake(&mut client, &mut server, vec![frame]);
        let states = client.awareness_states();
        assert_eq!(states[&1], serde_json::json!({"name": "server"}));
        assert_eq!(states[&2], serde_json::json!({"name": "client"}));
        let server_view: String = server
            .awareness
            .state(ClientID::new(2))
            .map(|v: serde_json::Value| v.to_string())
            .unwrap();
        assert_eq!(server_view, r#"{"name":"client"}"#);

        // leaving sends null with a newer clock, which the peer applies as a removal
        let leave = client.leave().unwrap();
        server.handle(&leave);
        assert!(server
            .awareness
            .state::<serde_json::Value>(ClientID::new(2))
            .is_none());
        assert!(client.leave().is_none(), "nothing left to remove");
    }

    #[test]
    fn awareness_clock_rules() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        let entry = |clock, json: &str| AwarenessUpdate {
            clients: [(
                ClientID::new(9),
                AwarenessUpdateEntry {
                    clock,
                    json: json.into(),
                },
            )]
            .into(),
        };
        client.apply_awareness(entry(3, r#"{"v":3}"#));
        client.apply_awareness(entry(2, r#"{"v":2}"#));
        assert_eq!(
            client.awareness_states()[&9],
            serde_json::json!({"v": 3}),
            "older clock refused"
        );
        client.apply_awareness(entry(3, NULL_STATE));
        assert!(
            !client.awareness_states().contains_key(&9),
            "same clock may remove"
        );
        client.apply_awareness(entry(3, r#"{"v":3}"#));
        assert!(
            !client.awareness_states().contains_key(&9),
            "removed state is not revived by a stale clock"
        );

        // a peer cannot remove our own state
        client.set_local_state("{}");
        let own = AwarenessUpdate {
            clients: [(
                ClientID::new(2),
                AwarenessUpdateEntry {
                    clock: 5,
                    json: NULL_STATE.into(),
                },
            )]
            .into(),
        };
        client.apply_awareness(own);
        assert!(client.awareness_states().contains_key(&2));
        let renewal = client.renew_local_state().unwrap();
        match Message::decode_v1(&renewal).unwrap() {
            Message::Awareness(update) => assert!(update.clients[&ClientID::new(2)].clock > 5),
            other => panic!("expected awareness, got {other:?}"),
        }
    }

    #[test]
    fn query_awareness_is_answered() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        assert!(client
            .handle_frame(&Message::AwarenessQuery.encode_v1())
            .replies
            .is_empty());
        client.set_local_state(r#"{"a":1}"#);
        let replies = client
            .handle_frame(&Message::AwarenessQuery.encode_v1())
            .replies;
        assert_eq!(replies.len(), 1);
        assert_eq!(
            awareness_entries(&replies[0]),
            [(2, (1, r#"{"a":1}"#.to_owned()))].into()
        );

        // a peer that came and went is still known, as null with its clock
        let peer = |clock, json: &str| {
            Message::Awareness(AwarenessUpdate {
                clients: [(
                    ClientID::new(9),
                    AwarenessUpdateEntry {
                        clock,
                        json: json.into(),
                    },
                )]
                .into(),
            })
            .encode_v1()
        };
        client.handle_frame(&peer(1, r#"{"b":2}"#));
        client.handle_frame(&peer(2, NULL_STATE));
        let replies = client
            .handle_frame(&Message::AwarenessQuery.encode_v1())
            .replies;
        assert_eq!(
            awareness_entries(&replies[0]),
            [
                (2, (1, r#"{"a":1}"#.to_owned())),
                (9, (2, NULL_STATE.to_owned()))
            ]
            .into()
        );
    }

    #[test]
    fn local_state_frames_carry_increasing_clocks() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        assert!(client.renew_local_state().is_none(), "no state to renew");
        assert!(client.leave().is_none(), "no state to remove");
        let set = client.set_local_state(r#"{"a":1}"#);
        assert_eq!(
            awareness_entries(&set),
            [(2, (1, r#"{"a":1}"#.to_owned()))].into()
        );
        let opening = client.opening_frames();
        assert_eq!(opening.len(), 2, "SyncStep1, then our awareness");
        assert_eq!(awareness_entries(&opening[1]), awareness_entries(&set));
        let renewal = client.renew_local_state().unwrap();
        assert_eq!(
            awareness_entries(&renewal),
            [(2, (2, r#"{"a":1}"#.to_owned()))].into()
        );
        let leave = client.leave().unwrap();
        assert_eq!(
            awareness_entries(&leave),
            [(2, (3, NULL_STATE.to_owned()))].into()
        );
        assert!(client.awareness_states().is_empty());
        assert!(client.leave().is_none(), "already removed");
        assert!(client.renew_local_state().is_none(), "nothing to renew");
        assert_eq!(client.opening_frames().len(), 1, "only SyncStep1");
        let query = client
            .handle_frame(&Message::AwarenessQuery.encode_v1())
            .replies;
        assert_eq!(
            awareness_entries(&query[0]),
            [(2, (3, NULL_STATE.to_owned()))].into(),
            "a second leave does not move the clock"
        );
    }

    #[test]
    fn bad_input_is_counted_not_fatal() {
        let mut client = ClientProtocol::new(Doc::with_client_id(2));
        assert!(client.handle_frame(&[]).replies.is_empty());
        assert!(client.handle_frame(&[0, 9]).replies.is_empty());
        // a valid update with garbage after it: applied, trailing bytes counted
        let mut frame = Message::Sync(SyncMessage::Update(Update::EMPTY_V1.to_vec())).encode_v1();
        frame.extend([0xff, 0xff]);
        client.handle_frame(&frame);
        // an update message whose payload is not a Yjs update
        client
            .handle_frame(&Message::Sync(SyncMessage::Update(vec![0xff, 0xff, 0xff])).encode_v1());
        let denied = Message::Auth(Some("no access".into())).encode_v1();
        client.handle_frame(&denied);
        let stats = client.stats();
        assert_eq!(stats.decode_errors, 2);
        assert_eq!(stats.trailing_bytes_frames, 1);
        assert_eq!(stats.apply_errors, 1);
        assert_eq!(stats.auth_denied.as_deref(), Some("no access"));
        assert_eq!(stats.binary_frames, 5);
    }
}
