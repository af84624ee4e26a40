//! The client-frame path of a room: y-sync decode, the update check
//! (`update_check`: `Any` nesting, the blocks' parents), the shared-type
//! depth check and yrs's apply, against a small document, as
//! `SyncRoom::handle_frame` runs them for every binary frame a client sends.
//! The input is several frames from up to four sessions with any access
//! (see `format::frame_control`).
//!
//! Checked besides "no panic, no abort": a refused frame leaves the
//! document as it was (unless yrs itself refused the update midway), a
//! session that may not write never changes it, and every update the room
//! asks to log decodes again — and replaying the log over the starting
//! document gives the room's document, as a restart would. A room that
//! says its document diverged from its log is loaded again from the log,
//! as the server does. Last, the room's whole state (what joiners and
//! snapshots get) must decode to what the room holds, and the render
//! budget must be able to weigh it.
#![no_main]

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use partyline_fuzz::format;
use partyline_room_node::protocol::{decode_update, Access, ProtocolError, SyncLimits, SyncRoom};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Snapshot, Transact, Update, WriteTxn};

/// Small limits, so the fuzzer reaches them with small inputs.
const LIMITS: SyncLimits = SyncLimits {
    max_type_depth: 8,
    awareness_max_clients: 2,
    awareness_max_bytes: 256,
};

/// The starting document ([`format::base_state`]), encoded once.
fn base_update() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(format::base_state)
}

/// A fresh starting document, as the room's (its own client id).
fn base_doc() -> Doc {
    format::doc_with(base_update(), 7)
}

/// What the document holds: its state vector and delete set (its encoding
/// is not canonical: the JSON of an embed follows a hash map's order).
fn state(doc: &Doc) -> Snapshot {
    doc.transact().snapshot()
}

thread_local! {
    /// The last panic's message and backtrace (`RUST_BACKTRACE=1`).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fuzz_target!(
    init: {
        // libfuzzer-sys's hook aborts on every panic, even one caught: the
        // room catches yrs's decoding panics (`ProtocolError::DecodePanic`)
        // as the server does. So panics are only noted here, and printed
        // when one escapes the room; libFuzzer then reports the abort.
        std::panic::set_hook(Box::new(|info| {
            let backtrace = Backtrace::capture();
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{info}\n{backtrace}")));
        }));
        let _ = base_update();
    },
    |data: &[u8]| {
        if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| run(data))) {
            let message = LAST_PANIC.with(|last| last.borrow_mut().take());
            eprintln!("uncaught panic: {}", message.unwrap_or_default());
            panic::resume_unwind(panic);
        }
    }
);

fn run(data: &[u8]) {
    let (mut room, _) = SyncRoom::with_limits(base_doc(), LIMITS);
    let mut log = Vec::new();
    for (control, frame) in format::records(data) {
        let access = [
            Access::ReadWrite,
            Access::ReadOnly,
            Access::LogUnavailable,
            Access::DocumentFull,
        ][usize::from(control & 3)];
        let session = (0, u64::from((control >> 2) & 3));
        let before = state(room.doc());
        let result = room.handle_frame(frame, access, session);
        if room.diverged() {
            if let Ok(outcome) = result {
                log.extend(outcome.log);
            }
            room = SyncRoom::with_limits(replay(&log), LIMITS).0;
            continue;
        }
        let after = state(room.doc());
        match result {
            Ok(outcome) => {
                for update in &outcome.log {
                    assert!(
                        decode_update(update).is_ok(),
                        "the room logged an update it cannot decode"
                    );
                }
                assert!(
                    outcome.log.is_empty() || access == Access::ReadWrite,
                    "logged a write of a session that may not write"
                );
                log.extend(outcome.log);
            }
            // yrs may have integrated part of the update before refusing
            // the rest (the room records it as such).
            Err(ProtocolError::Update(_)) => {}
            Err(error) => assert!(
                before == after,
                "a refused frame changed the document ({error:?}): {frame:02x?}"
            ),
        }
        if access != Access::ReadWrite {
            assert!(
                before == after,
                "a session that may not write changed the document"
            );
        }
        if control & 0x10 != 0 {
            let _ = room.end_sessions([session]);
        }
    }
    // A restart loads the document from the log: it must be this one.
    assert_eq!(
        state(&replay(&log)),
        state(room.doc()),
        "replaying the log does not give the room's document"
    );
    // What the room sends joiners and writes as snapshots holds the same
    // blocks and every deletion (yrs may delete more on the way: a
    // crafted multi-character map value whose later entry the room keeps
    // comes back deleted, a yrs quirk stock clients never reach).
    let copy = Doc::new();
    let encoded_state = room.encode_state();
    let whole = Update::decode_v1(&encoded_state).expect("the room's state decodes");
    let applies = copy.transact_mut().apply_update(whole).is_ok();
    // The render budget rewrites that state (format items as embeds) and
    // applies it to a scratch copy: wherever the state applies, so must
    // the rewrite (a limit of 0 makes any formatting go the exact way).
    if applies {
        use partyline_room_node::render::budget::{check, RenderError};
        let weighed = check(&encoded_state, 0);
        assert!(
            !matches!(weighed, Err(RenderError::Unreadable(_))),
            "the render budget could not read the room's state: {weighed:?}"
        );
    }
    let (held, encoded) = (state(room.doc()), state(&copy));
    assert_eq!(
        held.state_map, encoded.state_map,
        "the room's encoded state does not hold its blocks"
    );
    for (client, ranges) in held.delete_set.iter() {
        // Ranges, not clocks: a collected range can span 2^32 clocks.
        let covering: Vec<std::ops::Range<u32>> = (encoded.delete_set.iter())
            .filter(|(c, _)| *c == client)
            .flat_map(|(_, ranges)| ranges.iter().cloned().collect::<Vec<_>>())
            .collect();
        for range in ranges.iter() {
            assert!(
                covering
                    .iter()
                    .any(|c| c.start <= range.start && range.end <= c.end),
                "the room's encoded state lost a deletion"
            );
        }
    }
}

/// The starting document with every logged update applied, each in its
/// own transaction as the room applied it, dropping what yrs holds back
/// as pending after each (as the room and a load do).
fn replay<B: AsRef<[u8]>>(log: &[B]) -> Doc {
    let reloaded = base_doc();
    for update in log {
        let update = Update::decode_v1(update.as_ref()).expect("logged update decodes");
        let mut txn = reloaded.transact_mut();
        let _ = txn.apply_update(update);
        txn.prune_pending();
    }
    reloaded
}
