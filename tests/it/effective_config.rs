//! Every serving role's effective settings (`--print-effective-config`)
//! from a config file, env vars and flags, and from nothing at all,
//! compared with committed JSON (tests/fixtures/effective_config/). The
//! expected files were written by the binary before the config code was
//! reshaped (issue 19): same flags, env names, file keys and defaults.
//! `PARTYLINE_BLESS=1` rewrites them instead of comparing.

use std::path::PathBuf;
use std::process::Command;

/// Read at run time (cargo and nextest set it): the compile-time value
/// names whichever checkout last built the shared target directory.
fn fixtures() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fixtures/effective_config")
}

/// The machine's host name as `partyline` reads it (the default node id).
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

/// Runs `partyline ARGS --print-effective-config` with only `env` set and
/// compares its stdout with `NAME.json`.
fn check(name: &str, args: &[&str], env: &[(&str, &str)]) {
    let output = Command::new(env!("CARGO_BIN_EXE_partyline"))
        .args(args)
        .arg("--print-effective-config")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run partyline");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    assert!(
        output.status.success(),
        "{name}: partyline {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = match host_name() {
        Some(host) => stdout.replace(&host, "{hostname}"),
        None => stdout,
    };
    let expected_path = fixtures().join(format!("{name}.json"));
    if std::env::var_os("PARTYLINE_BLESS").is_some() {
        std::fs::write(&expected_path, &stdout).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|error| panic!("read {}: {error}", expected_path.display()));
    assert_eq!(
        stdout,
        expected,
        "{name}: effective config differs from {}",
        expected_path.display()
    );
}

fn config(file: &str) -> String {
    fixtures().join(file).display().to_string()
}

#[test]
fn dev_defaults() {
    check("dev-defaults", &["dev"], &[]);
}

#[test]
fn dev_from_file_env_and_flags() {
    let full = config("full.toml");
    check(
        "dev-full",
        &[
            "dev",
            "--config",
            &full,
            "--dead-after",
            "26s",
            "--max-connections",
            "6000",
            "--idle-timeout",
            "50s",
            "--refuse-unlisted-rooms",
            "false",
            "--webhook-timeout",
            "4s",
            "--load-timeout",
            "9s",
            "--ops-listen",
            "127.0.0.1:9200",
            "--data-dir",
            "/srv/partyline-flag",
            "--max-type-depth",
            "32",
        ],
        &[
            ("PARTYLINE_GATEWAY_PING_INTERVAL", "6s"),
            ("PARTYLINE_GATEWAY_DEAD_AFTER", "25s"),
            ("PARTYLINE_GATEWAY_API_KEY", "env-api-key-0123456789"),
            (
                "PARTYLINE_ROOM_NODE_ROOM_MODES",
                "doc-=snapshot,big-=history",
            ),
            ("PARTYLINE_ROOM_NODE_HISTORY_VERSIONS", "30"),
            ("PARTYLINE_AUTH_CACHE_TTL", "90s"),
            (
                "PARTYLINE_AUTH_JWT_SECRET",
                "env-jwt-secret-0123456789abcdef01234567",
            ),
            ("PARTYLINE_WEBHOOKS_CALLBACK_RETRIES", "7"),
            ("PARTYLINE_TELEMETRY_TRACE_SAMPLE_RATIO", "0.5"),
            ("PORT", "4999"),
        ],
    );
}

#[test]
fn dev_port_host_and_data_dir_from_file() {
    let data_dir = config("data_dir.toml");
    check(
        "dev-port",
        &["dev", "--config", &data_dir, "--host", "127.0.0.2"],
        &[("PORT", "4002"), ("HOST", "localhost")],
    );
    check("dev-port-env", &["dev"], &[("PORT", "4003")]);
}

#[test]
fn gateway_defaults() {
    check(
        "gateway-defaults",
        &["gateway", "--insecure-no-auth", "--insecure-no-grpc-secret"],
        &[],
    );
}

#[test]
fn gateway_from_file_env_and_flags() {
    let full = config("full.toml");
    check(
        "gateway-full",
        &[
            "gateway",
            "--cluster-name",
            "flag-cluster",
            "--auth-max-session",
            "2h",
            "--listen",
            "127.0.0.1:7200",
            "--max-sockets-per-ip",
            "41",
            "--auth-mode",
            "webhook",
            "--webhook-url",
            "https://flag.internal/authorize",
            "--trace-sample-ratio",
            "1",
            "--allowed-origins",
            "https://flag.example.com,https://*.flag.example.net",
            "--webhook-forward-headers",
            "cookie,authorization",
        ],
        &[
            ("PARTYLINE_CONFIG", &full),
            ("PARTYLINE_CLUSTER_NATS", "nats://env-nats.internal:4222"),
            ("PARTYLINE_GATEWAY_MESSAGE_BURST", "2500"),
            ("PARTYLINE_GATEWAY_SESSION_QUEUE_BYTES", "4194304"),
            (
                "PARTYLINE_AUTH_WEBHOOK_URL",
                "https://env.internal/authorize",
            ),
            ("PARTYLINE_AUTH_CACHE_ENTRIES", "600"),
            ("PARTYLINE_TELEMETRY_OTLP_ENDPOINT", ""),
            ("PARTYLINE_GRPC_SECRET_FILE", "/run/secrets/env-link"),
            ("PARTYLINE_GATEWAY_TRUSTED_PROXIES", "192.168.0.0/16,::1"),
        ],
    );
}

#[test]
fn room_node_defaults() {
    check(
        "room-node-defaults",
        &["room-node", "--insecure-no-grpc-secret"],
        &[],
    );
}

#[test]
fn room_node_from_file_env_and_flags() {
    let full = config("full.toml");
    check(
        "room-node-full",
        &[
            "room-node",
            "--config",
            &full,
            "--room-mode",
            "team-=snapshot",
            "--room-mode",
            "x-=ephemeral",
            "--drain-timeout",
            "55s",
            "--grpc-listen",
            "127.0.0.1:7300",
            "--max-doc-bytes",
            "16777216",
            "--callback-url",
            "https://flag.internal/callback",
            "--callback-header",
            "Authorization: Bearer flag-token",
            "--callback-header",
            "X-Tenant: t1",
            "--callback-format",
            "json",
            "--refuse-unlisted-rooms",
            "--nats",
            "nats://flag-nats.internal:4222",
        ],
        &[
            ("PARTYLINE_NODE_ID", "env-node"),
            ("PARTYLINE_NODE_DRAIN_TIMEOUT", "50s"),
            ("PARTYLINE_NODE_HEARTBEAT_INTERVAL", "700ms"),
            ("PARTYLINE_ROOM_NODE_SNAPSHOT_INTERVAL", "100s"),
            ("PARTYLINE_ROOM_NODE_MEMORY_TRIM_DELAY", "3s"),
            ("PARTYLINE_WEBHOOKS_DEBOUNCE_WAIT", "4s"),
            (
                "PARTYLINE_WEBHOOKS_SECRET",
                "whsec_ZW52LXdlYmhvb2stc2VjcmV0LTAxMjM0NTY3ODk=",
            ),
            ("PARTYLINE_ROOM_NODE_ROOM_MODES", "ignored-=ephemeral"),
        ],
    );
}

#[test]
fn room_node_stores() {
    let data_dir = config("data_dir.toml");
    check(
        "room-node-data-dir",
        &[
            "room-node",
            "--config",
            &data_dir,
            "--insecure-no-grpc-secret",
            "--node-id",
            "n1",
            "--grpc-listen",
            "0.0.0.0:7400",
        ],
        &[],
    );
    check(
        "room-node-store",
        &["room-node", "--store", "file:///srv/flag-store"],
        &[
            ("PARTYLINE_INSECURE_NO_GRPC_SECRET", "true"),
            ("PARTYLINE_NODE_ADVERTISE", "https://env-node.internal:443"),
            ("PARTYLINE_NODE_ROOM_LOCK_TIMEOUT", "20s"),
        ],
    );
    check(
        "room-node-redis",
        &[
            "room-node",
            "--insecure-no-grpc-secret",
            "--redis",
            "redis://127.0.0.1:6379",
        ],
        &[],
    );
}

#[test]
fn coordinator_defaults() {
    check(
        "coordinator-defaults",
        &["coordinator", "--insecure-no-grpc-secret"],
        &[],
    );
}

#[test]
fn coordinator_from_file_env_and_flags() {
    let full = config("full.toml");
    check(
        "coordinator-full",
        &[
            "coordinator",
            "--config",
            &full,
            "--dead-after",
            "4500ms",
            "--grpc-secret-file",
            "/run/secrets/flag-link",
        ],
        &[
            ("PARTYLINE_COORDINATOR_LEASE", "6s"),
            ("PARTYLINE_COORDINATOR_REBALANCE_ON_JOIN", "true"),
            ("PARTYLINE_COORDINATOR_ID", "env-coordinator"),
            ("PARTYLINE_CLUSTER_NAME", "env-cluster"),
        ],
    );
}
