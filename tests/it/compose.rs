//! docker-compose.yml, run as local processes: the file is rendered by
//! `docker-compose config` (anchors, merges and `${…}` resolved), and every
//! Partyline service is started with its own command and environment, as
//! many replicas as the file says, against a real nats-server (JetStream),
//! redis-server (AOF) and S3 API in place of the nats, redis and s3
//! containers (the s3 service's own bucket step runs in the local S3
//! server's root: both treat a directory as a bucket). Container host names become `--node-id`s; the only other
//! changes are the addresses of those dependencies and loopback ports, and
//! the test checks that nothing else in the file names a container.
//!
//! The internal planes as the file wires them: NATS runs the shipped
//! deploy/nats/nats-server.conf (here too, with the passwords the file
//! passes it), each role's NATS URL carries its own user and the password
//! the file gives NATS for that user (all from the environment, none in
//! the file), and gateways and room nodes read the gRPC secret from the
//! compose secret's file.
//!
//! Then it rolls every room node (SIGTERM, which drains; start again with
//! the same id) under a write load through both gateways: no client socket
//! may close and no update may be lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::cluster::{owning_nodes, try_admin};
use crate::common::load::Load;
use crate::common::nats::{free_port, restartable_port, NatsServer};
use crate::common::process::Partyline;
use crate::common::redis_server::RedisServer;
use crate::common::s3_server::{self, S3Server};

/// The NATS passwords the file reads from the environment (`.env`, made by
/// deploy/compose/secrets.sh), and this test's values.
const NATS_PASSWORDS: [(&str, &str); 4] = [
    ("NATS_COORDINATOR_PASSWORD", "compose-test-coordinator-pw"),
    ("NATS_ROOM_NODE_PASSWORD", "compose-test-room-node-pw"),
    ("NATS_GATEWAY_PASSWORD", "compose-test-gateway-pw"),
    ("NATS_ADMIN_PASSWORD", "compose-test-admin-pw"),
];

/// Where the gRPC secret is in the Partyline containers (a compose secret).
const GRPC_SECRET_PATH: &str = "/run/secrets/grpc-secret";

/// `docker-compose config` of the repository's file, as JSON.
fn rendered_compose() -> serde_json::Value {
    let root = common::repo_root();
    let rendered = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root)
        .env_remove("PARTYLINE_OTLP_ENDPOINT")
        .env_remove("PARTYLINE_API_KEY")
        .envs(NATS_PASSWORDS)
        .output()
        .expect("run docker-compose (scripts/test.sh installs it)");
    assert!(
        rendered.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    // docker-compose is Python and brings PyYAML to the system Python.
    let mut python = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(&rendered.stdout)
        .unwrap();
    let json = python.wait_with_output().unwrap();
    assert!(json.status.success());
    serde_json::from_slice(&json.stdout).expect("compose as JSON")
}

/// One Partyline service of the file, its values mapped onto this machine.
struct Service {
    args: Vec<String>,
    env: Vec<(String, String)>,
    replicas: usize,
}

/// Where the file's containers are here.
struct Local {
    /// `host:port` of the local nats-server.
    nats: String,
    redis: String,
    s3: String,
    /// The local file in place of the compose secret.
    grpc_secret: String,
}

impl Local {
    fn map(&self, value: &str) -> String {
        // nats://USER:PASSWORD@nats:4222, credentials kept.
        if let Some(credentials) = value
            .strip_prefix("nats://")
            .and_then(|rest| rest.strip_suffix("@nats:4222"))
        {
            return format!("nats://{credentials}@{}", self.nats);
        }
        match value {
            GRPC_SECRET_PATH => self.grpc_secret.clone(),
            "redis://redis:6379/0" => self.redis.clone(),
            "http://s3:7070" => self.s3.clone(),
            // versitygw's root keys are the S3 server's keys.
            "partyline" => s3_server::ACCESS_KEY.to_owned(),
            "partyline-secret" => s3_server::SECRET_KEY.to_owned(),
            // Container ports become free loopback ports.
            "0.0.0.0:7001" | "0.0.0.0:1999" => "127.0.0.1:0".to_owned(),
            "0.0.0.0:9464" => format!("127.0.0.1:{}", free_port()),
            other => {
                for host in ["nats:", "redis:", "//s3:", "0.0.0.0", "/run/secrets"] {
                    assert!(
                        !other.contains(host),
                        "{other:?} names a container this test does not map"
                    );
                }
                other.to_owned()
            }
        }
    }

    fn service(&self, compose: &serde_json::Value, name: &str) -> Service {
        let service = &compose["services"][name];
        assert_eq!(service["image"], "partyline:local", "{name} runs the image");
        let args = service["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has a command list"))
            .iter()
            .map(|arg| self.map(arg.as_str().unwrap()))
            .collect();
        let env = service["environment"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.as_str() != "PARTYLINE_LOG")
            .map(|(key, value)| (key.clone(), self.map(value.as_str().unwrap_or_default())))
            .collect();
        let replicas = service["deploy"]["replicas"].as_u64().unwrap_or(1) as usize;
        Service {
            args,
            env,
            replicas,
        }
    }
}

/// The bucket the room nodes' `--store` names, and the s3 service's
/// command that makes it.
struct Bucket {
    name: String,
    step: String,
}

/// Checks the s3 service: versitygw pinned to a release, serving `/data`
/// (its volume) with the posix backend, where every directory is a
/// bucket; its command makes the room nodes' bucket before the gateway
/// starts, and the room nodes wait for it to be healthy, reach it at its
/// port and sign with its root keys.
fn s3_service_makes_the_store_bucket(compose: &serde_json::Value) -> Bucket {
    let s3 = &compose["services"]["s3"];
    common::assert_pinned_versitygw(s3["image"].as_str().unwrap_or_default());
    assert_eq!(s3["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    let script = s3["command"][0].as_str().expect("s3 command");
    let (step, gateway) = script
        .split_once(" && exec ")
        .unwrap_or_else(|| panic!("s3 makes its bucket, then execs versitygw: {script}"));
    let gateway: Vec<&str> = gateway.split_whitespace().collect();
    assert_eq!(gateway[0], "versitygw", "{script}");
    assert_eq!(gateway[gateway.len() - 2..], ["posix", "/data"], "{script}");
    let flag = |name: &str| {
        let at = gateway.iter().position(|a| *a == name);
        gateway[at.unwrap_or_else(|| panic!("s3: no {name}: {script}")) + 1]
    };
    assert!(
        s3["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("s3-data:/data:"))),
        "s3 keeps /data in a volume"
    );
    let health = s3["healthcheck"]["test"].to_string();
    let port = flag("--port").strip_prefix(':').expect("--port :PORT");
    assert!(
        health.contains(&format!(":{port}{}", flag("--health"))),
        "{health}"
    );

    let room_node = &compose["services"]["room-node"];
    let command: Vec<&str> = room_node["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let store = command[command.iter().position(|a| *a == "--store").unwrap() + 1];
    let name = store
        .strip_prefix("s3://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("--store {store}"));
    assert_eq!(step, format!("mkdir -p /data/{name}"), "{script}");
    assert_eq!(
        room_node["depends_on"]["s3"]["condition"], "service_healthy",
        "room nodes start once the bucket is made and the gateway answers"
    );
    let env = &room_node["environment"];
    assert_eq!(env["AWS_ENDPOINT"], format!("http://s3:{port}"));
    assert_eq!(
        env["AWS_ACCESS_KEY_ID"],
        s3["environment"]["ROOT_ACCESS_KEY_ID"]
    );
    assert_eq!(
        env["AWS_SECRET_ACCESS_KEY"],
        s3["environment"]["ROOT_SECRET_ACCESS_KEY"]
    );
    Bucket {
        name: name.to_owned(),
        step: step.to_owned(),
    }
}

/// Checks the internal planes' wiring and returns the environment the nats
/// service gives nats-server (its passwords): NATS runs the repository's
/// deploy/nats/nats-server.conf (mounted read-only where `-c` reads it),
/// its passwords come from the environment (this test's values: none is
/// written in the file), each Partyline service's NATS URL is its own
/// role's user with the password NATS has for that user (in the
/// environment, not the command line), and every role reads the link
/// secret from the compose secret (coordinators check room nodes'
/// heartbeat proofs with it).
fn internal_planes(compose: &serde_json::Value) -> Vec<(String, String)> {
    let nats = &compose["services"]["nats"];
    let command: Vec<&str> = nats["command"]
        .as_array()
        .expect("nats command")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config = command[command
        .iter()
        .position(|a| *a == "-c")
        .expect("nats -c CONFIG")
        + 1];
    let shipped = common::repo_root().join("deploy/nats/nats-server.conf");
    let mount = format!("{}:{config}:ro", shipped.display());
    assert!(
        nats["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == &serde_json::json!(mount)),
        "nats mounts {mount}: {}",
        nats["volumes"]
    );
    let nats_env = nats["environment"].as_object().expect("nats environment");
    let mut passwords = BTreeMap::new();
    for (var, value) in NATS_PASSWORDS {
        assert_eq!(nats_env[var], value, "nats gets {var} from the environment");
        passwords.insert(var, value);
    }
    for (service, user) in [
        ("coordinator", "coordinator"),
        ("room-node", "room-node"),
        ("gateway", "gateway"),
        ("admin", "admin"),
    ] {
        let spec = &compose["services"][service];
        let var = format!("NATS_{}_PASSWORD", user.to_uppercase().replace('-', "_"));
        assert_eq!(
            spec["environment"]["PARTYLINE_CLUSTER_NATS"],
            format!("nats://{user}:{}@nats:4222", passwords[var.as_str()]),
            "{service} connects as {user}"
        );
        assert!(
            !spec["command"].to_string().contains("nats://"),
            "{service}: the NATS URL (with its password) belongs in the environment, not argv"
        );
        let mounted = spec["secrets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["source"] == "grpc-secret"));
        let file = &spec["environment"]["PARTYLINE_GRPC_SECRET_FILE"];
        assert!(mounted, "{service} mounts the grpc-secret secret");
        assert_eq!(file, GRPC_SECRET_PATH, "{service}");
    }
    let source = compose["secrets"]["grpc-secret"]["file"]
        .as_str()
        .unwrap_or_default();
    assert!(source.ends_with("/deploy/compose/grpc-secret"), "{source}");
    nats_env
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The `--ops-listen` address in `args`.
fn ops_address(args: &[String]) -> String {
    let at = args.iter().position(|a| a == "--ops-listen").unwrap();
    args[at + 1].clone()
}

/// One replica's command line: its own ops port (each container has its
/// own network namespace; room nodes restart on it) and `extra` flags.
fn replica(args: &[String], extra: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--ops-listen").unwrap();
    args[at + 1] = format!("127.0.0.1:{}", restartable_port());
    args.extend(extra.iter().cloned());
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_runs_and_survives_a_rolling_restart_of_every_room_node() {
    let compose = rendered_compose();
    // The dependencies the file declares, here as real servers.
    for (name, image) in [("nats", "nats:"), ("redis", "redis:")] {
        let declared = compose["services"][name]["image"]
            .as_str()
            .unwrap_or_default();
        assert!(declared.starts_with(image), "{name}: {declared}");
    }
    let nats_env = internal_planes(&compose);
    assert!(compose["services"]["redis"]["command"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("--appendonly")));
    let bucket = s3_service_makes_the_store_bucket(&compose);

    // The shipped config (JetStream, one user per role) with the
    // passwords the file gives the nats service.
    let nats_env: Vec<(&str, &str)> = nats_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let nats = NatsServer::start_with_config(
        &common::repo_root().join("deploy/nats/nats-server.conf"),
        &nats_env,
    );
    let redis = RedisServer::start();
    let s3 = S3Server::start();
    // The s3 service's bucket step, as the file writes it, in the local
    // server's root in place of the container's /data.
    let root = s3.root().to_str().unwrap().to_owned();
    let made = Command::new("/bin/sh")
        .args(["-c", &bucket.step.replace("/data", &root)])
        .status()
        .unwrap();
    assert!(made.success() && s3.root().join(&bucket.name).is_dir());
    let secrets = tempfile::tempdir().unwrap();
    let grpc_secret = secrets.path().join("grpc-secret");
    std::fs::write(&grpc_secret, "compose-test-grpc-secret-0123456789\n").unwrap();
    let local = Local {
        nats: nats.url().trim_start_matches("nats://").to_owned(),
        redis: redis.url(),
        s3: s3.endpoint(),
        grpc_secret: grpc_secret.to_str().unwrap().to_owned(),
    };
    // `partyline admin`, as the admin service runs it.
    let admin_nats = local.map(
        compose["services"]["admin"]["environment"]["PARTYLINE_CLUSTER_NATS"]
            .as_str()
            .unwrap(),
    );
    let coordinator = local.service(&compose, "coordinator");
    let room_node = local.service(&compose, "room-node");
    let gateway = local.service(&compose, "gateway");
    assert_eq!(
        (coordinator.replicas, room_node.replicas, gateway.replicas),
        (2, 3, 2)
    );
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    const LOG: &str = "info";

    let _coordinators: Vec<Partyline> = (0..coordinator.replicas)
        .map(|i| {
            Partyline::start_with_env(
                &replica(&coordinator.args, &[]),
                &coordinator.env,
                LOG,
                &log(&format!("coordinator-{i}")),
                "partyline coordinator ",
            )
        })
        .collect();
    // Each container has its own host name, the default node id.
    let node_args: Vec<Vec<String>> = (0..room_node.replicas)
        .map(|i| {
            replica(
                &room_node.args,
                &["--node-id".to_owned(), format!("room-node-{i}")],
            )
        })
        .collect();
    let start_node = |i: usize| {
        Partyline::start_with_env(
            &node_args[i],
            &room_node.env,
            LOG,
            &log(&format!("room-node-{i}")),
            "partyline room-node ",
        )
    };
    let mut nodes: Vec<Partyline> = (0..room_node.replicas).map(start_node).collect();
    let wait_for_all_nodes = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let slots = try_admin(&admin_nats, &["slots"]).unwrap_or_default();
            if owning_nodes(&slots) == room_node.replicas {
                return slots;
            }
            assert!(Instant::now() < deadline, "{what}: slots {slots}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for_all_nodes("start");
    let gateways: Vec<Partyline> = (0..gateway.replicas)
        .map(|i| {
            Partyline::start_with_env(
                &replica(&gateway.args, &[]),
                &gateway.env,
                LOG,
                &log(&format!("gateway-{i}")),
                "partyline gateway listening on ws://",
            )
        })
        .collect();
    let gateway_addrs: Vec<String> = gateways.iter().map(|g| g.ready.clone()).collect();

    let load = Load::start_at(&gateway_addrs, "compose", 6, 2, Duration::from_millis(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rolled = BTreeMap::new();
    for i in 0..room_node.replicas {
        let started = Instant::now();
        let status = nodes[i].terminate(Duration::from_secs(40));
        assert!(status.success(), "room-node-{i} exited with {status}");
        nodes[i] = start_node(i);
        let ops = ops_address(&node_args[i]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = reqwest::get(format!("http://{ops}/readyz")).await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "room-node-{i} never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::block_in_place(|| wait_for_all_nodes("after a restart"));
        rolled.insert(format!("room-node-{i}"), started.elapsed());
    }
    eprintln!("rolled every room node: {rolled:?}");
    load.finish().await;
    for (name, process) in nodes
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("room-node-{i}"), p))
        .chain(
            gateways
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("gateway-{i}"), p)),
        )
    {
        assert!(
            process.errors().is_empty(),
            "{name}: {:?}",
            process.errors()
        );
    }
}
