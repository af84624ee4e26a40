//! What rendering a document's formatted text would cost, weighed before
//! anything renders it.
//!
//! yrs's text diff — behind the XML strings of `?format=json` and the JSON
//! state callback, behind `?format=prosemirror`, and behind a version
//! restore — copies every formatting attribute open at a run into that
//! run. A writer can open thousands of attributes and then cut the text
//! into thousands of runs: a few hundred KB of update cost gigabytes to
//! render (quadratic in its size), and one callback or API call would take
//! the whole room node down. So a render first weighs the copies it would
//! make — over every run, the key and value bytes of each attribute open
//! there, plus [`ENTRY_BYTES`] — and is refused past the node's
//! `max_render_bytes`.
//!
//! Weighing is linear in the document. A bound read from the encoded state
//! alone clears ordinary documents in one pass over its bytes: a run that
//! carries attributes follows a format item, an embed or a nested type of
//! its text (each run holds at least one content block too), and no more
//! attributes are open at once than there are keys, each at most as heavy
//! as its heaviest value. Past that bound the exact weight needs the
//! document's order, which yrs does not expose: the state is rewritten
//! with every format item turned into an embed that names it (same length,
//! same ids, so yrs integrates it at the same place), a scratch document
//! built from that, and its texts read through yrs's diff, which then has
//! no attribute to copy.

use std::collections::HashMap;

use yrs::branch::BranchPtr;
use yrs::encoding::write::Write;
use yrs::types::text::YChange;
use yrs::updates::decoder::Decode;
use yrs::{Any, Doc, Map, MapRef, Out, ReadTxn, Text, TextRef, Transact, Update};

use super::branch_of;
use crate::update_check::{scan_update_bytes, BlockBytes, BlockKind};

/// Default for the room node's `max_render_bytes`: 128 MiB of attribute
/// copies; an ordinary rich-text document weighs a few MB.
pub const DEFAULT_MAX_RENDER_BYTES: u64 = 128 * 1024 * 1024;

/// Weight of one attribute copy besides its key and value bytes: a hash
/// map entry in yrs's diff, a mark object in the JSON.
pub const ENTRY_BYTES: u64 = 64;

/// Why a document was not rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Rendering would copy more formatting than the limit allows.
    #[error("rendering the document's formatting would take more than {limit} bytes (--max-render-bytes): its texts are cut into many runs under many attributes; fetch it as a Yjs update instead")]
    TooCostly {
        /// The limit in force.
        limit: u64,
    },
    /// The state is not a Yjs update v1.
    #[error("the document's state is unreadable: {0}")]
    Unreadable(String),
}

/// Checks that rendering the document whose whole state is `state` (a
/// Yjs update v1) copies at most `limit` bytes of formatting.
pub fn check(state: &[u8], limit: u64) -> Result<(), RenderError> {
    let scanned = Scan::of(state)?;
    if scanned.bound() <= limit {
        return Ok(());
    }
    let weight = exact_weight(state, &scanned.formats, limit)?;
    if weight > limit {
        return Err(RenderError::TooCostly { limit });
    }
    Ok(())
}

/// One format item: the key it sets, the weight of one copy of it, and
/// whether it ends the attribute (a `null` value) instead.
struct Format<'a> {
    key: &'a str,
    weight: u64,
    ends: bool,
}

/// What one pass over the encoded state learns.
#[derive(Default)]
struct Scan<'a> {
    /// Every format item, in update order.
    formats: Vec<Format<'a>>,
    /// Heaviest copy of each key.
    heaviest: HashMap<&'a str, u64>,
    /// Blocks of text, embeds and nested types: each run holds one.
    content_blocks: u64,
    /// Embeds and nested types: each is a run, and may start another.
    embeds_and_types: u64,
}

impl<'a> Scan<'a> {
    fn of(state: &'a [u8]) -> Result<Self, RenderError> {
        let mut scan = Scan::default();
        scan_update_bytes(state, |block, bytes| {
            if block.is_none() {
                return;
            }
            match bytes.kind {
                BlockKind::Format { key, value } => {
                    let weight = key.len() as u64 + value.len() as u64 + ENTRY_BYTES;
                    let ends = value == "null";
                    if !ends {
                        let heaviest = scan.heaviest.entry(key).or_default();
                        *heaviest = (*heaviest).max(weight);
                    }
                    scan.formats.push(Format { key, weight, ends });
                }
                BlockKind::String => scan.content_blocks += 1,
                BlockKind::Embed | BlockKind::Type => {
                    scan.content_blocks += 1;
                    scan.embeds_and_types += 1;
                }
                BlockKind::Other => {}
            }
        })
        .map_err(|e| RenderError::Unreadable(e.to_string()))?;
        Ok(scan)
    }

    /// Most the render can copy: runs that carry attributes times the
    /// heaviest set of attributes open at once.
    fn bound(&self) -> u64 {
        let runs = self
            .content_blocks
            .min(self.formats.len() as u64 + 2 * self.embeds_and_types);
        let open: u64 = self.heaviest.values().sum();
        runs.saturating_mul(open)
    }
}

/// The weight of the attribute copies a render of `state` makes, counted
/// in document order on a scratch copy whose format items are embeds;
/// counting stops once past `limit`.
fn exact_weight(state: &[u8], formats: &[Format], limit: u64) -> Result<u64, RenderError> {
    let unreadable = |e: &dyn std::fmt::Display| RenderError::Unreadable(e.to_string());
    let scratch = Doc::new();
    let update = Update::decode_v1(&formats_as_embeds(state)?).map_err(|e| unreadable(&e))?;
    scratch
        .transact_mut()
        .apply_update(update)
        .map_err(|e| unreadable(&e))?;
    let txn = scratch.transact();
    let mut branches: Vec<BranchPtr> = txn
        .root_refs()
        .filter_map(|(_, out)| branch_of(&out))
        .collect();
    let mut weight = 0u64;
    while let Some(parent) = branches.pop() {
        let mut open: HashMap<&str, u64> = HashMap::new();
        let mut open_weight = 0u64;
        for run in TextRef::from(parent).diff(&txn, YChange::identity) {
            match run.insert {
                Out::Any(Any::Array(marker)) => {
                    let Some(format) = marker_index(&marker).and_then(|at| formats.get(at)) else {
                        continue;
                    };
                    if let Some(was) = open.remove(format.key) {
                        open_weight -= was;
                    }
                    if !format.ends {
                        open.insert(format.key, format.weight);
                        open_weight += format.weight;
                    }
                    continue;
                }
                // Sequences hand their nested types to the diff as runs.
                Out::Any(_) => {}
                other => branches.extend(branch_of(&other)),
            }
            weight = weight.saturating_add(open_weight);
            if weight > limit {
                return Ok(weight);
            }
        }
        // Keyed entries (maps, element attributes) may be types too.
        let entries = MapRef::from(parent);
        branches.extend(entries.iter(&txn).filter_map(|(_, out)| branch_of(&out)));
    }
    Ok(weight)
}

/// The index a rewritten format item carries (see [`formats_as_embeds`]).
fn marker_index(marker: &[Any]) -> Option<usize> {
    match marker {
        [Any::Number(at)] => at.as_i64().and_then(|at| usize::try_from(at).ok()),
        _ => None,
    }
}

/// `state` with every format item rewritten as an embed of `[n]` (its
/// index among the update's format items) and every embed as `0`, so
/// that in the scratch copy an array marks a format item and nothing else.
fn formats_as_embeds(state: &[u8]) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(state.len());
    let mut copied = 0;
    let mut index = 0usize;
    scan_update_bytes(state, |_, bytes: BlockBytes| {
        let content = match bytes.kind {
            BlockKind::Format { .. } => {
                index += 1;
                format!("[{}]", index - 1)
            }
            BlockKind::Embed => "0".to_owned(),
            _ => return,
        };
        out.extend_from_slice(&state[copied..bytes.start]);
        out.push(crate::update_check::as_embed(state[bytes.start]));
        out.extend_from_slice(&state[bytes.start + 1..bytes.content]);
        out.write_string(&content);
        copied = bytes.end;
    })
    .map_err(|e| RenderError::Unreadable(e.to_string()))?;
    out.extend_from_slice(&state[copied..]);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use yrs::types::{Attrs, Delta};
    use yrs::In;
    use yrs::{GetString, StateVector, XmlFragment, XmlTextPrelim};

    /// A document whose XML text of `runs` characters is under `keys`
    /// attributes, and under one more on every other character.
    pub(crate) fn hostile(keys: usize, runs: usize) -> Doc {
        let doc = Doc::new();
        let fragment = doc.get_or_insert_xml_fragment("prosemirror");
        let mut txn = doc.transact_mut();
        let text = fragment.push_back(&mut txn, XmlTextPrelim::new(""));
        text.insert(&mut txn, 0, &"b".repeat(runs));
        let open: Attrs = (0..keys)
            .map(|k| (format!("k{k}").into(), Any::Bool(true)))
            .collect();
        text.format(&mut txn, 0, runs as u32, open);
        // One pass (formatting each run on its own walks from the start).
        let z: Attrs = [("z".into(), Any::Bool(true))].into();
        let toggles = (0..runs).map(|run| match run % 2 {
            0 => Delta::<In>::Retain(1, Some(Box::new(z.clone()))),
            _ => Delta::Retain(1, None),
        });
        text.apply_delta(&mut txn, toggles);
        drop(txn);
        doc
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn the_weight_counts_every_attribute_copy_in_document_order() {
        let doc = hostile(3, 10);
        let state = state(&doc);
        let scan = Scan::of(&state).unwrap();
        let weight = exact_weight(&state, &scan.formats, u64::MAX).unwrap();
        // What yrs's diff copies: per run, each open attribute.
        let txn = doc.transact();
        let fragment = txn.get_xml_fragment("prosemirror").unwrap();
        let Some(yrs::XmlOut::Text(text)) = fragment.get(&txn, 0) else {
            panic!("no text");
        };
        let copied: u64 = text
            .diff(&txn, YChange::identity)
            .iter()
            .flat_map(|run| run.attributes.iter().flat_map(|a| a.iter()))
            .map(|(key, value)| key.len() as u64 + value.to_string().len() as u64 + ENTRY_BYTES)
            .sum();
        assert!(copied > 0);
        assert_eq!(weight, copied);
        assert!(scan.bound() >= weight, "{} < {weight}", scan.bound());
    }

    /// What yrs's diff of every text in `doc` copies, by the weight rule.
    fn copied_by_yrs(doc: &Doc) -> u64 {
        let txn = doc.transact();
        txn.root_refs()
            .filter_map(|(_, out)| branch_of(&out))
            .flat_map(|text| TextRef::from(text).diff(&txn, YChange::identity))
            .flat_map(|run| run.attributes.into_iter().flat_map(|a| a.into_iter()))
            .map(|(key, value)| {
                let json = serde_json::to_string(&value).unwrap();
                key.len() as u64 + json.len() as u64 + ENTRY_BYTES
            })
            .sum()
    }

    /// Random attributes to set (or clear, with `null`).
    fn random_attrs(rng: &mut fastrand::Rng) -> Attrs {
        const KEYS: [&str; 6] = ["bold", "italic", "c1", "c2", "c3", "link"];
        let count = rng.usize(1..4);
        let mut attrs = Attrs::new();
        for _ in 0..count {
            let value = match rng.u8(..3) {
                0 => Any::Bool(true),
                1 => Any::from(format!("v{}", rng.u8(..50))),
                _ => Any::Null,
            };
            attrs.insert(KEYS[rng.usize(..KEYS.len())].into(), value);
        }
        attrs
    }

    /// One random edit of the text `t` by `doc`: an insert (formatted or
    /// not), a format (setting or clearing attributes) or a delete.
    fn random_edit(rng: &mut fastrand::Rng, doc: &Doc) {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        let at = rng.u32(..=len);
        match rng.u8(..5) {
            0 => text.insert(&mut txn, at, &"x".repeat(rng.usize(1..6))),
            1 | 2 => text.insert_with_attributes(&mut txn, at, "yz", random_attrs(rng)),
            3 if at < len => {
                let span = rng.u32(1..=len - at);
                text.format(&mut txn, at, span, random_attrs(rng));
            }
            4 if at < len => {
                let span = rng.u32(1..=len - at).min(3);
                text.remove_range(&mut txn, at, span);
            }
            _ => {}
        }
    }

    /// Sends everything `from` has that `to` lacks.
    fn sync(from: &Doc, to: &Doc) {
        let missing = from
            .transact()
            .encode_state_as_update_v1(&to.transact().state_vector());
        to.transact_mut()
            .apply_update(Update::decode_v1(&missing).unwrap())
            .unwrap();
    }

    #[test]
    fn the_exact_weight_is_what_yrs_copies_after_concurrent_edits() {
        let mut formatted = 0u64;
        // 3,000 seeds passed too (release build, 0.8 s).
        let seeds = 60;
        for seed in 0..seeds {
            let mut rng = fastrand::Rng::with_seed(seed);
            let docs: Vec<Doc> = (1..=3).map(Doc::with_client_id).collect();
            for _ in 0..40 {
                let editor = rng.usize(..docs.len());
                random_edit(&mut rng, &docs[editor]);
                if rng.u8(..3) == 0 {
                    let (from, to) = (rng.usize(..docs.len()), rng.usize(..docs.len()));
                    sync(&docs[from], &docs[to]);
                }
            }
            for from in &docs {
                sync(from, &docs[0]);
            }
            let state = state(&docs[0]);
            let scan = Scan::of(&state).unwrap();
            let weight = exact_weight(&state, &scan.formats, u64::MAX).unwrap();
            assert_eq!(weight, copied_by_yrs(&docs[0]), "seed {seed}");
            assert!(
                scan.bound() >= weight,
                "seed {seed}: bound under the weight"
            );
            formatted += u64::from(weight > 0);
        }
        assert!(
            formatted > seeds / 2,
            "only {formatted} of {seeds} had formatting"
        );
    }

    #[test]
    fn a_quadratic_document_is_refused_and_an_ordinary_one_passes() {
        // 2,000 keys open over 2,000 runs: 185 KB of update, 290 MB of
        // copies (yrs's diff would allocate them all).
        let evil = state(&hostile(2_000, 2_000));
        assert!(evil.len() < 200_000, "{}", evil.len());
        assert!(matches!(
            check(&evil, DEFAULT_MAX_RENDER_BYTES),
            Err(RenderError::TooCostly { .. })
        ));
        // Bold and italic over 20,000 runs: cleared by the bound alone.
        let ordinary = state(&hostile(2, 20_000));
        let scan = Scan::of(&ordinary).unwrap();
        assert!(scan.bound() <= DEFAULT_MAX_RENDER_BYTES);
        check(&ordinary, DEFAULT_MAX_RENDER_BYTES).unwrap();
    }

    #[test]
    fn many_keys_each_open_once_pass_on_the_exact_weight() {
        // 3,000 comments, each its own key over its own word: the bound
        // (every key open at every run) is far over; the order says one
        // at a time.
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &"w ".repeat(3_000));
            for n in 0..3_000u32 {
                let attrs: Attrs =
                    [(format!("comment--{n}").into(), Any::from(format!("id-{n}")))].into();
                text.format(&mut txn, 2 * n, 1, attrs);
            }
        }
        let state = state(&doc);
        let limit = 4 * 1024 * 1024;
        let scan = Scan::of(&state).unwrap();
        assert!(scan.bound() > limit, "the bound alone would clear it");
        let weight = exact_weight(&state, &scan.formats, u64::MAX).unwrap();
        assert!(weight < 3_000 * 100, "{weight}");
        check(&state, limit).unwrap();
        assert_eq!(text.get_string(&doc.transact()).len(), 6_000);
    }

    #[test]
    fn nested_texts_and_keyed_entries_are_weighed() {
        let doc = Doc::new();
        let root = doc.get_or_insert_map("m");
        let mut txn = doc.transact_mut();
        let inner = root.insert(&mut txn, "note", yrs::TextPrelim::new(""));
        inner.insert(&mut txn, 0, &"x".repeat(50));
        let attrs: Attrs = (0..50)
            .map(|k| (format!("k{k}").into(), Any::Bool(true)))
            .collect();
        inner.format(&mut txn, 0, 50, attrs);
        for n in (0..50).step_by(2) {
            inner.format(&mut txn, n, 1, [("z".into(), Any::Bool(true))].into());
        }
        drop(txn);
        let state = state(&doc);
        let scan = Scan::of(&state).unwrap();
        let weight = exact_weight(&state, &scan.formats, u64::MAX).unwrap();
        assert!(weight > 50 * 50 * ENTRY_BYTES, "{weight}");
        assert!(matches!(
            check(&state, 50 * ENTRY_BYTES),
            Err(RenderError::TooCostly { .. })
        ));
    }
}
