//! Writes the fuzz targets' seed corpora into `fuzz/corpus/<target>/`
//! (replacing what is there): valid inputs of every kind each target
//! takes, so the fuzzer starts past the decoders. Run from the repository:
//! `cargo run --manifest-path fuzz/Cargo.toml -p partyline-fuzz-seeds`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use yrs::sync::{Awareness, Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text, Transact,
    Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

#[path = "../../src/format.rs"]
#[allow(dead_code)]
mod format;

/// Access values of `format::frame_control`.
const RW: u8 = 0;
const RO: u8 = 1;
const FULL: u8 = 3;

/// The `client_frame` target's starting document, as client `client_id`.
fn base_doc(client_id: u64) -> Doc {
    format::doc_with(&format::base_state(), client_id)
}

fn sync(message: SyncMessage) -> Vec<u8> {
    Message::Sync(message).encode_v1()
}

/// What `doc` has beyond `since`, as a y-sync Update frame.
fn update_since(doc: &Doc, since: &StateVector) -> Vec<u8> {
    sync(SyncMessage::Update(
        doc.transact().encode_state_as_update_v1(since),
    ))
}

fn frames(frames: &[(u8, u8, bool, &[u8])]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|&(access, session, end, frame)| {
            format::record(format::frame_control(access, session, end), frame)
        })
        .collect()
}

fn awareness(client_id: u64, state: &str) -> Vec<u8> {
    let mut awareness = Awareness::new(Doc::with_client_id(client_id));
    awareness.set_local_state_raw(state);
    Message::Awareness(awareness.update().unwrap()).encode_v1()
}

fn client_frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let doc = base_doc(42);
    let base_sv = doc.transact().state_vector();
    let step1_empty = sync(SyncMessage::SyncStep1(StateVector::default()));
    let step1_base = sync(SyncMessage::SyncStep1(base_sv.clone()));
    let step2_empty = sync(SyncMessage::SyncStep2(
        doc.transact().encode_state_as_update_v1(&base_sv),
    ));

    // Text: insert, delete, formatting, an embed.
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), 5, " world");
    let typed = update_since(&doc, &base_sv);
    let sv1 = doc.transact().state_vector();
    text.remove_range(&mut doc.transact_mut(), 0, 2);
    let bold: HashMap<Arc<str>, Any> = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
    text.insert_with_attributes(&mut doc.transact_mut(), 1, "b", bold.clone());
    text.format(&mut doc.transact_mut(), 0, 2, bold);
    text.insert_embed(&mut doc.transact_mut(), 0, json_any());
    let edited = update_since(&doc, &sv1);
    assert!(!text.get_string(&doc.transact()).is_empty());

    // Map and array: Any values, a buffer, nested types, a sub-document.
    let sv2 = doc.transact().state_vector();
    {
        let map = doc.get_or_insert_map("m");
        let array = doc.get_or_insert_array("a");
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "n", 1.5);
        map.insert(&mut txn, "s", "str");
        map.insert(&mut txn, "any", json_any());
        map.insert(
            &mut txn,
            "buf",
            Any::Buffer(Arc::from(&b"\x00\x01\x02"[..])),
        );
        map.insert(&mut txn, "list", ArrayPrelim::from(vec![1, 2, 3]));
        map.insert(&mut txn, "sub", Doc::new());
        map.remove(&mut txn, "inner");
        array.insert(&mut txn, 0, true);
        array.remove_range(&mut txn, 1, 1);
    }
    let structured = update_since(&doc, &sv2);

    // XML: a fragment, an element with attributes, text.
    let sv3 = doc.transact().state_vector();
    {
        let xml = doc.get_or_insert_xml_fragment("x");
        let mut txn = doc.transact_mut();
        let p = xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
        p.insert_attribute(&mut txn, "class", "c");
        p.push_back(&mut txn, XmlTextPrelim::new("xml text"));
    }
    let xml = update_since(&doc, &sv3);

    // Shared types nested 4 (within the target's limit of 8) and 10 deep.
    let nested = |depth: usize| {
        let doc = base_doc(43);
        let sv = doc.transact().state_vector();
        let mut map = doc.get_or_insert_map("deep");
        let mut txn = doc.transact_mut();
        for _ in 1..depth {
            map = map.insert(&mut txn, "k", MapPrelim::default());
        }
        drop(txn);
        update_since(&doc, &sv)
    };
    let (shallow, deep) = (nested(4), nested(10));

    // `Any` nested past update_check's 128 levels.
    let deep_any = {
        let doc = base_doc(44);
        let sv = doc.transact().state_vector();
        let mut value = Any::Null;
        for _ in 0..130 {
            value = Any::Array(Arc::from(vec![value]));
        }
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), "v", value);
        update_since(&doc, &sv)
    };

    // An update built on one the room never got (a missing dependency).
    let orphan = {
        let doc = base_doc(45);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "first ");
        let sv = doc.transact().state_vector();
        text.insert(&mut doc.transact_mut(), 0, "second ");
        update_since(&doc, &sv)
    };

    let aware_a = awareness(100, r##"{"user":{"name":"a","color":"#f00"}}"##);
    let aware_b = awareness(100, r#"{"user":{"name":"b"}}"#);
    let aware_c = awareness(101, r#"{"cursor":{"anchor":1,"head":3}}"#);
    let aware_null = awareness(100, "null");
    let query = Message::AwarenessQuery.encode_v1();
    let auth = Message::Auth(Some("denied".into())).encode_v1();

    vec![
        ("step1-empty", frames(&[(RW, 0, false, &step1_empty)])),
        ("step1-base", frames(&[(RW, 0, false, &step1_base)])),
        (
            "handshake",
            frames(&[
                (RW, 0, false, &step1_base),
                (RW, 0, false, &step2_empty),
                (RW, 0, false, &aware_a),
                (RW, 0, false, &query),
            ]),
        ),
        (
            "text",
            frames(&[(RW, 0, false, &typed), (RW, 0, false, &edited)]),
        ),
        ("structured", frames(&[(RW, 0, false, &structured)])),
        ("xml", frames(&[(RW, 1, false, &xml)])),
        ("nested-ok", frames(&[(RW, 0, false, &shallow)])),
        ("nested-too-deep", frames(&[(RW, 0, false, &deep)])),
        ("any-too-deep", frames(&[(RW, 0, false, &deep_any)])),
        ("missing-dependency", frames(&[(RW, 0, false, &orphan)])),
        (
            "read-only-write",
            frames(&[(RO, 1, false, &typed), (FULL, 2, false, &typed)]),
        ),
        (
            "awareness-owners",
            frames(&[
                (RW, 0, false, &aware_a),
                (RO, 1, false, &aware_b),
                (RW, 1, false, &aware_c),
                (RW, 0, true, &aware_null),
                (RW, 1, true, &auth),
            ]),
        ),
    ]
}

fn json_any() -> Any {
    Any::from_json(r#"{"a":[1,2.5,"x",null,true],"b":{"c":{}}}"#).unwrap()
}

fn batch_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let marker = |kind: &str, id: &str, size: usize, count: usize| {
        format::record(
            format::BATCH_TEXT,
            format!(r#"y-pk-batch#{{"id":"{id}","type":"{kind}","size":{size},"count":{count}}}"#)
                .as_bytes(),
        )
    };
    let binary = |data: &[u8]| format::record(format::BATCH_BINARY, data);
    let text = |data: &str| format::record(format::BATCH_TEXT, data.as_bytes());
    let doc = base_doc(50);
    doc.get_or_insert_text("t")
        .insert(&mut doc.transact_mut(), 0, &"chunked ".repeat(40));
    let frame = update_since(&doc, &StateVector::default());
    let third = frame.len().div_ceil(3);
    let chunked: Vec<u8> = [
        marker("start", "u1", frame.len(), 3),
        frame.chunks(third).flat_map(binary).collect(),
        marker("end", "u1", frame.len(), 3),
    ]
    .concat();
    vec![
        (
            "joined",
            [
                marker("start", "x1", 5, 2),
                binary(b"abc"),
                binary(b"de"),
                marker("end", "x1", 5, 2),
            ]
            .concat(),
        ),
        (
            "update-in-three",
            [
                binary(&sync(SyncMessage::SyncStep1(StateVector::default()))),
                chunked.clone(),
                text("__YPS:{\"cursor\":1}"),
                chunked,
            ]
            .concat(),
        ),
        (
            "too-large",
            marker("start", "big", format::BATCH_MAX_BYTES + 1, 2),
        ),
        (
            "mismatch",
            [
                marker("start", "a", 4, 2),
                binary(b"ab"),
                binary(b"cd"),
                marker("end", "b", 4, 2),
            ]
            .concat(),
        ),
        (
            "out-of-order",
            [marker("end", "a", 1, 1), marker("start", "a", 1, 1)].concat(),
        ),
        ("malformed", text(r#"y-pk-batch#{"id":1,"type":"begin"}"#)),
    ]
}

fn room_path_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("partykit", "/parties/main/room?x=1"),
        (
            "partykit-other-party",
            "/parties/cursors/doc-1?_pk=abc&token=t",
        ),
        ("partykit-old", "/party/diagram-xyz789"),
        ("y-websocket", "/team/a/doc.v1_x-y"),
        ("space", "/room%20a"),
        ("slash-in-room", "/parties/main/a%2Fb"),
        ("slash-in-party", "/parties/a%2Fb/x"),
        ("utf8", "/%E2%9C%93?q"),
        ("not-utf8", "/%ff%fe"),
        ("newline", "/a%0Ab"),
        ("c1", "/parties/main/a%C2%85"),
        ("empty", "/parties/main/"),
        (
            "absolute",
            "http://example.com:1999/parties/main/doc?token=a.b.c",
        ),
    ]
    .into_iter()
    .map(|(name, path)| (name, path.as_bytes().to_vec()))
    .chain([("too-long", format!("/{}", "x".repeat(257)).into_bytes())])
    .collect()
}

fn token_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sign = |header: &Header, claims: serde_json::Value| {
        jsonwebtoken::encode(
            header,
            &claims,
            &EncodingKey::from_secret(format::JWT_SECRET),
        )
        .unwrap()
    };
    let hs256 = Header::new(Algorithm::HS256);
    // 2100-01-01: the seeds stay valid.
    let exp = 4_102_444_800u64;
    let rooms = json!({"doc": "write", "doc-*": "read", "team/*": "write"});
    let valid = sign(
        &hs256,
        json!({"sub": "u1", "name": "Ada", "exp": exp, "rooms": rooms}),
    );
    let not_yet = sign(
        &hs256,
        json!({"sub": "u1", "exp": exp, "nbf": exp - 60, "rooms": rooms}),
    );
    let expired = sign(
        &hs256,
        json!({"sub": "u1", "exp": 1_000_000, "rooms": rooms}),
    );
    let audience = sign(
        &hs256,
        json!({"sub": "u1", "exp": exp, "aud": "other", "rooms": rooms}),
    );
    let mut critical = hs256.clone();
    critical.crit = Some(vec!["exp".into()]);
    let critical = sign(&critical, json!({"sub": "u1", "exp": exp, "rooms": rooms}));
    let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.";
    let input = |query: &str, authorization: &str, protocol: &str, room: &str| {
        format::token_input(query, authorization, protocol, room)
    };
    vec![
        (
            "query",
            input(&format!("_pk=abc&token={valid}"), "", "", "doc"),
        ),
        (
            "query-prefix-grant",
            input(&format!("token={valid}&x=%20+y"), "", "", "doc-1"),
        ),
        (
            "bearer",
            input("", &format!("Bearer {valid}"), "", "team/a"),
        ),
        (
            "protocol",
            input("", "", &format!("y-protocol, {valid}"), "doc"),
        ),
        (
            "forbidden-room",
            input(&format!("token={valid}"), "", "", "other"),
        ),
        (
            "not-yet-valid",
            input(&format!("token={not_yet}"), "", "", "doc"),
        ),
        (
            "expired",
            input("", &format!("bearer {expired}"), "", "doc"),
        ),
        (
            "audience",
            input(&format!("token={audience}"), "", "", "doc"),
        ),
        ("crit", input(&format!("token={critical}"), "", "", "doc")),
        ("alg-none", input(&format!("token={none}"), "", "", "doc")),
        (
            "garbage",
            input("token=&token=a.b.c", "Basic xyz", "a.b.c, d.e", "doc"),
        ),
    ]
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let targets = [
        ("client_frame", client_frame_seeds()),
        ("batch", batch_seeds()),
        ("room_path", room_path_seeds()),
        ("token", token_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = corpus.join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: usize = seeds.iter().map(|(_, seed)| seed.len()).sum();
        for (name, seed) in &seeds {
            std::fs::write(dir.join(name), seed).unwrap();
        }
        println!("{target}: {} seeds, {bytes} bytes", seeds.len());
    }
}
