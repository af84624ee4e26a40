//! Restoring a version: one update that makes a room's content equal to
//! a stored version's, to log and broadcast like any edit, so live
//! clients converge to the version without reloading.
//!
//! Yjs cannot bring deleted items back, so the update does what a person
//! would: it clears every top-level type of the room (types the version
//! lacks stay empty) and inserts the version's content into them as new
//! items, formatting, attributes and nested types included. It is built
//! off the room (on the blocking pool) from a copy of the room's state, by
//! client ids of its own, and applied like any server-side update
//! ([`crate::protocol::SyncRoom::apply_server_update`]: the room's limits,
//! log before echo).
//!
//! Cost: linear in the room and the version. yrs inserts by index,
//! walking from a list's start, so every item is inserted a step from the
//! start ([`Place`]), in an empty list for the top-level sequences; and
//! the items chain so that the room and every client integrate each one
//! at once.
//!
//! Bounded: the version and the room are both at most the room's
//! `max_doc_bytes`, the walk recurses on our side only (never through
//! yrs's own recursive conversions) and refuses content nested deeper
//! than [`MAX_DEPTH`] levels before anything is applied. Texts are read
//! through yrs's diff, which copies every open attribute into every run:
//! the version's formatting is weighed first ([`crate::render::budget`])
//! and refused past the node's `max_render_bytes`.

use std::collections::BTreeMap;

use yrs::branch::{Branch, BranchPtr};
use yrs::types::text::{DeltaPrelim, YChange};
use yrs::types::xml::{XmlDeltaPrelim, XmlElementPrelim, XmlFragmentPrelim, XmlTextPrelim};
use yrs::types::{Attrs, RootRef};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, In, Map, MapPrelim, MapRef, Out, ReadTxn, Text,
    TextPrelim, TextRef, Transact, TransactionMut, Update, XmlFragmentRef,
};

use crate::render::{branch_of, infer, Inferred};

/// Deepest nesting of shared types a restore copies; a deeper version is
/// refused (the room's updates are refused past `max_type_depth`, 128 by
/// default, so a version of the room never gets there).
pub const MAX_DEPTH: usize = 256;

/// Why a version could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The version's bytes are not a Yjs update v1.
    #[error("the version is not a Yjs update: {0}")]
    BadVersion(String),
    /// The version nests shared types deeper than [`MAX_DEPTH`].
    #[error("the version nests shared types deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Copying the version's formatted text would take more than the
    /// node's `max_render_bytes` (see [`crate::render::budget`]).
    #[error("{0}")]
    TooCostly(crate::render::budget::RenderError),
    /// The version or the room holds a sub-document (stored before they
    /// were refused from outside): yrs 0.28 never frees a document that
    /// holds one, so the scratch copies would leak.
    #[error("the version or the room holds a sub-document, which a restore cannot copy")]
    SubDocument,
}

/// The update (Yjs v1) that turns the content of a room whose whole state
/// is `current` into `version`'s (both Yjs updates v1 of a whole document).
/// The version's texts are copied run by run, their formatting within
/// `max_render_bytes`.
pub fn restore_update(
    current: &[u8],
    version: &[u8],
    max_render_bytes: u64,
) -> Result<Vec<u8>, RestoreError> {
    let bad = |e: &dyn std::fmt::Display| RestoreError::BadVersion(e.to_string());
    // Read as updates from outside are (nesting of values, sub-documents)
    // before yrs builds the scratch documents from them.
    for state in [version, current] {
        match crate::update_check::check_update(state) {
            Ok(()) => {}
            Err(crate::update_check::UpdateCheckError::SubDocument) => {
                return Err(RestoreError::SubDocument)
            }
            Err(error) => return Err(bad(&error)),
        }
    }
    crate::render::budget::check(version, max_render_bytes).map_err(|e| match e {
        crate::render::budget::RenderError::Unreadable(_) => bad(&e),
        e => RestoreError::TooCostly(e),
    })?;
    let target = Doc::new();
    let update = Update::decode_v1(version).map_err(|e| bad(&e))?;
    target
        .transact_mut()
        .apply_update(update)
        .map_err(|e| bad(&e))?;
    // The room's state, edited by a client of its own.
    let scratch = Doc::new();
    let update = Update::decode_v1(current).map_err(|e| bad(&e))?;
    scratch
        .transact_mut()
        .apply_update(update)
        .map_err(|e| bad(&e))?;
    // A transaction of its own: its update holds only the restore's
    // changes, not the room's state again.
    let mut txn = scratch.transact_mut();
    // The top-level sequences' new content is written in an empty document
    // of its own and merged in: written in the room's copy, every insert
    // would walk past the deleted content of every earlier restore (yrs
    // skips deleted items to find an index).
    let fresh = Doc::new();
    let mut fresh_txn = fresh.transact_mut();

    let source = target.transact();
    let wanted: BTreeMap<String, (Kind, BranchPtr)> = source
        .root_refs()
        .filter_map(|(name, value)| {
            let branch = branch_of(&value)?;
            Some((name.to_owned(), (Kind::of(branch, &source), branch)))
        })
        .collect();
    for (name, (kind, _)) in &wanted {
        if txn.root_refs().all(|(existing, _)| existing != name) {
            kind.create_root(name.as_str(), &mut txn);
        }
    }
    let roots: Vec<(String, BranchPtr)> = txn
        .root_refs()
        .filter_map(|(name, value)| Some((name.to_owned(), branch_of(&value)?)))
        .collect();
    for (name, branch) in roots {
        let present = Kind::of(branch, &txn);
        clear(branch, present, &mut txn);
        let Some(&(kind, from)) = wanted.get(&name) else {
            continue;
        };
        // Entries after the room's own (a key's new value must come after
        // its old one); the sequence in the empty document, in order.
        copy_entries(from, &source, branch, &mut txn, 1)?;
        if let Some(to) = kind.create_root(name.as_str(), &mut fresh_txn) {
            copy_sequence(
                from,
                kind,
                &source,
                to,
                &mut fresh_txn,
                1,
                Place::AfterFirst,
            )?;
        }
    }
    let cleared = txn.encode_update_v1();
    let inserted = fresh_txn.encode_update_v1();
    yrs::merge_updates_v1([cleared.as_slice(), inserted.as_slice()]).map_err(|e| bad(&e))
}

/// How a branch's content is laid out, for clearing and copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Keyed entries only (a map).
    Map,
    /// Characters and embeds with formatting (text), maybe attributes.
    Text,
    /// A list of values or nodes (array, XML fragment or element),
    /// maybe attributes.
    List {
        /// Every item is an XML node: a fragment's or element's children.
        xml: bool,
    },
    /// Nothing.
    Empty,
}

impl Kind {
    /// `branch`'s layout, as [`crate::render`] infers untyped ones.
    fn of<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Self {
        match infer(branch, txn) {
            Inferred::Map => Self::Map,
            Inferred::Text | Inferred::XmlText => Self::Text,
            Inferred::Array | Inferred::XmlElement => Self::List {
                xml: ArrayRef::from(branch)
                    .iter(txn)
                    .all(|v| matches!(v, Out::YXmlElement(_) | Out::YXmlText(_))),
            },
            Inferred::Empty => Self::Empty,
        }
    }

    /// A top-level type named `name` that holds this layout (made if
    /// missing), `None` for layouts without a sequence.
    fn create_root(self, name: &str, txn: &mut TransactionMut) -> Option<BranchPtr> {
        let branch = |b: &Branch| BranchPtr::from(b);
        match self {
            Self::Map => {
                MapRef::root(name).get_or_create(txn);
                None
            }
            Self::Text => Some(branch(TextRef::root(name).get_or_create(txn).as_ref())),
            Self::List { xml: true } => Some(branch(
                XmlFragmentRef::root(name).get_or_create(txn).as_ref(),
            )),
            Self::List { xml: false } => {
                Some(branch(ArrayRef::root(name).get_or_create(txn).as_ref()))
            }
            Self::Empty => {
                ArrayRef::root(name).get_or_create(txn);
                None
            }
        }
    }
}

/// Deletes everything `branch` holds: its entries (attributes) and its
/// sequence, read as `kind`.
fn clear(branch: BranchPtr, kind: Kind, txn: &mut TransactionMut) {
    MapRef::from(branch).clear(txn);
    match kind {
        Kind::Text => {
            let text = TextRef::from(branch);
            let len = text.len(txn);
            text.remove_range(txn, 0, len);
        }
        Kind::List { .. } => {
            let list = ArrayRef::from(branch);
            let len = list.len(txn);
            list.remove_range(txn, 0, len);
        }
        Kind::Map | Kind::Empty => {}
    }
}

/// Where a sequence's copied items go. yrs inserts by index, walking from
/// the start of the list, so both orders insert each item next to the
/// start: every insert takes a step or two, where appending would walk
/// every item inserted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The first item at the start, then the others last first, each
    /// right after the first: every item's left neighbour is the first
    /// one, its right one the item after it, so a room (and each client)
    /// integrates each at once even where the list holds the deleted items
    /// of earlier restores (a top-level sequence).
    AfterFirst,
    /// Last first, each at the start (a new nested type: empty, so an item
    /// with no left neighbour is placed at once).
    Reversed,
}

impl Place {
    /// `items` in the order they are inserted.
    fn order<T>(self, mut items: Vec<T>) -> Vec<T> {
        match self {
            Self::AfterFirst if items.len() > 1 => items[1..].reverse(),
            Self::AfterFirst => {}
            Self::Reversed => items.reverse(),
        }
        items
    }
}

/// Copies `from`'s entries (a map's keys, an XML node's attributes) into
/// `to`, `depth` levels down.
fn copy_entries<T: ReadTxn>(
    from: BranchPtr,
    source: &T,
    to: BranchPtr,
    txn: &mut TransactionMut,
    depth: usize,
) -> Result<(), RestoreError> {
    if depth > MAX_DEPTH {
        return Err(RestoreError::TooDeep);
    }
    let entries: Vec<(String, Out)> = MapRef::from(from)
        .iter(source)
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    let map = MapRef::from(to);
    for (key, value) in entries {
        match value {
            Out::Any(any) => {
                map.insert(txn, key, any);
            }
            nested => {
                if let Some(empty) = empty_like(&nested) {
                    let made = map.insert(txn, key, empty);
                    copy_nested(&nested, source, &made, txn, depth)?;
                }
            }
        }
    }
    Ok(())
}

/// Copies `from`'s sequence (read as `kind` in `source`: characters with
/// formatting, or a list) into `to`, empty, placed as `place` says,
/// `depth` levels down.
fn copy_sequence<T: ReadTxn>(
    from: BranchPtr,
    kind: Kind,
    source: &T,
    to: BranchPtr,
    txn: &mut TransactionMut,
    depth: usize,
    place: Place,
) -> Result<(), RestoreError> {
    if depth > MAX_DEPTH {
        return Err(RestoreError::TooDeep);
    }
    match kind {
        Kind::Text => {
            let text = TextRef::from(to);
            let chunks = TextRef::from(from).diff(source, YChange::identity);
            let mut at = 0;
            for (i, chunk) in place.order(chunks).into_iter().enumerate() {
                let attrs = chunk.attributes.map(|a| *a).unwrap_or_else(Attrs::new);
                match chunk.insert {
                    Out::Any(Any::String(s)) => text.insert_with_attributes(txn, at, &s, attrs),
                    Out::Any(any) => {
                        text.insert_embed_with_attributes(txn, at, any, attrs);
                    }
                    nested => embed_nested(&text, at, &nested, attrs, source, txn, depth)?,
                }
                if i == 0 && place == Place::AfterFirst {
                    at = text.len(txn);
                }
            }
        }
        Kind::List { .. } => {
            let list = ArrayRef::from(to);
            let values: Vec<Out> = ArrayRef::from(from).iter(source).collect();
            let mut at = 0;
            for (i, value) in place.order(values).into_iter().enumerate() {
                match value {
                    Out::Any(any) => {
                        list.insert(txn, at, any);
                    }
                    nested => {
                        if let Some(empty) = empty_like(&nested) {
                            let made = list.insert(txn, at, empty);
                            copy_nested(&nested, source, &made, txn, depth)?;
                        }
                    }
                }
                if i == 0 && place == Place::AfterFirst {
                    at = list.len(txn);
                }
            }
        }
        Kind::Map | Kind::Empty => {}
    }
    Ok(())
}

/// Fills `made`, just inserted empty in place of `nested`, with `nested`'s
/// content.
fn copy_nested<T: ReadTxn>(
    nested: &Out,
    source: &T,
    made: &Out,
    txn: &mut TransactionMut,
    depth: usize,
) -> Result<(), RestoreError> {
    let (Some(from), Some(to)) = (branch_of(nested), branch_of(made)) else {
        return Ok(());
    };
    let kind = match nested {
        Out::YMap(_) => Kind::Map,
        Out::YText(_) | Out::YXmlText(_) => Kind::Text,
        _ => Kind::List { xml: false },
    };
    copy_entries(from, source, to, txn, depth + 1)?;
    copy_sequence(from, kind, source, to, txn, depth + 1, Place::Reversed)
}

/// An empty shared type of `nested`'s kind (`None`: documents, links).
fn empty_like(nested: &Out) -> Option<In> {
    Some(match nested {
        Out::YText(_) => In::Text(DeltaPrelim::default()),
        Out::YMap(_) => In::Map(MapPrelim::default()),
        Out::YArray(_) => In::Array(ArrayPrelim::default()),
        Out::YXmlElement(element) => In::XmlElement(XmlElementPrelim::empty(element.tag().clone())),
        Out::YXmlText(_) => In::XmlText(XmlDeltaPrelim::default()),
        Out::YXmlFragment(_) => In::XmlFragment(XmlFragmentPrelim::default()),
        _ => return None,
    })
}

/// Embeds an empty shared type of `nested`'s kind in `text` at `at`, then
/// fills it.
fn embed_nested<T: ReadTxn>(
    text: &TextRef,
    at: u32,
    nested: &Out,
    attrs: Attrs,
    source: &T,
    txn: &mut TransactionMut,
    depth: usize,
) -> Result<(), RestoreError> {
    let made = match nested {
        Out::YText(_) => {
            Out::YText(text.insert_embed_with_attributes(txn, at, TextPrelim::new(""), attrs))
        }
        Out::YMap(_) => {
            Out::YMap(text.insert_embed_with_attributes(txn, at, MapPrelim::default(), attrs))
        }
        Out::YArray(_) => {
            Out::YArray(text.insert_embed_with_attributes(txn, at, ArrayPrelim::default(), attrs))
        }
        Out::YXmlElement(element) => Out::YXmlElement(text.insert_embed_with_attributes(
            txn,
            at,
            XmlElementPrelim::empty(element.tag().clone()),
            attrs,
        )),
        Out::YXmlText(_) => {
            Out::YXmlText(text.insert_embed_with_attributes(txn, at, XmlTextPrelim::new(""), attrs))
        }
        Out::YXmlFragment(_) => Out::YXmlFragment(text.insert_embed_with_attributes(
            txn,
            at,
            XmlFragmentPrelim::default(),
            attrs,
        )),
        _ => return Ok(()),
    };
    copy_nested(nested, source, &made, txn, depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::doc_to_json;
    use crate::render::prosemirror::doc_to_prosemirror;
    use std::sync::Arc;
    use yrs::types::xml::{Xml, XmlFragment};
    use yrs::StateVector;
    use yrs::{GetString, WriteTxn};

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// A copy of `doc` as a server holds it: untyped roots.
    fn server_copy(doc: &Doc) -> Doc {
        let copy = Doc::new();
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state(doc)).unwrap())
            .unwrap();
        copy
    }

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    /// A document with every kind of content.
    fn rich(doc: &Doc, word: &str) {
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let list = doc.get_or_insert_array("list");
        let xml = doc.get_or_insert_xml_fragment("default");
        let mut txn = doc.transact_mut();
        let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
        text.insert(&mut txn, 0, word);
        let len = text.len(&txn);
        text.insert_with_attributes(&mut txn, len, "!", bold.clone());
        map.insert(&mut txn, "word", word);
        map.insert(&mut txn, "n", 3.0);
        let inner = map.insert(&mut txn, "inner", MapPrelim::default());
        inner.insert(&mut txn, "deep", word);
        list.push_back(&mut txn, 1.0);
        let nested = list.push_back(&mut txn, ArrayPrelim::default());
        nested.push_back(&mut txn, word);
        let heading = xml.push_back(&mut txn, XmlElementPrelim::empty("heading"));
        heading.insert_attribute(&mut txn, "level", Any::from(2.0));
        let t = heading.push_back(&mut txn, XmlTextPrelim::new(""));
        t.insert(&mut txn, 0, word);
        t.format(&mut txn, 0, 1, bold);
    }

    #[test]
    fn a_restored_room_reads_exactly_as_the_version() {
        let client = Doc::new();
        rich(&client, "first");
        let version = state(&client);
        let v1_json = doc_to_json(&server_copy(&client));
        let v1_pm = doc_to_prosemirror(&server_copy(&client));
        // Later edits: more text, a changed key, a new root, a new node.
        {
            let text = client.get_or_insert_text("text");
            let map = client.get_or_insert_map("map");
            let extra = client.get_or_insert_map("extra");
            let xml = client.get_or_insert_xml_fragment("default");
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "later ");
            map.insert(&mut txn, "word", "changed");
            map.remove(&mut txn, "n");
            extra.insert(&mut txn, "k", "v");
            xml.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
        }
        let room = server_copy(&client);
        assert_ne!(doc_to_json(&room), v1_json);

        let update = restore_update(&state(&room), &version, u64::MAX).unwrap();
        apply(&room, &update);
        let mut expected = v1_json.clone();
        expected["extra"] = serde_json::json!(null);
        assert_eq!(doc_to_json(&room), expected, "the room");
        // A top-level type cannot go away in Yjs: the one the version
        // lacks stays, empty (an empty document to an editor).
        let mut expected_pm = v1_pm.clone();
        expected_pm["extra"] = serde_json::json!({"type": "doc", "content": []});
        assert_eq!(
            doc_to_prosemirror(&room),
            expected_pm,
            "the room's editor JSON"
        );

        // A live client applying only the restore update converges too,
        // formatting included.
        apply(&client, &update);
        let text = client.get_or_insert_text("text");
        let txn = client.transact();
        assert_eq!(text.get_string(&txn), "first!");
        let diff = text.diff(&txn, YChange::identity);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[1].attributes.is_some(), "{diff:?}");
        drop(txn);
        assert_eq!(doc_to_json(&server_copy(&client)), expected);
    }

    #[test]
    fn restoring_twice_and_to_a_newer_version_converges() {
        let client = Doc::new();
        rich(&client, "one");
        let v1 = state(&client);
        {
            let text = client.get_or_insert_text("text");
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "two ");
        }
        let v2 = state(&client);
        let v2_json = doc_to_json(&server_copy(&client));
        let room = server_copy(&client);
        apply(
            &room,
            &restore_update(&state(&room), &v1, u64::MAX).unwrap(),
        );
        apply(
            &room,
            &restore_update(&state(&room), &v1, u64::MAX).unwrap(),
        );
        let once = server_copy(&room);
        assert_eq!(
            doc_to_json(&once)["text"],
            serde_json::json!("one!"),
            "twice is once"
        );
        apply(
            &room,
            &restore_update(&state(&room), &v2, u64::MAX).unwrap(),
        );
        assert_eq!(doc_to_json(&room), v2_json);
    }

    #[test]
    fn an_empty_version_empties_the_room_and_garbage_is_refused() {
        let client = Doc::new();
        rich(&client, "x");
        let room = server_copy(&client);
        let update = restore_update(&state(&room), &state(&Doc::new()), u64::MAX).unwrap();
        apply(&room, &update);
        let json = doc_to_json(&room);
        for root in ["text", "map", "list", "default"] {
            assert!(
                json[root].is_null() || json[root] == serde_json::json!({}),
                "{root}: {json}"
            );
        }
        assert!(matches!(
            restore_update(&state(&room), b"\xff\xff\xff", u64::MAX),
            Err(RestoreError::BadVersion(_))
        ));
    }

    #[test]
    fn a_version_holding_a_sub_document_is_refused_before_yrs_reads_it() {
        let holder = Doc::new();
        {
            let mut txn = holder.transact_mut();
            let map = txn.get_or_insert_map("m");
            map.insert(&mut txn, "sub", Doc::new());
        }
        let version = state(&holder);
        let room = Doc::new();
        rich(&room, "kept");
        assert!(matches!(
            restore_update(&state(&room), &version, u64::MAX),
            Err(RestoreError::SubDocument)
        ));
        assert!(matches!(
            restore_update(&version, &state(&room), u64::MAX),
            Err(RestoreError::SubDocument)
        ));
    }

    #[test]
    fn a_version_whose_formatting_copies_past_the_limit_is_refused() {
        let version = state(&crate::render::budget::tests::hostile(200, 200));
        let room = Doc::new();
        rich(&room, "kept");
        assert!(matches!(
            restore_update(&state(&room), &version, 1_000_000),
            Err(RestoreError::TooCostly(_))
        ));
        // Within the limit it restores.
        apply(
            &room,
            &restore_update(&state(&room), &version, 10_000_000).unwrap(),
        );
        let expected = doc_to_json(&server_copy(&crate::render::budget::tests::hostile(
            200, 200,
        )));
        assert!(
            doc_to_json(&room)["prosemirror"] == expected["prosemirror"],
            "the restored text differs from the version's"
        );
    }

    #[test]
    fn a_version_nested_too_deep_is_refused_on_a_small_stack() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let mut map = txn.get_or_insert_map("m");
            for _ in 0..MAX_DEPTH + 10 {
                map = map.insert(&mut txn, "k", MapPrelim::default());
            }
        }
        let version = state(&doc);
        let room = Doc::new();
        let result = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || restore_update(&state(&room), &version, u64::MAX).map(|_| ()))
            .unwrap()
            .join()
            .unwrap();
        assert!(matches!(result, Err(RestoreError::TooDeep)), "{result:?}");
    }

    #[test]
    fn xml_children_keep_their_tags_attributes_and_order() {
        let client = Doc::new();
        let xml = client.get_or_insert_xml_fragment("default");
        {
            let mut txn = client.transact_mut();
            for tag in ["a", "b", "c"] {
                let e = xml.push_back(&mut txn, XmlElementPrelim::empty(tag));
                e.insert_attribute(&mut txn, "id", tag);
            }
        }
        let version = state(&client);
        {
            let mut txn = client.transact_mut();
            xml.remove_range(&mut txn, 0, 2);
        }
        let room = server_copy(&client);
        apply(
            &room,
            &restore_update(&state(&room), &version, u64::MAX).unwrap(),
        );
        apply(
            &client,
            &restore_update(&state(&server_copy(&client)), &version, u64::MAX).unwrap(),
        );
        let txn = client.transact();
        assert_eq!(
            xml.get_string(&txn),
            r#"<a id="a"></a><b id="b"></b><c id="c"></c>"#
        );
    }

    #[test]
    fn the_update_holds_only_the_changes_and_passes_the_rooms_checks() {
        let client = Doc::new();
        rich(&client, "kept");
        let version = state(&client);
        // Later edits the room collects as garbage: deletions in every type.
        {
            let text = client.get_or_insert_text("text");
            let list = client.get_or_insert_array("list");
            let xml = client.get_or_insert_xml_fragment("default");
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "transient words ");
            text.remove_range(&mut txn, 0, 10);
            list.remove_range(&mut txn, 0, 1);
            xml.remove_range(&mut txn, 0, 1);
        }
        let mut room = crate::protocol::SyncRoom::new(server_copy(&client));
        let update = restore_update(&state(room.doc()), &version, u64::MAX).unwrap();
        assert!(
            !update.windows(5).any(|w| w == b"words"),
            "the room's own content travels again"
        );
        let outcome = room
            .apply_server_update(update, crate::protocol::Access::ReadWrite)
            .unwrap();
        assert!(!outcome.missing_dependency, "refused as incomplete");
        assert!(outcome.refused.is_none() && !outcome.log.is_empty());
        assert_eq!(
            doc_to_json(room.doc()),
            doc_to_json(&server_copy(&client_at(&version)))
        );
    }

    fn client_at(version: &[u8]) -> Doc {
        let doc = Doc::new();
        apply(&doc, version);
        doc
    }

    #[test]
    fn formatting_runs_embeds_and_long_lists_come_back_in_order() {
        let client = Doc::new();
        let text = client.get_or_insert_text("text");
        let list = client.get_or_insert_array("list");
        {
            let mut txn = client.transact_mut();
            let attrs = |pairs: &[(&str, Any)]| -> Attrs {
                pairs
                    .iter()
                    .map(|(k, v)| (Arc::<str>::from(*k), v.clone()))
                    .collect()
            };
            let bold = ("bold", Any::Bool(true));
            let link = ("link", Any::from("https://x"));
            for (chunk, a) in [
                ("one ", attrs(std::slice::from_ref(&bold))),
                ("two ", attrs(&[])),
                ("three ", attrs(std::slice::from_ref(&link))),
                ("four ", attrs(&[bold, link])),
                ("five", attrs(&[])),
            ] {
                let len = text.len(&txn);
                text.insert_with_attributes(&mut txn, len, chunk, a);
            }
            let len = text.len(&txn);
            // (An embedded string would come back as text: yrs's diff
            // gives both as strings.)
            let image = Any::from(std::collections::HashMap::from([(
                "image".to_owned(),
                Any::from("x.png"),
            )]));
            text.insert_embed(&mut txn, len, image);
            for i in 0..500 {
                list.push_back(&mut txn, i as f64);
            }
        }
        let version = state(&client);
        let expected = text.diff(&client.transact(), YChange::identity);
        {
            let mut txn = client.transact_mut();
            text.remove_range(&mut txn, 0, 8);
            list.remove_range(&mut txn, 100, 300);
        }
        for _ in 0..3 {
            let update = restore_update(&state(&server_copy(&client)), &version, u64::MAX).unwrap();
            apply(&client, &update);
            let txn = client.transact();
            assert_eq!(text.diff(&txn, YChange::identity), expected);
            let values: Vec<Out> = list.iter(&txn).collect();
            let want: Vec<Out> = (0..500).map(|i| Out::Any(Any::from(i as f64))).collect();
            assert_eq!(values, want);
        }
    }
}
