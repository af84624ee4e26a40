//! Small Yjs helpers for storage tests: real updates made with yrs.

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// A Yjs update appending `text` to root text `t` of `doc`.
pub(crate) fn edit(doc: &Doc, text: &str) -> bytes::Bytes {
    let t = doc.get_or_insert_text("t");
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        let len = t.len(&txn);
        t.insert(&mut txn, len, text);
    }
    doc.transact().encode_state_as_update_v1(&before).into()
}

/// `doc`'s whole state as one update.
pub(crate) fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// Root text `t` after applying `updates` to a fresh document.
pub(crate) fn text_of(updates: &[Vec<u8>]) -> String {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for update in updates {
            txn.apply_update(Update::decode_v1(update).unwrap())
                .unwrap();
        }
    }
    let t = doc.get_or_insert_text("t");
    let txn = doc.transact();
    t.get_string(&txn)
}
