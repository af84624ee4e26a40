//! The sessions API in a cluster: two gateways with webhook auth (the
//! webhook answered here), users on different gateways, one room. Any
//! gateway lists every session of the room, closes one user's sessions
//! wherever they are connected, and a recheck asked through one gateway
//! reaches the sessions on the other: one user is downgraded to read-only
//! (their next edit is refused and reaches nobody), another is closed
//! with 4401.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use partyline_bench::client::{text_of, YClient};

use crate::common::cluster::{TestCluster, API_KEY};

const WAIT: Duration = Duration::from_secs(15);

/// What the webhook answers now, by token: (access, user), or 403.
type Grants = Arc<Mutex<HashMap<String, (&'static str, &'static str)>>>;

async fn webhook(grants: Grants) -> String {
    let answer = move |axum::Json(body): axum::Json<serde_json::Value>| {
        let grants = grants.clone();
        async move {
            let token = body["token"].as_str().unwrap_or_default();
            match grants.lock().unwrap().get(token) {
                Some((access, user)) => (
                    axum::http::StatusCode::OK,
                    axum::Json(serde_json::json!({"access": access, "user": {"id": user}})),
                ),
                None => (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(serde_json::json!({})),
                ),
            }
        }
    };
    let app = axum::Router::new().route("/auth", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// `method path` on gateway `index`'s API: status and JSON body.
async fn api(
    cluster: &TestCluster,
    index: usize,
    method: reqwest::Method,
    path: &str,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", cluster.gateways[index].ready);
    let response = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway API reachable");
    (
        response.status().as_u16(),
        response.json().await.unwrap_or_default(),
    )
}

/// (user, access, gateway) of every session, sorted.
async fn sessions(
    cluster: &TestCluster,
    index: usize,
    room: &str,
) -> Vec<(String, String, String)> {
    let (status, body) = api(
        cluster,
        index,
        reqwest::Method::GET,
        &format!("/v1/rooms/{room}/sessions"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut sessions: Vec<_> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |name: &str| s[name].as_str().unwrap().to_owned();
            (field("user"), field("access"), field("gateway"))
        })
        .collect();
    sessions.sort();
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_closed_and_rechecked_across_gateways() {
    let grants = Grants::default();
    for (token, user) in [("t-alice", "alice"), ("t-bob", "bob"), ("t-carol", "carol")] {
        grants.lock().unwrap().insert(token.into(), ("write", user));
    }
    let url = webhook(grants.clone()).await;
    let mut cluster = TestCluster::start(1, 2, 0);
    let auth = ["--auth-mode", "webhook", "--webhook-url", &url];
    cluster.add_gateway_with(&auth);
    cluster.add_gateway_with(&auth);
    let room = "doc-sessions";
    let connect = |gateway: usize, token: &str| {
        let url = format!("{}?token={token}", cluster.url(gateway, room));
        async move { YClient::connect(&url).await }
    };
    let alice = connect(0, "t-alice").await.unwrap();
    let bob = connect(1, "t-bob").await.unwrap();
    let carol = connect(1, "t-carol").await.unwrap();
    for client in [&alice, &bob, &carol] {
        client.wait_synced(WAIT).await.unwrap();
    }

    // Either gateway lists all three, each on the gateway it is connected to.
    let listed = sessions(&cluster, 1, room).await;
    assert_eq!(listed, sessions(&cluster, 0, room).await);
    let users: Vec<&str> = listed.iter().map(|(user, ..)| user.as_str()).collect();
    assert_eq!(users, ["alice", "bob", "carol"]);
    assert!(listed.iter().all(|(_, access, _)| access == "write"));
    let gateway_of = |user: &str| listed.iter().find(|s| s.0 == user).unwrap().2.clone();
    assert_ne!(gateway_of("alice"), gateway_of("bob"));
    assert_eq!(gateway_of("bob"), gateway_of("carol"));

    // A recheck asked through gateway 0 reaches bob on gateway 1 too.
    grants
        .lock()
        .unwrap()
        .insert("t-alice".into(), ("read", "alice"));
    grants.lock().unwrap().remove("t-bob");
    let (status, body) = api(
        &cluster,
        0,
        reqwest::Method::POST,
        &format!("/v1/rooms/{room}/sessions/recheck"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["rechecking"], 3);
    let closed = bob.wait_closed(WAIT).await.unwrap();
    assert_eq!(
        (closed.code, closed.reason.as_str()),
        (4401, "access revoked")
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sessions(&cluster, 1, room)
        .await
        .iter()
        .any(|s| s.0 == "alice" && s.1 == "read")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never became read-only"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alice.push_text("t", "refused;").await.unwrap();
    alice.wait_denied(WAIT).await.unwrap();
    carol.push_text("t", "carol;").await.unwrap();
    // Alice's own copy still holds her refused edit beside carol's.
    alice
        .wait_until(WAIT, |doc| text_of(doc, "t").contains("carol;"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        carol.text("t").await.unwrap(),
        "carol;",
        "a refused edit reached carol"
    );

    // Closing carol's sessions through gateway 0 closes her on gateway 1.
    let (status, body) = api(
        &cluster,
        0,
        reqwest::Method::DELETE,
        &format!("/v1/rooms/{room}/sessions?user=carol"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], 1);
    let closed = carol.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 4401);
    assert!(alice.close_info().is_none(), "alice was closed too");
    let left: Vec<String> = sessions(&cluster, 0, room)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(left, ["alice"]);
}
