//! The webhook authorizer against a small HTTP server in the test: allow
//! (write and read), deny, bad token, slow (timeout → refused), 500
//! (refused), and answers cached, proven by the server's request count.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::common::status_of;
use crate::common::DevServer;

type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// The app's permission check: the token says what to answer.
async fn check(State(counts): State<Counts>, body: String) -> axum::response::Response {
    let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let json = |value: serde_json::Value| {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    let token = request["token"].as_str().unwrap_or("").to_owned();
    *counts.lock().unwrap().entry(token.clone()).or_default() += 1;
    match token.as_str() {
        "allow-write" => {
            json(serde_json::json!({"access": "write", "user": {"id": "u1", "name": "Ada"}}))
        }
        "allow-read" => json(serde_json::json!({"access": "read", "user": {"id": "u2"}})),
        "deny" => StatusCode::FORBIDDEN.into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json(serde_json::json!({"access": "write"}))
        }
        "boom" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// The app's check on a loopback port, and `partyline dev` asking it with
/// `extra_args`; the temp dir must outlive the server.
async fn with_webhook(extra_args: &[&str]) -> (DevServer, Counts, tempfile::TempDir) {
    let counts: Counts = Arc::default();
    let app = axum::Router::new()
        .route("/auth", axum::routing::post(check))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/auth", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--auth-mode", "webhook", "--webhook-url", &hook];
    args.extend_from_slice(extra_args);
    let server = DevServer::start(&dir.path().join("data"), &args);
    (server, counts, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_decides_fails_closed_and_is_cached() {
    let (server, counts, _dir) =
        with_webhook(&["--webhook-timeout", "500ms", "--cache-ttl", "60s"]).await;
    let url = |token: &str| server.url(&format!("doc-hook?_pk=x&token={token}"));

    let writer = status_of(&url("allow-write")).await.expect("allowed");
    writer.wait_synced(Duration::from_secs(5)).await.unwrap();
    writer.push_text("t", "hello;").await.unwrap();
    let reader = status_of(&url("allow-read"))
        .await
        .expect("allowed to read");
    reader
        .wait_for_text("t", "hello;", Duration::from_secs(5))
        .await
        .unwrap();
    reader.push_text("t", "sneaky;").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reader.stats().auth_denied.is_some(), "the reader was told");
    assert_eq!(writer.text("t").await.unwrap(), "hello;");

    assert_eq!(status_of(&url("deny")).await.err(), Some(403));
    assert_eq!(status_of(&url("nope")).await.err(), Some(401));
    let started = Instant::now();
    assert_eq!(
        status_of(&url("slow")).await.err(),
        Some(503),
        "timeout fails closed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        status_of(&url("boom")).await.err(),
        Some(503),
        "500 fails closed"
    );

    // Cached: the same request again is not asked again; failures are.
    for _ in 0..3 {
        let again = status_of(&url("allow-write")).await.expect("allowed");
        drop(again);
        assert_eq!(status_of(&url("deny")).await.err(), Some(403));
    }
    assert_eq!(status_of(&url("boom")).await.err(), Some(503));
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts["allow-write"], 1, "{counts:?}");
    assert_eq!(counts["deny"], 1, "{counts:?}");
    assert_eq!(counts["boom"], 2, "failures are not cached: {counts:?}");
    server.assert_no_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_ignores_the_connection_id_and_long_queries_are_refused_unasked() {
    let (server, counts, _dir) =
        with_webhook(&["--cache-ttl", "60s", "--max-query-bytes", "1024"]).await;
    // y-partykit sends a fresh `_pk` on every connect: still one webhook call.
    for pk in ["a1", "b2", "c3"] {
        let client = status_of(&server.url(&format!("doc-pk?_pk={pk}&token=allow-write")))
            .await
            .expect("allowed");
        client.wait_synced(Duration::from_secs(5)).await.unwrap();
    }
    // A query over the cap is refused before the webhook is asked.
    let junk = "j".repeat(2000);
    let long = server.url(&format!("doc-pk?token=allow-read&junk={junk}"));
    assert_eq!(status_of(&long).await.err(), Some(414));
    // Within the cap, other params are a different request (the webhook
    // sees them), asked once each.
    for _ in 0..2 {
        status_of(&server.url("doc-pk?_pk=z&token=allow-read&junk=1"))
            .await
            .expect("allowed to read");
    }
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.get("allow-write"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("allow-read"), Some(&1), "{counts:?}");
    assert!(server
        .log()
        .contains("refused query string over max_query_bytes"));
    server.assert_no_errors();
}
