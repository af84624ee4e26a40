//! What the render budget costs ([`partyline_room_node::render::budget`]):
//! the time to weigh a document's formatting before a JSON render, next to
//! the render itself, for
//!
//! - ordinary rich text: bold and italic toggling over 200,000 runs
//!   (cleared by the bound read from the encoded state);
//! - a reviewed document: 5,000 comment marks, each its own key over its
//!   own word (the bound is far over, so the exact weight is counted on a
//!   scratch copy);
//! - a hostile one: 4,000 attributes open over 4,000 runs (refused; the
//!   render alone would take gigabytes at ten times the size).
//!
//! It runs only under `cargo bench` (which passes `--bench`).
//!
//!   cargo bench -p partyline-room-node --bench render_budget

use std::time::{Duration, Instant};

use partyline_room_node::render::budget::{self, DEFAULT_MAX_RENDER_BYTES};
use partyline_room_node::render::{render_state, JsonFormat};
use yrs::types::{Attrs, Delta};
use yrs::{Any, Doc, In, ReadTxn, StateVector, Text, Transact, XmlFragment, XmlTextPrelim};

/// A document with one XML text of `chars` characters, all under `base`,
/// then formatted run by run as `runs` says (one delta pass of `Retain`s).
fn document(chars: u32, base: Attrs, runs: impl Iterator<Item = (u32, Option<Attrs>)>) -> Vec<u8> {
    let doc = Doc::new();
    let fragment = doc.get_or_insert_xml_fragment("default");
    {
        let mut txn = doc.transact_mut();
        let text = fragment.push_back(&mut txn, XmlTextPrelim::new(""));
        let words = "lorem ipsum ".repeat(chars as usize / 12 + 1);
        text.insert(&mut txn, 0, &words[..chars as usize]);
        if !base.is_empty() {
            text.format(&mut txn, 0, chars, base);
        }
        let runs = runs.map(|(len, attrs)| Delta::<In>::Retain(len, attrs.map(Box::new)));
        text.apply_delta(&mut txn, runs);
    }
    let txn = doc.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn time<T>(times: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut took = Vec::new();
    let mut last = None;
    for _ in 0..times {
        let started = Instant::now();
        last = Some(f());
        took.push(started.elapsed());
    }
    (median(took), last.expect("ran"))
}

fn report(name: &str, state: &[u8], render: bool) {
    let (weighed, verdict) = time(5, || budget::check(state, DEFAULT_MAX_RENDER_BYTES));
    let verdict = match verdict {
        Ok(()) => "allowed".to_owned(),
        Err(error) => format!(
            "refused ({})",
            error.to_string().split(':').next().unwrap_or("")
        ),
    };
    print!(
        "{name}: {} KB update; weighed in {weighed:.1?}: {verdict}",
        state.len() / 1024
    );
    if render {
        let (rendered, json) = time(3, || {
            render_state(state, JsonFormat::Prosemirror, u64::MAX).map(|json| json.to_string())
        });
        print!(
            "; render (ProseMirror JSON, {} KB) {rendered:.1?}",
            json.map_or(0, |json| json.len() / 1024)
        );
    }
    println!();
}

fn main() {
    if !std::env::args().skip(1).any(|arg| arg == "--bench") {
        return;
    }
    // Bold words, then plain, italic, plain: four runs per 24 characters.
    let marked = |key: &str| -> Option<Attrs> { Some([(key.into(), Any::Bool(true))].into()) };
    let rich = (0..50_000).flat_map(|_| {
        [
            (5, marked("bold")),
            (7, None),
            (5, marked("italic")),
            (7, None),
        ]
    });
    report(
        "ordinary rich text (200,000 runs, 2 marks)",
        &document(1_200_000, Attrs::new(), rich),
        true,
    );
    let comments = (0..5_000).flat_map(|n| {
        let comment: Attrs = [(
            format!("comment--{n}").into(),
            Any::from(format!("{{\"id\":\"c{n}\"}}")),
        )]
        .into();
        [(5, Some(comment)), (7, None)]
    });
    report(
        "reviewed (5,000 comment keys, each over its own word)",
        &document(60_000, Attrs::new(), comments),
        true,
    );
    let keys: Attrs = (0..4_000)
        .map(|k| (format!("k{k}").into(), Any::Bool(true)))
        .collect();
    let toggles = (0..2_000).flat_map(|_| [(1, marked("z")), (1, None)]);
    report(
        "hostile (4,000 attributes over 4,000 runs)",
        &document(4_000, keys, toggles),
        false,
    );
}
