//! The gateway's `y-pk-batch` reassembler, driven as a session drives it:
//! text messages starting with `y-pk-batch#` are markers, binary messages
//! are chunks while a batch is open (else whole frames), any refusal
//! closes the socket. The input is the socket's messages (see
//! `format::records`; even control byte: text, odd: binary).
//!
//! Checked besides "no panic": a joined message is exactly the chunks
//! taken since its start marker, never over the limit, and the batch is
//! closed after its end marker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use partyline_fuzz::format;
use partyline_gateway::batch::{BatchError, Reassembler, BATCH_PREFIX};

fuzz_target!(|data: &[u8]| {
    let mut batches = Reassembler::new(format::BATCH_MAX_BYTES);
    // The chunks taken since the open batch's start marker.
    let mut taken: Vec<u8> = Vec::new();
    for (control, payload) in format::records(data) {
        let was_open = batches.is_open();
        let result: Result<Option<Vec<u8>>, BatchError> = if control & 1 == format::BATCH_BINARY {
            if !was_open {
                continue; // a whole frame, forwarded as it is
            }
            batches.chunk(payload).map(|()| {
                taken.extend_from_slice(payload);
                None
            })
        } else {
            // A WebSocket text message is UTF-8 (tungstenite checks).
            let Ok(text) = std::str::from_utf8(payload) else {
                continue;
            };
            if !text.starts_with(BATCH_PREFIX) {
                continue; // `__YPS:` and other text: not the reassembler's
            }
            batches
                .marker(text)
                .map(|joined| joined.map(|j| j.to_vec()))
        };
        match result {
            Ok(Some(joined)) => {
                assert!(was_open, "an end marker joined a batch that was not open");
                assert!(
                    !batches.is_open(),
                    "the batch stays open after its end marker"
                );
                assert!(
                    joined.len() <= format::BATCH_MAX_BYTES,
                    "joined batch over the limit"
                );
                assert_eq!(joined, taken, "joined batch is not the chunks taken");
                taken.clear();
            }
            Ok(None) => {
                if !was_open && batches.is_open() {
                    taken.clear(); // a start marker
                }
                assert!(
                    taken.len() <= format::BATCH_MAX_BYTES,
                    "chunks over the limit taken"
                );
            }
            // The session closes the socket with the reassembler.
            Err(_) => return,
        }
    }
});
