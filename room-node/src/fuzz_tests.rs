//! Property tests of the frame decoder and session handler: arbitrary and
//! mutated frames never panic, and a refused frame leaves the document as
//! it was. Deterministic (a fixed-seed generator) and bounded in count, so
//! CI runs them on every push.

use yrs::sync::{Awareness, Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

use crate::protocol::{Access, SessionKey, SyncRoom};

/// The one session the generated frames come from.
const PEER: SessionKey = (0, 1);

/// Seeded inputs (fastrand's wyrand), so every run tests the same ones.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.u64(..)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n.max(1))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        std::iter::repeat_with(|| self.0.u8(..)).take(len).collect()
    }
}

/// Valid frames of every message type, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 0, "hello");
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let mut awareness = Awareness::new(Doc::new());
    awareness.set_local_state(r#"{"user":"x"}"#).unwrap();
    let awareness_update = awareness.update().unwrap();
    let state_vector = doc.transact().state_vector();
    vec![
        Message::Sync(SyncMessage::SyncStep1(state_vector)).encode_v1(),
        Message::Sync(SyncMessage::SyncStep2(update.clone())).encode_v1(),
        Message::Sync(SyncMessage::Update(update)).encode_v1(),
        Message::Awareness(awareness_update).encode_v1(),
        Message::AwarenessQuery.encode_v1(),
    ]
}

/// A random change to a valid frame: flip, cut, grow, splice or overwrite.
fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => out.truncate(rng.below(out.len())),
            2 => {
                let len = rng.below(16);
                let extra = rng.bytes(len);
                out.extend(extra);
            }
            3 if !out.is_empty() => {
                let at = rng.below(out.len());
                let len = rng.below(8);
                let extra = rng.bytes(len);
                out.splice(at..at, extra);
            }
            _ if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = rng.next() as u8;
            }
            _ => {}
        }
    }
    out
}

fn state_of(room: &SyncRoom) -> Vec<u8> {
    room.encode_state()
}

fn check(room: &mut SyncRoom, frame: &[u8], access: Access) {
    let before = state_of(room);
    if room.handle_frame(frame, access, PEER).is_err() {
        assert_eq!(
            state_of(room),
            before,
            "a refused frame changed the document: {frame:?}"
        );
    }
    if access != Access::ReadWrite {
        assert_eq!(state_of(room), before, "a non-writer changed the document");
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_refusals_change_nothing() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut room = SyncRoom::new(Doc::new());
    for _ in 0..10_000 {
        let len = rng.below(64);
        let frame = rng.bytes(len);
        let access = [Access::ReadWrite, Access::ReadOnly, Access::LogUnavailable][rng.below(3)];
        check(&mut room, &frame, access);
    }
}

#[test]
fn mutated_valid_frames_never_panic_and_refusals_change_nothing() {
    let mut rng = Rng::new(0x0123_4567_89ab_cdef);
    let seeds = seeds();
    let mut room = SyncRoom::new(Doc::new());
    for _ in 0..10_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let frame = mutate(&mut rng, seed);
        let access = if rng.below(4) == 0 {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        check(&mut room, &frame, access);
    }
    // The room still serves a client normally afterwards.
    let hello = seeds[0].clone();
    assert!(room.handle_frame(&hello, Access::ReadWrite, PEER).is_ok());
}
