//! The coordinator against a real `nats-server`: election, membership, slot
//! maps, drains, rebalance and a NATS outage. Coordinators and fake room
//! nodes (heartbeat publishers) run in-process as tokio tasks, each with its
//! own NATS connection, so "killing" one is aborting its task.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use partyline_coordinator::cluster::LEADER_KEY;
use partyline_coordinator::leader::moved_slots;
use partyline_coordinator::{admin, election, Cluster, ClusterOptions, CoordinatorConfig};
use partyline_proto::{NodeId, NodeInfo, Slot, SlotMap, SLOTS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::nats::NatsServer;

const HEARTBEAT: Duration = Duration::from_millis(200);
const DEAD_AFTER: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(1);
/// Upper bound of any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(45);

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

async fn connect(nats: &NatsServer) -> Cluster {
    Cluster::connect(&ClusterOptions {
        nats_url: nats.url(),
        cluster: "partyline".to_owned(),
    })
    .await
    .expect("connect")
}

fn config(id: &str, rebalance_on_join: bool) -> CoordinatorConfig {
    CoordinatorConfig {
        id: id.to_owned(),
        heartbeat_interval: HEARTBEAT,
        dead_after: DEAD_AFTER,
        lease: LEASE,
        rebalance_on_join,
    }
}

struct Coordinator {
    task: JoinHandle<Result<(), partyline_coordinator::CoordinatorError>>,
}

struct FakeNode {
    shutdown: CancellationToken,
    draining: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A NATS server, coordinators, fake room nodes, and an admin connection.
struct Setup {
    nats: NatsServer,
    admin: Cluster,
    coordinators: BTreeMap<String, Coordinator>,
    nodes: BTreeMap<String, FakeNode>,
}

impl Setup {
    /// NATS, `nodes` heartbeating room nodes `node-1…`, then `coordinators`
    /// coordinators `c1…`.
    async fn start(coordinators: usize, nodes: usize, rebalance_on_join: bool) -> Self {
        let nats = NatsServer::start();
        let admin = connect(&nats).await;
        let mut setup = Self {
            nats,
            admin,
            coordinators: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for i in 1..=nodes {
            setup.add_node(&format!("node-{i}")).await;
        }
        for i in 1..=coordinators {
            setup
                .add_coordinator(&format!("c{i}"), rebalance_on_join)
                .await;
        }
        setup
    }

    async fn add_coordinator(&mut self, id: &str, rebalance_on_join: bool) {
        let cluster = connect(&self.nats).await;
        let task = tokio::spawn(partyline_coordinator::run(
            cluster,
            config(id, rebalance_on_join),
            partyline_proto::link::LinkAuth::Insecure,
            CancellationToken::new(),
        ));
        self.coordinators
            .insert(id.to_owned(), Coordinator { task });
    }

    async fn add_node(&mut self, id: &str) {
        let cluster = connect(&self.nats).await;
        let shutdown = CancellationToken::new();
        let (draining, draining_rx) = watch::channel(false);
        let info = NodeInfo {
            id: NodeId::new(id),
            grpc_url: grpc_url(id),
        };
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            cluster
                .run_heartbeats(info, HEARTBEAT, draining_rx, token)
                .await;
        });
        self.nodes.insert(
            id.to_owned(),
            FakeNode {
                shutdown,
                draining,
                task,
            },
        );
    }

    /// The id stored in the leader lease, if any.
    async fn leader(&self) -> Option<String> {
        let store = self.admin.leader_store(LEASE).await.ok()?;
        let value = store.get(LEADER_KEY).await.ok()??;
        Some(String::from_utf8(value.to_vec()).expect("utf-8 id"))
    }

    async fn wait_for_leader(&self, not: Option<&str>, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                if Some(leader.as_str()) != not {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn map(&self) -> Option<SlotMap> {
        self.admin
            .read_slot_map()
            .await
            .expect("read map")
            .map(|(map, _)| map)
    }

    /// Polls the published map until `done` holds.
    async fn wait_for_map(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&SlotMap) -> bool,
    ) -> SlotMap {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(map) = self.map().await {
                if done(&map) {
                    return map;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no map with {what} within {timeout:?}; last: {:?}",
                self.map().await.map(|m| describe(&m))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every slot is placed on exactly `ids`, each owning some.
    async fn wait_for_owners(&self, ids: &[&str]) -> SlotMap {
        let want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.wait_for_map(Duration::from_secs(10), &format!("owners {ids:?}"), |map| {
            owning_nodes(map) == want
        })
        .await
    }
}

fn grpc_url(id: &str) -> String {
    format!("http://{id}.test:7001")
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

fn owning_nodes(map: &SlotMap) -> Vec<String> {
    counts(map).into_keys().collect()
}

fn describe(map: &SlotMap) -> String {
    format!("epoch {} {:?}", map.epoch(), counts(map))
}

fn slots_of(map: &SlotMap, id: &str) -> usize {
    counts(map).get(id).copied().unwrap_or(0)
}

fn assert_fair(map: &SlotMap, nodes: usize) {
    let fair = f64::from(SLOTS) / nodes as f64;
    let counts = counts(map);
    assert_eq!(counts.len(), nodes, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), usize::from(SLOTS));
    for (node, count) in counts {
        assert!(
            (count as f64) <= 1.5 * fair,
            "{node} owns {count} slots, fair share {fair:.0}"
        );
    }
}

// (a) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_one_leader_place_every_slot() {
    bounded(async {
        let setup = Setup::start(2, 3, true).await;
        let map = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        assert_fair(&map, 3);
        for node in map.nodes() {
            assert_eq!(node.grpc_url, grpc_url(node.id.as_str()));
        }
        let leader = setup.wait_for_leader(None, Duration::from_secs(5)).await;
        assert!(["c1", "c2"].contains(&leader.as_str()), "{leader}");

        for room in [
            "doc-1",
            "my/room",
            "ünïcode",
            "",
            "a-much-longer-room-name-42",
        ] {
            let located = admin::locate(&setup.admin, room).await.unwrap();
            let owner = map.owner_of_room(room);
            assert_eq!(located.node, owner.id.as_str(), "{room}");
            assert_eq!(located.grpc_url, owner.grpc_url);
            assert_eq!(located.epoch, map.epoch());
            assert_eq!(located.slot, partyline_proto::slot_of(room).get());
        }

        let slots = admin::slots(&setup.admin).await.unwrap();
        assert_eq!(slots.epoch, map.epoch());
        assert_eq!(slots.owners.len(), usize::from(SLOTS));
        for slot in Slot::all() {
            assert_eq!(
                slots.owners[usize::from(slot.get())],
                map.owner(slot).id.as_str()
            );
        }
        let listed: BTreeMap<String, usize> = slots
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.slots))
            .collect();
        assert_eq!(listed, counts(&map));

        let nodes = admin::nodes(&setup.admin).await.unwrap().nodes;
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["node-1", "node-2", "node-3"]);
        for node in &nodes {
            assert!(!node.draining);
            assert_eq!(node.slots, slots_of(&map, &node.id));
            assert!(node.last_seen_ms < 1000, "{node:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_candidate_leads_at_a_time() {
    bounded(async {
        let nats = NatsServer::start();
        let admin = connect(&nats).await;
        let mut candidates = BTreeMap::new();
        for id in ["e1", "e2", "e3"] {
            let cluster = connect(&nats).await;
            let (tx, rx) = watch::channel(false);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(election::campaign(
                cluster,
                id.to_owned(),
                LEASE,
                tx,
                shutdown.clone(),
            ));
            candidates.insert(id, (rx, shutdown, task));
        }
        let leaders = |candidates: &BTreeMap<&str, (watch::Receiver<bool>, _, _)>| {
            candidates
                .iter()
                .filter(|(_, (rx, _, _))| *rx.borrow())
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while leaders(&candidates).is_empty() {
            assert!(Instant::now() < deadline, "nobody leads");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Through several lease renewals, always exactly one, and the same.
        let first = leaders(&candidates);
        assert_eq!(first.len(), 1);
        for _ in 0..60 {
            assert_eq!(leaders(&candidates), first);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = admin.leader_store(LEASE).await.unwrap();
        let held = store.get(LEADER_KEY).await.unwrap().unwrap();
        assert_eq!(held, first[0].as_bytes());

        // A graceful stop releases the key: a standby leads at once.
        let (_, shutdown, task) = candidates.remove(first[0].as_str()).unwrap();
        let stopped = Instant::now();
        shutdown.cancel();
        task.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while leaders(&candidates).len() != 1 {
            assert!(Instant::now() < deadline, "no takeover after release");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let takeover = stopped.elapsed();
        eprintln!("takeover after a graceful release: {takeover:?}");
        assert!(takeover < LEASE, "took {takeover:?}, as long as the lease");
        for (_, shutdown, _) in candidates.values() {
            shutdown.cancel();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_stays_quiet_while_the_leader_renews_and_takes_over_when_it_stops() {
    // Longer than LEASE, so renewals (every lease/3) have room to be late
    // on a busy machine before the standby's quiet half-lease runs out.
    const QUIET_LEASE: Duration = Duration::from_secs(2);
    bounded(async {
        let nats = NatsServer::start();
        let admin = connect(&nats).await;
        // Every write to the lease key, refused or not, as core NATS sees it:
        // its payload is the writer's id.
        let subject = format!("$KV.{}.{LEADER_KEY}", admin.leader_bucket());
        let mut writes = admin.client().subscribe(subject).await.unwrap();
        admin.client().flush().await.unwrap();
        let campaign = |id: &str| {
            let id = id.to_owned();
            let nats_url = nats.url();
            async move {
                let cluster = Cluster::connect(&ClusterOptions {
                    nats_url,
                    cluster: "partyline".to_owned(),
                })
                .await
                .expect("connect");
                let (tx, rx) = watch::channel(false);
                let shutdown = CancellationToken::new();
                let task = tokio::spawn(election::campaign(cluster, id, QUIET_LEASE, tx, shutdown));
                (rx, task)
            }
        };
        let (leading_1, task_1) = campaign("q1").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !*leading_1.borrow() {
            assert!(Instant::now() < deadline, "q1 never leads");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (leading_2, task_2) = campaign("q2").await;
        // q2 tries until it has seen a renewal: at most one renewal period.
        tokio::time::sleep(QUIET_LEASE).await;
        while tokio::time::timeout(Duration::ZERO, writes.next())
            .await
            .is_ok()
        {}

        let window = QUIET_LEASE * 2;
        let mut by_writer = BTreeMap::<String, usize>::new();
        let end = tokio::time::Instant::now() + window;
        while let Ok(Some(message)) = tokio::time::timeout_at(end, writes.next()).await {
            let writer = String::from_utf8_lossy(&message.payload).into_owned();
            *by_writer.entry(writer).or_default() += 1;
        }
        eprintln!("writes to the lease key over {window:?}: {by_writer:?}");
        let renewals = by_writer.get("q1").copied().unwrap_or(0);
        let attempts = by_writer.get("q2").copied().unwrap_or(0);
        // The leader renews every lease/3; a polling standby would have
        // tried 16 times in this window. A renewal late by more than a
        // sixth of the lease (a loaded machine) costs one or two tries.
        assert!(renewals >= 4, "only {renewals} renewals seen");
        assert!(attempts <= 4, "the standby tried {attempts} times");
        assert!(!*leading_2.borrow());

        // The leader dies without releasing: the standby wakes up and takes
        // the key soon after it expires.
        task_1.abort();
        let died = Instant::now();
        let deadline = died + Duration::from_secs(5);
        while !*leading_2.borrow() {
            assert!(Instant::now() < deadline, "q2 never took over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let takeover = died.elapsed();
        eprintln!("takeover by a quiet standby (lease {QUIET_LEASE:?}): {takeover:?}");
        assert!(takeover < QUIET_LEASE * 2, "took {takeover:?}");
        task_2.abort();
    })
    .await;
}

// (b) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_dead_leader_without_a_new_epoch() {
    bounded(async {
        let mut setup = Setup::start(2, 3, true).await;
        let map = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        let leader = setup.wait_for_leader(None, Duration::from_secs(5)).await;
        // Let the standby see a few rounds of heartbeats and the leader settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(setup.map().await.unwrap().epoch(), map.epoch());

        // Crash: no graceful release, the lease has to expire.
        let died = Instant::now();
        setup.coordinators.remove(&leader).unwrap().task.abort();
        let successor = setup
            .wait_for_leader(Some(&leader), Duration::from_secs(5))
            .await;
        let takeover = died.elapsed();
        eprintln!("takeover after the leader died (lease {LEASE:?}): {takeover:?}");
        assert!(takeover < Duration::from_secs(5), "took {takeover:?}");

        // The successor serves admin requests and keeps the map as it was.
        let nodes = admin::nodes(&setup.admin).await.unwrap().nodes;
        assert_eq!(nodes.len(), 3);
        tokio::time::sleep(DEAD_AFTER * 2).await;
        let after = setup.map().await.unwrap();
        assert_eq!(after.epoch(), map.epoch(), "{}", describe(&after));
        assert_eq!(setup.leader().await.as_deref(), Some(successor.as_str()));
    })
    .await;
}

// (c) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_share_in_one_epoch() {
    bounded(async {
        let mut setup = Setup::start(2, 3, true).await;
        let before = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        setup.add_node("node-4").await;
        let after = setup
            .wait_for_owners(&["node-1", "node-2", "node-3", "node-4"])
            .await;
        assert_eq!(after.epoch(), before.epoch() + 1);
        assert_fair(&after, 4);
        let moved = moved_slots(&before, &after);
        assert!(
            moved <= usize::from(SLOTS) * 30 / 100,
            "{moved} slots moved"
        );
        for slot in Slot::all() {
            let (old, new) = (before.owner(slot), after.owner(slot));
            assert!(
                old.id == new.id || new.id.as_str() == "node-4",
                "slot {slot} moved from {} to {}",
                old.id,
                new.id
            );
        }
        assert_eq!(moved, slots_of(&after, "node-4"));
    })
    .await;
}

// (d) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_loses_its_slots_after_dead_after() {
    bounded(async {
        let mut setup = Setup::start(2, 3, true).await;
        let before = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        let silent = setup.nodes.remove("node-2").unwrap();
        silent.shutdown.cancel();
        let stopped = Instant::now();
        drop(silent);
        let after = setup.wait_for_owners(&["node-1", "node-3"]).await;
        let took = stopped.elapsed();
        eprintln!("slots of a silent node moved after {took:?} (dead_after {DEAD_AFTER:?})");
        // Its last heartbeat may have gone out up to one interval before.
        assert!(took >= DEAD_AFTER - HEARTBEAT, "moved after only {took:?}");
        assert_eq!(after.epoch(), before.epoch() + 1);
        for slot in Slot::all() {
            let (old, new) = (before.owner(slot), after.owner(slot));
            assert!(
                old.id == new.id || old.id.as_str() == "node-2",
                "slot {slot} moved from {} to {}",
                old.id,
                new.id
            );
        }
        assert!(after.nodes().iter().all(|n| n.id.as_str() != "node-2"));
    })
    .await;
}

// (e) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_move_a_nodes_slots_away_and_back() {
    bounded(async {
        let setup = Setup::start(2, 3, true).await;
        let before = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;

        let report = admin::drain(&setup.admin, "node-2", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(report.slots, 0);
        assert!(report.epoch > before.epoch());
        let drained = setup.map().await.unwrap();
        assert_eq!(slots_of(&drained, "node-2"), 0);
        assert_eq!(owning_nodes(&drained), ["node-1", "node-3"]);
        let listed = admin::nodes(&setup.admin).await.unwrap().nodes;
        let node2 = listed.iter().find(|n| n.id == "node-2").unwrap();
        assert!(node2.draining && node2.slots == 0, "{node2:?}");

        // Draining is idempotent and a drained node stays drained.
        admin::drain(&setup.admin, "node-2", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(setup.map().await.unwrap().epoch(), drained.epoch());

        admin::undrain(&setup.admin, "node-2").await.unwrap();
        let back = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        assert_eq!(back.epoch(), drained.epoch() + 1);
        // Rendezvous placement gives it back exactly its old slots.
        assert_eq!(moved_slots(&before, &back), 0);

        // The heartbeat's own draining flag works the same way.
        setup.nodes["node-3"].draining.send_replace(true);
        setup.wait_for_owners(&["node-1", "node-2"]).await;
        setup.nodes["node-3"].draining.send_replace(false);
        setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;

        assert!(matches!(
            admin::drain(&setup.admin, "bad id", None).await,
            Err(admin::AdminError::InvalidNodeId(_))
        ));
    })
    .await;
}

// (f) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rebalance_on_join_a_new_node_waits_for_admin_rebalance() {
    bounded(async {
        let mut setup = Setup::start(2, 3, false).await;
        let before = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        setup.add_node("node-4").await;
        // Long enough for the leader to hear node-4 several times.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let nodes = admin::nodes(&setup.admin).await.unwrap().nodes;
            if let Some(node4) = nodes.iter().find(|n| n.id == "node-4") {
                assert_eq!(node4.slots, 0);
                break;
            }
            assert!(Instant::now() < deadline, "node-4 never heard");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let still = setup.map().await.unwrap();
        assert_eq!(still.epoch(), before.epoch(), "{}", describe(&still));
        assert_eq!(slots_of(&still, "node-4"), 0);

        let report = admin::rebalance(&setup.admin).await.unwrap();
        assert_eq!(report.epoch, before.epoch() + 1);
        let after = setup.map().await.unwrap();
        assert_eq!(after.epoch(), report.epoch);
        assert_eq!(report.moved_slots, moved_slots(&before, &after));
        assert!(
            report.moved_slots > 0 && report.moved_slots <= usize::from(SLOTS) * 30 / 100,
            "{report:?}"
        );
        assert_fair(&after, 4);
        assert_eq!(slots_of(&after, "node-4"), report.moved_slots);

        // A second rebalance has nothing to do, and sticky mode keeps it.
        let again = admin::rebalance(&setup.admin).await.unwrap();
        assert_eq!((again.epoch, again.moved_slots), (report.epoch, 0));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(setup.map().await.unwrap().epoch(), report.epoch);

        // A dead node's slots still move on their own.
        setup.nodes.remove("node-1").unwrap().shutdown.cancel();
        let orphaned = setup.wait_for_owners(&["node-2", "node-3", "node-4"]).await;
        assert_eq!(orphaned.epoch(), report.epoch + 1);
        assert_eq!(
            moved_slots(&after, &orphaned),
            slots_of(&after, "node-1"),
            "only node-1's slots moved"
        );
    })
    .await;
}

// (g) ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_freezes_the_map_and_declares_nobody_dead() {
    bounded(async {
        let mut setup = Setup::start(2, 3, true).await;
        let before = setup.wait_for_owners(&["node-1", "node-2", "node-3"]).await;
        let watcher_cluster = connect(&setup.nats).await;
        let stop_watch = CancellationToken::new();
        let mut watched = watcher_cluster
            .watch_slot_map(stop_watch.clone())
            .await
            .unwrap();
        let epoch_of = |rx: &watch::Receiver<Option<std::sync::Arc<SlotMap>>>| {
            rx.borrow().as_ref().map(|map| map.epoch())
        };
        assert_eq!(epoch_of(&watched), Some(before.epoch()));

        setup.nats.stop();
        let outage = Instant::now();
        while outage.elapsed() < Duration::from_secs(3) {
            assert_eq!(epoch_of(&watched), Some(before.epoch()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        setup.nats.restart();
        let restarted = Instant::now();

        // A leader is back and hears all three nodes again.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match admin::nodes(&setup.admin).await {
                Ok(report) if report.nodes.len() == 3 => break,
                _ => assert!(Instant::now() < deadline, "no leader with 3 nodes"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "leader back with all nodes {:?} after the restart",
            restarted.elapsed()
        );
        // Past dead_after and the reconnect grace: still nobody declared dead.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = setup.map().await.unwrap();
        assert_eq!(after.epoch(), before.epoch(), "{}", describe(&after));
        assert_eq!(epoch_of(&watched), Some(before.epoch()));

        // The watch resumed: it follows the next map.
        watched.mark_unchanged();
        admin::drain(&setup.admin, "node-3", Some(Duration::from_secs(5)))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), watched.changed())
            .await
            .expect("watcher saw no new map after the outage")
            .unwrap();
        assert_eq!(epoch_of(&watched), Some(before.epoch() + 1));
        assert_eq!(slots_of(watched.borrow().as_ref().unwrap(), "node-3"), 0);
        stop_watch.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_nats_url_reach_a_server_that_wants_them() {
    bounded(async {
        let cases: [(&[&str], &str); 2] = [
            (
                &["--user", "partyline", "--pass", "s3cret-pass"],
                "partyline:s3cret-pass@",
            ),
            (&["--auth", "s3cret-token"], "s3cret-token@"),
        ];
        for (flags, credentials) in cases {
            let nats = NatsServer::start_with_args(flags);
            let options = |nats_url: String| ClusterOptions {
                nats_url,
                cluster: "partyline".to_owned(),
            };
            let with = nats
                .url()
                .replacen("nats://", &format!("nats://{credentials}"), 1);
            // Without credentials the server refuses the connection (the
            // client keeps retrying, never connected).
            let anonymous = Cluster::connect(&options(nats.url())).await.unwrap();
            let authenticated = Cluster::connect(&options(with.clone())).await.unwrap();
            authenticated
                .create_map_store()
                .await
                .expect("an authenticated role creates its buckets");
            assert!(authenticated.is_connected());
            // Given as long as the authenticated one took and more, the
            // anonymous one still cannot reach JetStream.
            let refused =
                tokio::time::timeout(Duration::from_secs(2), anonymous.create_map_store()).await;
            assert!(
                !matches!(refused, Ok(Ok(_))),
                "{flags:?}: a client without credentials used the cluster"
            );
            assert!(!anonymous.is_connected(), "{flags:?}: anyone may connect");
            let logged = format!("{:?}", options(with));
            assert!(!logged.contains("s3cret"), "credentials in {logged}");
        }
    })
    .await;
}

/// Starts `id`'s heartbeats (a fresh incarnation) ending with a leaving
/// heartbeat when the returned token is cancelled.
async fn leaving_node(nats: &NatsServer, id: &str) -> (CancellationToken, JoinHandle<()>) {
    let cluster = connect(nats).await;
    let shutdown = CancellationToken::new();
    let (_draining, draining_rx) = watch::channel(false);
    let info = NodeInfo {
        id: NodeId::new(id),
        grpc_url: grpc_url(id),
    };
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let _draining = _draining;
        cluster
            .run_heartbeats_then_leave(
                info,
                HEARTBEAT,
                draining_rx,
                partyline_proto::link::LinkAuth::Insecure,
                token,
            )
            .await;
    });
    (shutdown, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_frees_its_id_for_its_restart_at_once() {
    bounded(async {
        let mut setup = Setup::start(0, 1, true).await;
        // A dead_after far beyond this test's waits: only the leaving
        // heartbeat can free node-2's id in time.
        let cluster = connect(&setup.nats).await;
        let config = CoordinatorConfig {
            dead_after: Duration::from_secs(120),
            ..config("c1", true)
        };
        let task = tokio::spawn(partyline_coordinator::run(
            cluster,
            config,
            partyline_proto::link::LinkAuth::Insecure,
            CancellationToken::new(),
        ));
        setup
            .coordinators
            .insert("c1".to_owned(), Coordinator { task });
        let (stop, node) = leaving_node(&setup.nats, "node-2").await;
        setup.wait_for_owners(&["node-1", "node-2"]).await;

        stop.cancel();
        node.await.unwrap();
        setup.wait_for_owners(&["node-1"]).await;

        // The restarted process (a new claim, same id and URL) is taken
        // at once, not held off as a challenger of the old claim.
        let (_stop, _node) = leaving_node(&setup.nats, "node-2").await;
        setup.wait_for_owners(&["node-1", "node-2"]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_link_secret_only_heartbeats_proving_it_count() {
    bounded(async {
        let secret = |s: &str| {
            partyline_proto::link::LinkAuth::Secret(
                partyline_proto::link::LinkSecret::fixed(s).unwrap(),
            )
        };
        let ours = "the-clusters-link-secret-0123";
        let mut setup = Setup::start(0, 0, true).await;
        let cluster = connect(&setup.nats).await;
        let task = tokio::spawn(partyline_coordinator::run(
            cluster,
            config("c1", true),
            secret(ours),
            CancellationToken::new(),
        ));
        setup
            .coordinators
            .insert("c1".to_owned(), Coordinator { task });

        // Proven, unproven (no secret: plain heartbeats) and proven under
        // another secret.
        let proven = |id: &'static str, link| {
            let nats = setup.nats.url();
            tokio::spawn(async move {
                let cluster = Cluster::connect(&ClusterOptions {
                    nats_url: nats,
                    cluster: "partyline".to_owned(),
                })
                .await
                .unwrap();
                let (_draining, draining_rx) = watch::channel(false);
                let info = NodeInfo {
                    id: NodeId::new(id),
                    grpc_url: grpc_url(id),
                };
                cluster
                    .run_heartbeats_then_leave(
                        info,
                        HEARTBEAT,
                        draining_rx,
                        link,
                        CancellationToken::new(),
                    )
                    .await;
            })
        };
        let _a = proven("node-a", secret(ours));
        let _b = proven("node-b", secret("some-other-link-secret-0123"));
        setup.add_node("node-c").await;
        setup.wait_for_owners(&["node-a"]).await;
        // Several heartbeat intervals and the leader's settle later, still
        // only the node that proves the secret.
        tokio::time::sleep(DEAD_AFTER * 2).await;
        let map = setup.wait_for_owners(&["node-a"]).await;
        let listed: Vec<&str> = map.nodes().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(listed, ["node-a"]);
        _a.abort();
        _b.abort();
    })
    .await;
}
