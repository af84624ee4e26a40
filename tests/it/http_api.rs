//! The gateway's HTTP API end to end: every route with and without the API
//! key against `partyline dev` (embedded file store), and against a room
//! node on a real `redis-server` with snapshots in a store directory, where
//! `DELETE` keeps the room restorable (refusing its clients with 4404)
//! and a purge — asked for, or at the end of the retention — must leave
//! nothing in the log, the snapshot list, the room index or the store.

use std::time::Duration;

use partyline_bench::client::YClient;
use partyline_room_node::storage::remote::{RemoteStorage, SnapshotStore};
use partyline_room_node::storage::RoomFiles;
use redis::Commands;
use reqwest::StatusCode;
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update, WriteTxn};

use crate::common;
use crate::common::redis_server::RedisServer;
use crate::common::DevServer;

const KEY: &str = "test-api-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// An API client on one gateway.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: impl std::fmt::Display) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("API reachable");
        let status = response.status();
        (status, response.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        self.call(reqwest::Method::GET, path, Some(KEY), None).await
    }

    async fn json(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.call(method, path, Some(KEY), None).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn post_update(&self, room: &str, update: Vec<u8>) -> StatusCode {
        let path = format!("/v1/rooms/{room}/update");
        self.call(reqwest::Method::POST, &path, Some(KEY), Some(update))
            .await
            .0
    }
}

/// A Yjs update setting root text `t` of a fresh document to `text`.
fn text_update(text: &str) -> Vec<u8> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        txn.get_or_insert_text("t").insert(&mut txn, 0, text);
    }
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

fn text_of_state(state: &[u8]) -> String {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(state).unwrap())
        .unwrap();
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    text.get_string(&txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_with_the_key_and_none_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--api-key", KEY]);
    let api = Api::new(server.addr);
    use reqwest::Method;

    // Without a key (or with a wrong one) every room route is 401 and
    // touches nothing; the OpenAPI document is public.
    let routes = [
        (Method::GET, "/v1/rooms"),
        (Method::GET, "/v1/rooms/doc-a"),
        (Method::DELETE, "/v1/rooms/doc-a"),
        (Method::GET, "/v1/rooms/doc-a/state"),
        (Method::POST, "/v1/rooms/doc-a/update"),
        (Method::POST, "/v1/rooms/doc-a/warm"),
        (Method::POST, "/v1/rooms/doc-a/restore"),
    ];
    for (method, path) in &routes {
        for key in [None, Some("wrong-key-wrong-key")] {
            let body = (*method == Method::POST).then(|| text_update("sneaky"));
            let (status, _) = api.call(method.clone(), path, key, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} key {key:?}"
            );
        }
    }
    let (status, body) = api.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let openapi: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(openapi["openapi"], "3.0.3");
    assert_eq!(api.get("/v1/rooms/doc-a").await.0, StatusCode::NOT_FOUND);
    assert!(
        !dir.path().join("rooms").exists(),
        "a refused call stored something"
    );

    // A live client; its room shows up with it.
    let client = YClient::connect(&server.url("doc-a")).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client.push_text("t", "hello;").await.unwrap();
    let (status, info) = api.json(Method::GET, "/v1/rooms/doc-a").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["room"], "doc-a");
    assert_eq!(info["sessions"], 1);
    assert_eq!(info["loaded"], true);
    assert_eq!(info["mode"], "snapshot");
    assert_eq!(info["owner"]["node_id"], "dev");
    assert!(info["doc_bytes"].as_u64().unwrap() > 0);
    assert!(info["slot"].as_u64().unwrap() < 4096);

    // State, as an update and as JSON.
    let (status, state) = api.get("/v1/rooms/doc-a/state").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text_of_state(&state), "hello;");
    let (_, json) = api
        .json(Method::GET, "/v1/rooms/doc-a/state?format=json")
        .await;
    assert_eq!(json, serde_json::json!({"t": "hello;"}));
    assert_eq!(
        api.get("/v1/rooms/doc-a/state?format=xml").await.0,
        StatusCode::BAD_REQUEST
    );

    // A server-side update reaches the client; garbage is refused.
    let base = Doc::new();
    base.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let sv = base.transact().state_vector();
    {
        let text = base.get_or_insert_text("t");
        let mut txn = base.transact_mut();
        text.insert(&mut txn, 6, "from-api;");
    }
    let update = base.transact().encode_state_as_update_v1(&sv);
    assert_eq!(
        api.post_update("doc-a", update).await,
        StatusCode::NO_CONTENT
    );
    client
        .wait_for_text("t", "hello;from-api;", WAIT)
        .await
        .unwrap();
    assert_eq!(
        api.post_update("doc-a", vec![0xff, 0xfe, 0xfd]).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(client.text("t").await.unwrap(), "hello;from-api;");

    // Warm: a stored room not in memory loads; then it is loaded.
    for name in ["list-b", "list-a", "list-c", "other"] {
        let update = text_update(name);
        assert_eq!(api.post_update(name, update).await, StatusCode::NO_CONTENT);
    }
    let (status, warmed) = api.json(Method::POST, "/v1/rooms/doc-warm/warm").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(warmed["was_loaded"], false);
    let (_, warmed) = api.json(Method::POST, "/v1/rooms/doc-warm/warm").await;
    assert_eq!(warmed["was_loaded"], true);

    // Listing: stored rooms by prefix, two per page.
    let mut listed = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/rooms?prefix=list-&limit=2&cursor={cursor}");
        let (status, page) = api.json(Method::GET, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let names = page["rooms"].as_array().unwrap();
        assert!(names.len() <= 2);
        listed.extend(names.iter().map(|n| n.as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed, ["list-a", "list-b", "list-c"]);
    let (_, all) = api.json(Method::GET, "/v1/rooms").await;
    let all: Vec<&str> = all["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // doc-warm was only loaded, never written: it has nothing stored.
    assert_eq!(all, ["doc-a", "list-a", "list-b", "list-c", "other"]);
    assert_eq!(
        api.get("/v1/rooms?limit=0").await.0,
        StatusCode::BAD_REQUEST
    );

    // Delete for good: the client is closed with 4404 and the room's
    // files are gone (a plain DELETE keeps them: tests/js/delete.test.mjs).
    let room_dir = RoomFiles::room_dir(dir.path(), "doc-a");
    assert!(room_dir.exists());
    let (status, deleted) = api.json(Method::DELETE, "/v1/rooms/doc-a?purge=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["deleted"], true);
    let close = client.wait_closed(WAIT).await.unwrap();
    assert_eq!(close.code, 4404, "{close:?}");
    assert!(!room_dir.exists(), "room files left after DELETE");
    assert_eq!(api.get("/v1/rooms/doc-a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/v1/rooms/doc-a/state").await.0,
        StatusCode::NOT_FOUND
    );
    let (_, again) = api.json(Method::DELETE, "/v1/rooms/doc-a?purge=true").await;
    assert_eq!(again["deleted"], false);
    let (_, all) = api.json(Method::GET, "/v1/rooms?prefix=doc-").await;
    assert_eq!(all["rooms"], serde_json::json!([]));

    // A new client of the deleted room starts empty.
    let fresh = YClient::connect(&server.url("doc-a")).await.unwrap();
    fresh.wait_synced(WAIT).await.unwrap();
    assert_eq!(fresh.text("t").await.unwrap(), "");
    server.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_nothing_in_redis_or_the_snapshot_store() {
    let redis = RedisServer::start();
    let snapshots = tempfile::tempdir().unwrap();
    let store = SnapshotStore::from_url(&format!("file://{}", snapshots.path().display())).unwrap();
    let storage = RemoteStorage::connect(&redis.url(), store, "api")
        .await
        .unwrap();
    let (url, addr, shutdown) = common::inproc::serve_with_api(storage, KEY, |config| {
        // Snapshots early and often, so there are some to delete.
        config.snapshot_log_updates = 5;
        config.delete_retention = Duration::from_secs(2);
    })
    .await;
    let api = Api::new(addr);

    let client = YClient::connect(&format!("{url}/doc-gone")).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    for i in 0..20 {
        client.push_text("t", &format!("{i};")).await.unwrap();
    }
    let keeper = YClient::connect(&format!("{url}/doc-kept")).await.unwrap();
    keeper.wait_synced(WAIT).await.unwrap();
    keeper.push_text("t", "kept;").await.unwrap();

    let mut conn = redis.connection();
    let room_keys = |conn: &mut redis::Connection| -> Vec<String> {
        let mut keys: Vec<String> = conn.keys("api:r:*").unwrap();
        keys.sort();
        keys
    };
    // Snapshots registered for the room, and the index knows both rooms.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let snapshotted = room_keys(&mut conn).iter().any(|k| k.ends_with(":snaps"));
        let indexed: Vec<String> = conn.zrange("api:rooms", 0, -1).unwrap();
        if snapshotted && indexed == ["doc-gone", "doc-kept"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot written: {snapshotted}, indexed: {indexed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = partyline_room_node::storage::remote::room_id("doc-gone");
    assert!(snapshots.path().join("rooms").join(&id).exists());

    // A plain delete keeps everything, refuses clients, and is undone by
    // a restore.
    let (status, deleted) = api
        .json(reqwest::Method::DELETE, "/v1/rooms/doc-gone")
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(
        (&deleted["deleted"], &deleted["purged"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(client.wait_closed(WAIT).await.unwrap().code, 4404);
    let kept = room_keys(&mut conn);
    for suffix in [":log", ":snaps", ":tombstone"] {
        assert!(
            kept.iter().any(|k| k.contains(&id) && k.ends_with(suffix)),
            "{suffix} in {kept:?}"
        );
    }
    let indexed: Vec<String> = conn.zrange("api:rooms", 0, -1).unwrap();
    assert_eq!(indexed, ["doc-kept"], "a deleted room is not listed");
    let refused = YClient::connect(&format!("{url}/doc-gone")).await.unwrap();
    assert_eq!(refused.wait_closed(WAIT).await.unwrap().code, 4404);
    assert_eq!(
        api.get("/v1/rooms/doc-gone/state").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = api
        .json(reqwest::Method::POST, "/v1/rooms/doc-gone/restore")
        .await;
    assert_eq!(status, StatusCode::OK);
    let back = YClient::connect(&format!("{url}/doc-gone")).await.unwrap();
    back.wait_synced(WAIT).await.unwrap();
    let all: String = (0..20).map(|i| format!("{i};")).collect();
    assert_eq!(back.text("t").await.unwrap(), all);
    let indexed: Vec<String> = conn.zrange("api:rooms", 0, -1).unwrap();
    assert_eq!(indexed, ["doc-gone", "doc-kept"]);

    // A purge leaves nothing.
    let (status, deleted) = api
        .json(reqwest::Method::DELETE, "/v1/rooms/doc-gone?purge=true")
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["purged"], true);
    assert_eq!(back.wait_closed(WAIT).await.unwrap().code, 4404);

    let left: Vec<String> = room_keys(&mut conn)
        .into_iter()
        .filter(|k| k.contains(&id))
        .collect();
    assert!(left.is_empty(), "Redis keys left: {left:?}");
    let indexed: Vec<String> = conn.zrange("api:rooms", 0, -1).unwrap();
    assert_eq!(indexed, ["doc-kept"]);
    let objects: Vec<_> = std::fs::read_dir(snapshots.path().join("rooms").join(&id))
        .map(|dir| dir.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(objects.is_empty(), "snapshots left: {objects:?}");
    // The other room is untouched and still served.
    assert_eq!(api.get("/v1/rooms/doc-kept").await.0, StatusCode::OK);
    let (_, page) = api.json(reqwest::Method::GET, "/v1/rooms").await;
    assert_eq!(page["rooms"], serde_json::json!(["doc-kept"]));
    assert_eq!(keeper.text("t").await.unwrap(), "kept;");

    // The end of the retention (2 s here) purges a deleted room as well.
    let (status, _) = api
        .json(reqwest::Method::DELETE, "/v1/rooms/doc-kept")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keeper.wait_closed(WAIT).await.unwrap().code, 4404);
    let kept_id = partyline_room_node::storage::remote::room_id("doc-kept");
    assert!(room_keys(&mut conn).iter().any(|k| k.contains(&kept_id)));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: Vec<String> = room_keys(&mut conn)
            .into_iter()
            .filter(|k| k.contains(&kept_id))
            .collect();
        let deleted: Vec<String> = conn.zrange("api:tombstones", 0, -1).unwrap();
        if left.is_empty() && deleted.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not purged: {left:?}, {deleted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_names_with_control_characters_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(&dir.path().join("data"), &["--api-key", KEY]);
    let api = Api::new(server.addr);
    for name in ["doc%0Aforged%20line", "doc%7F", "doc%C2%85", "doc%09tab"] {
        assert_eq!(
            common::status_of(&server.url(name)).await.err(),
            Some(400),
            "upgrade to {name}"
        );
        for (method, path) in [
            (reqwest::Method::GET, format!("/v1/rooms/{name}")),
            (reqwest::Method::POST, format!("/v1/rooms/{name}/update")),
            (reqwest::Method::DELETE, format!("/v1/rooms/{name}")),
        ] {
            let body = (method == reqwest::Method::POST).then(|| text_update("x"));
            let (status, body) = api.call(method.clone(), &path, Some(KEY), body).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The refusal is logged escaped: no raw newline from a client.
    let log = server.log();
    assert!(!log.contains("doc\nforged"), "{log}");
    let fine = YClient::connect(&server.url("doc%20fine")).await.unwrap();
    fine.wait_synced(WAIT).await.unwrap();
    server.assert_no_errors();
}
