//! Hostile clients with a valid grant, against `partyline dev`: none of
//! them takes the process down or touches another user's presence.
//!
//! - Shared types nested past the room's limit are refused before they are
//!   applied (the writer is closed with 1002 and told why), and a document
//!   nested just inside it can be overwritten, rendered as JSON and sent to
//!   the state callback with the process still serving.
//! - An awareness client id belongs to the session that announced it: a
//!   spoofed update changes nothing for the victim, and the attacker's
//!   close removes only its own ids.
//! - y-partyserver custom messages (`__YPS:`) from read-only sessions are
//!   not relayed.
//! - Formatting whose render costs the square of the document (thousands
//!   of attributes over thousands of runs) is refused when rendered as
//!   JSON — the API answers 413, the state callback sends `data: null` —
//!   and the process keeps serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use partyline_bench::client::YClient;
use yrs::types::{Attrs, Delta};
use yrs::{Any, Doc, In, Map, MapPrelim, MapRef, Text, WriteTxn, XmlFragment, XmlTextPrelim};

use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(15);
const KEY: &str = "hostile-test-api-key-0123456789";

/// Nests `levels` maps under the root map `m`, key `k` at every level,
/// in one transaction.
fn nest(txn: &mut yrs::TransactionMut<'_>, levels: usize) {
    let mut parent: MapRef = txn.get_or_insert_map("m");
    for _ in 0..levels {
        parent = parent.insert(txn, "k", MapPrelim::default());
    }
}

/// An XML text of `runs` characters under `keys` attributes, and under
/// one more on every other character: each run copies every attribute
/// when rendered.
fn quadratic_formatting(txn: &mut yrs::TransactionMut<'_>, keys: usize, runs: usize) {
    let fragment = txn.get_or_insert_xml_fragment("prosemirror");
    let text = fragment.push_back(txn, XmlTextPrelim::new(""));
    text.insert(txn, 0, &"b".repeat(runs));
    let open: Attrs = (0..keys)
        .map(|k| (format!("k{k}").into(), Any::Bool(true)))
        .collect();
    text.format(txn, 0, runs as u32, open);
    let z: Attrs = [("z".into(), Any::Bool(true))].into();
    let toggles = (0..runs).map(|run| match run % 2 {
        0 => Delta::<In>::Retain(1, Some(Box::new(z.clone()))),
        _ => Delta::Retain(1, None),
    });
    text.apply_delta(txn, toggles);
}

/// The state callbacks the app received, raw.
#[derive(Default)]
struct App {
    callbacks: Mutex<Vec<Bytes>>,
}

async fn callback(State(app): State<Arc<App>>, body: Bytes) -> StatusCode {
    app.callbacks.lock().unwrap().push(body);
    StatusCode::OK
}

async fn serve_app(app: Arc<App>) -> String {
    let router = axum::Router::new()
        .route("/callback", axum::routing::post(callback))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// `partyline dev` with the API on, calling the app back with each
/// room's state 100-300 ms after its edits.
async fn serve_with_callback() -> (Arc<App>, tempfile::TempDir, DevServer) {
    let app = Arc::new(App::default());
    let base = serve_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let callback_url = format!("{base}/callback");
    let server = DevServer::start(
        dir.path(),
        &[
            "--api-key",
            KEY,
            "--callback-url",
            &callback_url,
            "--debounce-wait",
            "100ms",
            "--debounce-max-wait",
            "300ms",
        ],
    );
    (app, dir, server)
}

async fn state_json(server: &DevServer, room: &str) -> (u16, String) {
    state_as(server, room, "json").await
}

async fn state_as(server: &DevServer, room: &str, format: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/rooms/{room}/state?format={format}",
            server.addr
        ))
        .bearer_auth(KEY)
        .timeout(WAIT)
        .send()
        .await
        .expect("state request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_nested_past_the_limit_are_refused_and_the_process_keeps_serving() {
    let (app, _dir, server) = serve_with_callback().await;
    let url = server.url("doc-deep");

    // 8,000 levels in one ~95 KB update: yrs would recurse that deep on
    // overwrite or render. Refused before it is applied.
    let attacker = YClient::connect(&url).await.unwrap();
    attacker.wait_synced(WAIT).await.unwrap();
    let _ = attacker.edit(|txn| nest(txn, 8_000)).await;
    let closed = attacker.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 1002, "{closed}");
    assert!(closed.reason.contains("nested deeper than 256"), "{closed}");

    // Just inside the limit (root map 1 + 250 levels): accepted, then
    // overwritten at the top by a higher client id (yrs deletes the whole
    // subtree recursively), rendered as JSON and called back.
    let builder = YClient::connect_with_doc(&url, Doc::with_client_id(1))
        .await
        .unwrap();
    builder.wait_synced(WAIT).await.unwrap();
    builder.edit(|txn| nest(txn, 250)).await.unwrap();
    let (status, json) = state_json(&server, "doc-deep").await;
    assert_eq!(status, 200, "{json}");
    assert!(json.starts_with(r#"{"m":{"k":{"k":"#), "{json:.100}");
    let overwriter = YClient::connect_with_doc(&url, Doc::with_client_id(u32::MAX as u64))
        .await
        .unwrap();
    overwriter.wait_synced(WAIT).await.unwrap();
    overwriter.map_set("m", "k", "flat").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while builder.map_json("m").await.unwrap()["k"] != "flat" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "overwrite not echoed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, json) = state_json(&server, "doc-deep").await;
    assert_eq!((status, json.as_str()), (200, r#"{"m":{"k":"flat"}}"#));

    // The process served all of it, and still does.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.callbacks.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no state callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = YClient::connect(&url).await.unwrap();
    fresh.wait_synced(WAIT).await.unwrap();
    assert_eq!(fresh.map_json("m").await.unwrap()["k"], "flat");
    assert!(builder.close_info().is_none() && overwriter.close_info().is_none());
    assert!(server.log().contains("nested deeper than 256"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_that_renders_quadratically_is_refused_and_the_process_keeps_serving() {
    // The default --max-render-bytes (128 MiB).
    let (app, _dir, server) = serve_with_callback().await;

    // 2,000 attributes over 2,000 runs: a 185 KB update whose JSON would
    // copy ~290 MB of formatting (4,000 × 4,000 in 373 KB measured at
    // 231 MB of JSON and 1.8 GB of memory; ten times the keys and runs is
    // a hundred times that).
    let attacker = YClient::connect(&server.url("doc-marks")).await.unwrap();
    attacker.wait_synced(WAIT).await.unwrap();
    attacker
        .edit(|txn| quadratic_formatting(txn, 2_000, 2_000))
        .await
        .unwrap();
    let plain = YClient::connect(&server.url("doc-plain")).await.unwrap();
    plain.wait_synced(WAIT).await.unwrap();
    plain.push_text("t", "still here").await.unwrap();
    // The edit is logged once the room's state holds it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, update) = state_as(&server, "doc-marks", "update").await;
        assert_eq!(status, 200);
        if update.len() > 100_000 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "edit not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for format in ["json", "prosemirror"] {
        let (status, body) = state_as(&server, "doc-marks", format).await;
        assert_eq!(status, 413, "{format}: {body:.200}");
        assert!(body.contains("--max-render-bytes"), "{body}");
    }
    // The callback still carries the state, without its rendering.
    let deadline = tokio::time::Instant::now() + WAIT;
    let called_back = loop {
        let found = app.callbacks.lock().unwrap().iter().find_map(|body| {
            let body: serde_json::Value = serde_json::from_slice(body).ok()?;
            let whole = body["state"].as_str().is_some_and(|s| s.len() > 100_000);
            (body["room"] == "doc-marks" && whole).then_some(body)
        });
        if let Some(body) = found {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "no callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        called_back["data"].is_null(),
        "{:.200}",
        called_back["data"]
    );
    assert!(called_back["state"].as_str().unwrap().len() > 100_000);
    assert!(server.log().contains("state callback sends data: null"));

    // Everything else is served as before.
    let (status, json) = state_json(&server, "doc-plain").await;
    assert_eq!((status, json.as_str()), (200, r#"{"t":"still here"}"#));
    let fresh = YClient::connect(&server.url("doc-marks")).await.unwrap();
    fresh.wait_synced(WAIT).await.unwrap();
    assert!(attacker.close_info().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_presence_changes_nothing_and_a_close_removes_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &[]);
    let url = server.url("doc-presence");
    let victim = YClient::connect(&url).await.unwrap();
    victim.wait_synced(WAIT).await.unwrap();
    victim
        .set_awareness(&serde_json::json!({"user": "ann"}))
        .await
        .unwrap();
    let victim_id = victim.client_id();
    let watcher = YClient::connect(&url).await.unwrap();
    watcher.wait_synced(WAIT).await.unwrap();
    watcher
        .wait_awareness(WAIT, move |states| states.get(&victim_id).is_some())
        .await
        .unwrap();

    // The attacker speaks for the victim's id, with a higher clock: a
    // rename, then a removal.
    let attacker = YClient::connect(&url).await.unwrap();
    attacker.wait_synced(WAIT).await.unwrap();
    attacker
        .set_awareness(&serde_json::json!({"user": "mallory"}))
        .await
        .unwrap();
    let attacker_id = attacker.client_id();
    for (clock, state) in [(1_000, r#"{"user":"pwned"}"#), (1_001, "null")] {
        let mut update = yrs::sync::AwarenessUpdate {
            clients: Default::default(),
        };
        update.clients.insert(
            yrs::ClientID::new(victim_id),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock,
                json: state.into(),
            },
        );
        let frame =
            yrs::updates::encoder::Encode::encode_v1(&yrs::sync::Message::Awareness(update));
        attacker.send_binary(frame).await.unwrap();
    }
    watcher
        .wait_awareness(WAIT, move |states| states.get(&attacker_id).is_some())
        .await
        .unwrap();
    // A later renewal from the victim goes through as usual; the watcher
    // still sees "ann", never "pwned", and the victim is still there.
    victim
        .set_awareness(&serde_json::json!({"user": "ann", "n": 2}))
        .await
        .unwrap();
    watcher
        .wait_awareness(WAIT, move |states| {
            states.get(&victim_id).is_some_and(|s| s["n"] == 2)
        })
        .await
        .unwrap();
    let seen = watcher.awareness_states().await.unwrap();
    assert_eq!(seen[&victim_id]["user"], "ann", "{seen:?}");

    // The attacker leaves: only its own id goes.
    attacker.close(WAIT).await.unwrap();
    watcher
        .wait_awareness(WAIT, move |states| !states.contains_key(&attacker_id))
        .await
        .unwrap();
    let seen = watcher.awareness_states().await.unwrap();
    assert_eq!(seen[&victim_id]["user"], "ann", "{seen:?}");
    assert!(victim.close_info().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_messages_from_read_only_sessions_are_not_relayed() {
    const SECRET: &str = "hostile-clients-test-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--auth-mode", "jwt", "--jwt-secret", SECRET]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let url = |grant: &str| {
        let claims = serde_json::json!({"sub": grant, "exp": exp, "rooms": {"doc-yps": grant}});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        server.url(&format!("doc-yps?token={token}"))
    };
    let viewer = YClient::connect(&url("read")).await.unwrap();
    let writer = YClient::connect(&url("write")).await.unwrap();
    let observer = YClient::connect(&url("write")).await.unwrap();
    for client in [&viewer, &writer, &observer] {
        client.wait_synced(WAIT).await.unwrap();
    }
    // Each sender's awareness follows its custom message on the same
    // socket, so once the observer sees the awareness, the message before
    // it has been relayed or dropped.
    for (sender, relayed) in [(&viewer, 0), (&writer, 1)] {
        sender.send_text("__YPS:{\"hello\":1}").await.unwrap();
        sender
            .set_awareness(&serde_json::json!({"n": 1}))
            .await
            .unwrap();
        let id = sender.client_id();
        observer
            .wait_awareness(WAIT, move |states| states.contains_key(&id))
            .await
            .unwrap();
        assert_eq!(observer.stats().text_frames_ignored, relayed);
    }
    assert!(viewer.close_info().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_costs_one_document_not_one_per_request() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as Ws;

    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &[]);
    let url = server.url("doc-amplify");
    // A 1 MiB document.
    let writer = YClient::connect(&url).await.unwrap();
    writer.wait_synced(WAIT).await.unwrap();
    for i in 0..16 {
        writer
            .push_text("t", &format!("{i:x}").repeat(64 * 1024))
            .await
            .unwrap();
    }
    let check = YClient::connect(&url).await.unwrap();
    check
        .wait_until(WAIT, |doc| {
            partyline_bench::client::text_of(doc, "t").len() >= 16 * 64 * 1024
        })
        .await
        .unwrap();
    let before = server.rss_bytes();

    // 300 four-byte SyncStep1 frames from a socket that never reads: each
    // would be answered with the whole document.
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    for _ in 0..300 {
        if socket.send(Ws::binary(vec![0u8, 0, 1, 0])).await.is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = server.rss_bytes();
    // Once it reads, it finds at most one answer (and is perhaps closed as
    // too slow, 1008): the repeats were dropped, not queued.
    let mut received = 0usize;
    let mut closed = None;
    loop {
        use futures_util::StreamExt;
        match tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
            Ok(Some(Ok(Ws::Close(frame)))) => {
                closed = frame;
                break;
            }
            Ok(Some(Ok(other))) => received += other.len(),
            Ok(_) | Err(_) => break,
        }
    }
    // A client asking again and again is no provider: closed.
    let close = closed.expect("the repeating client was closed");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(
        received < 2 * 1024 * 1024 + 64 * 1024,
        "{received} bytes sent to a client that asked 300 times"
    );
    let growth = during.saturating_sub(before);
    eprintln!(
        "RSS before {} MiB, while ignored {} MiB; {received} bytes sent",
        before >> 20,
        during >> 20
    );
    assert!(
        growth < 64 * 1024 * 1024,
        "resident memory grew by {} MiB for one client",
        growth / (1024 * 1024)
    );
    // The writer was never disturbed.
    writer.push_text("t", "still").await.unwrap();
    assert!(writer.close_info().is_none());
}
