//! A check of a Yjs update v1 before yrs decodes it: yrs decodes the
//! `Any` values of an update (item content of type Any, sub-document
//! options) recursively with no depth limit, so an update of a few hundred
//! KB nested deep enough overflows the stack and aborts the whole process.
//! This walks the update the way yrs reads it, without recursion, and
//! refuses one whose `Any` values nest deeper than [`MAX_ANY_DEPTH`]
//! (Yjs documents nest a handful of levels; JSON's own parsers stop at 128).

use yrs::encoding::read::{Cursor, Read};

/// Deepest `Any` nesting an update may carry.
pub const MAX_ANY_DEPTH: usize = 128;

/// Content kinds of an item (the low four bits of its info byte).
const DELETED: u8 = 1;
const JSON: u8 = 2;
const BINARY: u8 = 3;
const STRING: u8 = 4;
const EMBED: u8 = 5;
const FORMAT: u8 = 6;
const TYPE: u8 = 7;
const ANY: u8 = 8;
const DOC: u8 = 9;
/// Block kinds that are not items.
const GC: u8 = 0;
const SKIP: u8 = 10;
/// Flags of an item's info byte.
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
/// Type refs that carry a name.
const TYPE_XML_ELEMENT: u8 = 3;

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateCheckError {
    /// `Any` values nest deeper than [`MAX_ANY_DEPTH`].
    #[error("values nested deeper than {MAX_ANY_DEPTH} levels")]
    TooDeep,
    /// The bytes are not a Yjs update v1.
    #[error("malformed update: {0}")]
    Malformed(#[from] yrs::encoding::read::Error),
}

/// Checks that `update` can be given to yrs: every `Any` it holds nests at
/// most [`MAX_ANY_DEPTH`] levels. Other malformations are left to yrs.
/// Reads the encoding itself (the field order of yrs's `DecoderV1`), not
/// through yrs, whose id decoding asserts on client ids over 53 bits.
pub fn check_update(update: &[u8]) -> Result<(), UpdateCheckError> {
    let mut reader = Cursor::new(update);
    let clients: u32 = reader.read_var()?;
    for _ in 0..clients {
        let blocks: u32 = reader.read_var()?;
        let _client: u64 = reader.read_var()?;
        let _clock: u32 = reader.read_var()?;
        for _ in 0..blocks {
            check_block(&mut reader)?;
        }
    }
    // The delete set that follows holds only numbers.
    Ok(())
}

/// Reads past an id (client, clock).
fn skip_id(reader: &mut Cursor) -> Result<(), UpdateCheckError> {
    let _client: u64 = reader.read_var()?;
    let _clock: u32 = reader.read_var()?;
    Ok(())
}

fn check_block(reader: &mut Cursor) -> Result<(), UpdateCheckError> {
    let info = reader.read_u8()?;
    match info {
        SKIP | GC => {
            let _len: u32 = reader.read_var()?;
            return Ok(());
        }
        _ => {}
    }
    if info & HAS_ORIGIN != 0 {
        skip_id(reader)?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        skip_id(reader)?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        let parent_info: u32 = reader.read_var()?;
        if parent_info == 1 {
            reader.read_string()?;
        } else {
            skip_id(reader)?;
        }
        if info & HAS_PARENT_SUB != 0 {
            reader.read_string()?;
        }
    }
    match info & 0b1111 {
        DELETED => {
            let _len: u32 = reader.read_var()?;
        }
        JSON => {
            // One string more than the length says, as yrs reads it.
            let len: u32 = reader.read_var()?;
            for _ in 0..=len {
                reader.read_string()?;
            }
        }
        BINARY => {
            reader.read_buf()?;
        }
        // JSON text, parsed by serde_json, which has its own depth limit.
        STRING | EMBED => {
            reader.read_string()?;
        }
        FORMAT => {
            reader.read_string()?;
            reader.read_string()?;
        }
        TYPE => {
            // An element carries its tag name.
            let type_ref = reader.read_u8()?;
            if type_ref == TYPE_XML_ELEMENT {
                reader.read_string()?;
            }
        }
        ANY => {
            let len: u32 = reader.read_var()?;
            for _ in 0..len {
                skip_any(reader)?;
            }
        }
        DOC => {
            reader.read_string()?;
            skip_any(reader)?;
        }
        // Unknown kinds: yrs refuses them itself.
        _ => {}
    }
    Ok(())
}

/// One level of `Any` nesting being skipped.
enum Level {
    /// Values left in an array.
    Array(u64),
    /// Entries (key, value) left in a map.
    Map(u64),
}

/// Reads past one `Any` value, keeping the nesting on the heap.
fn skip_any<R: Read>(reader: &mut R) -> Result<(), UpdateCheckError> {
    let mut levels = vec![Level::Array(1)];
    while let Some(level) = levels.last_mut() {
        match level {
            Level::Array(0) | Level::Map(0) => {
                levels.pop();
                continue;
            }
            Level::Array(left) => *left -= 1,
            Level::Map(left) => {
                *left -= 1;
                reader.read_string()?;
            }
        }
        match reader.read_u8()? {
            125 => {
                let _: i64 = reader.read_var()?;
            }
            124 => {
                reader.read_exact(4)?;
            }
            123 | 122 => {
                reader.read_exact(8)?;
            }
            119 => {
                reader.read_string()?;
            }
            118 => {
                let len: u64 = reader.read_var()?;
                levels.push(Level::Map(len));
            }
            117 => {
                let len: u64 = reader.read_var()?;
                levels.push(Level::Array(len));
            }
            116 => {
                reader.read_buf()?;
            }
            // Undefined, null, booleans; unknown tags yrs refuses itself.
            _ => {}
        }
        // The outer level is the item's content, not a nesting.
        if levels.len() > MAX_ANY_DEPTH + 1 {
            return Err(UpdateCheckError::TooDeep);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Array, Doc, Map, ReadTxn, StateVector, Text, Transact, WriteTxn};

    /// An update holding an array whose only item is `[null]`, with that
    /// array nested `depth` times instead.
    fn nested(depth: usize) -> Vec<u8> {
        let doc = Doc::new();
        let array = doc.get_or_insert_array("a");
        array.push_back(&mut doc.transact_mut(), Any::Array(vec![Any::Null].into()));
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let at = update
            .windows(3)
            .position(|w| w == [117, 1, 126])
            .expect("the array in the update");
        let mut out = update[..at].to_vec();
        for _ in 0..depth {
            out.extend_from_slice(&[117, 1]);
        }
        out.push(126);
        out.extend_from_slice(&update[at + 3..]);
        out
    }

    #[test]
    fn a_deeply_nested_update_is_refused_before_yrs_sees_it() {
        // 100k levels in 200 KB: enough to overflow any thread's stack in
        // yrs's recursive decoder (seen: "has overflowed its stack").
        let evil = nested(100_000);
        assert!(matches!(
            check_update(&evil),
            Err(UpdateCheckError::TooDeep)
        ));
        // At the limit it passes, and yrs decodes it.
        let fine = nested(MAX_ANY_DEPTH);
        check_update(&fine).unwrap();
        yrs::Update::decode_v1(&fine).unwrap();
        assert!(matches!(
            check_update(&nested(MAX_ANY_DEPTH + 1)),
            Err(UpdateCheckError::TooDeep)
        ));
    }

    #[test]
    fn a_room_refuses_the_deep_update_as_a_bad_frame_and_stays_up() {
        use yrs::sync::{Message, SyncMessage};
        use yrs::updates::encoder::Encode;
        let mut room = crate::protocol::SyncRoom::new(Doc::new());
        let frame = Message::Sync(SyncMessage::Update(nested(100_000))).encode_v1();
        for access in [
            crate::protocol::Access::ReadWrite,
            crate::protocol::Access::ReadOnly,
        ] {
            let refused = room.handle_frame(&frame, access);
            assert!(matches!(
                refused,
                Err(crate::protocol::ProtocolError::UnsafeUpdate(_))
            ));
        }
        assert!(room.encode_state().len() <= 2, "the document is unchanged");
    }

    #[test]
    fn every_kind_of_content_passes() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let text = txn.get_or_insert_text("text");
            text.insert(&mut txn, 0, "hello");
            text.format(&mut txn, 0, 2, [("bold".into(), Any::Bool(true))].into());
            text.insert_embed(&mut txn, 5, Any::from("image"));
            text.remove_range(&mut txn, 1, 1);
            let map = txn.get_or_insert_map("map");
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "i", 7);
            map.insert(&mut txn, "s", "str");
            map.insert(&mut txn, "b", Any::Buffer(vec![1, 2, 3].into()));
            map.insert(
                &mut txn,
                "deep",
                Any::from(std::collections::HashMap::from([(
                    "k".to_owned(),
                    Any::Array(vec![Any::Null, Any::Bool(false)].into()),
                )])),
            );
            map.insert(&mut txn, "nested", yrs::MapPrelim::default());
            let xml = txn.get_or_insert_xml_fragment("xml");
            yrs::XmlFragment::push_back(&xml, &mut txn, yrs::XmlElementPrelim::empty("p"));
            let array = txn.get_or_insert_array("array");
            array.push_back(&mut txn, yrs::Doc::new());
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        check_update(&update).unwrap();
        yrs::Update::decode_v1(&update).unwrap();
    }

    #[test]
    fn garbage_is_malformed_or_left_to_yrs() {
        assert!(check_update(&[]).is_err());
        assert!(check_update(&[1, 1]).is_err());
    }
}
