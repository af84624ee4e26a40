//! How a bench update is made, recognised on receipt, and timed.
//!
//! Each sending connection owns a tiny `yrs::Doc` with a client id of its own
//! (`client_id_base + connection index`) and, per update, overwrites the key
//! `c{index}` of the root map `bench` with a fixed-size string. Every such
//! transaction inserts exactly one item, so update number `seq` of a
//! connection is the item at clock `seq` of its client id. A receiver does
//! not apply updates: it decodes the update, reads the inserted
//! `(client id, clock range)`s, and looks the send time up in the
//! [`SendLog`] — a lock-free ring per sender, written before the frame
//! leaves. Overwriting one key keeps the room's document small however long
//! the run; a merged broadcast carrying several updates is still counted
//! item by item.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, MapRef, ReadTxn, StateVector, Transact, Update};

use yrs::encoding::read::Read;

/// Bits of a ring slot holding the send time (µs since the run's epoch:
/// 2^40 µs is 12.7 days).
const MICROS_BITS: u32 = 40;
/// Bits of a slot holding the low bits of the sequence number, so a slot
/// reused by a later update is told apart from the one looked up.
const SEQ_TAG_BITS: u32 = 16;
/// The largest ring: smaller than the sequence tag, so reuse is detected.
pub(crate) const MAX_RING: usize = 1 << 12;
/// Phases a slot can name (its top byte is `phase + 1`; 0 means empty).
pub(crate) const MAX_PHASES: usize = 255;

/// Send times of recent updates of every sending connection.
pub(crate) struct SendLog {
    ring: usize,
    slots: Box<[AtomicU64]>,
}

/// What the log knows about one sent update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SentUpdate {
    /// The phase (load step) the update was sent in.
    pub phase: usize,
    /// Scheduled send time, µs since the run's epoch.
    pub sent_micros: u64,
}

impl SendLog {
    /// A log for `senders` connections remembering the last `ring` updates of
    /// each (rounded up to a power of two, at most [`MAX_RING`]).
    pub(super) fn new(senders: usize, ring: usize) -> Self {
        let ring = ring.clamp(1, MAX_RING).next_power_of_two();
        Self {
            ring,
            slots: (0..senders * ring).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Updates remembered per sender.
    pub(super) fn ring(&self) -> usize {
        self.ring
    }

    /// Remembers that `sender` sent update `seq` in `phase` at `sent_micros`.
    /// Called before the frame is written, so a receiver always finds it.
    pub(super) fn record(&self, sender: usize, seq: u32, phase: usize, sent_micros: u64) {
        debug_assert!(phase < MAX_PHASES);
        let Some(slot) = self.slot(sender, seq) else {
            return;
        };
        let tag = (seq as u64) & ((1 << SEQ_TAG_BITS) - 1);
        let packed = ((phase as u64 + 1) << (MICROS_BITS + SEQ_TAG_BITS))
            | (tag << MICROS_BITS)
            | (sent_micros & ((1 << MICROS_BITS) - 1));
        slot.store(packed, Ordering::Release);
    }

    /// The send record of `sender`'s update `seq`; `None` if never sent or
    /// already overwritten by a later update (a delivery older than the ring).
    pub(super) fn lookup(&self, sender: usize, seq: u32) -> Option<SentUpdate> {
        let packed = self.slot(sender, seq)?.load(Ordering::Acquire);
        let phase_plus_one = packed >> (MICROS_BITS + SEQ_TAG_BITS);
        let tag = (packed >> MICROS_BITS) & ((1 << SEQ_TAG_BITS) - 1);
        if phase_plus_one == 0 || tag != (seq as u64) & ((1 << SEQ_TAG_BITS) - 1) {
            return None;
        }
        Some(SentUpdate {
            phase: (phase_plus_one - 1) as usize,
            sent_micros: packed & ((1 << MICROS_BITS) - 1),
        })
    }

    fn slot(&self, sender: usize, seq: u32) -> Option<&AtomicU64> {
        let index = sender.checked_mul(self.ring)? + (seq as usize & (self.ring - 1));
        self.slots.get(index)
    }
}

/// The sending side of one connection: its document and next sequence number.
pub(crate) struct UpdateSource {
    doc: Doc,
    map: MapRef,
    key: String,
    payload: String,
    next_seq: u32,
}

impl UpdateSource {
    /// A source writing as Yjs client `client_id`, with `payload_bytes` of
    /// filler per update.
    pub(super) fn new(client_id: u64, index: usize, payload_bytes: usize) -> Self {
        let doc = Doc::with_client_id(client_id);
        let map = doc.get_or_insert_map("bench");
        Self {
            doc,
            map,
            key: format!("c{index}"),
            payload: "x".repeat(payload_bytes),
            next_seq: 0,
        }
    }

    /// Makes the next update; returns its sequence number and the y-sync
    /// frame (`SyncMessage::Update`) carrying it.
    pub(super) fn next_update(&mut self) -> (u32, Vec<u8>) {
        use yrs::Map;
        let seq = self.next_seq;
        let mut txn = self.doc.transact_mut();
        self.map
            .insert(&mut txn, self.key.as_str(), self.payload.as_str());
        let update = txn.encode_update_v1();
        drop(txn);
        self.next_seq += 1;
        (seq, Message::Sync(SyncMessage::Update(update)).encode_v1())
    }

    /// SyncStep2 answering a server's SyncStep1: what this source wrote that
    /// the server lacks (nothing, on a first connect).
    pub(super) fn step2_for(&self, state_vector: &StateVector) -> Vec<u8> {
        let update = self.doc.transact().encode_state_as_update_v1(state_vector);
        Message::Sync(SyncMessage::SyncStep2(update)).encode_v1()
    }
}

/// The SyncStep2 a connection without a document answers with: empty.
pub(crate) fn empty_step2() -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep2(Update::EMPTY_V1.to_vec())).encode_v1()
}

/// What a bench connection makes of one binary frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A document update: the items it inserts, as clock ranges per client.
    Update(Vec<(u64, Range<u32>)>),
    /// The server's SyncStep1, to be answered with SyncStep2.
    SyncStep1(StateVector),
    /// The server's SyncStep2: the items of the document it carries, as
    /// clock ranges per client (only counted after the handshake, when a
    /// server re-syncs a session).
    SyncStep2(Vec<(u64, Range<u32>)>),
    /// Awareness, auth and the rest: nothing to measure.
    Other,
    /// Not a y-sync message, or one message followed by more bytes, which
    /// stock clients would silently drop.
    Invalid(String),
}

/// Decodes one frame without applying anything.
pub(crate) fn decode_inbound(frame: &[u8]) -> Inbound {
    let mut decoder = DecoderV1::from(frame);
    let message = match Message::decode(&mut decoder) {
        Ok(message) => message,
        Err(error) => return Inbound::Invalid(format!("undecodable frame: {error}")),
    };
    if decoder.read_u8().is_ok() {
        return Inbound::Invalid("frame carries more than one message".into());
    }
    match message {
        Message::Sync(SyncMessage::Update(update)) => match Update::decode_v1(&update) {
            Ok(update) => Inbound::Update(inserted_ranges(&update)),
            Err(error) => Inbound::Invalid(format!("undecodable update: {error}")),
        },
        Message::Sync(SyncMessage::SyncStep1(state_vector)) => Inbound::SyncStep1(state_vector),
        Message::Sync(SyncMessage::SyncStep2(update)) => match Update::decode_v1(&update) {
            Ok(update) => Inbound::SyncStep2(inserted_ranges(&update)),
            Err(error) => Inbound::Invalid(format!("undecodable SyncStep2: {error}")),
        },
        _ => Inbound::Other,
    }
}

fn inserted_ranges(update: &Update) -> Vec<(u64, Range<u32>)> {
    let mut ranges = Vec::new();
    for (client_id, client_ranges) in update.insertions(true).iter() {
        for range in client_ranges.iter() {
            ranges.push((client_id.get(), range.clone()));
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Map, ReadTxn};

    #[test]
    fn each_update_is_one_item_at_clock_seq() {
        let mut source = UpdateSource::new(7 << 32, 3, 16);
        for expected_seq in 0..5 {
            let (seq, frame) = source.next_update();
            assert_eq!(seq, expected_seq);
            assert_eq!(
                decode_inbound(&frame),
                Inbound::Update(vec![(7 << 32, seq..seq + 1)]),
                "update {seq}"
            );
        }
    }

    #[test]
    fn updates_apply_to_a_real_doc() {
        let mut source = UpdateSource::new(11, 0, 4);
        let receiver = Doc::with_client_id(12);
        for _ in 0..3 {
            let (_, frame) = source.next_update();
            let Message::Sync(SyncMessage::Update(update)) = Message::decode_v1(&frame).unwrap()
            else {
                panic!("not an update");
            };
            receiver
                .transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        let txn = receiver.transact();
        let map = txn.get_map("bench").unwrap();
        assert_eq!(map.len(&txn), 1, "one key, overwritten");
        assert_eq!(map.get(&txn, "c0").unwrap().to_string(&txn), "xxxx");
    }

    #[test]
    fn merged_updates_are_counted_item_by_item() {
        let mut a = UpdateSource::new(21, 0, 1);
        let mut b = UpdateSource::new(22, 1, 1);
        let mut updates = Vec::new();
        for source in [0, 0, 1] {
            let source = if source == 0 { &mut a } else { &mut b };
            let (_, frame) = source.next_update();
            let Message::Sync(SyncMessage::Update(update)) = Message::decode_v1(&frame).unwrap()
            else {
                panic!("not an update");
            };
            updates.push(update);
        }
        let merged = yrs::merge_updates_v1(&updates).unwrap();
        let frame = Message::Sync(SyncMessage::Update(merged)).encode_v1();
        let Inbound::Update(mut ranges) = decode_inbound(&frame) else {
            panic!("not an update");
        };
        ranges.sort_by_key(|(client, range)| (*client, range.start));
        let items: Vec<(u64, u32)> = ranges
            .into_iter()
            .flat_map(|(client, range)| range.map(move |clock| (client, clock)))
            .collect();
        assert_eq!(items, vec![(21, 0), (21, 1), (22, 0)]);
    }

    #[test]
    fn handshake_frames_are_recognised() {
        let source = UpdateSource::new(5, 0, 1);
        assert_eq!(decode_inbound(&empty_step2()), Inbound::SyncStep2(vec![]));
        assert_eq!(
            decode_inbound(&source.step2_for(&StateVector::default())),
            Inbound::SyncStep2(vec![])
        );
        let mut writer = UpdateSource::new(6, 0, 1);
        for _ in 0..3 {
            writer.next_update();
        }
        assert_eq!(
            decode_inbound(&writer.step2_for(&StateVector::default())),
            Inbound::SyncStep2(vec![(6, 0..3)]),
            "a whole document names every item, overwritten ones included"
        );
        let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        assert_eq!(
            decode_inbound(&step1),
            Inbound::SyncStep1(StateVector::default())
        );
        assert_eq!(
            decode_inbound(&Message::AwarenessQuery.encode_v1()),
            Inbound::Other
        );
    }

    #[test]
    fn bad_frames_are_invalid() {
        assert!(matches!(decode_inbound(&[]), Inbound::Invalid(_)));
        assert!(matches!(decode_inbound(&[0, 7]), Inbound::Invalid(_)));
        let mut two = empty_step2();
        two.extend(empty_step2());
        assert!(matches!(decode_inbound(&two), Inbound::Invalid(_)));
        let junk_update = Message::Sync(SyncMessage::Update(vec![0xff, 0xff, 0xff])).encode_v1();
        assert!(matches!(decode_inbound(&junk_update), Inbound::Invalid(_)));
    }

    #[test]
    fn send_log_roundtrip_and_reuse_detection() {
        let log = SendLog::new(3, 5); // rounded up to 8 per sender
        assert_eq!(log.lookup(1, 0), None, "nothing sent yet");
        log.record(1, 0, 2, 123_456);
        log.record(2, 0, 0, 0);
        assert_eq!(
            log.lookup(1, 0),
            Some(SentUpdate {
                phase: 2,
                sent_micros: 123_456
            })
        );
        assert_eq!(
            log.lookup(2, 0),
            Some(SentUpdate {
                phase: 0,
                sent_micros: 0
            }),
            "time zero of phase zero is a real entry"
        );
        assert_eq!(log.lookup(0, 0), None, "other senders are separate");
        log.record(1, 8, 2, 999); // same slot as seq 0
        assert_eq!(log.lookup(1, 0), None, "slot reused by a later update");
        assert_eq!(log.lookup(1, 8).map(|sent| sent.sent_micros), Some(999));
        assert_eq!(log.lookup(3, 0), None, "out of range sender");
        assert_eq!(log.lookup(usize::MAX, 0), None);
    }
}
