//! Bad addresses and URLs stop `partyline` at start-up, before it serves or
//! dials anything, with a message naming the setting: `--advertise` without
//! a scheme (a gateway would dial it as is and only log "room owner
//! unreachable"), and each other address or URL setting of each role.

use std::time::Duration;

use crate::common::process::run_to_exit;

/// A NATS URL nothing listens on: a role that got past its checks would
/// fail (or wait) here instead, without naming the bad flag.
const NO_NATS: &str = "nats://127.0.0.1:1";

/// Runs `partyline ARGS` and checks that it exits non-zero, names `flag`
/// on stderr, and never printed a readiness line.
fn refuses(args: &[&str], flag: &str) {
    let exited = run_to_exit(args, Duration::from_secs(30));
    assert!(!exited.status.success(), "{args:?} was accepted");
    assert!(
        exited.stderr.contains(flag),
        "{args:?}: stderr does not name {flag}:\n{}",
        exited.stderr
    );
    assert!(
        !exited.stdout.contains("listening") && !exited.stdout.contains("serving"),
        "{args:?} served: {}",
        exited.stdout
    );
}

#[test]
fn a_room_node_refuses_an_advertise_address_without_a_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let node = |extra: &[&str]| {
        let mut args = vec![
            "room-node",
            "--nats",
            NO_NATS,
            "--grpc-listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--insecure-no-grpc-secret",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], flag: &str| {
        let args = node(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refuses(&args, flag);
    };
    run(&["--advertise", "127.0.0.1:7001"], "--advertise");
    run(&["--advertise", "room-node-1:7001"], "--advertise");
    run(&["--advertise", "ftp://room-node-1:7001"], "--advertise");
    run(&["--redis", "127.0.0.1:6379"], "--redis");
    run(&["--callback-url", "example.com/hook"], "--callback-url");
    run(&["--load-url", "file:///etc/passwd"], "--load-url");
    run(&["--grpc-listen", "127.0.0.1"], "--grpc-listen");
}

#[test]
fn every_role_names_its_bad_address_settings() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let dev = |extra: &[&str], flag: &str| {
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--data-dir", &data];
        args.extend_from_slice(extra);
        refuses(&args, flag);
    };
    dev(&["--callback-url", "not a url"], "--callback-url");
    dev(
        &[
            "--auth-mode",
            "webhook",
            "--webhook-url",
            "localhost:8080/auth",
        ],
        "--webhook-url",
    );
    dev(
        &["--auth-mode", "jwt", "--jwks-url", "idp.example/jwks.json"],
        "--jwks-url",
    );
    dev(
        &["--otlp-endpoint", "otel-collector:4317"],
        "--otlp-endpoint",
    );
    dev(&["--ops-listen", "nope"], "--ops-listen");
    refuses(
        &["dev", "--listen", "127.0.0.1", "--data-dir", &data],
        "--listen",
    );

    refuses(
        &["coordinator", "--nats", "http://127.0.0.1:4222"],
        "--nats",
    );
    refuses(
        &[
            "gateway",
            "--nats",
            "nats://",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
        ],
        "--nats",
    );
    refuses(
        &[
            "gateway",
            "--nats",
            &format!("{NO_NATS},tls://"),
            "--insecure-no-auth",
        ],
        "--nats",
    );
    refuses(
        &[
            "room-node",
            "--nats",
            NO_NATS,
            "--redis",
            "redis://127.0.0.1:1",
            "--store",
            "bucket/rooms",
            "--insecure-no-grpc-secret",
        ],
        "--store",
    );
    refuses(&["admin", "--nats", "ftp://x", "slots"], "--nats");
}

#[test]
fn gateways_and_room_nodes_refuse_to_start_without_a_usable_link_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "# rotated\nQx7weakZ\n").unwrap();
    let weak = weak.display().to_string();
    let good = dir.path().join("good");
    std::fs::write(&good, "a-long-enough-link-secret-0123\n").unwrap();
    let good = good.display().to_string();
    let missing = dir.path().join("missing").display().to_string();
    let node = [
        "room-node",
        "--nats",
        NO_NATS,
        "--grpc-listen",
        "127.0.0.1:0",
        "--store",
        &store,
    ];
    let gateway = [
        "gateway",
        "--nats",
        NO_NATS,
        "--listen",
        "127.0.0.1:0",
        "--insecure-no-auth",
    ];
    for role in [&node[..], &gateway[..]] {
        let with = |extra: &[&str]| -> Vec<String> {
            role.iter().chain(extra).map(|a| a.to_string()).collect()
        };
        let refuses_with = |extra: &[&str], needle: &str| {
            let args = with(extra);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            refuses(&args, needle);
        };
        refuses_with(&[], "--grpc-secret-file");
        refuses_with(
            &["--grpc-secret-file", &weak],
            "line 2: a secret needs at least 16 characters",
        );
        refuses_with(
            &["--grpc-secret-file", &missing],
            "cannot read the gRPC secret file",
        );
        refuses_with(
            &["--grpc-secret-file", &good, "--insecure-no-grpc-secret"],
            "not both",
        );
    }
    // The secret is never echoed in an error.
    let exited = run_to_exit(
        &[&node[..], &["--grpc-secret-file", &weak]].concat(),
        Duration::from_secs(30),
    );
    assert!(!exited.stderr.contains("Qx7weakZ"), "{}", exited.stderr);
}
