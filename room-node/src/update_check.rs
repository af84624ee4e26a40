//! A check of a Yjs update v1 before yrs decodes it: yrs decodes the
//! `Any` values of an update (item content of type Any, sub-document
//! options) recursively with no depth limit, so an update of a few hundred
//! KB nested deep enough overflows the stack and aborts the whole process.
//! This walks the update the way yrs reads it, without recursion, and
//! refuses one whose `Any` values nest deeper than [`MAX_ANY_DEPTH`]
//! (Yjs documents nest a handful of levels; JSON's own parsers stop at 128).
//!
//! It also refuses sub-documents ([`UpdateCheckError::SubDocument`]): yrs
//! 0.28 stores a strong reference to the parent document inside the item
//! that holds a sub-document, a reference cycle that keeps the whole
//! document in memory forever once the room drops it. Any writer could
//! make every room it reaches leak on unload. y-websocket and y-partykit
//! do not sync sub-documents anyway (each needs its own provider, and so
//! its own room).
//!
//! And it refuses legacy JSON content ([`UpdateCheckError::JsonContent`],
//! item content kind 2, which Yjs has not written since version 13): yrs
//! 0.28 reads one string more than the count says and writes the count it
//! holds, so a document holding one encodes to bytes that decode as
//! something else — every snapshot of the room and every joiner's
//! SyncStep2 would carry garbage after that item (found by fuzzing).
//!
//! The same walk lists the update's blocks ([`BlockRef`]: id range, where
//! its parent comes from, whether it creates a shared type) so that
//! [`crate::depth`] can bound how deep shared types nest once applied, and
//! where each lies in the bytes ([`BlockBytes`]) so that
//! [`crate::render::budget`] can weigh and rewrite formatting.

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
    /// An item kind yrs does not know (it would refuse the update too).
    #[error("malformed update: unknown content kind {0}")]
    UnknownContent(u8),
    /// A client's blocks listed in two places (Yjs lists each client
    /// once; yrs merges repeats in ways the checks cannot follow, and
    /// fuzzing found one that overflowed its clock arithmetic).
    #[error("malformed update: client {0} listed twice")]
    RepeatedClient(u64),
    /// The update embeds a sub-document (see the module doc).
    #[error("sub-documents are not supported (insert the sub-document's guid, and open it as its own room)")]
    SubDocument,
    /// The update holds legacy JSON content (see the module doc).
    #[error("legacy JSON content (written by Yjs before version 13) is not supported")]
    JsonContent,
}

/// An item's id: (client, clock).
pub type Id = (u64, u32);

/// Where a block's parent type is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentRef {
    /// A top-level type (named by a string).
    Root,
    /// The shared type created by the item with this id.
    Type(Id),
    /// The parent of this neighbour (left origin, else right origin).
    SameAs(Id),
    /// No parent: a garbage-collected range or a skip.
    Detached,
}

/// One block of an update: what the depth check needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// The block's client.
    pub client: u64,
    /// Its first clock.
    pub clock: u32,
    /// How many clocks it spans.
    pub len: u32,
    /// Where its parent comes from.
    pub parent: ParentRef,
    /// It creates a shared type (its children nest one level deeper).
    pub is_type: bool,
    /// Garbage-collected or deleted content: yrs drops children that name
    /// it as their parent instead of refusing them.
    pub is_gone: bool,
    /// A skip: clocks the update does not carry.
    pub is_skip: bool,
    /// It holds a sub-document.
    pub is_subdoc: bool,
    /// It holds legacy JSON content (see the module doc).
    pub is_json: bool,
}

/// Checks that `update` from outside can be given to yrs: every `Any` it
/// holds nests at most [`MAX_ANY_DEPTH`] levels and it embeds no
/// sub-document. Other malformations are left to yrs. Reads the encoding
/// itself (the field order of yrs's `DecoderV1`), not through yrs, whose
/// id decoding asserts on client ids over 53 bits.
pub fn check_update(update: &[u8]) -> Result<(), UpdateCheckError> {
    scan_outside_update(update, |_| {})
}

/// [`check_update`], handing every block to `visit` in update order.
pub fn scan_outside_update(
    update: &[u8],
    mut visit: impl FnMut(BlockRef),
) -> Result<(), UpdateCheckError> {
    let (mut subdoc, mut json) = (false, false);
    scan_update(update, |block| {
        subdoc |= block.is_subdoc;
        json |= block.is_json;
        visit(block);
    })?;
    if subdoc {
        return Err(UpdateCheckError::SubDocument);
    }
    if json {
        return Err(UpdateCheckError::JsonContent);
    }
    Ok(())
}

/// Reads `update` as [`check_update`] does, handing every block to `visit`
/// in update order; sub-documents are listed (`is_subdoc`), not refused, so
/// a stored document that holds one is still indexed.
pub fn scan_update(update: &[u8], mut visit: impl FnMut(BlockRef)) -> Result<(), UpdateCheckError> {
    // Every client frame comes here: the blocks' bytes are not looked at.
    walk(update, |block, _| {
        if let Some(block) = block {
            visit(block);
        }
    })
}

/// Where one block lies in an update's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockBytes<'a> {
    /// Offset of its info byte.
    pub start: usize,
    /// Offset of its content, past the info byte, origins and parent.
    pub content: usize,
    /// Offset just past it.
    pub end: usize,
    /// What it holds, as far as formatting is concerned.
    pub kind: BlockKind<'a>,
}

/// A block's content, as far as formatting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind<'a> {
    /// A formatting attribute: its key and its value's JSON text.
    Format {
        /// The attribute's name.
        key: &'a str,
        /// The attribute's value, as JSON text (`null` ends it).
        value: &'a str,
    },
    /// An embed (one JSON value in a text).
    Embed,
    /// Text (a string run).
    String,
    /// A shared type.
    Type,
    /// Anything else: other content, deleted or garbage-collected ranges,
    /// skips.
    Other,
}

/// [`scan_update`] with every block's place in the bytes; empty items
/// (which yrs drops) come with no [`BlockRef`].
pub fn scan_update_bytes<'a>(
    update: &'a [u8],
    mut visit: impl FnMut(Option<BlockRef>, BlockBytes<'a>),
) -> Result<(), UpdateCheckError> {
    walk(update, |block, raw| {
        let kind = match raw.kind {
            RawKind::Format { key, value } => BlockKind::Format {
                key: str_at(update, key),
                value: str_at(update, value),
            },
            RawKind::Embed => BlockKind::Embed,
            RawKind::String => BlockKind::String,
            RawKind::Type => BlockKind::Type,
            RawKind::Other => BlockKind::Other,
        };
        let bytes = BlockBytes {
            start: raw.start,
            content: raw.content,
            end: raw.end,
            kind,
        };
        visit(block, bytes);
    })
}

/// A block's place in the bytes, its strings as byte ranges.
struct RawBytes {
    start: usize,
    content: usize,
    end: usize,
    kind: RawKind,
}

/// Reads `update` block by block, handing each to `visit` with its place
/// in the bytes; empty items come with no [`BlockRef`].
fn walk(
    update: &[u8],
    mut visit: impl FnMut(Option<BlockRef>, RawBytes),
) -> Result<(), UpdateCheckError> {
    let mut reader = Cursor::new(update);
    let clients: u32 = reader.read_var()?;
    // Grown as sections are read (a claimed count is not trusted).
    let mut seen = Vec::new();
    for _ in 0..clients {
        let blocks: u32 = reader.read_var()?;
        let client: u64 = reader.read_var()?;
        seen.push(client);
        let mut clock: u32 = reader.read_var()?;
        for _ in 0..blocks {
            let start = reader.next;
            let (block, content, kind) = read_block(&mut reader)?;
            let bytes = RawBytes {
                start,
                content,
                end: reader.next,
                kind,
            };
            let Some(mut block) = block else {
                visit(None, bytes);
                continue;
            };
            block.client = client;
            block.clock = clock;
            // Malformed clocks make yrs refuse the update; never overflow.
            clock = clock.saturating_add(block.len);
            visit(Some(block), bytes);
        }
    }
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(UpdateCheckError::RepeatedClient(pair[0]));
    }
    // The delete set that follows holds only numbers.
    Ok(())
}

/// Reads an id (client, clock).
fn read_id(reader: &mut Cursor) -> Result<Id, UpdateCheckError> {
    let client: u64 = reader.read_var()?;
    let clock: u32 = reader.read_var()?;
    Ok((client, clock))
}

/// `info` (an item's first byte) with its content kind made an embed.
pub fn as_embed(info: u8) -> u8 {
    (info & !0b1111) | EMBED
}

/// A string already read (and checked as UTF-8) at `range` of `update`.
fn str_at(update: &[u8], range: (usize, usize)) -> &str {
    std::str::from_utf8(&update[range.0..range.1]).unwrap_or_default()
}

/// [`BlockKind`] with byte ranges in place of strings.
enum RawKind {
    Format {
        key: (usize, usize),
        value: (usize, usize),
    },
    Embed,
    String,
    Type,
    Other,
}

/// Reads a string, giving its byte range.
fn string_range(reader: &mut Cursor) -> Result<(usize, usize), UpdateCheckError> {
    let len = reader.read_string()?.len();
    Ok((reader.next - len, reader.next))
}

/// Reads one block: `None` for an empty item, which yrs drops without
/// advancing the clock (client and clock are the caller's to fill in),
/// then the offset of its content and what that is.
fn read_block(reader: &mut Cursor) -> Result<(Option<BlockRef>, usize, RawKind), UpdateCheckError> {
    let info = reader.read_u8()?;
    let mut block = BlockRef {
        client: 0,
        clock: 0,
        len: 0,
        parent: ParentRef::Detached,
        is_type: false,
        is_gone: info == GC,
        is_skip: info == SKIP,
        is_subdoc: false,
        is_json: false,
    };
    if info == SKIP || info == GC {
        let content = reader.next;
        block.len = reader.read_var()?;
        return Ok(((block.len > 0).then_some(block), content, RawKind::Other));
    }
    let origin = (info & HAS_ORIGIN != 0)
        .then(|| read_id(reader))
        .transpose()?;
    let right_origin = (info & HAS_RIGHT_ORIGIN != 0)
        .then(|| read_id(reader))
        .transpose()?;
    block.parent = match origin.or(right_origin) {
        Some(neighbour) => ParentRef::SameAs(neighbour),
        None => {
            let parent_info: u32 = reader.read_var()?;
            let parent = if parent_info == 1 {
                reader.read_string()?;
                ParentRef::Root
            } else {
                ParentRef::Type(read_id(reader)?)
            };
            if info & HAS_PARENT_SUB != 0 {
                reader.read_string()?;
            }
            parent
        }
    };
    let content = reader.next;
    let mut kind = RawKind::Other;
    block.len = match info & 0b1111 {
        DELETED => {
            block.is_gone = true;
            reader.read_var()?
        }
        JSON => {
            block.is_json = true;
            // One string more than the length says, as yrs reads it.
            let len: u32 = reader.read_var()?;
            for _ in 0..=len {
                reader.read_string()?;
            }
            len.saturating_add(1)
        }
        BINARY => {
            reader.read_buf()?;
            1
        }
        // Clocks count UTF-16 code units, as in Yjs.
        STRING => {
            kind = RawKind::String;
            reader.read_string()?.encode_utf16().count() as u32
        }
        // JSON text, parsed by serde_json, which has its own depth limit.
        EMBED => {
            kind = RawKind::Embed;
            reader.read_string()?;
            1
        }
        FORMAT => {
            let key = string_range(reader)?;
            let value = string_range(reader)?;
            kind = RawKind::Format { key, value };
            1
        }
        TYPE => {
            kind = RawKind::Type;
            // An element carries its tag name.
            let type_ref = reader.read_u8()?;
            if type_ref == TYPE_XML_ELEMENT {
                reader.read_string()?;
            }
            block.is_type = true;
            1
        }
        ANY => {
            let len: u32 = reader.read_var()?;
            for _ in 0..len {
                skip_any(reader)?;
            }
            len
        }
        DOC => {
            reader.read_string()?;
            skip_any(reader)?;
            block.is_subdoc = true;
            1
        }
        // The rest of the update cannot be read past an unknown kind.
        kind => return Err(UpdateCheckError::UnknownContent(kind)),
    };
    Ok(((block.len > 0).then_some(block), content, kind))
}

/// Reads past a signed varint exactly as far as yrs's `read_var::<i64>`
/// would, without its shifts: those overflow on a long varint, a panic
/// where overflow checks are on (debug builds), outside any guard here.
fn skip_var_i64<R: Read>(reader: &mut R) -> Result<(), UpdateCheckError> {
    // Six bits in the first byte, seven in each next; yrs gives up on a
    // continuation past 70 bits.
    let mut byte = reader.read_u8()?;
    let mut bits = 6;
    while byte & 0x80 != 0 {
        byte = reader.read_u8()?;
        bits += 7;
        if byte & 0x80 != 0 && bits > 70 {
            return Err(yrs::encoding::read::Error::InvalidVarInt.into());
        }
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
            125 => skip_var_i64(reader)?,
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
            let refused = room.handle_frame(&frame, access, (0, 1));
            assert!(matches!(
                refused,
                Err(crate::protocol::ProtocolError::UnsafeUpdate(_))
            ));
        }
        assert!(room.encode_state().len() <= 2, "the document is unchanged");
    }

    #[test]
    fn an_overlong_integer_is_refused_without_a_panic() {
        // Found by fuzzing (fuzz/ client_frame): yrs's signed varint reader
        // shifts past 64 bits on the tenth continuation byte, which panics
        // where overflow checks are on, and the check read it unguarded.
        let array = nested(1);
        let at = array
            .windows(3)
            .position(|w| w == [117, 1, 126])
            .expect("the array in the update");
        let with_int = |varint: &[u8]| {
            let mut out = array[..at].to_vec();
            out.extend_from_slice(&[117, 1, 125]);
            out.extend_from_slice(varint);
            out.extend_from_slice(&array[at + 3..]);
            out
        };
        let overlong = with_int(&[[0xff; 11].as_slice(), &[0x7f]].concat());
        assert!(matches!(
            check_update(&overlong),
            Err(UpdateCheckError::Malformed(_))
        ));
        let mut room = crate::protocol::SyncRoom::new(Doc::new());
        let frame = {
            use yrs::sync::{Message, SyncMessage};
            use yrs::updates::encoder::Encode;
            Message::Sync(SyncMessage::Update(overlong)).encode_v1()
        };
        assert!(room
            .handle_frame(&frame, crate::protocol::Access::ReadWrite, (0, 1))
            .is_err());
        // An ordinary integer still passes.
        check_update(&with_int(&[0x81, 0x01])).unwrap();
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
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        check_update(&update).unwrap();
        yrs::Update::decode_v1(&update).unwrap();
    }

    /// An update that embeds a sub-document in `array`, from a document
    /// that is then dropped.
    fn with_subdoc() -> Vec<u8> {
        let doc = Doc::new();
        let array = doc.get_or_insert_array("array");
        let mut txn = doc.transact_mut();
        array.push_back(&mut txn, "before");
        array.push_back(&mut txn, Doc::new());
        txn.encode_state_as_update_v1(&StateVector::default())
    }

    /// Whether yrs frees `doc`'s store once the last handle is dropped
    /// (an observer's closure is dropped with the store).
    fn freed_on_drop(doc: Doc) -> bool {
        struct Probe(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Probe {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let freed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = Probe(freed.clone());
        doc.observe_update_v1("probe", move |_, _| {
            let _ = &probe;
        })
        .unwrap();
        drop(doc);
        freed.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn yrs_never_frees_a_document_that_holds_a_sub_document() {
        // The reason sub-documents are refused. When this fails, yrs
        // frees them: the refusal can go.
        let plain = Doc::new();
        plain
            .get_or_insert_text("text")
            .push(&mut plain.transact_mut(), "hi");
        assert!(freed_on_drop(plain));
        let holder = Doc::new();
        let update = yrs::Update::decode_v1(&with_subdoc()).unwrap();
        holder.transact_mut().apply_update(update).unwrap();
        assert!(
            !freed_on_drop(holder),
            "yrs now frees a document holding a sub-document"
        );
    }

    #[test]
    fn a_sub_document_is_refused_from_outside_and_listed_from_storage() {
        let update = with_subdoc();
        assert!(matches!(
            check_update(&update),
            Err(UpdateCheckError::SubDocument)
        ));
        let mut subdocs = 0;
        scan_update(&update, |block| subdocs += usize::from(block.is_subdoc)).unwrap();
        assert_eq!(subdocs, 1);
        // A room refuses the frame and keeps nothing of it.
        let mut room = crate::protocol::SyncRoom::new(Doc::new());
        let frame = yrs::updates::encoder::Encode::encode_v1(&yrs::sync::Message::Sync(
            yrs::sync::SyncMessage::Update(update),
        ));
        assert!(matches!(
            room.handle_frame(&frame, crate::protocol::Access::ReadWrite, (0, 1)),
            Err(crate::protocol::ProtocolError::UnsafeUpdate(
                UpdateCheckError::SubDocument
            ))
        ));
        assert_eq!(
            room.doc()
                .get_or_insert_array("array")
                .len(&room.doc().transact()),
            0
        );
    }

    /// Client 5 puts legacy JSON content into root array `a`: a count of
    /// 1 and the two strings yrs reads for it.
    const WITH_JSON: [u8; 14] = [1, 1, 5, 0, 2, 1, 1, b'a', 1, 1, b'1', 1, b'2', 0];

    #[test]
    fn yrs_does_not_read_back_the_json_content_it_writes() {
        // The reason legacy JSON content is refused. When this fails, yrs
        // reads its own encoding again: the refusal can go.
        let doc = Doc::new();
        let update = yrs::Update::decode_v1(&WITH_JSON).unwrap();
        doc.transact_mut().apply_update(update).unwrap();
        let state = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let copy = Doc::new();
        let same = yrs::Update::decode_v1(&state).is_ok_and(|update| {
            copy.transact_mut().apply_update(update).is_ok()
                && copy.transact().snapshot() == doc.transact().snapshot()
        });
        assert!(!same, "yrs now round-trips JSON content");
    }

    #[test]
    fn legacy_json_content_is_refused_from_outside() {
        assert!(matches!(
            check_update(&WITH_JSON),
            Err(UpdateCheckError::JsonContent)
        ));
        let mut room = crate::protocol::SyncRoom::new(Doc::new());
        let frame = yrs::updates::encoder::Encode::encode_v1(&yrs::sync::Message::Sync(
            yrs::sync::SyncMessage::Update(WITH_JSON.to_vec()),
        ));
        assert!(matches!(
            room.handle_frame(&frame, crate::protocol::Access::ReadWrite, (0, 1)),
            Err(crate::protocol::ProtocolError::UnsafeUpdate(
                UpdateCheckError::JsonContent
            ))
        ));
        assert!(room.doc().transact().state_vector().is_empty());
    }

    #[test]
    fn a_client_listed_twice_is_refused() {
        // Found by fuzzing: client 1 listed three times (GC ranges from
        // clock 1) made yrs overflow a clock subtraction while integrating.
        let twice = [2, 1, 1, 1, 0, 5, 1, 1, 1, 0, 3, 0];
        assert!(matches!(
            check_update(&twice),
            Err(UpdateCheckError::RepeatedClient(1))
        ));
        let once = [1, 1, 1, 1, 0, 5, 0];
        check_update(&once).unwrap();
    }

    #[test]
    fn garbage_is_malformed_or_left_to_yrs() {
        assert!(check_update(&[]).is_err());
        assert!(check_update(&[1, 1]).is_err());
    }
}
