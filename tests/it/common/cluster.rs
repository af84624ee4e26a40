//! A whole Partyline cluster of real processes on loopback: a `nats-server`
//! with JetStream, coordinators, room nodes sharing one `file://` store,
//! and gateways, with the short timings tests need.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::nats::NatsServer;
use super::process::Partyline;

/// Heartbeat interval of test room nodes (the default).
pub(crate) const HEARTBEAT: &str = "1s";
/// Silence after which a test room node is dead (the default): failover
/// times measured by the tests are what a default deployment gets.
pub(crate) const DEAD_AFTER: &str = "3s";
/// Leader lease of test coordinators (the default).
pub(crate) const LEASE: &str = "3s";

/// Bearer key of every test gateway's HTTP API.
pub(crate) const API_KEY: &str = "cluster-test-api-key";

/// Log filter of every process: room loads and releases are visible.
const LOG: &str = "info,partyline_room_node=debug";
/// Name of the link secret file in the cluster's temp dir.
const LINK_SECRET_FILE: &str = "grpc-secret";

fn admin_output(nats: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_partyline"))
        .args(["admin", "--nats", nats])
        .args(args)
        .arg("--json")
        .env("PARTYLINE_LOG", "warn")
        .output()
        .expect("run partyline admin")
}

/// [`admin`], `None` when the command fails (e.g. no map yet).
pub(crate) fn try_admin(nats: &str, args: &[&str]) -> Option<serde_json::Value> {
    let output = admin_output(nats, args);
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten()
}

/// Runs `partyline admin --nats NATS ARGS --json` and parses its output.
pub(crate) fn admin(nats: &str, args: &[&str]) -> serde_json::Value {
    let output = admin_output(nats, args);
    assert!(
        output.status.success(),
        "partyline admin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "admin {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A running cluster. Processes are killed when it is dropped.
pub(crate) struct TestCluster {
    /// Holds the store and the logs.
    pub dir: tempfile::TempDir,
    /// The NATS server.
    pub nats: NatsServer,
    /// Coordinator processes.
    pub coordinators: Vec<Partyline>,
    /// Room node processes, by index; ids are `node-<index>`.
    pub nodes: Vec<Partyline>,
    /// Gateway processes.
    pub gateways: Vec<Partyline>,
    /// Extra flags of every room node (e.g. `--redis URL`).
    node_args: Vec<String>,
    /// Extra flags of every process (e.g. `--otlp-endpoint URL`).
    all_args: Vec<String>,
    /// The `--ops-listen` port of each process, by name (`node-0`,
    /// `gateway-1`, `coordinator-0`).
    pub ops_ports: std::collections::HashMap<String, u16>,
}

impl TestCluster {
    /// Starts NATS, then `coordinators`, `nodes` and `gateways`, and waits
    /// until the slot map covers every node.
    pub(crate) fn start(coordinators: usize, nodes: usize, gateways: usize) -> Self {
        Self::start_with(coordinators, nodes, gateways, &[])
    }

    /// Like [`TestCluster::start`], with `node_args` added to every room
    /// node's command line; `{dir}` in them becomes the cluster's temp dir.
    pub(crate) fn start_with(
        coordinators: usize,
        nodes: usize,
        gateways: usize,
        node_args: &[&str],
    ) -> Self {
        Self::start_with_all(coordinators, nodes, gateways, node_args, &[])
    }

    /// Like [`TestCluster::start_with`], with `all_args` added to every
    /// process's command line.
    pub(crate) fn start_with_all(
        coordinators: usize,
        nodes: usize,
        gateways: usize,
        node_args: &[&str],
        all_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(LINK_SECRET_FILE),
            format!("{}\n", super::TEST_LINK_SECRET),
        )
        .expect("write the link secret");
        let nats = NatsServer::start();
        let node_args = node_args
            .iter()
            .map(|a| a.replace("{dir}", &dir.path().display().to_string()))
            .collect();
        let mut cluster = Self {
            dir,
            nats,
            coordinators: Vec::new(),
            nodes: Vec::new(),
            gateways: Vec::new(),
            node_args,
            all_args: all_args.iter().map(|a| a.to_string()).collect(),
            ops_ports: Default::default(),
        };
        for _ in 0..coordinators {
            cluster.add_coordinator();
        }
        for _ in 0..nodes {
            cluster.add_node();
        }
        cluster.wait_for_nodes_in_map(nodes, Duration::from_secs(20));
        for _ in 0..gateways {
            cluster.add_gateway();
        }
        cluster
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The link secret file every process of the cluster reads (rewrite it
    /// to rotate).
    pub(crate) fn link_secret_file(&self) -> PathBuf {
        self.dir.path().join(LINK_SECRET_FILE)
    }

    /// The shared store directory.
    pub(crate) fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Starts one more coordinator.
    pub(crate) fn add_coordinator(&mut self) -> usize {
        let index = self.coordinators.len();
        let name = format!("coordinator-{index}");
        let args = vec![
            "coordinator".into(),
            "--nats".into(),
            self.nats.url(),
            "--coordinator-id".into(),
            name.clone(),
            "--heartbeat-interval".into(),
            HEARTBEAT.into(),
            "--dead-after".into(),
            DEAD_AFTER.into(),
            "--lease".into(),
            LEASE.into(),
            "--grpc-secret-file".into(),
            self.link_secret_file().display().to_string(),
        ];
        let args = self.with_common_args(&name, args);
        let process = Partyline::start(&args, LOG, &self.log_path(&name), "partyline coordinator ");
        self.coordinators.push(process);
        index
    }

    /// Starts one more room node, `node-<index>`.
    pub(crate) fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let name = format!("node-{index}");
        let args = vec![
            "room-node".into(),
            "--nats".into(),
            self.nats.url(),
            "--node-id".into(),
            name.clone(),
            "--grpc-listen".into(),
            "127.0.0.1:0".into(),
            "--store".into(),
            format!("file://{}", self.store().display()),
            "--heartbeat-interval".into(),
            HEARTBEAT.into(),
            "--drain-timeout".into(),
            "20s".into(),
            "--grpc-secret-file".into(),
            self.link_secret_file().display().to_string(),
        ];
        let mut args = args;
        if self.node_args.iter().any(|a| a == "--store") {
            // The caller chose the store (e.g. snapshots of a Redis log).
            let at = args
                .iter()
                .position(|a| a == "--store")
                .expect("store flag");
            args.drain(at..at + 2);
        }
        args.extend(self.node_args.iter().cloned());
        let args = self.with_common_args(&name, args);
        let process = Partyline::start(&args, LOG, &self.log_path(&name), "partyline room-node ");
        self.nodes.push(process);
        index
    }

    /// Starts one more gateway.
    pub(crate) fn add_gateway(&mut self) -> usize {
        self.add_gateway_with(&[])
    }

    /// Starts one more gateway with `extra` flags (e.g. its auth).
    pub(crate) fn add_gateway_with(&mut self, extra: &[&str]) -> usize {
        let index = self.gateways.len();
        let name = format!("gateway-{index}");
        let args = vec![
            "gateway".into(),
            "--nats".into(),
            self.nats.url(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--insecure-no-auth".into(),
            "--api-key".into(),
            API_KEY.into(),
            "--grpc-secret-file".into(),
            self.link_secret_file().display().to_string(),
        ];
        let mut args = self.with_common_args(&name, args);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let process = Partyline::start(
            &args,
            LOG,
            &self.log_path(&name),
            "partyline gateway listening on ws://",
        );
        self.gateways.push(process);
        index
    }

    /// `args` plus the flags every process gets: `all_args` and an ops
    /// endpoint on a free port (kept in `ops_ports` under `name`).
    fn with_common_args(&mut self, name: &str, mut args: Vec<String>) -> Vec<String> {
        let port = *self
            .ops_ports
            .entry(name.to_owned())
            .or_insert_with(super::nats::free_port);
        args.push("--ops-listen".into());
        args.push(format!("127.0.0.1:{port}"));
        args.extend(self.all_args.iter().cloned());
        args
    }

    /// `GET path` on process `name`'s ops endpoint: status and body.
    pub(crate) async fn ops_get(&self, name: &str, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.ops_ports[name]);
        match reqwest::get(url).await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(error) => (0, error.to_string()),
        }
    }

    /// The y-websocket URL of `room` through gateway `index`.
    pub(crate) fn url(&self, gateway: usize, room: &str) -> String {
        format!("ws://{}/{}", self.gateways[gateway].ready, room)
    }

    /// `GET path` on gateway `index`'s HTTP API: status and JSON body.
    pub(crate) async fn api_get(&self, gateway: usize, path: &str) -> (u16, serde_json::Value) {
        let url = format!("http://{}{path}", self.gateways[gateway].ready);
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("gateway API reachable");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// Runs `partyline admin --nats URL ARGS --json` and parses its output.
    pub(crate) fn admin(&self, args: &[&str]) -> serde_json::Value {
        admin(&self.nats.url(), args)
    }

    /// The current slot map as `admin slots` reports it.
    pub(crate) fn slots(&self) -> serde_json::Value {
        self.admin(&["slots"])
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.slots()["epoch"].as_u64().expect("epoch")
    }

    /// Polls `admin slots` until `done` holds.
    pub(crate) fn wait_for_slots(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_partyline"))
                .args(["admin", "--nats", &self.nats.url(), "slots", "--json"])
                .env("PARTYLINE_LOG", "warn")
                .output()
                .expect("run partyline admin");
            if output.status.success() {
                if let Ok(slots) = serde_json::from_slice::<serde_json::Value>(&output.stdout) {
                    if done(&slots) {
                        return slots;
                    }
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the map spreads slots over exactly `count` nodes.
    pub(crate) fn wait_for_nodes_in_map(
        &self,
        count: usize,
        timeout: Duration,
    ) -> serde_json::Value {
        self.wait_for_slots(timeout, &format!("{count} nodes in the map"), |slots| {
            owning_nodes(slots) == count
        })
    }

    /// The node that loaded `room` last, from the room nodes' logs.
    pub(crate) fn node_serving(&self, room: &str) -> Option<String> {
        let needle = format!("room loaded room={room} ");
        let mut latest: Option<(String, String)> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            for line in node.log().lines().filter(|l| l.contains(&needle)) {
                let stamp = line.split_whitespace().next().unwrap_or("").to_owned();
                if latest.as_ref().is_none_or(|(s, _)| stamp > *s) {
                    latest = Some((stamp, format!("node-{index}")));
                }
            }
        }
        latest.map(|(_, node)| node)
    }

    /// How many rooms the gateways re-opened on a new owner (moves and
    /// failovers), from their logs.
    pub(crate) fn reopened_rooms(&self) -> usize {
        self.gateways
            .iter()
            .map(|g| {
                g.log()
                    .lines()
                    .filter(|l| l.contains("room re-opened on its new owner"))
                    .count()
            })
            .sum()
    }

    /// ERROR lines of every process, prefixed with its log name.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.coordinators
            .iter()
            .chain(&self.nodes)
            .chain(&self.gateways)
            .flat_map(|p| {
                let name = p
                    .log_path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                p.errors()
                    .into_iter()
                    .map(move |line| format!("{name}: {line}"))
            })
            .collect()
    }
}

/// How many nodes own at least one slot in an `admin slots` report.
pub(crate) fn owning_nodes(slots: &serde_json::Value) -> usize {
    slots["nodes"].as_array().map_or(0, |nodes| {
        nodes
            .iter()
            .filter(|n| n["slots"].as_u64().unwrap_or(0) > 0)
            .count()
    })
}
