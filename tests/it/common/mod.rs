//! Test harness: runs the real `partyline` binary on a free loopback port,
//! with a kill-on-drop guard, and reads its readiness line from stdout.

pub(crate) mod cluster;
pub(crate) mod inproc;
pub(crate) mod load;
pub(crate) mod nats;
pub(crate) mod process;
pub(crate) mod redis_server;
pub(crate) mod s3_server;
pub(crate) mod yjs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use process::Partyline;

/// The checkout under test. Read at run time (cargo and nextest set it):
/// the compile-time value names whichever checkout last built the shared
/// target directory, which may be another clone.
pub(crate) fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The gRPC link secret of in-process room nodes and gateways, so tests
/// take the same authenticated path as a cluster.
pub(crate) fn test_link() -> partyline_proto::link::LinkAuth {
    partyline_proto::link::LinkAuth::Secret(
        partyline_proto::link::LinkSecret::fixed(TEST_LINK_SECRET).expect("valid secret"),
    )
}

/// [`test_link`]'s secret.
pub(crate) const TEST_LINK_SECRET: &str = "partyline-test-link-secret-0123456789";

/// Connects to `url`: the client, or the HTTP status that refused the
/// upgrade (any other failure fails the test).
pub(crate) async fn status_of(url: &str) -> Result<partyline_bench::client::YClient, u16> {
    use partyline_bench::client::{ClientError, YClient};
    match YClient::connect(url).await {
        Ok(client) => Ok(client),
        Err(ClientError::Rejected { status, .. }) => Err(status),
        Err(other) => panic!("unexpected error {other}"),
    }
}

/// A running `partyline dev`.
pub(crate) struct DevServer {
    process: Partyline,
    /// The gateway address.
    pub addr: SocketAddr,
}

impl DevServer {
    /// Starts `partyline dev` on `127.0.0.1:0` with `data_dir`.
    pub(crate) fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let log_path = data_dir.with_extension(format!("{}.log", std::process::id()));
        let mut args: Vec<String> = ["dev", "--listen", "127.0.0.1:0", "--data-dir"]
            .map(String::from)
            .to_vec();
        args.push(data_dir.display().to_string());
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let process =
            Partyline::start(&args, "info", &log_path, "partyline dev listening on ws://");
        let addr = process.ready.parse().expect("address");
        Self { process, addr }
    }

    /// The y-websocket URL of `room` (already percent-encoded by the caller).
    pub(crate) fn url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, room)
    }

    /// Sends SIGTERM and waits for the exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        self.process.terminate(Duration::from_secs(20))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory of the process, from `/proc`.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// Sends SIGKILL and waits for the exit.
    pub(crate) fn kill(&mut self) {
        self.process.kill();
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        self.process.log()
    }

    /// `GET /v1/rooms/{room}` with the API key `key`.
    pub(crate) async fn room_info(&self, key: &str, room: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("http://{}/v1/rooms/{room}", self.addr))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Whether `room` is loaded, from the HTTP API with `key`. Asking
    /// loads the room when it is not.
    pub(crate) async fn room_loaded(&self, key: &str, room: &str) -> bool {
        let info = self.room_info(key, room).await;
        info["loaded"]
            .as_bool()
            .expect("`loaded` in the room's info")
    }

    /// Whether `room` was seen unloaded within `looks` looks a second
    /// apart: each look loads it again, so they must lie further apart than
    /// the room's idle timeout.
    pub(crate) async fn saw_unloaded(&self, key: &str, room: &str, looks: u32) -> bool {
        for _ in 0..looks {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.room_loaded(key, room).await {
                return true;
            }
        }
        false
    }

    /// Fails the test when the server logged an ERROR line.
    pub(crate) fn assert_no_errors(&self) {
        let errors = self.process.errors();
        assert!(
            errors.is_empty(),
            "server logged errors:\n{}",
            errors.join("\n")
        );
    }
}

/// Panics unless `image` is a versitygw release pinned to `vX.Y.Z` (the S3
/// server of docker-compose.yml and the Kubernetes dev overlay).
pub(crate) fn assert_pinned_versitygw(image: &str) {
    let version = image
        .strip_prefix("ghcr.io/versity/versitygw:v")
        .unwrap_or_else(|| panic!("s3 runs a versitygw release: {image}"));
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|n| n.parse::<u32>().is_ok()),
        "s3 image pinned to a release: {image}"
    );
}
