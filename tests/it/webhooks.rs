//! Webhooks against a small HTTP server in the test, through `partyline
//! dev`: the debounced state callback (latest state within
//! `debounce_max_wait` during continuous edits, its Standard Webhooks
//! signature checked here with its own HMAC, a failing receiver retried)
//! and the
//! initial-content hook (`load_url`, asked once per new room).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use hmac::{Hmac, Mac};
use partyline_bench::client::YClient;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use crate::common::DevServer;

/// `whsec_` + base64 of 32 bytes of 0x2a.
const SECRET: &str = "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
const API_KEY: &str = "webhook-test-api-key";
const WAIT: Duration = Duration::from_secs(10);

/// One callback as the app received it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    body: serde_json::Value,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    signature: [String; 3],
    raw: Bytes,
    answered: u16,
}

#[derive(Default)]
struct App {
    callbacks: Mutex<Vec<Received>>,
    /// Answer 500 to this many callbacks first.
    fail_first: Mutex<usize>,
    loads: Mutex<HashMap<String, usize>>,
    /// Each load request's Authorization header and whether its Standard
    /// Webhooks signature verified, by room.
    load_requests: Mutex<HashMap<String, (String, bool)>>,
}

async fn callback(State(app): State<Arc<App>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let status = {
        let mut fail = app.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    };
    app.callbacks.lock().unwrap().push(Received {
        at: Instant::now(),
        body: serde_json::from_slice(&raw).unwrap_or_default(),
        signature: signed_headers(&headers),
        raw,
        answered: status.as_u16(),
    });
    status
}

/// `load_url`: a template for rooms named `doc-template-*`, nothing for
/// the others.
async fn load(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    // JSON {"room"}, or (binary format) an empty body and the room in
    // X-Partyline-Room.
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let room = match request["room"].as_str() {
        Some(room) => room.to_owned(),
        None => headers
            .get("x-partyline-room")
            .and_then(|v| v.to_str().ok())
            // Percent-encoded; the test's room names need none.
            .map(str::to_owned)
            .unwrap_or_default(),
    };
    *app.loads.lock().unwrap().entry(room.clone()).or_default() += 1;
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let signed = signature_verifies(&signed_headers(&headers), &body);
    app.load_requests
        .lock()
        .unwrap()
        .insert(room.clone(), (authorization, signed));
    if !room.starts_with("doc-template-") {
        return StatusCode::NO_CONTENT.into_response();
    }
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        txn.get_or_insert_text("t").insert(&mut txn, 0, "template;");
    }
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    (StatusCode::OK, update).into_response()
}

async fn serve_app(app: Arc<App>) -> String {
    let router = axum::Router::new()
        .route("/callback", axum::routing::post(callback))
        .route("/load", axum::routing::post(load))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

/// The Standard Webhooks headers of a request ("" for a missing one).
fn signed_headers(headers: &HeaderMap) -> [String; 3] {
    ["webhook-id", "webhook-timestamp", "webhook-signature"].map(|name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    })
}

/// Checks Standard Webhooks headers: `v1,<base64>` of HMAC-SHA256 of
/// "<id>.<timestamp>.<body>" keyed with the secret's decoded bytes, with a
/// timestamp within five minutes of now.
fn signature_verifies([id, timestamp, signature]: &[String; 3], body: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if timestamp
        .parse::<u64>()
        .map_or(true, |t| t.abs_diff(now) > 300)
        || !id.starts_with("msg_")
    {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", b64.encode(mac.finalize().into_bytes()));
    signature.split(' ').any(|given| given == expected)
}

/// `partyline dev` sending signed callbacks to `base`; `extra` sets the
/// debounce.
fn start_calling_back(dir: &std::path::Path, base: &str, extra: &[&str]) -> DevServer {
    let url = format!("{base}/callback");
    let mut args = vec!["--callback-url", &url, "--webhook-secret", SECRET];
    args.extend_from_slice(extra);
    DevServer::start(dir, &args)
}

/// Root text `t` of the callback's base64 state.
fn text_of_callback(body: &serde_json::Value) -> String {
    let state = base64::engine::general_purpose::STANDARD
        .decode(body["state"].as_str().expect("state"))
        .expect("base64 state");
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    text.get_string(&txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_bring_the_latest_state_within_max_wait_signed() {
    let app = Arc::new(App::default());
    let base = serve_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_calling_back(
        dir.path(),
        &base,
        &["--debounce-wait", "300ms", "--debounce-max-wait", "1s"],
    );
    let client = YClient::connect(&server.url("doc-callback")).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();

    // Continuous edits for 4 s, never quiet for the 300 ms debounce: only
    // debounce_max_wait makes callbacks go out.
    let started = Instant::now();
    let mut edits = 0;
    while started.elapsed() < Duration::from_secs(4) {
        client.push_text("t", &format!("{edits};")).await.unwrap();
        edits += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let final_text = client.text("t").await.unwrap();
    let stopped = Instant::now();
    // The final state goes out (by max_wait, or the quiet after the last
    // edit).
    let deadline = stopped + WAIT;
    loop {
        let last = app.callbacks.lock().unwrap().last().cloned();
        if last.is_some_and(|r| text_of_callback(&r.body) == final_text) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "final state never called back: {:?} vs {final_text}",
            app.callbacks
                .lock()
                .unwrap()
                .iter()
                .map(|r| (
                    r.at.duration_since(started),
                    text_of_callback(&r.body).len()
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = app.callbacks.lock().unwrap().clone();
    let during: Vec<&Received> = received.iter().filter(|r| r.at <= stopped).collect();
    eprintln!(
        "{edits} edits in 4 s; {} callbacks during them, {} in all",
        during.len(),
        received.len()
    );
    // Without max_wait no callback would go out while edits keep coming
    // every 100 ms (debounce 300 ms). With it: one per second, each no more
    // than max_wait (plus scheduling slack on a loaded CI machine) after
    // the previous one.
    assert!(
        during.len() >= 3,
        "{} callbacks during 4 s of edits",
        during.len()
    );
    let mut previous = started;
    let mut longest = Duration::ZERO;
    for callback in &during {
        longest = longest.max(callback.at - previous);
        previous = callback.at;
    }
    eprintln!("longest gap between callbacks during edits: {longest:?}");
    assert!(longest < Duration::from_secs(2), "callback gap {longest:?}");
    for callback in &received {
        assert_eq!(callback.answered, 200);
        assert_eq!(callback.body["room"], "doc-callback");
        assert!(
            signature_verifies(&callback.signature, &callback.raw),
            "bad signature {:?}",
            callback.signature
        );
        // The JSON rendering matches the state it came with.
        assert_eq!(
            callback.body["data"]["t"].as_str().unwrap(),
            text_of_callback(&callback.body)
        );
        // A tampered body does not verify.
        let mut tampered = callback.raw.to_vec();
        tampered[0] ^= 1;
        assert!(!signature_verifies(&callback.signature, &tampered));
    }
    // Each callback carries the state as it was then: texts only grow, and
    // so does the version an app orders them by.
    for pair in received.windows(2) {
        assert!(text_of_callback(&pair[1].body).starts_with(&text_of_callback(&pair[0].body)));
        let taken = |r: &Received| r.body["taken_unix_ms"].as_u64().expect("taken_unix_ms");
        assert!(taken(&pair[1]) >= taken(&pair[0]));
        assert_eq!(pair[1].body["epoch"], pair[0].body["epoch"]);
    }
    server.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_until_it_takes_the_state() {
    let app = Arc::new(App::default());
    *app.fail_first.lock().unwrap() = 2;
    let base = serve_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_calling_back(dir.path(), &base, &["--debounce-wait", "100ms"]);
    let client = YClient::connect(&server.url("doc-retry")).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client.push_text("t", "must-arrive;").await.unwrap();
    // 500, retry after 1 s: 500, retry after 2 s: 200.
    let deadline = Instant::now() + WAIT;
    while !app
        .callbacks
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.answered == 200)
    {
        assert!(Instant::now() < deadline, "the state never got through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = app.callbacks.lock().unwrap().clone();
    let answers: Vec<u16> = received.iter().map(|r| r.answered).collect();
    assert_eq!(answers, [500, 500, 200]);
    let gaps: Vec<Duration> = received.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(900), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(1900), "{gaps:?}");
    for callback in &received {
        assert_eq!(text_of_callback(&callback.body), "must-arrive;");
        assert!(signature_verifies(&callback.signature, &callback.raw));
    }
    assert!(server.log().contains("state callback failed; retrying"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_url_fills_a_new_room_once() {
    let app = Arc::new(App::default());
    let base = serve_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &[
            "--load-url",
            &format!("{base}/load"),
            "--idle-timeout",
            "200ms",
            "--upstream-linger",
            "100ms",
            "--api-key",
            API_KEY,
        ],
    );
    let room = "doc-template-1";
    let first = YClient::connect(&server.url(room)).await.unwrap();
    first.wait_synced(WAIT).await.unwrap();
    assert_eq!(first.text("t").await.unwrap(), "template;");
    first.push_text("t", "edited;").await.unwrap();
    let second = YClient::connect(&server.url(room)).await.unwrap();
    second
        .wait_for_text("t", "template;edited;", WAIT)
        .await
        .unwrap();
    // Unloaded and loaded again: the content is stored, the hook not asked.
    first.close(WAIT).await.unwrap();
    second.close(WAIT).await.unwrap();
    // It unloads 300 ms after each look.
    assert!(
        server.saw_unloaded(API_KEY, room, 10).await,
        "the room never unloaded"
    );
    let again = YClient::connect(&server.url(room)).await.unwrap();
    again
        .wait_for_text("t", "template;edited;", WAIT)
        .await
        .unwrap();
    assert_eq!(app.loads.lock().unwrap().get(room), Some(&1));

    // A 204 starts the room empty.
    let plain = YClient::connect(&server.url("doc-plain")).await.unwrap();
    plain.wait_synced(WAIT).await.unwrap();
    assert_eq!(plain.text("t").await.unwrap(), "");
    assert_eq!(app.loads.lock().unwrap().get("doc-plain"), Some(&1));
    server.assert_no_errors();
}

/// One lifecycle event as the receiver got it.
#[derive(Debug, Clone)]
struct Delivery {
    body: serde_json::Value,
    signature: [String; 3],
    raw: Bytes,
    answered: u16,
}

#[derive(Default)]
struct EventSink {
    deliveries: Mutex<Vec<Delivery>>,
    /// Answer 503 to this many deliveries first.
    fail_first: Mutex<usize>,
}

async fn event(State(sink): State<Arc<EventSink>>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let status = {
        let mut fail = sink.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::NO_CONTENT
        }
    };
    sink.deliveries.lock().unwrap().push(Delivery {
        body: serde_json::from_slice(&raw).unwrap_or_default(),
        signature: signed_headers(&headers),
        raw,
        answered: status.as_u16(),
    });
    status
}

impl EventSink {
    /// The delivered events' types for `room`, in arrival order.
    fn kinds(&self, room: &str) -> Vec<String> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.answered < 300 && d.body["data"]["room"] == room)
            .map(|d| d.body["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn wait_for(&self, room: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let kinds = self.kinds(room);
            if kinds.len() >= count || Instant::now() > deadline {
                return kinds;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_arrive_signed_in_order_and_a_failing_receiver_is_retried() {
    let sink = Arc::new(EventSink::default());
    // The first two deliveries fail: the first event is retried twice.
    *sink.fail_first.lock().unwrap() = 2;
    let router = axum::Router::new()
        .route("/events", axum::routing::post(event))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &[
            "--events-url",
            &url,
            "--webhook-secret",
            SECRET,
            "--idle-timeout",
            "300ms",
            "--upstream-linger",
            "100ms",
            "--api-key",
            API_KEY,
        ],
    );
    let room = "doc-events";
    let client = YClient::connect(&server.url(room)).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    // Partyline keeps serving while the receiver fails: another room syncs.
    let other = YClient::connect(&server.url("doc-other")).await.unwrap();
    other.wait_synced(WAIT).await.unwrap();
    client.push_text("t", "edit;").await.unwrap();
    let closed = client.close(WAIT).await.unwrap();
    assert_eq!(closed.code, 1000);
    assert!(
        server.saw_unloaded(API_KEY, room, 20).await,
        "the room never unloaded"
    );
    let deleted = reqwest::Client::new()
        .delete(format!("http://{}/v1/rooms/{room}", server.addr))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let restored = reqwest::Client::new()
        .post(format!("http://{}/v1/rooms/{room}/restore", server.addr))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), 200);
    let kinds = sink.wait_for(room, 7).await;
    assert_eq!(
        kinds,
        [
            "room.loaded",
            "session.opened",
            "session.closed",
            "room.unloaded",
            "room.loaded",
            "room.deleted",
            "room.restored"
        ]
    );

    let deliveries = sink.deliveries.lock().unwrap().clone();
    // The failed first event came again, with its id, until it was taken.
    let first_id = &deliveries[0].signature[0];
    let tries: Vec<u16> = deliveries
        .iter()
        .filter(|d| &d.signature[0] == first_id)
        .map(|d| d.answered)
        .collect();
    assert_eq!(tries, [503, 503, 204]);
    let ours: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| d.answered < 300 && d.body["data"]["room"] == room)
        .collect();
    for delivery in &ours {
        assert!(
            signature_verifies(&delivery.signature, &delivery.raw),
            "unsigned event {:?}",
            delivery.body
        );
    }
    let ids: std::collections::HashSet<&String> = ours.iter().map(|d| &d.signature[0]).collect();
    assert_eq!(ids.len(), ours.len(), "event ids repeat");
    let closed = &ours[2].body["data"];
    assert_eq!(closed["close_code"], 1000);
    assert_eq!(closed["user"], "");
    assert_eq!(closed["access"], "write");
    assert!(closed["duration_ms"].as_u64().is_some());
    assert_eq!(ours[3].body["data"]["reason"], "idle");
    assert_eq!(ours[5].body["data"]["reason"], "deleted");
    assert_eq!(ours[6].body["data"]["reason"], "restored");
    assert_eq!(ours[0].body["data"]["stored"], false);
    assert_eq!(ours[4].body["data"]["stored"], true);
    assert!(ours[0].body["timestamp"].as_str().unwrap().ends_with('Z'));
    server.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_url_in_the_binary_format_gets_the_room_in_a_header_signed_with_the_extra_headers() {
    let app = Arc::new(App::default());
    let base = serve_app(app.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let load_url = format!("{base}/load");
    let server = DevServer::start(
        dir.path(),
        &[
            "--load-url",
            &load_url,
            "--callback-format",
            "binary",
            "--callback-header",
            "Authorization: Bearer load-token",
            "--webhook-secret",
            SECRET,
        ],
    );
    let room = "doc-template-bin";
    let client = YClient::connect(&server.url(room)).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    assert_eq!(client.text("t").await.unwrap(), "template;");
    let requests = app.load_requests.lock().unwrap().clone();
    assert_eq!(
        requests.get(room),
        Some(&("Bearer load-token".to_owned(), true)),
        "{requests:?}"
    );
    server.assert_no_errors();
}
