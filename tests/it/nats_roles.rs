//! The shipped NATS configuration (deploy/nats/nats-server.conf) on a real
//! `nats-server`, with every role on its own credentials: coordinators and
//! room node heartbeaters run in-process (as in tests/it/coordinator.rs), each
//! with its own NATS connection; "gateway" and "admin" clients use what
//! the gateway and `partyline admin` use.
//!
//! Shown here: a client without (or with wrong) credentials is refused;
//! the cluster works on role credentials; each role is refused what is not
//! its own (a gateway cannot publish heartbeats or write any key; a room
//! node cannot hear heartbeats, write drain marks, or re-point or drain a
//! node that is not itself by forging its heartbeats); and a node whose
//! process really died is taken over by its next incarnation.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use partyline_coordinator::cluster::{drain_key, SLOT_MAP_KEY};
use partyline_coordinator::{admin, Cluster, ClusterOptions, CoordinatorConfig};
use partyline_proto::{NodeId, NodeInfo, SlotMap};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common;
use crate::common::nats::NatsServer;

const HEARTBEAT: Duration = Duration::from_millis(200);
const DEAD_AFTER: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(1);
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Each role's user, the variable the config reads its password from, and
/// the password this test gives it.
const ROLES: [(&str, &str, &str); 4] = [
    (
        "coordinator",
        "NATS_COORDINATOR_PASSWORD",
        "coordinator-test-pw",
    ),
    ("room-node", "NATS_ROOM_NODE_PASSWORD", "room-node-test-pw"),
    ("gateway", "NATS_GATEWAY_PASSWORD", "gateway-test-pw"),
    ("admin", "NATS_ADMIN_PASSWORD", "admin-test-pw"),
];

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn bounded<F: Future<Output = ()>>(test: F) {
    init_logs();
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test took too long");
}

/// The NATS server of the shipped config, the passwords in its environment.
fn start_nats() -> NatsServer {
    let config = common::repo_root().join("deploy/nats/nats-server.conf");
    let env: Vec<(&str, &str)> = ROLES.iter().map(|(_, var, pw)| (*var, *pw)).collect();
    NatsServer::start_with_config(&config, &env)
}

/// `nats://USER:PASSWORD@host:port` for `role`.
fn url_as(nats: &NatsServer, role: &str) -> String {
    let (user, _, password) = ROLES
        .iter()
        .find(|(user, _, _)| *user == role)
        .unwrap_or_else(|| panic!("no role {role}"));
    nats.url()
        .replacen("nats://", &format!("nats://{user}:{password}@"), 1)
}

async fn connect_url(url: String) -> Cluster {
    Cluster::connect(&ClusterOptions {
        nats_url: url,
        cluster: "partyline".to_owned(),
    })
    .await
    .expect("connect")
}

async fn connect_as(nats: &NatsServer, role: &str) -> Cluster {
    let cluster = connect_url(url_as(nats, role)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster.is_connected() {
        assert!(Instant::now() < deadline, "{role} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster
}

fn grpc_url(id: &str) -> String {
    format!("http://{id}.test:7001")
}

struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A room node's heartbeats, on the room-node user.
struct Node {
    shutdown: CancellationToken,
    draining: watch::Sender<bool>,
    _task: Task,
}

impl Node {
    async fn start(nats: &NatsServer, id: &str, url: &str) -> Self {
        let cluster = connect_as(nats, "room-node").await;
        let shutdown = CancellationToken::new();
        let (draining, draining_rx) = watch::channel(false);
        let info = NodeInfo {
            id: NodeId::new(id),
            grpc_url: url.to_owned(),
        };
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            cluster
                .run_heartbeats(info, HEARTBEAT, draining_rx, token)
                .await;
        });
        Self {
            shutdown,
            draining,
            _task: Task(task),
        }
    }
}

/// A coordinator on the coordinator user.
async fn start_coordinator(nats: &NatsServer, id: &str) -> Task {
    let cluster = connect_as(nats, "coordinator").await;
    let config = CoordinatorConfig {
        id: id.to_owned(),
        heartbeat_interval: HEARTBEAT,
        dead_after: DEAD_AFTER,
        lease: LEASE,
        rebalance_on_join: true,
    };
    Task(tokio::spawn(async move {
        partyline_coordinator::run(
            cluster,
            config,
            partyline_proto::link::LinkAuth::Insecure,
            CancellationToken::new(),
        )
        .await
        .expect("coordinator runs");
    }))
}

/// Slot counts by node id, nodes with no slot left out.
fn counts(map: &SlotMap) -> BTreeMap<String, usize> {
    map.nodes()
        .iter()
        .zip(map.slot_counts())
        .filter(|(_, count)| *count > 0)
        .map(|(node, count)| (node.id.to_string(), count))
        .collect()
}

fn url_of(map: &SlotMap, id: &str) -> Option<String> {
    map.nodes()
        .iter()
        .find(|node| node.id.as_str() == id)
        .map(|node| node.grpc_url.clone())
}

/// Polls the map (as `reader` reads it) until `done` holds.
async fn wait_for_map(reader: &Cluster, what: &str, done: impl Fn(&SlotMap) -> bool) -> SlotMap {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let map = reader
            .read_slot_map()
            .await
            .expect("read the map")
            .map(|(map, _)| map);
        if let Some(map) = &map {
            if done(map) {
                return map.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no map with {what}; last: {:?}",
            map.map(|m| (m.epoch(), counts(&m)))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_owners(reader: &Cluster, ids: &[&str]) -> SlotMap {
    wait_for_map(reader, &format!("owners {ids:?}"), |map| {
        counts(map)
            .keys()
            .map(String::as_str)
            .eq(ids.iter().copied())
    })
    .await
}

/// The server's permission violations logged since `from` (a byte offset
/// into its log), as `(kind, user, subject)`.
fn violations(nats: &NatsServer, from: usize) -> Vec<(String, String, String)> {
    // `... - "$G/user:gateway" - Publish Violation - Subject "partyline.heartbeat"`
    let log = nats.log();
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let user = line.split_once("/user:")?.1.split('"').next()?;
            let (kind, rest) = [
                ("publish", " - Publish Violation - "),
                ("subscribe", " - Subscription Violation - "),
            ]
            .into_iter()
            .find_map(|(kind, marker)| Some((kind, line.split_once(marker)?.1)))?;
            let subject = rest.split('"').nth(1)?;
            Some((kind.to_owned(), user.to_owned(), subject.to_owned()))
        })
        .collect()
}

/// Asserts that the server logged refusing `user` to `kind` (publish or
/// subscribe) on `subject` since `from`, waiting up to 2 s for the line.
async fn assert_refused(nats: &NatsServer, from: usize, kind: &str, user: &str, subject: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let found = violations(nats, from)
            .iter()
            .any(|(k, u, s)| k == kind && u == user && s == subject);
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not refuse {user} to {kind} {subject}; log:\n{}",
            nats.log().get(from..).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `cluster` (connected as `user`) cannot put `key` in the
/// map bucket and that the server refused it.
async fn assert_put_refused(
    nats: &NatsServer,
    from: usize,
    cluster: &Cluster,
    user: &str,
    key: &str,
    value: &'static [u8],
) {
    assert!(put(cluster, key, value).await.is_err(), "{user} put {key}");
    let subject = format!("$KV.partyline-map.{key}");
    assert_refused(nats, from, "publish", user, &subject).await;
}

/// A heartbeat as a node sends it, with a claim of the sender's choosing.
fn heartbeat(id: &str, url: &str, draining: bool, claim: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"id": id, "grpc_url": url, "draining": draining, "claim": claim})
            .to_string(),
    )
}

/// Tries a KV put on the map bucket; `Ok` means the write landed.
async fn put(cluster: &Cluster, key: &str, value: &'static [u8]) -> Result<u64, String> {
    let store = cluster.map_store().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        store.put(key, Bytes::from_static(value)),
    )
    .await
    {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Coordinators, room nodes `node-x` and `node-y` (each its own process on
/// the room-node user) and an admin connection, once both nodes own slots.
struct TwoNodes {
    nats: NatsServer,
    coordinators: BTreeMap<&'static str, Task>,
    x: Node,
    _y: Node,
    admin: Cluster,
    /// The map that placed both.
    before: SlotMap,
}

impl TwoNodes {
    async fn start(coordinators: &[&'static str]) -> Self {
        let nats = start_nats();
        let mut started = BTreeMap::new();
        for id in coordinators {
            started.insert(*id, start_coordinator(&nats, id).await);
        }
        let x = Node::start(&nats, "node-x", &grpc_url("node-x")).await;
        let y = Node::start(&nats, "node-y", &grpc_url("node-y")).await;
        let admin = connect_as(&nats, "admin").await;
        let before = wait_for_owners(&admin, &["node-x", "node-y"]).await;
        Self {
            nats,
            coordinators: started,
            x,
            _y: y,
            admin,
            before,
        }
    }

    /// The published map.
    async fn map(&self) -> SlotMap {
        self.admin.read_slot_map().await.unwrap().unwrap().0
    }
}

/// Another process on the room-node user publishing `forged` heartbeats
/// every `every`, until dropped.
async fn forger(nats: &NatsServer, forged: Bytes, every: Duration) -> Task {
    let intruder = connect_as(nats, "room-node").await;
    Task(tokio::spawn(async move {
        loop {
            let _ = intruder
                .client()
                .publish("partyline.heartbeat", forged.clone())
                .await;
            tokio::time::sleep(every).await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_right_credentials_are_refused() {
    bounded(async {
        let nats = start_nats();
        let wrong = nats
            .url()
            .replacen("nats://", "nats://room-node:not-the-password@", 1);
        let unknown = nats.url().replacen("nats://", "nats://intruder:x@", 1);
        for url in [nats.url(), wrong, unknown] {
            // Partyline's own connection keeps retrying and never gets in.
            let cluster = connect_url(url.clone()).await;
            let read = tokio::time::timeout(Duration::from_secs(2), cluster.read_slot_map()).await;
            assert!(!matches!(read, Ok(Ok(_))), "{url} read the cluster");
            assert!(!cluster.is_connected(), "{url} is connected");
        }
        // The right password gets in.
        let gateway = connect_as(&nats, "gateway").await;
        assert!(gateway.read_slot_map().await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_runs_on_role_credentials() {
    bounded(async {
        let nats = start_nats();
        // Nodes and a gateway first: they wait for a coordinator to make
        // the bucket (they may not create it).
        let mut _nodes = Vec::new();
        for id in ["node-1", "node-2", "node-3"] {
            _nodes.push(Node::start(&nats, id, &grpc_url(id)).await);
        }
        let gateway = connect_as(&nats, "gateway").await;
        let stop_watch = CancellationToken::new();
        let mut watched = gateway.watch_slot_map(stop_watch.clone()).await.unwrap();
        assert!(watched.borrow().is_none());
        // Creating the buckets is the coordinator's alone.
        let created = gateway.create_map_store();
        assert!(
            !matches!(
                tokio::time::timeout(Duration::from_secs(5), created).await,
                Ok(Ok(_))
            ),
            "a gateway created the bucket"
        );
        assert_refused(&nats, 0, "publish", "gateway", "$JS.API.INFO").await;

        let _c1 = start_coordinator(&nats, "c1").await;
        let _c2 = start_coordinator(&nats, "c2").await;
        let map = wait_for_owners(&gateway, &["node-1", "node-2", "node-3"]).await;
        for node in map.nodes() {
            assert_eq!(node.grpc_url, grpc_url(node.id.as_str()));
        }
        // The gateway's watch follows it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while watched.borrow_and_update().as_ref().map(|m| m.epoch()) != Some(map.epoch()) {
                watched.changed().await.unwrap();
            }
        })
        .await
        .expect("the gateway's watch never saw the map");

        // `partyline admin` on the admin user: ask the leader, read the
        // map, drain a node (it loses its slots) and undrain it.
        let admin = connect_as(&nats, "admin").await;
        let listed = admin::nodes(&admin).await.unwrap();
        assert!(["c1", "c2"].contains(&listed.leader.as_str()));
        assert_eq!(listed.nodes.len(), 3);
        assert_eq!(admin::slots(&admin).await.unwrap().epoch, map.epoch());
        admin::locate(&admin, "some-room").await.unwrap();
        let drained = admin::drain(&admin, "node-2", Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(drained.slots, 0);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let owners = watched.borrow_and_update().as_ref().map(|m| counts(m));
                if owners.is_some_and(|o| !o.contains_key("node-2")) {
                    break;
                }
                watched.changed().await.unwrap();
            }
        })
        .await
        .expect("the gateway never saw node-2 drained");
        admin::undrain(&admin, "node-2").await.unwrap();
        wait_for_owners(&gateway, &["node-1", "node-2", "node-3"]).await;
        admin::rebalance(&admin).await.unwrap();
        stop_watch.cancel();

        // Least privilege did not cost any role anything it does: the
        // server refused nothing else.
        let create = (
            "publish".to_owned(),
            "gateway".to_owned(),
            "$JS.API.INFO".to_owned(),
        );
        let others: Vec<_> = violations(&nats, 0)
            .into_iter()
            .filter(|v| *v != create)
            .collect();
        assert_eq!(others, [], "log:\n{}", nats.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_or_admin_cannot_write_what_is_not_theirs() {
    bounded(async {
        let nats = start_nats();
        let _c1 = start_coordinator(&nats, "c1").await;
        let _n1 = Node::start(&nats, "node-1", &grpc_url("node-1")).await;
        let coordinator = connect_as(&nats, "coordinator").await;
        let before = wait_for_owners(&coordinator, &["node-1"]).await;
        let from = nats.log().len();

        let gateway = connect_as(&nats, "gateway").await;
        // A heartbeat for a node of its own: refused by the server.
        for _ in 0..5 {
            gateway
                .client()
                .publish(
                    "partyline.heartbeat",
                    heartbeat("intruder", "http://evil:7001", false, "x"),
                )
                .await
                .unwrap();
        }
        gateway.client().flush().await.unwrap();
        assert_refused(&nats, from, "publish", "gateway", "partyline.heartbeat").await;
        // No key at all: not the map, not a drain mark.
        assert_put_refused(&nats, from, &gateway, "gateway", SLOT_MAP_KEY, b"{}").await;
        let node_1 = drain_key(&NodeId::new("node-1"));
        assert_put_refused(&nats, from, &gateway, "gateway", &node_1, b"draining").await;
        // Nor hear heartbeats.
        let mut heard = gateway
            .client()
            .subscribe("partyline.heartbeat")
            .await
            .unwrap();
        let got = tokio::time::timeout(HEARTBEAT * 4, heard.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "a gateway heard a heartbeat");
        assert_refused(&nats, from, "subscribe", "gateway", "partyline.heartbeat").await;

        // The admin user drains, but writes neither the map nor the lease.
        let admin = connect_as(&nats, "admin").await;
        assert_put_refused(&nats, from, &admin, "admin", SLOT_MAP_KEY, b"{}").await;
        let lease = tokio::time::timeout(Duration::from_secs(5), admin.leader_store(LEASE)).await;
        assert!(
            !matches!(lease, Ok(Ok(_))),
            "the admin opened the lease bucket"
        );
        assert_refused(&nats, from, "publish", "admin", "$JS.API.INFO").await;
        // The coordinator writes no drain mark.
        let node_1 = drain_key(&NodeId::new("node-1"));
        assert_put_refused(
            &nats,
            from,
            &coordinator,
            "coordinator",
            &node_1,
            b"draining",
        )
        .await;

        // Nothing of it reached the cluster.
        tokio::time::sleep(DEAD_AFTER).await;
        let after = coordinator.read_slot_map().await.unwrap().unwrap().0;
        assert_eq!(after.epoch(), before.epoch());
        assert_eq!(counts(&after), counts(&before));
        assert_eq!(admin::nodes(&admin).await.unwrap().nodes.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_room_node_cannot_repoint_or_drain_a_node_nor_hear_heartbeats() {
    bounded(async {
        let cluster = TwoNodes::start(&["c1", "c2"]).await;
        let (nats, admin, before) = (&cluster.nats, &cluster.admin, &cluster.before);
        let from = nats.log().len();

        // node-y's credentials, its own process: not node-x.
        let intruder = connect_as(nats, "room-node").await;
        let mut heard = intruder
            .client()
            .subscribe("partyline.heartbeat")
            .await
            .unwrap();
        // Forged heartbeats for node-x, more often than its own: pointing
        // it at the intruder, or asking to drain it at its own address,
        // each with a claim of the intruder's.
        let forging = Instant::now();
        let mut sent = 0;
        while forging.elapsed() < DEAD_AFTER * 3 {
            for forged in [
                heartbeat("node-x", "http://intruder.test:7001", false, "forged-1"),
                heartbeat("node-x", &grpc_url("node-x"), true, "forged-2"),
                heartbeat("node-x", "http://intruder.test:7001", true, "forged-3"),
            ] {
                intruder
                    .client()
                    .publish("partyline.heartbeat", forged)
                    .await
                    .unwrap();
                sent += 1;
            }
            let map = cluster.map().await;
            assert_eq!(
                map.epoch(),
                before.epoch(),
                "a forged heartbeat changed the map"
            );
            assert_eq!(url_of(&map, "node-x"), Some(grpc_url("node-x")));
            assert_eq!(counts(&map), counts(before));
            tokio::time::sleep(HEARTBEAT / 4).await;
        }
        // The leader still lists node-x as itself, not draining.
        let listed = admin::nodes(admin).await.unwrap().nodes;
        let x = listed.iter().find(|n| n.id == "node-x").unwrap();
        assert_eq!(
            (x.grpc_url.as_str(), x.draining),
            (grpc_url("node-x").as_str(), false)
        );
        eprintln!(
            "{sent} forged heartbeats over {:?}: map unchanged",
            forging.elapsed()
        );

        // A drain mark is the admin's to write, not a room node's.
        let node_x = drain_key(&NodeId::new("node-x"));
        assert_put_refused(nats, from, &intruder, "room-node", &node_x, b"draining").await;
        assert!(put(&intruder, SLOT_MAP_KEY, b"{}").await.is_err());
        // Heartbeats (and so the claims) never reached it.
        let got = tokio::time::timeout(HEARTBEAT * 2, heard.next()).await;
        assert!(!matches!(got, Ok(Some(_))), "a room node heard a heartbeat");
        assert_refused(nats, from, "subscribe", "room-node", "partyline.heartbeat").await;

        tokio::time::sleep(DEAD_AFTER).await;
        let map = cluster.map().await;
        assert_eq!(map.epoch(), before.epoch());
        assert_eq!(counts(&map), counts(before));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_next_incarnation_takes_it_over() {
    bounded(async {
        let cluster = TwoNodes::start(&["c1", "c2"]).await;
        let TwoNodes {
            nats,
            x,
            admin,
            before,
            ..
        } = &cluster;
        // An intruder keeps claiming node-x for itself all along.
        let intruder = "http://intruder.test:7001";
        let forged = heartbeat("node-x", intruder, false, "forged");
        let forging = forger(nats, forged, HEARTBEAT / 4).await;

        // node-x's process dies; it comes back at once (a new claim) at
        // its address, while the dead one's claim still holds the id.
        x.shutdown.cancel();
        let died = Instant::now();
        let x2 = Node::start(nats, "node-x", &grpc_url("node-x")).await;
        // Once the old claim has been silent for dead_after the new
        // incarnation holds node-x in place: its slots never moved and no
        // intruder address appeared.
        while died.elapsed() < DEAD_AFTER * 3 {
            let map = cluster.map().await;
            assert_eq!(map.epoch(), before.epoch(), "{:?}", counts(&map));
            assert_eq!(url_of(&map, "node-x"), Some(grpc_url("node-x")));
            tokio::time::sleep(HEARTBEAT).await;
        }
        // Its heartbeats count: draining moves its slots away.
        x2.draining.send_replace(true);
        let drained = wait_for_owners(admin, &["node-y"]).await;
        assert_ne!(url_of(&drained, "node-x"), Some(intruder.to_owned()));
        x2.draining.send_replace(false);
        let back = wait_for_owners(admin, &["node-x", "node-y"]).await;
        assert_eq!(url_of(&back, "node-x"), Some(grpc_url("node-x")));
        drop(forging);

        // A node that comes back elsewhere gets its id once the old one
        // has expired (its slots moved away meanwhile).
        x2.shutdown.cancel();
        drop(x2);
        let _x3 = Node::start(nats, "node-x", "http://node-x-moved.test:7001").await;
        let moved = wait_for_map(admin, "node-x at its new address", |map| {
            url_of(map, "node-x").as_deref() == Some("http://node-x-moved.test:7001")
                && counts(map).contains_key("node-x")
        })
        .await;
        assert!(moved.epoch() > back.epoch());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_started_amid_forgeries_keeps_nodes_where_the_map_says() {
    bounded(async {
        let mut cluster = TwoNodes::start(&["c1"]).await;
        // Forgeries for node-x far more often than its own heartbeats, so
        // a coordinator that starts now hears them first: one pointing it
        // elsewhere, one at its own address asking to drain it.
        let elsewhere = heartbeat("node-x", "http://intruder.test:7001", false, "forged-1");
        let _forger = forger(&cluster.nats, elsewhere, Duration::from_millis(10)).await;
        let drain = heartbeat("node-x", &grpc_url("node-x"), true, "forged-2");
        let _drainer = forger(&cluster.nats, drain, Duration::from_millis(10)).await;
        tokio::time::sleep(HEARTBEAT).await;
        let _c2 = start_coordinator(&cluster.nats, "c2").await;
        tokio::time::sleep(HEARTBEAT * 3).await;
        // c1 dies; c2, which started amid the forgeries, leads.
        cluster.coordinators.remove("c1");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if admin::nodes(&cluster.admin)
                .await
                .is_ok_and(|r| r.leader == "c2")
            {
                break;
            }
            assert!(Instant::now() < deadline, "c2 never led");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let led = Instant::now();
        while led.elapsed() < DEAD_AFTER * 3 {
            let map = cluster.map().await;
            assert_eq!(url_of(&map, "node-x"), Some(grpc_url("node-x")));
            assert_eq!(counts(&map), counts(&cluster.before));
            let listed = admin::nodes(&cluster.admin).await.unwrap().nodes;
            let x = listed.iter().find(|n| n.id == "node-x").unwrap();
            assert_eq!(
                (x.grpc_url.as_str(), x.draining),
                (grpc_url("node-x").as_str(), false),
                "c2 took a forgery for node-x"
            );
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
    .await;
}
