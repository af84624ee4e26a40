//! Test harness: runs the real `partyline` binary on a free loopback port,
//! with a kill-on-drop guard, and reads its readiness line from stdout.

#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `partyline dev`.
pub struct DevServer {
    child: Option<Child>,
    /// The gateway address.
    pub addr: SocketAddr,
    /// Where its stderr goes.
    pub log_path: PathBuf,
}

impl DevServer {
    /// Starts `partyline dev` on `127.0.0.1:0` with `data_dir`.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let log_path = data_dir.with_extension(format!("{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_partyline"))
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env("PARTYLINE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn partyline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("partyline dev listening on ws://") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "partyline dev did not start: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        Self {
            child: Some(child),
            addr,
            log_path,
        }
    }

    /// The y-websocket URL of `room` (already percent-encoded by the caller).
    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, room)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait(Duration::from_secs(20))
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        self.wait(Duration::from_secs(20));
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("partyline did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fails the test when the server logged an ERROR line.
    pub fn assert_no_errors(&self) {
        let log = self.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(
            errors.is_empty(),
            "server logged errors:\n{}",
            errors.join("\n")
        );
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
