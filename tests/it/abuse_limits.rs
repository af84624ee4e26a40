//! Abuse limits through `partyline dev`: connection attempts per address
//! per second and sockets per address are refused with HTTP 429 before the
//! upgrade; a session flooding messages is closed with 1008 while the rest
//! of its room goes on; a `y-pk-batch` left half-sent is closed with 1008
//! at its deadline; every refusal is counted in the log.

use std::time::{Duration, Instant};

use partyline_bench::client::{ClientError, YClient};

use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(10);

async fn refused_status(url: &str) -> u16 {
    match YClient::connect(url).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(ClientError::Rejected { status, .. }) => status,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_attempts_per_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--max-connects-per-ip", "5"]);
    // Twelve attempts at once: five are a second's budget (a little more
    // may refill while they run); the rest get 429.
    let url = server.url("doc-rate");
    let attempts = futures_util::future::join_all((0..12).map(|_| YClient::connect(&url))).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt {
            Ok(client) => admitted.push(client),
            Err(ClientError::Rejected { status: 429, .. }) => refused += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(admitted.len() >= 5, "{} admitted", admitted.len());
    assert!(refused >= 3, "{refused} refused of 12");
    // The budget refills at 5 a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = YClient::connect(&server.url("doc-rate")).await.unwrap();
    late.wait_synced(WAIT).await.unwrap();
    for client in &admitted {
        assert!(client.close_info().is_none(), "admitted clients stay open");
    }
    assert!(
        server.log().contains("connect_rate_total="),
        "the refusals are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_per_address_are_capped_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--max-sockets-per-ip", "3"]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = YClient::connect(&server.url("doc-sockets")).await.unwrap();
        client.wait_synced(WAIT).await.unwrap();
        clients.push(client);
    }
    assert_eq!(refused_status(&server.url("doc-sockets")).await, 429);
    // Closing one frees its place.
    clients.pop().unwrap().close(WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let replacement = loop {
        match YClient::connect(&server.url("doc-sockets")).await {
            Ok(client) => break client,
            Err(ClientError::Rejected { status: 429, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("no place freed: {other}"),
        }
    };
    replacement.wait_synced(WAIT).await.unwrap();
    assert!(server.log().contains("sockets_total=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_is_closed_and_its_room_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &["--max-messages-per-second", "20", "--message-burst", "20"],
    );
    let calm = YClient::connect(&server.url("doc-flood")).await.unwrap();
    calm.wait_synced(WAIT).await.unwrap();
    let flooder = YClient::connect(&server.url("doc-flood")).await.unwrap();
    flooder.wait_synced(WAIT).await.unwrap();
    // Well inside the budget: a handful of edits go through.
    for i in 0..5 {
        flooder.push_text("t", &format!("{i};")).await.unwrap();
    }
    calm.wait_for_text("t", "0;1;2;3;4;", WAIT).await.unwrap();
    // Then 200 messages at once.
    for i in 0..200 {
        if flooder.push_text("t", &format!("f{i};")).await.is_err() {
            break;
        }
    }
    let closed = flooder.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 1008, "{closed}");
    assert!(closed.reason.contains("message rate"), "{closed}");
    // The calm client is untouched and the room still takes its edits
    // (the flooder's last accepted edits may land on either side of it).
    calm.push_text("t", "calm;").await.unwrap();
    let after = YClient::connect(&server.url("doc-flood")).await.unwrap();
    after
        .wait_until(WAIT, |doc| {
            partyline_bench::client::text_of(doc, "t").contains("calm;")
        })
        .await
        .unwrap();
    let expected = after.text("t").await.unwrap();
    calm.wait_for_text("t", &expected, WAIT).await.unwrap();
    assert!(calm.close_info().is_none());
    assert!(server.log().contains("session over its message rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_batch_is_closed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(
        dir.path(),
        &["--batch-timeout", "1s", "--ping-interval", "200ms"],
    );
    let client = YClient::connect(&server.url("doc-batch")).await.unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client
        .send_text(r#"y-pk-batch#{"id":"b1","type":"start","size":2000000,"count":2}"#)
        .await
        .unwrap();
    client.send_binary(vec![0; 1_000_000]).await.unwrap();
    let started = Instant::now();
    // The client keeps answering pings, so only the deadline can close it
    // (--dead-after is 30 s).
    let closed = client.wait_closed(WAIT).await.unwrap();
    assert_eq!(closed.code, 1008, "{closed}");
    assert!(closed.reason.contains("y-pk-batch"), "{closed}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(server.log().contains("y-pk-batch not completed in time"));
    // The room is unharmed.
    let after = YClient::connect(&server.url("doc-batch")).await.unwrap();
    after.wait_synced(WAIT).await.unwrap();
}
