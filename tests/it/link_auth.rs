//! The gRPC link's shared secret against real processes: a room node —
//! `partyline dev`'s loopback one included — answers UNAUTHENTICATED to
//! every RPC without an accepted secret, and a cluster rotates its secret
//! (old and new accepted during the overlap) without closing a client
//! socket.

use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use partyline_proto::link::{self, LinkAuth, LinkSecret};
use partyline_proto::pb::{self, room_node_client::RoomNodeClient};
use tonic::{Code, Status};

use crate::common;
use crate::common::cluster::TestCluster;
use crate::common::DevServer;

/// Each RPC once, with `channel`'s authentication: the status of each.
async fn call_every_rpc<T>(mut client: RoomNodeClient<T>) -> Vec<(&'static str, Result<(), Status>)>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let room = || pb::RoomRequest {
        room: "doc-intruder".to_owned(),
        epoch: u64::MAX,
    };
    let attach = pb::GatewayFrame {
        kind: Some(pb::gateway_frame::Kind::Attach(pb::Attach {
            room: "doc-intruder".to_owned(),
            epoch: u64::MAX,
            gateway_id: "intruder".to_owned(),
        })),
    };
    let mut answers = Vec::new();
    answers.push((
        "OpenRoom",
        client
            .open_room(tokio_stream::iter([attach]))
            .await
            .map(drop),
    ));
    answers.push(("RoomInfo", client.room_info(room()).await.map(drop)));
    answers.push((
        "RoomState",
        client
            .room_state(pb::RoomStateRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    answers.push((
        "ApplyUpdate",
        client
            .apply_update(pb::ApplyUpdateRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    answers.push((
        "DeleteRoom",
        client
            .delete_room(pb::DeleteRoomRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                purge: true,
            })
            .await
            .map(drop),
    ));
    answers.push(("RestoreRoom", client.restore_room(room()).await.map(drop)));
    answers.push(("WarmRoom", client.warm_room(room()).await.map(drop)));
    answers.push((
        "ListRooms",
        client
            .list_rooms(pb::ListRoomsRequest::default())
            .await
            .map(drop),
    ));
    answers.push(("ListSessions", client.list_sessions(room()).await.map(drop)));
    answers.push((
        "CloseSessions",
        client
            .close_sessions(pb::CloseSessionsRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                user: "victim".to_owned(),
            })
            .await
            .map(drop),
    ));
    answers.push((
        "RecheckSessions",
        client.recheck_sessions(room()).await.map(drop),
    ));
    answers.push(("ListVersions", client.list_versions(room()).await.map(drop)));
    answers.push((
        "GetVersion",
        client
            .get_version(pb::GetVersionRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                id: "snapshot-1.bin".to_owned(),
                ..Default::default()
            })
            .await
            .map(drop),
    ));
    answers.push((
        "TakeVersion",
        client
            .take_version(pb::TakeVersionRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                label: None,
            })
            .await
            .map(drop),
    ));
    answers.push((
        "RestoreVersion",
        client
            .restore_version(pb::RestoreVersionRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                id: "snapshot-1.bin".to_owned(),
            })
            .await
            .map(drop),
    ));
    answers.push((
        "SendMessage",
        client
            .send_message(pb::SendMessageRequest {
                room: "doc-intruder".to_owned(),
                epoch: u64::MAX,
                message: "phish".to_owned(),
            })
            .await
            .map(drop),
    ));
    answers
}

fn channel(url: &str) -> tonic::transport::Channel {
    partyline_proto::rt::endpoint(url.to_owned())
        .expect("endpoint")
        .connect_lazy()
}

/// Every RPC on `url`, once without any secret and once with a wrong one,
/// is refused as UNAUTHENTICATED.
async fn assert_every_rpc_unauthenticated(url: &str) {
    let wrong = LinkAuth::Secret(LinkSecret::fixed("not-the-link-secret-0123456789").unwrap());
    let without = call_every_rpc(RoomNodeClient::new(channel(url))).await;
    let with_wrong =
        call_every_rpc(RoomNodeClient::new(link::node_channel(channel(url), wrong))).await;
    assert_eq!(without.len(), 16, "every RPC of the RoomNode service");
    for (rpc, answer) in without.into_iter().chain(with_wrong) {
        let code = answer.as_ref().err().map(Status::code);
        assert_eq!(
            code,
            Some(Code::Unauthenticated),
            "{rpc} on {url}: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_answers_its_loopback_grpc_port_only_with_its_own_secret() {
    let dir = tempfile::tempdir().unwrap();
    let dev = DevServer::start(&dir.path().join("data"), &[]);
    let log = dev.log();
    let grpc_addr = log
        .split("grpc_addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("dev logged no grpc_addr:\n{log}"))
        .to_owned();
    assert_every_rpc_unauthenticated(&format!("http://{grpc_addr}")).await;

    // Its own gateway holds the secret: a client edits as before.
    let client = YClient::connect(&dev.url("doc-dev")).await.unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    client.push_text("t", "still works").await.unwrap();
    let second = YClient::connect(&dev.url("doc-dev")).await.unwrap();
    second
        .wait_for_text("t", "still works", Duration::from_secs(10))
        .await
        .unwrap();
}

/// Waits until every process of `cluster` logged `count` reloads of the
/// link secret file.
async fn wait_for_reloads(cluster: &TestCluster, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let behind: Vec<usize> = cluster
            .nodes
            .iter()
            .chain(&cluster.gateways)
            .chain(&cluster.coordinators)
            .map(|process| process.log().matches("gRPC link secrets reloaded").count())
            .filter(|&seen| seen < count)
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} processes did not reload the link secret {count} times",
            behind.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_secret_rotates_without_closing_a_client_socket() {
    let cluster = TestCluster::start(1, 2, 1);
    let nodes = cluster.admin(&["nodes"]);
    let urls: Vec<String> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["grpc_url"].as_str().expect("grpc_url").to_owned())
        .collect();
    assert_eq!(urls.len(), 2, "{nodes}");
    for url in &urls {
        assert_every_rpc_unauthenticated(url).await;
    }

    // Writers and readers on rooms spread over both nodes.
    let rooms: Vec<String> = (0..6).map(|i| format!("doc-rotate-{i}")).collect();
    let mut pairs = Vec::new();
    for room in &rooms {
        let writer = YClient::connect(&cluster.url(0, room)).await.unwrap();
        let reader = YClient::connect(&cluster.url(0, room)).await.unwrap();
        writer.wait_synced(Duration::from_secs(10)).await.unwrap();
        reader.wait_synced(Duration::from_secs(10)).await.unwrap();
        pairs.push((writer, reader));
    }
    let epoch = cluster.epoch();
    let serving: std::collections::BTreeSet<String> = rooms
        .iter()
        .filter_map(|room| cluster.node_serving(room))
        .collect();
    assert_eq!(serving.len(), 2, "the rooms should span both nodes");

    let old = common::TEST_LINK_SECRET;
    let new = "partyline-rotated-link-secret-9876543210";
    let file = cluster.link_secret_file();
    let mut written = String::new();
    // 1. Every process accepts the new secret; the old one is still sent.
    // 2. The new one is sent, the old one still accepted.
    // 3. Only the new one.
    for (step, contents) in [
        format!("{old}\n{new}\n"),
        format!("{new}\n{old}\n"),
        format!("{new}\n"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&file, &contents).unwrap();
        wait_for_reloads(&cluster, step + 1).await;
        for (i, (writer, reader)) in pairs.iter().enumerate() {
            let chunk = format!("s{step}c{i};");
            writer.push_text("t", &chunk).await.unwrap();
            written.push_str(&chunk);
            let expected = writer.text("t").await.unwrap();
            reader
                .wait_for_text("t", &expected, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("step {step}, room {i}: {e}"));
        }
        // A room stream opened now uses the secret being sent.
        let fresh = YClient::connect(&cluster.url(0, &format!("doc-fresh-{step}")))
            .await
            .unwrap();
        fresh
            .wait_synced(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("a new session after step {step}: {e}"));
    }
    assert!(!written.is_empty());
    // Heartbeat proofs followed the rotation too: no node was refused.
    assert_eq!(
        cluster.epoch(),
        epoch,
        "the slot map changed during the rotation"
    );
    for (i, (writer, reader)) in pairs.iter().enumerate() {
        assert!(
            writer.close_info().is_none() && reader.close_info().is_none(),
            "room {i}: a socket closed during the rotation: {:?} {:?}",
            writer.close_info(),
            reader.close_info()
        );
    }

    // The old secret is refused now; the new one is accepted.
    for url in &urls {
        let old_auth = LinkAuth::Secret(LinkSecret::fixed(old).unwrap());
        let answer = RoomNodeClient::new(link::node_channel(channel(url), old_auth))
            .list_rooms(pb::ListRoomsRequest::default())
            .await;
        assert_eq!(
            answer.as_ref().err().map(Status::code),
            Some(Code::Unauthenticated),
            "the old secret still works on {url}: {answer:?}"
        );
        let new_auth = LinkAuth::Secret(LinkSecret::fixed(new).unwrap());
        let answer = RoomNodeClient::new(link::node_channel(channel(url), new_auth))
            .list_rooms(pb::ListRoomsRequest::default())
            .await;
        assert!(
            answer.is_ok(),
            "the new secret is refused on {url}: {answer:?}"
        );
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());

    // A gateway that still has only the old secret serves nothing, and
    // says why.
    let stale_file = cluster.dir.path().join("stale-secret");
    std::fs::write(&stale_file, format!("{old}\n")).unwrap();
    let log = cluster.dir.path().join("stale-gateway.log");
    let stale = common::process::Partyline::start(
        &[
            "gateway",
            "--nats",
            &cluster.nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--insecure-no-auth",
            "--owner-unreachable-timeout",
            "2s",
            "--grpc-secret-file",
            &stale_file.display().to_string(),
        ]
        .map(String::from),
        "info",
        &log,
        "partyline gateway listening on ws://",
    );
    let client = YClient::connect(&format!("ws://{}/doc-rotate-0", stale.ready))
        .await
        .unwrap();
    let closed = client
        .wait_closed(Duration::from_secs(15))
        .await
        .expect("the stale gateway's client is closed");
    assert_eq!(closed.code, 1013, "{closed:?}");
    assert!(
        stale
            .log()
            .contains("the room node refused this gateway's gRPC link secret"),
        "{}",
        stale.log()
    );
}
