//! The cluster of DESIGN.md as real processes on loopback: `nats-server`
//! with JetStream, 2 coordinators, 3 room nodes sharing a `file://` store
//! and 2 gateways. Clients are the real npm providers (through Node) and
//! Rust clients on yrs. Nodes are added, drained, SIGTERMed and SIGKILLed
//! under load; no client socket may close and no update may be lost.

use std::time::{Duration, Instant};

use partyline_bench::client::YClient;

use crate::common;
use crate::common::cluster::{owning_nodes, TestCluster};
use crate::common::load::Load;

const SLOTS: usize = 4096;

fn slot_counts(slots: &serde_json::Value) -> Vec<(String, usize)> {
    slots["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["slots"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn owners(slots: &serde_json::Value) -> Vec<String> {
    slots["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect()
}

fn moved(before: &serde_json::Value, after: &serde_json::Value) -> usize {
    owners(before)
        .iter()
        .zip(owners(after))
        .filter(|(a, b)| **a != *b)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_clients_through_two_gateways_converge_and_slots_spread() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let slots = cluster.slots();
    let counts = slot_counts(&slots);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(counts.iter().map(|(_, c)| c).sum::<usize>(), SLOTS);
    for (node, count) in &counts {
        assert!(
            *count as f64 <= 1.5 * SLOTS as f64 / 3.0,
            "{node} owns {count} slots"
        );
    }

    let room = "doc-cluster-npm";
    let js = common::repo_root().join("tests/js");
    let (a, b) = (
        cluster.gateways[0].ready.clone(),
        cluster.gateways[1].ready.clone(),
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .current_dir(js)
            .args(["cluster-converge.mjs", &a, &b, room])
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "npm clients did not converge: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let located = cluster.admin(&["locate", room]);
    let serving = cluster.node_serving(room).expect("a node loaded the room");
    assert_eq!(
        located["node"].as_str(),
        Some(serving.as_str()),
        "{located}"
    );
    // The HTTP API answers through either gateway, from the room's owner,
    // and lists the room from the shared store.
    for gateway in 0..2 {
        let (status, info) = cluster.api_get(gateway, &format!("/v1/rooms/{room}")).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["owner"]["node_id"], located["node"], "{info}");
        let (status, state) = cluster
            .api_get(gateway, &format!("/v1/rooms/{room}/state?format=json"))
            .await;
        assert_eq!(status, 200, "{state}");
        assert!(state.as_object().is_some_and(|o| !o.is_empty()), "{state}");
        let (_, listed) = cluster
            .api_get(gateway, "/v1/rooms?prefix=doc-cluster-")
            .await;
        assert_eq!(listed["rooms"], serde_json::json!([room]), "{listed}");
    }
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());

    // SIGTERM on a gateway sends its clients elsewhere with 1012.
    let client = YClient::connect(&cluster.url(1, room)).await.unwrap();
    client.wait_synced(Duration::from_secs(5)).await.unwrap();
    cluster.gateways[1].signal("TERM");
    let closed = client.wait_closed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(closed.code, 1012, "{closed}");
    let status = cluster.gateways[1].wait(Duration::from_secs(10));
    assert!(status.success(), "gateway exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_without_closing_any_socket() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let before = cluster.slots();
    let load = Load::start(&cluster, "join", 12, 2, Duration::from_millis(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.add_node();
    let after = cluster.wait_for_nodes_in_map(4, Duration::from_secs(15));
    let moved = moved(&before, &after);
    assert!(moved <= SLOTS * 30 / 100, "{moved} slots moved");
    assert!(moved > 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.finish().await;
    assert!(
        cluster.node_serving("join-0").is_some(),
        "room loads are logged"
    );
    // 12 rooms, each with a quarter chance to move: at least one did.
    let reopened = cluster.reopened_rooms();
    eprintln!("{moved} slots moved; gateways re-opened {reopened} room streams");
    assert!(reopened > 0, "no room moved: the test proved nothing");
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_sigterm_move_rooms_without_closing_any_socket() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let load = Load::start(&cluster, "drain", 12, 2, Duration::from_millis(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An operator drains node-0; later undrains it.
    cluster.admin(&["drain", "node-0"]);
    cluster.wait_for_slots(Duration::from_secs(15), "node-0 drained", |slots| {
        slot_counts(slots)
            .iter()
            .all(|(id, count)| id != "node-0" || *count == 0)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.admin(&["undrain", "node-0"]);
    cluster.wait_for_nodes_in_map(3, Duration::from_secs(15));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let reopened = cluster.reopened_rooms();
    assert!(reopened > 0, "draining node-0 moved no room");
    // SIGTERM on node-1: it drains and exits 0.
    let serving_node_1 = load
        .rooms
        .iter()
        .filter(|room| cluster.node_serving(room).as_deref() == Some("node-1"))
        .count();
    let status = cluster.nodes[1].terminate(Duration::from_secs(25));
    assert!(status.success(), "node-1 exited with {status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish().await;
    eprintln!(
        "drain and undrain re-opened {reopened} rooms; SIGTERM moved the {serving_node_1} rooms of node-1"
    );
    assert!(
        cluster.reopened_rooms() >= reopened + serving_node_1,
        "every room of node-1 moved"
    );
    assert!(cluster.errors().is_empty(), "{:?}", cluster.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_within_five_seconds_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let load = Load::start(&cluster, "kill", 12, 2, Duration::from_millis(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim_rooms: Vec<String> = load
        .rooms
        .iter()
        .filter(|room| cluster.node_serving(room).as_deref() == Some("node-2"))
        .cloned()
        .collect();
    assert!(!victim_rooms.is_empty(), "node-2 serves none of the rooms");

    let killed_at = Instant::now();
    cluster.nodes[2].kill();
    // Each of its rooms is served again: a fresh client syncs through it.
    for room in &victim_rooms {
        let probe = loop {
            if let Ok(client) = YClient::connect(&cluster.url(0, room)).await {
                if client.wait_synced(Duration::from_secs(1)).await.is_ok() {
                    break client;
                }
            }
            assert!(killed_at.elapsed() < Duration::from_secs(15));
        };
        drop(probe);
    }
    let recovered = killed_at.elapsed();
    eprintln!("rooms of the killed node served again after {recovered:?}");
    assert!(
        recovered < Duration::from_secs(5),
        "recovery took {recovered:?}"
    );
    load.finish().await;
    assert_eq!(owning_nodes(&cluster.slots()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_five_seconds_without_a_new_epoch() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let load = Load::start(&cluster, "leader", 4, 2, Duration::from_millis(50)).await;
    let epoch = cluster.epoch();
    let leader = cluster.admin(&["nodes"])["leader"]
        .as_str()
        .expect("leader id")
        .to_owned();
    let index: usize = leader
        .strip_prefix("coordinator-")
        .and_then(|i| i.parse().ok())
        .expect("leader is a test coordinator");
    let killed_at = Instant::now();
    cluster.coordinators[index].kill();
    // Sessions never pause: an edit crosses the room at once, leader or not.
    let (writer, reader) = (&load.clients[0].1, &load.clients[1].1);
    writer.push_text("t", "leaderless;").await.unwrap();
    reader
        .wait_until(Duration::from_secs(1), |doc| {
            partyline_bench::client::text_of(doc, "t").contains("leaderless;")
        })
        .await
        .expect("an edit synced while the leader was dead");
    let new_leader = loop {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_partyline"))
            .args(["admin", "--nats", &cluster.nats.url(), "nodes", "--json"])
            .output()
            .unwrap();
        if output.status.success() {
            let nodes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            if let Some(id) = nodes["leader"].as_str().filter(|id| *id != leader) {
                break id.to_owned();
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "no new leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed_at.elapsed();
    eprintln!("{new_leader} leads {took:?} after the kill");
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.epoch(), epoch, "membership did not change");
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_syncing_while_nats_is_down() {
    let mut cluster = TestCluster::start(2, 3, 2);
    let load = Load::start(&cluster, "natsdown", 6, 2, Duration::from_millis(50)).await;
    let epoch = cluster.epoch();
    cluster.nats.stop();
    let stopped = Instant::now();
    // Mid-outage, an edit still reaches the room's other client at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writer = &load.clients[0].1;
    let reader = load
        .clients
        .iter()
        .find(|(room, client, _)| *room == 0 && client.client_id() != writer.client_id())
        .map(|(_, client, _)| client.clone())
        .expect("room 0 has two clients");
    writer.push_text("t", "during-the-outage;").await.unwrap();
    reader
        .wait_until(Duration::from_secs(2), |doc| {
            partyline_bench::client::text_of(doc, "t").contains("during-the-outage;")
        })
        .await
        .expect("synced while NATS is down");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    cluster.nats.restart();
    // Membership resumes without restarts: the map is back and unchanged.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let slots = cluster.wait_for_nodes_in_map(3, Duration::from_secs(20));
    assert_eq!(slots["epoch"].as_u64(), Some(epoch));
    load.finish().await;
    for process in cluster.nodes.iter_mut().chain(&mut cluster.gateways) {
        assert!(process.is_running());
    }
}
