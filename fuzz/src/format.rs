//! Input formats of the fuzz targets and the `client_frame` target's
//! starting document, shared by the targets and the seed writer (`seeds`,
//! which includes this file): nothing but yrs.

use yrs::updates::decoder::Decode;
use yrs::{Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update};

/// Secret of the JWT authorizer the `token` target checks tokens with
/// (the seeds sign with it, so the fuzzer starts past the signature).
pub const JWT_SECRET: &[u8] = b"partyline-fuzz-secret-0123456789abcdef";

/// Largest joined `y-pk-batch` the `batch` target's reassembler accepts:
/// small, so `TooLarge` is reachable from small inputs.
pub const BATCH_MAX_BYTES: usize = 1024;

/// One record of a `client_frame` or `batch` input: a control byte, a
/// little-endian `u16` length, then that many bytes (fewer at the end of
/// the input).
pub fn record(control: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("record payload over 64 KiB");
    let mut out = vec![control];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits an input into its records.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&control, rest) = data.split_first()?;
        let len = match rest {
            [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
            _ => rest.len(),
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some((control, payload))
    })
}

/// `client_frame` control byte: bits 0–1 pick the access (read-write,
/// read-only, log unavailable, document full), bits 2–3 the session
/// (one of four), bit 4 ends that session after its frame.
pub fn frame_control(access: u8, session: u8, end_session: bool) -> u8 {
    (access & 3) | ((session & 3) << 2) | (u8::from(end_session) << 4)
}

/// `batch` record kinds: a text message (a `y-pk-batch#` marker, a
/// `__YPS:` message or other text) or a binary message.
pub const BATCH_TEXT: u8 = 0;
/// See [`BATCH_TEXT`]; any odd control byte is binary.
pub const BATCH_BINARY: u8 = 1;

/// `token` input: four lines (`\n`), each empty for "absent": the query
/// string, the `Authorization` header, the `Sec-WebSocket-Protocol`
/// header, the room.
pub fn token_input(query: &str, authorization: &str, protocol: &str, room: &str) -> Vec<u8> {
    format!("{query}\n{authorization}\n{protocol}\n{room}").into_bytes()
}

/// The `client_frame` target's starting document as one update, written
/// by client 1: text, a map holding a nested map, an array. The seeds build
/// their updates on it, so they apply there.
pub fn base_state() -> Vec<u8> {
    let doc = Doc::with_client_id(1);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello");
        let inner = map.insert(&mut txn, "inner", MapPrelim::default());
        inner.insert(&mut txn, "x", 1);
        array.push_back(&mut txn, "one");
        array.push_back(&mut txn, 2);
    }
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    state
}

/// A document of `client_id` holding `state` (from [`base_state`]).
pub fn doc_with(state: &[u8], client_id: u64) -> Doc {
    let doc = Doc::with_client_id(client_id);
    let update = Update::decode_v1(state).expect("base state decodes");
    doc.transact_mut()
        .apply_update(update)
        .expect("base state applies");
    doc
}
