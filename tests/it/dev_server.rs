//! `partyline dev` end to end with the Rust client: bad input, room names,
//! restart after SIGTERM / SIGKILL, and idle unloading.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use partyline_bench::YClient;

use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(10);

async fn synced(server: &DevServer, room: &str) -> YClient {
    let client = YClient::connect(&server.url(room)).await.expect("connect");
    client.wait_synced(WAIT).await.expect("synced");
    client
}

/// A fresh client's view of the room's text `t`.
async fn content(server: &DevServer, room: &str) -> String {
    let client = synced(server, room).await;
    let text = client.text("t").await.expect("read");
    client.close(WAIT).await.expect("close");
    text
}

/// One bad frame a raw client sends.
enum Bad {
    Binary(Vec<u8>),
    Text(&'static str),
}

#[tokio::test]
async fn bad_input_closes_only_the_offending_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--max-message-bytes", "65536"]);
    let room = "bad-input";
    let writer = synced(&server, room).await;
    let watcher = synced(&server, room).await;
    writer.push_text("t", "before").await.unwrap();
    watcher.wait_for_text("t", "before", WAIT).await.unwrap();

    let cases = [
        (
            "random bytes",
            Bad::Binary(vec![0x17, 0xff, 0x03, 0x99, 0x42, 0x00, 0x7e]),
            1002,
        ),
        ("empty frame", Bad::Binary(vec![]), 1002),
        (
            "truncated varint",
            Bad::Binary(vec![0x00, 0x02, 0x85]),
            1002,
        ),
        (
            "update that is not a Yjs update",
            Bad::Binary(vec![0x00, 0x02, 0x03, 0xff, 0xff, 0xff]),
            1002,
        ),
        ("text frame", Bad::Text("hello there"), 1003),
        ("oversized frame", Bad::Binary(vec![0u8; 100_000]), 1009),
        ("bad batch marker", Bad::Text("y-pk-batch#{nope"), 1002),
    ];
    for (name, input, code) in cases {
        let bad = synced(&server, room).await;
        match input {
            Bad::Binary(bytes) => bad.send_binary(bytes).await.unwrap(),
            Bad::Text(text) => bad.send_text(text).await.unwrap(),
        }
        let closed = bad
            .wait_closed(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: not closed: {e}"));
        assert_eq!(closed.code, code, "{name}: closed with {closed}");
        // The room keeps serving its other clients.
        writer.push_text("t", ".").await.unwrap();
        let expected = writer.text("t").await.unwrap();
        watcher
            .wait_for_text("t", &expected, WAIT)
            .await
            .unwrap_or_else(|e| panic!("after {name}: {e}"));
    }
    assert_eq!(
        content(&server, room).await,
        format!("before{}", ".".repeat(7))
    );
    server.assert_no_errors();
}

/// A client still sending an oversized message when the server refuses it
/// must get the 1009 close frame, not a connection reset: the server reads
/// and drops the rest before it closes the socket.
#[tokio::test]
async fn an_oversized_message_still_on_its_way_gets_1009_not_a_reset() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--max-message-bytes", "65536"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url("too-big"))
        .await
        .expect("connect");
    // One masked binary frame declaring 200,000 bytes (a zero mask leaves
    // the payload as is), written by hand in two halves.
    const LEN: usize = 200_000;
    let mut first = vec![0x82, 0x80 | 127];
    first.extend_from_slice(&(LEN as u64).to_be_bytes());
    first.extend_from_slice(&[0; 4]);
    first.extend_from_slice(&[0; LEN / 2]);
    let raw = ws.get_mut();
    raw.write_all(&first).await.expect("first half");
    // The server refuses the frame from its header, long before this.
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.write_all(&[0; LEN / 2])
        .await
        .expect("second half: the server reset the connection instead of reading it");
    raw.flush().await.expect("flush");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {} // the server's handshake frames
                other => panic!("no close frame but {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1009));
    server.assert_no_errors();
}

fn http_get_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = [0u8; 64];
    let n = stream.read(&mut response).unwrap();
    let head = String::from_utf8_lossy(&response[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn room_names_are_decoded_isolated_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &[]);
    let names = [
        "doc-abc123",
        "diagram-xyz789",
        "with_underscore",
        "with.dot",
        "a%20b",
        "a%2Bb",
        "a/b",
        "parties/main/doc-abc123x",
    ];
    for name in names {
        let client = synced(&server, name).await;
        client.push_text("t", name).await.unwrap();
        client.close(WAIT).await.unwrap();
    }
    for name in names {
        assert_eq!(
            content(&server, name).await,
            name,
            "room {name} is not isolated"
        );
    }
    // Percent-decoding happens before the name is used: `a%2Fb` is `a/b`.
    assert_eq!(content(&server, "a%2Fb").await, "a/b");
    // `/parties/main/x` and `/party/x` name room `x`.
    let pk = synced(&server, "parties/main/shared-x").await;
    pk.push_text("t", "pk").await.unwrap();
    let old = synced(&server, "party/shared-x").await;
    old.wait_for_text("t", "pk", WAIT).await.unwrap();
    assert_eq!(content(&server, "shared-x").await, "pk");
    // Another party is another namespace.
    let other = synced(&server, "parties/cursors/shared-x").await;
    other.push_text("t", "other").await.unwrap();
    other.close(WAIT).await.unwrap();
    assert_eq!(content(&server, "shared-x").await, "pk");
    assert_eq!(content(&server, "parties/cursors/shared-x").await, "other");

    assert_eq!(http_get_status(server.addr, "/"), 400);
    assert_eq!(http_get_status(server.addr, "/parties/main/"), 400);
    assert_eq!(
        http_get_status(server.addr, &format!("/{}", "x".repeat(300))),
        400
    );
    assert_eq!(http_get_status(server.addr, "/%ff"), 400);
    assert_eq!(http_get_status(server.addr, "/ok-room"), 101);
    server.assert_no_errors();
}

#[tokio::test]
async fn sigterm_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = DevServer::start(dir.path(), &[]);
    let client = synced(&server, "persist").await;
    for i in 0..100 {
        client.push_text("t", &format!("{i},")).await.unwrap();
    }
    let expected = client.text("t").await.unwrap();
    let watcher = synced(&server, "persist").await;
    watcher.wait_for_text("t", &expected, WAIT).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let closed = client.wait_closed(WAIT).await.unwrap();
    assert_eq!(
        closed.code, 1001,
        "clients are told the server is going away"
    );
    assert!(server.log().contains("stopped"));

    let server = DevServer::start(dir.path(), &[]);
    assert_eq!(content(&server, "persist").await, expected);
    server.assert_no_errors();
}

#[tokio::test]
async fn sigkill_loses_nothing_the_server_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = DevServer::start(dir.path(), &[]);
    let writer = synced(&server, "crash").await;
    let watcher = synced(&server, "crash").await;
    for i in 0..300 {
        writer.push_text("t", &format!("{i};")).await.unwrap();
    }
    let expected = writer.text("t").await.unwrap();
    // Once the watcher has it, the server broadcast it; then kill at once.
    watcher.wait_for_text("t", &expected, WAIT).await.unwrap();
    server.kill();

    let server = DevServer::start(dir.path(), &[]);
    assert_eq!(content(&server, "crash").await, expected);
    server.assert_no_errors();
}

#[tokio::test]
async fn idle_rooms_are_snapshotted_unloaded_and_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &[
            "--idle-timeout",
            "300ms",
            "--upstream-linger",
            "100ms",
            "--snapshot-interval",
            "1h",
        ],
    );
    let client = synced(&server, "sleepy").await;
    client.push_text("t", "zzz").await.unwrap();
    client.wait_for_text("t", "zzz", WAIT).await.unwrap();
    client.close(WAIT).await.unwrap();
    // The idle room writes a snapshot as it unloads.
    let rooms = dir.path().join("rooms");
    let deadline = tokio::time::Instant::now() + WAIT;
    let has_snapshot = || {
        std::fs::read_dir(&rooms)
            .into_iter()
            .flatten()
            .flatten()
            .any(|room| {
                std::fs::read_dir(room.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with("snapshot-"))
            })
    };
    while !has_snapshot() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot after idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(content(&server, "sleepy").await, "zzz");
    server.assert_no_errors();
}

#[tokio::test]
async fn a_silent_socket_is_closed_by_ping_deadline_and_its_awareness_removed() {
    use futures_util::SinkExt;
    use yrs::sync::{Awareness, Message};
    use yrs::updates::encoder::Encode;

    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &["--ping-interval", "200ms", "--dead-after", "1s"],
    );
    let observer = synced(&server, "ghost").await;

    // A peer that announces itself and then never reads again: no pongs,
    // but its TCP connection stays open (a frozen tab, a dead NAT entry).
    let (mut silent, _) = tokio_tungstenite::connect_async(server.url("ghost"))
        .await
        .unwrap();
    let mut awareness = Awareness::new(yrs::Doc::with_client_id(4242));
    awareness.set_local_state_raw(r#"{"user":"ghost"}"#);
    let frame = Message::Awareness(awareness.update().unwrap()).encode_v1();
    silent
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            frame.into(),
        ))
        .await
        .unwrap();
    observer
        .wait_awareness(WAIT, |states| states.contains_key(&4242))
        .await
        .expect("the silent peer's awareness arrives");
    let started = tokio::time::Instant::now();
    observer
        .wait_awareness(WAIT, |states| !states.contains_key(&4242))
        .await
        .expect("the silent peer's awareness is removed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "removed after {waited:?}, before the deadline"
    );
    drop(silent);
    server.assert_no_errors();
}

#[tokio::test]
async fn connections_past_the_limit_get_503_and_a_freed_slot_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--max-connections", "2"]);
    let first = synced(&server, "full").await;
    let second = synced(&server, "full").await;
    match YClient::connect(&server.url("full")).await {
        Err(partyline_bench::client::ClientError::Rejected { status, .. }) => {
            assert_eq!(status, 503)
        }
        other => panic!("third connection was not refused: {other:?}"),
    }
    second.close(WAIT).await.unwrap();
    // The slot frees when the session task ends, just after the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        match YClient::connect(&server.url("full")).await {
            Ok(client) => break client,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(error) => panic!("no slot after a close: {error}"),
        }
    };
    third.wait_synced(WAIT).await.unwrap();
    first.push_text("t", "ok").await.unwrap();
    third.wait_for_text("t", "ok", WAIT).await.unwrap();
    server.assert_no_errors();
}

#[test]
fn a_second_server_on_the_same_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DevServer::start(dir.path(), &[]);
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_partyline"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run partyline");
    assert!(
        !second.status.success(),
        "second server started on a locked data dir"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another partyline process"),
        "stderr: {stderr}"
    );
    assert!(
        second.stdout.is_empty(),
        "second server announced itself: {:?}",
        second.stdout
    );
}

#[tokio::test]
async fn auth_max_session_bounds_how_long_a_session_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("data"), &["--auth-max-session", "1s"]);
    let started = std::time::Instant::now();
    let client = synced(&server, "doc-expiring").await;
    let closed = client.wait_closed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(closed.code, 1008, "{closed}");
    assert!(closed.reason.contains("expired"), "{closed}");
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_secs(1) && lasted < Duration::from_secs(5),
        "{lasted:?}"
    );
}

#[tokio::test]
async fn room_policies_cap_sessions_and_document_size_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("partyline.toml");
    std::fs::write(
        &config,
        "[room_node.policies.\"small-\"]\nmax_sessions = 2\nmax_doc_bytes = 300\n",
    )
    .unwrap();
    let server = DevServer::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );

    // The session cap refuses the next client with a clear reason.
    let first = synced(&server, "small-room").await;
    let second = synced(&server, "small-room").await;
    let third = YClient::connect(&server.url("small-room")).await.unwrap();
    let closed = third.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(closed.code, 1008, "{closed}");
    assert!(closed.reason.contains("room is full"), "{closed}");
    // Other prefixes are not capped.
    let _others: Vec<YClient> =
        futures_util::future::join_all((0..3).map(|_| synced(&server, "big-room"))).await;

    // The size cap refuses growth and tells the writer; content stops.
    for n in 0..40 {
        first
            .push_text("t", &format!("chunk-{n:03};"))
            .await
            .unwrap();
    }
    let denied = first
        .wait_denied(Duration::from_millis(2500))
        .await
        .expect("the writer was told");
    assert!(denied.contains("document too large"), "{denied}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = second.text("t").await.unwrap();
    assert!(
        !seen.is_empty() && seen.len() < 40 * 10,
        "{} bytes got through",
        seen.len()
    );
    assert!(first.close_info().is_none(), "the writer stays connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_policies_set_frame_size_idle_time_and_mode_and_can_refuse_unlisted_rooms() {
    const KEY: &str = "policy-test-api-key";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("partyline.toml");
    std::fs::write(
        &config,
        r#"
[room_node]
refuse_unlisted_rooms = true

[room_node.policies."doc-"]
max_frame_bytes = 4096

[room_node.policies."fast-"]
idle_timeout = "100ms"

[room_node.policies."tmp-"]
mode = "ephemeral"
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = DevServer::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--api-key",
            KEY,
            "--upstream-linger",
            "100ms",
        ],
    );
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("http://{}{path}", server.addr))
            .bearer_auth(KEY)
    };

    // A name no policy lists is refused, on the socket and through the API.
    let stranger = YClient::connect(&server.url("other-room")).await.unwrap();
    let closed = stranger.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 4400, "{closed}");
    assert!(closed.reason.contains("no room policy"), "{closed}");
    let refused = api(reqwest::Method::POST, "/v1/rooms/other-room/warm")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // max_frame_bytes: a large update closes only its sender (1009).
    let writer = synced(&server, "doc-1").await;
    let watcher = synced(&server, "doc-1").await;
    writer.push_text("t", "small;").await.unwrap();
    watcher.wait_for_text("t", "small;", WAIT).await.unwrap();
    writer.push_text("t", &"x".repeat(10_000)).await.unwrap();
    let closed = writer.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 1009, "{closed}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(watcher.text("t").await.unwrap(), "small;");
    assert!(watcher.close_info().is_none());

    // idle_timeout by prefix: fast- unloads within a second, doc- does not.
    for room in ["fast-1", "doc-2"] {
        let client = synced(&server, room).await;
        client.push_text("t", "x").await.unwrap();
        client.close(WAIT).await.unwrap();
    }
    // fast- unloads 200 ms after a look: at most 10 looks, well inside
    // doc-'s 30 s idle timeout.
    assert!(
        server.saw_unloaded(KEY, "fast-1", 10).await,
        "fast-1 never unloaded"
    );
    assert!(
        server.room_loaded(KEY, "doc-2").await,
        "doc-2 unloaded before its idle timeout"
    );

    // mode by policy: tmp- rooms are ephemeral: they store nothing, and
    // refuse document edits (the writer is told) rather than drop them at
    // unload.
    let a = synced(&server, "tmp-1").await;
    let b = synced(&server, "tmp-1").await;
    a.push_text("t", "lost;").await.unwrap();
    let denied = a.wait_denied(WAIT).await.unwrap();
    assert!(denied.contains("ephemeral"), "{denied}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.text("t").await.unwrap(), "");
    let update = crate::common::yjs::edit(&yrs::Doc::new(), "api;");
    let refused = api(reqwest::Method::POST, "/v1/rooms/tmp-1/update")
        .body(update)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let info = server.room_info(KEY, "tmp-1").await;
    assert_eq!(info["mode"], "ephemeral", "{info}");
    assert!(!partyline_room_node::storage::RoomFiles::room_dir(&data, "tmp-1").exists());
    server.assert_no_errors();
}

#[tokio::test]
async fn an_awareness_flood_is_relayed_at_most_once_per_throttle_window() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("partyline.toml");
    std::fs::write(
        &config,
        "[room_node.policies.\"cursor-\"]\nawareness_throttle = \"100ms\"\n",
    )
    .unwrap();
    let server = DevServer::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let flooder = synced(&server, "cursor-board").await;
    let watcher = synced(&server, "cursor-board").await;
    let before = watcher.stats().awareness_received;
    let started = std::time::Instant::now();
    // 1,000 cursor moves, as fast as 1 ms apart allows.
    for x in 0..1000 {
        flooder
            .set_awareness(&serde_json::json!({ "x": x }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let id = flooder.client_id();
    watcher
        .wait_awareness(Duration::from_secs(5), move |states| {
            states.get(&id).is_some_and(|state| state["x"] == 999)
        })
        .await
        .expect("the latest state wins");
    let elapsed = started.elapsed();
    let relayed = watcher.stats().awareness_received - before;
    let windows = elapsed.as_millis() as u64 / 100 + 2;
    eprintln!("{relayed} awareness messages relayed for 1000 updates in {elapsed:?}");
    assert!(
        relayed <= windows,
        "{relayed} relayed in {elapsed:?}: more than one per 100 ms window"
    );
}

/// The gateway multiplexes every room it serves from a node over one
/// HTTP/2 connection, so the node must not cap concurrent streams (hyper's
/// default is 200): the rooms past that would never sync.
#[tokio::test]
async fn more_rooms_than_http2_default_stream_limit_all_sync_over_one_link() {
    const ROOMS: usize = 260;
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &[]);
    let mut clients = Vec::with_capacity(ROOMS);
    for i in 0..ROOMS {
        let client = synced(&server, &format!("many-{i}")).await;
        client
            .push_text("t", &format!("room {i}"))
            .await
            .expect("edit");
        clients.push(client);
    }
    // Every stream still relays: a second client of the last rooms sees
    // the edit made there.
    for i in ROOMS - 5..ROOMS {
        let reader = synced(&server, &format!("many-{i}")).await;
        reader
            .wait_for_text("t", &format!("room {i}"), WAIT)
            .await
            .expect("the room's edit");
    }
}
