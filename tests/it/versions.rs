//! Versions in a cluster of real processes: room nodes logging to a real
//! `redis-server` and snapshotting to a real S3 API (s3s-fs), two gateways.
//! Through either gateway's HTTP API: take, list, fetch and restore, with
//! a live client on each gateway that must converge to the restored
//! version without reconnecting, and a fresh client that must read it.

use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, Transact, Update, WriteTxn};

use crate::common::cluster::{TestCluster, API_KEY};
use crate::common::redis_server::RedisServer;
use crate::common::s3_server::S3Server;

const BUCKET: &str = "versions";
const WAIT: Duration = Duration::from_secs(10);

/// `method path` on gateway `gateway`'s HTTP API: status and body.
async fn call(
    cluster: &TestCluster,
    gateway: usize,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Vec<u8>) {
    let url = format!("http://{}{path}", cluster.gateways[gateway].ready);
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(API_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("gateway API reachable");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap_or_default().to_vec())
}

async fn take(cluster: &TestCluster, gateway: usize, room: &str, label: &str) -> Value {
    let path = format!("/v1/rooms/{room}/versions");
    let body = Some(json!({ "label": label }));
    let (status, body) = call(cluster, gateway, reqwest::Method::POST, &path, body).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

async fn restore(cluster: &TestCluster, gateway: usize, room: &str, id: &str) {
    let path = format!("/v1/rooms/{room}/versions/{id}/restore");
    let (status, body) = call(cluster, gateway, reqwest::Method::POST, &path, None).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
}

/// What a client's document holds: the text `t` and the map `m`.
async fn view(client: &YClient) -> Value {
    json!({
        "t": client.text("t").await.unwrap(),
        "m": client.map_json("m").await.unwrap(),
    })
}

/// Waits until every client's view is `expected`.
async fn converged(clients: &[&YClient], expected: &Value, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut views = Vec::new();
        for client in clients {
            views.push(view(client).await);
        }
        if views.iter().all(|v| v == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {views:?}, want {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_listed_fetched_taken_and_restored_through_any_gateway() {
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // The room nodes read their S3 endpoint and credentials from `AWS_*`
    // variables: set here, they inherit them (nextest runs each test in
    // a process of its own).
    for (key, value) in s3.env() {
        std::env::set_var(key, value);
    }
    let store = format!("s3://{BUCKET}/cluster");
    let cluster = TestCluster::start_with(
        1,
        2,
        2,
        &[
            "--redis",
            &redis.url(),
            "--store",
            &store,
            "--room-mode",
            "doc-=history",
        ],
    );
    let room = "doc-versions";
    let a = YClient::connect(&cluster.url(0, room)).await.unwrap();
    let b = YClient::connect(&cluster.url(1, room)).await.unwrap();
    a.wait_synced(WAIT).await.unwrap();
    b.wait_synced(WAIT).await.unwrap();

    a.push_text("t", "one;").await.unwrap();
    b.map_set("m", "title", "first").await.unwrap();
    let v1_view = json!({ "t": "one;", "m": { "title": "first" } });
    converged(&[&a, &b], &v1_view, "v1 typed").await;
    let v1 = take(&cluster, 0, room, "first").await;

    b.push_text("t", "two;").await.unwrap();
    a.map_set("m", "title", "second").await.unwrap();
    a.map_set("m", "added", "yes").await.unwrap();
    let v2_view = json!({ "t": "one;two;", "m": { "title": "second", "added": "yes" } });
    converged(&[&a, &b], &v2_view, "v2 typed").await;
    let v2 = take(&cluster, 1, room, "second").await;

    a.push_text("t", "three;").await.unwrap();
    b.edit(|txn| {
        let m = txn.get_or_insert_map("m");
        m.remove(txn, "title");
    })
    .await
    .unwrap();
    let later = json!({ "t": "one;two;three;", "m": { "added": "yes" } });
    converged(&[&a, &b], &later, "later edits").await;

    // Listed through either gateway, newest first, with labels and sizes;
    // stored as objects in S3.
    for gateway in [0, 1] {
        let path = format!("/v1/rooms/{room}/versions");
        let (status, body) = call(&cluster, gateway, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200);
        let listed: Value = serde_json::from_slice(&body).unwrap();
        let versions = listed["versions"].as_array().unwrap();
        let at = |id: &Value| versions.iter().position(|v| v["id"] == *id).unwrap();
        assert!(at(&v2["id"]) < at(&v1["id"]), "{listed}");
        assert_eq!(versions[at(&v1["id"])], v1);
        assert_eq!(versions[at(&v2["id"])]["label"], "second");
    }
    let objects = s3.objects(BUCKET);
    for version in [&v1, &v2] {
        let id = version["id"].as_str().unwrap();
        assert!(
            objects.iter().any(|o| o.ends_with(id)),
            "{id} not in {objects:?}"
        );
    }

    // Fetched as an update and as JSON.
    let path = format!("/v1/rooms/{room}/versions/{}", v1["id"].as_str().unwrap());
    let (status, bytes) = call(&cluster, 1, reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(bytes.len() as u64, v1["size"].as_u64().unwrap());
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    assert_eq!(partyline_bench::client::text_of(&doc, "t"), "one;");
    let (status, body) = call(
        &cluster,
        0,
        reqwest::Method::GET,
        &format!("{path}?format=json"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json, v1_view);

    // Restore v1 through gateway 1: both live clients converge, and a
    // fresh client reads v1.
    let started = Instant::now();
    restore(&cluster, 1, room, v1["id"].as_str().unwrap()).await;
    converged(&[&a, &b], &v1_view, "live clients after restoring v1").await;
    eprintln!(
        "restore of v1 to both live clients: {:?}",
        started.elapsed()
    );
    let fresh = YClient::connect(&cluster.url(0, room)).await.unwrap();
    fresh.wait_synced(WAIT).await.unwrap();
    converged(&[&fresh], &v1_view, "a fresh client after restoring v1").await;

    // The newer v2 through gateway 0: everyone reads v2.
    restore(&cluster, 0, room, v2["id"].as_str().unwrap()).await;
    converged(&[&a, &b, &fresh], &v2_view, "clients after restoring v2").await;
    let (status, body) = call(
        &cluster,
        1,
        reqwest::Method::GET,
        &format!("/v1/rooms/{room}/state?format=json"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), v2_view);

    drop(a);
    drop(b);
    drop(fresh);
    let errors = cluster.errors();
    assert!(errors.is_empty(), "{errors:?}");
}
