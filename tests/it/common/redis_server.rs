//! A real `redis-server` on a free loopback port, with AOF on so a restart
//! brings the logs back (`scripts/test.sh` installs Debian's redis-server).
//! Killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nats::restartable_port;

/// A running (or stopped, for outage tests) `redis-server`.
pub(crate) struct RedisServer {
    child: Option<Child>,
    host: std::net::Ipv4Addr,
    port: u16,
    /// Data dir: the AOF survives `restart`.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with an empty data dir and waits until it accepts.
    pub(crate) fn start() -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST)
    }

    /// [`RedisServer::start`] listening on `host` (an address the test
    /// created) instead of 127.0.0.1.
    pub(crate) fn start_on(host: std::net::Ipv4Addr) -> Self {
        let mut server = Self {
            child: None,
            host,
            port: restartable_port(),
            dir: tempfile::tempdir().expect("redis dir"),
        };
        server.spawn();
        server
    }

    /// `redis://HOST:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://{}:{}/0", self.host, self.port)
    }

    /// Kills the server (SIGKILL: whatever reached the AOF stays).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data dir.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A synchronous connection, for inspecting keys.
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection()
            .expect("connect to redis")
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                &self.host.to_string(),
                "--port",
                &self.port.to_string(),
            ])
            // Protected mode refuses every client that is not on loopback;
            // a test's own veth address is reached only from its namespace.
            .args([
                "--protected-mode",
                if self.host.is_loopback() { "yes" } else { "no" },
            ])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = SocketAddr::from((self.host, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Accepting comes before the AOF is loaded; PING answers after.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ready.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
