//! A document's top-level shared types as JSON, for the server API's
//! `?format=json` and the state callback.
//!
//! Top-level types that arrived in an update are untyped until someone
//! asks for them by type (Yjs works the same way); their type is inferred
//! from their content as yrs does it: keyed entries → map, a sequence of
//! strings → text, any other sequence → array (XML nodes render as XML
//! strings). An empty type renders as `null`; types nested deeper than
//! [`MAX_DEPTH`] render as `null` too.
//!
//! Client content never goes through yrs's own recursive conversions
//! (`as_prelim`, `to_json`, `Out::to_string` of a type): they have no depth
//! limit. This walk recurses on our side only, with the depth budget.
//!
//! [`prosemirror`] renders the XML fragments as ProseMirror JSON instead,
//! for `?format=prosemirror`. [`render_state`] is the way in for both: it
//! weighs the document's formatting first ([`budget`]), since rendering
//! formatted text can cost the square of the document's size.

pub mod budget;
pub mod prosemirror;

use serde_json::{Map, Value};
use yrs::branch::{Branch, BranchPtr};
use yrs::types::xml::{Xml, XmlFragment, XmlOut};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, ArrayRef, Doc, GetString, MapRef, Number, Out, ReadTxn, TextRef, Transact, XmlElementRef,
    XmlTextRef,
};

/// Deepest nesting of shared types (and values) rendered; deeper ones are
/// `null`. The walk recurses, and a client can nest types without bound.
pub const MAX_DEPTH: usize = 64;

/// `{name: content}` for every top-level type of `doc`. Unweighed: from
/// outside the crate, [`render_state`] is the way in.
pub(crate) fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut object = Map::new();
    for (name, value) in txn.root_refs() {
        object.insert(name.to_owned(), render(value, &txn, 1));
    }
    Value::Object(object)
}

/// Default for the room node's `render_concurrency`.
pub const DEFAULT_RENDER_CONCURRENCY: usize = 4;

/// The node's renders (JSON of whole documents, version restores), run on
/// the blocking pool a few at a time: each holds a whole document and its
/// rendering in memory, and many rooms' callbacks or many API calls at
/// once must not multiply that past what the node can hold.
#[derive(Debug, Clone)]
pub struct Renders(std::sync::Arc<tokio::sync::Semaphore>);

impl Renders {
    /// At most `at_once` renders at a time (at least one).
    pub fn new(at_once: usize) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(
            at_once.max(1),
        )))
    }

    /// Runs `work` on the blocking pool once a slot is free; the slot is
    /// held until `work` ends, even if the caller stops waiting.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let slot = self.0.clone().acquire_owned().await;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
    }
}

/// Which JSON a whole state renders as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonFormat {
    /// Every top-level type ([`doc_to_json`]).
    Plain,
    /// The XML fragments as ProseMirror JSON
    /// ([`prosemirror::doc_to_prosemirror`]).
    Prosemirror,
}

/// The document whose whole state is `state` (a Yjs update v1) as
/// `format`'s JSON, once [`budget::check`] found its formatting within
/// `max_render_bytes`. A whole document's work: callers run it off the
/// room's task, on the blocking pool.
pub fn render_state(
    state: &[u8],
    format: JsonFormat,
    max_render_bytes: u64,
) -> Result<Value, budget::RenderError> {
    budget::check(state, max_render_bytes)?;
    let unreadable = |e: &dyn std::fmt::Display| budget::RenderError::Unreadable(e.to_string());
    let doc = Doc::new();
    let update = yrs::Update::decode_v1(state).map_err(|e| unreadable(&e))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| unreadable(&e))?;
    Ok(match format {
        JsonFormat::Plain => doc_to_json(&doc),
        JsonFormat::Prosemirror => prosemirror::doc_to_prosemirror(&doc),
    })
}

/// One value, its nested types rendered `depth` levels down.
fn render<T: ReadTxn>(value: Out, txn: &T, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match value {
        Out::Any(any) => any_to_json(&any, depth),
        Out::YText(text) => Value::String(text.get_string(txn)),
        Out::YMap(map) => render_map(&map, txn, depth),
        Out::YArray(array) => render_array(&array, txn, depth),
        Out::YXmlText(text) => Value::String(text.get_string(txn)),
        Out::YXmlElement(element) => Value::String(xml(XmlOut::Element(element), txn, depth)),
        Out::YXmlFragment(fragment) => Value::String(xml(XmlOut::Fragment(fragment), txn, depth)),
        Out::YDoc(doc) => serde_json::json!({ "guid": doc.guid().to_string() }),
        Out::UndefinedRef(branch) => match infer(branch, txn) {
            Inferred::Map => render_map(&MapRef::from(branch), txn, depth),
            Inferred::Array => render_array(&ArrayRef::from(branch), txn, depth),
            Inferred::Text => Value::String(TextRef::from(branch).get_string(txn)),
            Inferred::XmlText => Value::String(XmlTextRef::from(branch).get_string(txn)),
            Inferred::XmlElement => Value::String(xml(
                XmlOut::Element(XmlElementRef::from(branch)),
                txn,
                depth,
            )),
            Inferred::Empty => Value::Null,
        },
        #[allow(unreachable_patterns)]
        _ => Value::Null,
    }
}

/// The branch of a shared type, `None` for plain values and documents.
pub(crate) fn branch_of(value: &Out) -> Option<BranchPtr> {
    Some(match value {
        Out::YText(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::YMap(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::YArray(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::YXmlElement(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::YXmlFragment(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::YXmlText(v) => BranchPtr::from(AsRef::<Branch>::as_ref(v)),
        Out::UndefinedRef(branch) => *branch,
        _ => return None,
    })
}

/// What an untyped branch holds, judged as yrs's `as_prelim` judges it
/// (keyed entries, a sequence, text-like content) but by looking at the
/// branch itself, not by converting its whole subtree.
pub(crate) enum Inferred {
    /// Keyed entries only.
    Map,
    /// A sequence of values.
    Array,
    /// Characters.
    Text,
    /// Characters and keyed entries (attributes).
    XmlText,
    /// A sequence and keyed entries (attributes).
    XmlElement,
    /// Nothing.
    Empty,
}

/// What `branch` holds (see [`Inferred`]).
pub(crate) fn infer<T: ReadTxn>(branch: yrs::branch::BranchPtr, txn: &T) -> Inferred {
    use yrs::{Array as _, Map as _};
    let has_map = MapRef::from(branch).len(txn) > 0;
    let text = TextRef::from(branch).get_string(txn);
    let has_list = ArrayRef::from(branch).len(txn) > 0;
    match (has_map, has_list, !text.is_empty()) {
        (false, _, true) => Inferred::Text,
        (true, _, true) => Inferred::XmlText,
        (true, false, false) => Inferred::Map,
        (false, true, false) => Inferred::Array,
        (true, true, false) => Inferred::XmlElement,
        (false, false, false) => Inferred::Empty,
    }
}

fn render_map<T: ReadTxn>(map: &MapRef, txn: &T, depth: usize) -> Value {
    use yrs::Map as _;
    Value::Object(
        map.iter(txn)
            .map(|(key, value)| (key.to_owned(), render(value, txn, depth + 1)))
            .collect(),
    )
}

fn render_array<T: ReadTxn>(array: &ArrayRef, txn: &T, depth: usize) -> Value {
    use yrs::Array as _;
    Value::Array(
        array
            .iter(txn)
            .map(|value| render(value, txn, depth + 1))
            .collect(),
    )
}

/// An XML node as XML text, children at most [`MAX_DEPTH`] levels down.
fn xml<T: ReadTxn>(node: XmlOut, txn: &T, depth: usize) -> String {
    if depth > MAX_DEPTH {
        return String::new();
    }
    match node {
        XmlOut::Text(text) => text.get_string(txn),
        XmlOut::Fragment(fragment) => fragment
            .children(txn)
            .map(|child| xml(child, txn, depth + 1))
            .collect(),
        XmlOut::Element(element) => {
            let tag = element.tag().to_string();
            let mut out = format!("<{tag}");
            let mut attributes: Vec<(String, String)> = element
                .attributes(txn)
                .map(|(key, value)| (key.to_owned(), attribute(value, txn, depth)))
                .collect();
            attributes.sort();
            for (key, value) in attributes {
                out.push_str(&format!(" {key}=\"{value}\""));
            }
            out.push('>');
            for child in element.children(txn) {
                out.push_str(&xml(child, txn, depth + 1));
            }
            out.push_str(&format!("</{tag}>"));
            out
        }
    }
}

/// An attribute's text: plain values as they print, a shared type as
/// its JSON (never yrs's recursive `to_string`).
fn attribute<T: ReadTxn>(value: Out, txn: &T, depth: usize) -> String {
    match value {
        Out::Any(Any::String(s)) => s.to_string(),
        Out::Any(any) => any_to_json(&any, depth).to_string(),
        other => render(other, txn, depth + 1).to_string(),
    }
}

fn any_to_json(any: &Any, depth: usize) -> Value {
    if depth > 2 * MAX_DEPTH + crate::update_check::MAX_ANY_DEPTH {
        return Value::Null;
    }
    match any {
        Any::Null | Any::Undefined => Value::Null,
        Any::Bool(b) => Value::Bool(*b),
        Any::Number(Number::Int(n)) => Value::from(*n),
        Any::Number(Number::Float(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Any::String(s) => Value::String(s.to_string()),
        // Binary content has no JSON form; base64 would be a guess.
        Any::Buffer(_) => Value::Null,
        Any::Array(items) => {
            Value::Array(items.iter().map(|a| any_to_json(a, depth + 1)).collect())
        }
        Any::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), any_to_json(v, depth + 1)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Map as _, StateVector, Text, Update, WriteTxn};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renders_run_a_few_at_a_time_and_hold_their_slot_to_the_end() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::Duration;
        let renders = Renders::new(2);
        let (running, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut all = Vec::new();
        for _ in 0..8 {
            let (renders, running, peak) = (renders.clone(), running.clone(), peak.clone());
            all.push(tokio::spawn(async move {
                renders
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in all {
            task.await.unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "{peak} renders at once");

        // A caller that stops waiting leaves its render running, holding
        // the slot until it ends.
        let renders = Renders::new(1);
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let caller = tokio::spawn({
            let renders = renders.clone();
            async move {
                renders
                    .run(move || {
                        started_tx.send(()).unwrap();
                        released.recv().unwrap();
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        caller.abort();
        let next = renders.run(|| 7);
        tokio::pin!(next);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut next)
                .await
                .is_err(),
            "the slot was freed while its render still ran"
        );
        release.send(()).unwrap();
        assert_eq!(next.await.unwrap(), 7);
    }

    /// `doc` as a server holds it: read back from an update, its
    /// top-level types untyped.
    pub(super) fn as_received(doc: &Doc) -> Doc {
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let server = Doc::new();
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        server
    }

    /// `render`'s answer, computed on a 256 KiB stack: a walk that
    /// followed a deep document down would overflow it.
    pub(super) fn on_small_stack<R: Send + 'static>(
        render: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(render)
            .unwrap()
            .join()
            .expect("rendered without overflowing")
    }

    #[test]
    fn a_deep_untyped_document_renders_on_a_small_stack() {
        // 3,000 nested maps arrive untyped (as on a server); yrs's own
        // type inference would convert the whole subtree recursively.
        let writer = Doc::new();
        {
            let mut txn = writer.transact_mut();
            let mut parent = txn.get_or_insert_map("m");
            for _ in 0..3_000 {
                parent = parent.insert(&mut txn, "k", yrs::MapPrelim::default());
            }
            parent.insert(&mut txn, "leaf", "x");
        }
        let server = as_received(&writer);
        let json = on_small_stack(move || doc_to_json(&server));
        let mut level = &json["m"];
        let mut depth = 1;
        while let Some(next) = level.get("k") {
            level = next;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH + 1, "cut at the depth budget");
        assert!(level.is_null());
    }

    #[test]
    fn untyped_top_level_types_render_by_their_content() {
        // Written with types, read back from an update: untyped, as the
        // room node holds them.
        let source = Doc::new();
        {
            let mut txn = source.transact_mut();
            txn.get_or_insert_text("title").insert(&mut txn, 0, "Notes");
            let meta = txn.get_or_insert_map("meta");
            meta.insert(&mut txn, "pages", 3);
            meta.insert(&mut txn, "draft", true);
            let list = txn.get_or_insert_array("tags");
            list.push_back(&mut txn, "a");
            list.push_back(&mut txn, 2);
        }
        let doc = as_received(&source);
        assert_eq!(
            doc_to_json(&doc),
            serde_json::json!({
                "title": "Notes",
                "meta": {"pages": 3, "draft": true},
                "tags": ["a", 2],
            })
        );
        assert_eq!(doc_to_json(&Doc::new()), serde_json::json!({}));
    }

    #[test]
    fn deeply_nested_types_render_to_a_bounded_depth() {
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let mut map = txn.get_or_insert_map("m");
            for _ in 0..5_000 {
                map = map.insert(&mut txn, "child", yrs::MapPrelim::default());
            }
        }
        let json = doc_to_json(&doc);
        let mut depth = 0;
        let mut node = &json["m"];
        while let Some(child) = node.get("child") {
            depth += 1;
            node = child;
        }
        assert_eq!(depth, MAX_DEPTH, "nesting stops at the cap");
        assert!(node.is_null());
    }
}
