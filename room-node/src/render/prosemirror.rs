//! A document's XML fragments as ProseMirror / Tiptap JSON, for the server
//! API's `?format=prosemirror`: what y-prosemirror's
//! `yXmlFragmentToProsemirrorJSON` (and so Hocuspocus's
//! `TiptapTransformer.fromYdoc`) gives for each fragment, once through
//! `JSON.stringify`:
//!
//! - the fragment is `{"type": "doc", "content": [...]}`, `content` always
//!   there;
//! - an element is `{"type": tag, "attrs"?, "content"?}`: `attrs` (all its
//!   attributes) when it has any, `content` when it has any child;
//! - a text is one text node per run of equal formatting, `{"type":
//!   "text", "text", "marks"?}`, a mark per formatting attribute:
//!   `{"type": name, "attrs": value}`, the name without the `--hash`
//!   y-prosemirror appends to marks that may overlap themselves. Inside an
//!   element a text's nodes join its siblings; directly in the fragment
//!   they stay one array (y-prosemirror maps there without flattening);
//! - an `undefined` value is left out, as `JSON.stringify` leaves it out.
//!
//! One difference: y-prosemirror lists a text node's marks in the order
//! Yjs stored their formatting, which yrs does not expose (its text diff
//! hands formatting over as a hash map); here they come in name order.
//! For text ProseMirror wrote in one go, Yjs's order is the schema's
//! (Tiptap's StarterKit: link, bold, code, italic, strike, underline), so
//! name order differs only where a link shares a text node with another
//! mark. ProseMirror holds a node's marks as a set (`Node.fromJSON` sorts
//! them by schema rank), so only a byte-for-byte comparison sees it.
//!
//! Top-level types arrive untyped (see [`super`]); a root counts as
//! a fragment when it holds no keyed entries and only XML elements and
//! texts. An empty root may have been anything and reads as an empty
//! document: a Tiptap field whose content was all deleted stays a document.
//! XML nodes are nested children of children, as deep as a client likes:
//! elements deeper than [`MAX_DEPTH`] are left out, so the walk's recursion
//! stays within that budget, and values inside attributes and embeds go
//! through [`super`]'s renderer, under the same budget.

use std::sync::Arc;

use serde_json::{Map, Value};
use yrs::branch::{Branch, BranchPtr};
use yrs::types::text::YChange;
use yrs::types::Attrs;
use yrs::{Any, Array, ArrayRef, Doc, Out, ReadTxn, Text, Transact, XmlElementRef, XmlTextRef};

use super::{any_to_json, render, MAX_DEPTH};

/// `{name: document}` for every top-level type of `doc` that is an XML
/// fragment.
pub(crate) fn doc_to_prosemirror(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut object = Map::new();
    for (name, value) in txn.root_refs() {
        let branch = match value {
            Out::YXmlFragment(fragment) => BranchPtr::from(AsRef::<Branch>::as_ref(&fragment)),
            Out::UndefinedRef(branch) if holds_only_xml(branch, &txn) => branch,
            _ => continue,
        };
        object.insert(name.to_owned(), fragment(branch, &txn));
    }
    Value::Object(object)
}

/// Whether an untyped top-level type reads as an XML fragment: no keyed
/// entries (a fragment has no attributes) and a sequence of XML nodes only.
fn holds_only_xml<T: ReadTxn>(branch: BranchPtr, txn: &T) -> bool {
    use yrs::Map as _;
    yrs::MapRef::from(branch).len(txn) == 0
        && ArrayRef::from(branch)
            .iter(txn)
            .all(|child| matches!(child, Out::YXmlElement(_) | Out::YXmlText(_)))
}

/// The fragment as a `doc` node. Its texts stay arrays of text nodes,
/// as y-prosemirror leaves them at this level.
fn fragment<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Value {
    let content = ArrayRef::from(branch)
        .iter(txn)
        .filter_map(|child| match child {
            Out::YXmlElement(element) => element_node(&element, txn, 2),
            Out::YXmlText(text) => Some(Value::Array(text_nodes(&text, txn, 2))),
            _ => None,
        })
        .collect();
    let mut doc = Map::new();
    doc.insert("type".to_owned(), Value::String("doc".to_owned()));
    doc.insert("content".to_owned(), Value::Array(content));
    Value::Object(doc)
}

/// An element `depth` levels down, or nothing past [`MAX_DEPTH`].
fn element_node<T: ReadTxn>(element: &XmlElementRef, txn: &T, depth: usize) -> Option<Value> {
    use yrs::types::xml::Xml as _;
    if depth > MAX_DEPTH {
        return None;
    }
    let mut node = Map::new();
    node.insert("type".to_owned(), Value::String(element.tag().to_string()));
    let mut attrs = Map::new();
    let mut has_attrs = false;
    for (key, value) in element.attributes(txn) {
        has_attrs = true;
        if let Some(value) = stringified(value, txn, depth) {
            attrs.insert(key.to_owned(), value);
        }
    }
    if has_attrs {
        node.insert("attrs".to_owned(), Value::Object(attrs));
    }
    let children: &ArrayRef = element.as_ref();
    if children.len(txn) > 0 {
        let mut content = Vec::new();
        for child in children.iter(txn) {
            match child {
                Out::YXmlElement(element) => content.extend(element_node(&element, txn, depth + 1)),
                Out::YXmlText(text) => content.extend(text_nodes(&text, txn, depth + 1)),
                // y-prosemirror refuses anything else; the server leaves it out.
                _ => {}
            }
        }
        node.insert("content".to_owned(), Value::Array(content));
    }
    Some(Value::Object(node))
}

/// A text's runs of equal formatting as text nodes with their marks.
fn text_nodes<T: ReadTxn>(text: &XmlTextRef, txn: &T, depth: usize) -> Vec<Value> {
    text.diff(txn, YChange::identity)
        .into_iter()
        .map(|run| {
            let mut node = Map::new();
            node.insert("type".to_owned(), Value::String("text".to_owned()));
            if let Some(insert) = stringified(run.insert, txn, depth) {
                node.insert("text".to_owned(), insert);
            }
            if let Some(attributes) = run.attributes.filter(|a| !a.is_empty()) {
                node.insert("marks".to_owned(), marks(&attributes, depth));
            }
            Value::Object(node)
        })
        .collect()
}

/// A run's formatting as marks, in name order (see the module doc).
fn marks(attributes: &Attrs, depth: usize) -> Value {
    let mut keys: Vec<&Arc<str>> = attributes.keys().collect();
    keys.sort();
    let marks = keys.into_iter().map(|key| {
        let mut mark = Map::new();
        mark.insert("type".to_owned(), Value::String(mark_name(key).to_owned()));
        match &attributes[key] {
            Any::Undefined => {}
            value => {
                mark.insert("attrs".to_owned(), any_to_json(value, depth));
            }
        }
        Value::Object(mark)
    });
    Value::Array(marks.collect())
}

/// A value as `JSON.stringify` writes it inside an object: nothing for
/// `undefined`.
fn stringified<T: ReadTxn>(value: Out, txn: &T, depth: usize) -> Option<Value> {
    match value {
        Out::Any(Any::Undefined) => None,
        other => Some(render(other, txn, depth + 1)),
    }
}

/// Length of the suffix y-prosemirror gives a mark that may overlap
/// itself: `--` and 8 characters of base64.
const HASH_SUFFIX: usize = 10;

/// The mark a formatting key stands for, read as y-prosemirror's
/// `yattr2markname` reads it: `/(.*)(--[a-zA-Z0-9+/=]{8})$/` takes the
/// name before the hash suffix, from the last line break on (`.` stops at
/// line breaks, and the match starts at the first place it can).
fn mark_name(key: &str) -> &str {
    let bytes = key.as_bytes();
    if bytes.len() < HASH_SUFFIX {
        return key;
    }
    let (dashes, hash) = bytes[bytes.len() - HASH_SUFFIX..].split_at(2);
    let is_hash = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if dashes != b"--" || !hash.iter().all(is_hash) {
        return key;
    }
    // The suffix is ASCII, so this splits on a character boundary.
    let head = &key[..key.len() - HASH_SUFFIX];
    let line_break = ['\n', '\r', '\u{2028}', '\u{2029}'];
    match head.rfind(line_break) {
        Some(at) => {
            let width = head[at..].chars().next().map_or(1, char::len_utf8);
            &head[at + width..]
        }
        None => head,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{as_received, on_small_stack};
    use super::*;
    use serde_json::json;
    use yrs::types::xml::{XmlFragment as _, XmlTextPrelim};
    use yrs::{Map as _, Xml as _};
    use yrs::{TransactionMut, WriteTxn, XmlElementPrelim, XmlFragmentRef};

    /// A document with the fragment `name`, filled by `fill`.
    fn written(name: &str, fill: impl FnOnce(&mut TransactionMut, XmlFragmentRef)) -> Doc {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let root = txn.get_or_insert_xml_fragment(name);
            fill(&mut txn, root);
        }
        doc
    }

    fn bold() -> Attrs {
        Attrs::from([("bold".into(), Any::Map(Default::default()))])
    }

    #[test]
    fn a_fragment_renders_as_y_prosemirror_renders_it() {
        let doc = written("default", |txn, root| {
            let heading = root.push_back(txn, XmlElementPrelim::empty("heading"));
            heading.insert_attribute(txn, "level", 2);
            heading.push_back(txn, XmlTextPrelim::new("Title"));
            let paragraph = root.push_back(txn, XmlElementPrelim::empty("paragraph"));
            let text = paragraph.push_back(txn, XmlTextPrelim::new(""));
            text.insert(txn, 0, "plain ");
            text.insert_with_attributes(txn, 6, "strong", bold());
            root.push_back(txn, XmlElementPrelim::empty("paragraph"));
            // A comment mark that may overlap itself carries a hash.
            let hashed = Attrs::from([("comment--AbC+/=12".into(), Any::from("c1"))]);
            let note = root.push_back(txn, XmlElementPrelim::empty("paragraph"));
            let text = note.push_back(txn, XmlTextPrelim::new(""));
            text.insert_with_attributes(txn, 0, "noted", hashed);
            txn.get_or_insert_map("meta").insert(txn, "k", 1);
        });
        assert_eq!(
            doc_to_prosemirror(&as_received(&doc)),
            json!({"default": {"type": "doc", "content": [
                {"type": "heading", "attrs": {"level": 2},
                 "content": [{"type": "text", "text": "Title"}]},
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "plain "},
                    {"type": "text", "text": "strong", "marks": [{"type": "bold", "attrs": {}}]},
                ]},
                {"type": "paragraph"},
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "noted", "marks": [{"type": "comment", "attrs": "c1"}]},
                ]},
            ]}}),
            "the map root is no fragment and is left out"
        );
    }

    #[test]
    fn marks_come_in_name_order_and_top_level_texts_stay_arrays() {
        let doc = written("f", |txn, root| {
            let text = root.push_back(txn, XmlTextPrelim::new(""));
            let mut link_and_bold = bold();
            link_and_bold.insert("link".into(), Any::from("x"));
            text.insert_with_attributes(txn, 0, "both", link_and_bold);
        });
        assert_eq!(
            doc_to_prosemirror(&as_received(&doc))["f"]["content"],
            json!([[{"type": "text", "text": "both", "marks": [
                {"type": "bold", "attrs": {}},
                {"type": "link", "attrs": "x"},
            ]}]])
        );
    }

    #[test]
    fn emptied_texts_and_fragments_keep_their_shape() {
        let doc = written("f", |txn, root| {
            let paragraph = root.push_back(txn, XmlElementPrelim::empty("p"));
            let text = paragraph.push_back(txn, XmlTextPrelim::new("gone"));
            text.remove_range(txn, 0, 4);
        });
        assert_eq!(
            doc_to_prosemirror(&as_received(&doc)),
            json!({"f": {"type": "doc", "content": [{"type": "p", "content": []}]}})
        );
        // A field emptied altogether stays an (empty) document.
        let doc = written("f", |txn, root| {
            root.push_back(txn, XmlElementPrelim::empty("p"));
            root.remove_range(txn, 0, 1);
        });
        assert_eq!(
            doc_to_prosemirror(&as_received(&doc)),
            json!({"f": {"type": "doc", "content": []}})
        );
    }

    #[test]
    fn roots_that_hold_other_things_are_left_out() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            txn.get_or_insert_text("title").insert(&mut txn, 0, "t");
            txn.get_or_insert_array("list").push_back(&mut txn, 1);
            let mixed = txn.get_or_insert_array("mixed");
            mixed.push_back(&mut txn, XmlElementPrelim::empty("p"));
            mixed.push_back(&mut txn, "not xml");
        }
        assert_eq!(doc_to_prosemirror(&as_received(&doc)), json!({}));
        // Typed on this side (not read back from an update) too.
        assert_eq!(doc_to_prosemirror(&doc), json!({}));
    }

    #[test]
    fn mark_names_lose_only_a_hash_suffix() {
        assert_eq!(mark_name("bold"), "bold");
        assert_eq!(mark_name("comment--ABCDefg1"), "comment");
        assert_eq!(mark_name("--ABCDefg1"), "");
        assert_eq!(mark_name("x--ABCDefg"), "x--ABCDefg", "7 characters");
        assert_eq!(mark_name("x--ABC_efg1"), "x--ABC_efg1", "not base64");
        assert_eq!(
            mark_name("a\nb--ABCDefg1"),
            "b",
            "the match starts past a line break"
        );
        assert_eq!(mark_name("é\u{2028}c--ABCDefg1"), "c");
        assert_eq!(mark_name("ü--ABCDefg1"), "ü");
    }

    #[test]
    fn a_deep_fragment_renders_on_a_small_stack() {
        // 3,000 nested elements arrive untyped; the walk cuts them at
        // the depth budget instead of following them down.
        let writer = written("default", |txn, root| {
            let mut parent = root.push_back(txn, XmlElementPrelim::empty("blockquote"));
            for _ in 0..3_000 {
                parent = parent.push_back(txn, XmlElementPrelim::empty("blockquote"));
            }
            parent.push_back(txn, XmlTextPrelim::new("bottom"));
        });
        let server = as_received(&writer);
        let json = on_small_stack(move || doc_to_prosemirror(&server));
        let mut node = &json["default"]["content"][0];
        let mut depth = 2;
        while let Some(child) = node.get("content").and_then(|content| content.get(0)) {
            node = child;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH, "elements stop at the depth budget");
        assert_eq!(node["content"], json!([]), "deeper ones are left out");
    }
}
