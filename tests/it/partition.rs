//! Split brain under a real network partition (issue 18): a room node in a
//! network namespace of its own is cut off from NATS alone, while a gateway
//! in the same namespace (so on the old slot map too) keeps routing a
//! writer to it and a gateway outside routes another writer to the new
//! owner, which snapshots and trims. Every update any client saw echoed
//! must be in the room afterwards, even once the clients that wrote and saw
//! them are gone. Needs root and iproute2 (`ip netns`, veth), as CI has.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use tokio_util::sync::CancellationToken;
use yrs::Doc;

use crate::common;
use crate::common::cluster::{admin, owning_nodes, try_admin, DEAD_AFTER, HEARTBEAT, LEASE};
use crate::common::nats::NatsServer;
use crate::common::process::Partyline;
use crate::common::redis_server::RedisServer;

/// Host end of the link that carries Redis and gRPC (stays up).
const HOST_A: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
/// Namespace end of it.
const NS_A: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 2);
/// Host end of the link that carries NATS (cut).
const HOST_B: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const NS_B: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const LOG: &str = "info,partyline_room_node=debug";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A network namespace with two veth links to the host, removed on drop.
struct Netns {
    name: String,
    /// Host ends of the links.
    links: [String; 2],
}

impl Netns {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let netns = Self {
            name: format!("pl-part-{id}"),
            links: [format!("pla{id}"), format!("plb{id}")],
        };
        ip(&["netns", "add", &netns.name]);
        for (link, (host, ns)) in netns.links.iter().zip([(HOST_A, NS_A), (HOST_B, NS_B)]) {
            let peer = format!("{link}n");
            ip(&["link", "add", link, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &netns.name]);
            ip(&["addr", "add", &format!("{host}/24"), "dev", link]);
            ip(&["link", "set", link, "up"]);
            netns.exec(&["ip", "addr", "add", &format!("{ns}/24"), "dev", &peer]);
            netns.exec(&["ip", "link", "set", &peer, "up"]);
        }
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Takes the namespace's end of the NATS link down or up: the room
    /// node and gateway inside lose (or regain) NATS, nothing else.
    fn set_nats_link(&self, up: bool) {
        let peer = format!("{}n", self.links[1]);
        self.exec(&["ip", "link", "set", &peer, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends, and with them the
        // host ends; a link left over from a failed set-up goes too.
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        quiet(&["netns", "del", &self.name]);
        for link in &self.links {
            quiet(&["link", "del", link]);
        }
    }
}

/// Tokens a client saw, shared with the test.
type Seen = Arc<Mutex<BTreeSet<String>>>;

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(';').filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Writes `{prefix}{n};` every 50 ms through `url` until `stop`, keeping
/// one document across reconnects (as a provider does).
async fn writer(url: String, prefix: &'static str, stop: CancellationToken) {
    let doc = Doc::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        let Ok(client) = YClient::connect_with_doc(&url, doc.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.is_cancelled() {
            if client
                .push_text("t", &format!("{prefix}{n};"))
                .await
                .is_err()
            {
                break;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records every token that reaches a client of `url` (an echo: the room
/// node broadcasts only what its log took) until `stop`.
async fn observer(url: String, seen: Seen, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(client) = YClient::connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.is_cancelled() {
            let Ok(text) = client.text("t").await else {
                break;
            };
            seen.lock().unwrap().extend(tokens(&text));
            if client.close_info().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_stale_owner_loses_no_echoed_update() {
    let netns = Netns::create();
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_on(HOST_B);
    let redis = RedisServer::start_on(HOST_A);
    let secret_file = dir.path().join("grpc-secret");
    std::fs::write(&secret_file, common::TEST_LINK_SECRET).unwrap();
    let secret_file = secret_file.display().to_string();
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let store = format!("file://{}", dir.path().join("store").display());
    let _coordinator = Partyline::start(
        &[
            "coordinator",
            "--nats",
            &nats.url(),
            "--coordinator-id",
            "coordinator-0",
            "--heartbeat-interval",
            HEARTBEAT,
            "--dead-after",
            DEAD_AFTER,
            "--lease",
            LEASE,
            "--grpc-secret-file",
            &secret_file,
        ]
        .map(String::from),
        LOG,
        &log("coordinator-0"),
        "partyline coordinator ",
    );
    // Small snapshot trigger: the new owner snapshots and trims many times
    // during the partition.
    let node_args = |id: &str, listen: Ipv4Addr| {
        [
            "room-node",
            "--nats",
            &nats.url(),
            "--node-id",
            id,
            "--grpc-listen",
            &format!("{listen}:0"),
            "--redis",
            &redis.url(),
            "--store",
            &store,
            "--heartbeat-interval",
            HEARTBEAT,
            "--snapshot-log-updates",
            "5",
            "--grpc-secret-file",
            &secret_file,
        ]
        .map(String::from)
    };
    let stale = Partyline::start_in_netns(
        &netns.name,
        &node_args("node-0", NS_A),
        LOG,
        &log("node-0"),
        "partyline room-node ",
    );
    let _new = Partyline::start(
        &node_args("node-1", HOST_A),
        LOG,
        &log("node-1"),
        "partyline room-node ",
    );
    let gateway_args = |listen: Ipv4Addr| {
        [
            "gateway",
            "--nats",
            &nats.url(),
            "--listen",
            &format!("{listen}:0"),
            "--insecure-no-auth",
            "--grpc-secret-file",
            &secret_file,
        ]
        .map(String::from)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while try_admin(&nats.url(), &["slots"]).map_or(0, |slots| owning_nodes(&slots)) < 2 {
        assert!(Instant::now() < deadline, "both nodes never joined the map");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inside = Partyline::start_in_netns(
        &netns.name,
        &gateway_args(NS_A),
        LOG,
        &log("gateway-inside"),
        "partyline gateway listening on ws://",
    );
    let outside = Partyline::start(
        &gateway_args(HOST_A),
        LOG,
        &log("gateway-outside"),
        "partyline gateway listening on ws://",
    );
    // A room the namespaced node owns.
    let room = (0..500)
        .map(|n| format!("doc-split-{n}"))
        .find(|room| admin(&nats.url(), &["locate", room])["node"] == "node-0")
        .expect("node-0 owns some slot");
    let url = |gateway: &Partyline| format!("ws://{}/{room}", gateway.ready);

    let stop_inside = CancellationToken::new();
    let stop_outside = CancellationToken::new();
    let seen: Seen = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(writer(url(&inside), "in", stop_inside.clone()));
    tasks.spawn(observer(url(&inside), seen.clone(), stop_inside.clone()));
    tasks.spawn(writer(url(&outside), "out", stop_outside.clone()));
    tasks.spawn(observer(url(&outside), seen.clone(), stop_outside.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !seen.lock().unwrap().is_empty(),
        "nothing echoed before the partition; logs in {}",
        dir.path().display()
    );

    // Partition: node-0 and the inside gateway lose NATS. The coordinator
    // gives node-0's slots to node-1; the outside gateway follows the new
    // map, the inside one cannot.
    netns.set_nats_link(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin(&nats.url(), &["locate", &room])["node"] != "node-1" {
        assert!(Instant::now() < deadline, "the room never moved to node-1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writers go on on both sides while node-1 snapshots and trims.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let new_owner_log = std::fs::read_to_string(log("node-1")).unwrap();
    assert!(
        new_owner_log.contains(&room),
        "node-1 never served the room"
    );

    // The inside clients go away (tabs closed) before the partition heals:
    // only the server can still hold what they saw echoed.
    stop_inside.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    netns.set_nats_link(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_outside.cancel();
    while tasks.join_next().await.is_some() {}

    let echoed = seen.lock().unwrap().clone();
    assert!(
        echoed.iter().any(|t| t.starts_with("in")) && echoed.iter().any(|t| t.starts_with("out")),
        "both writers were echoed: {echoed:?}"
    );
    let reader = YClient::connect(&url(&outside)).await.unwrap();
    reader.wait_synced(Duration::from_secs(10)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let text = reader.text("t").await.unwrap();
        let have: BTreeSet<String> = tokens(&text).collect();
        let missing: Vec<&String> = echoed.difference(&have).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "{} updates seen echoed are not in the room: {missing:?}; logs in {}",
        missing.len(),
        dir.keep().display()
    );
    drop((stale, inside, outside));
}
