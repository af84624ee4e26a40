//! A `partyline` child process for end-to-end tests: started with its
//! stderr in a log file, ready once it prints its readiness line on stdout,
//! signalled like an operator would, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `partyline` process.
pub(crate) struct Partyline {
    child: Option<Child>,
    /// What the readiness line said after its prefix (an address, an id).
    pub ready: String,
    /// Where its stderr goes.
    pub log_path: PathBuf,
}

impl Partyline {
    /// Runs `partyline ARGS` with `PARTYLINE_LOG=log_filter`, stderr
    /// appended to `log_path`, and waits for a stdout line starting with
    /// `ready_prefix`.
    pub(crate) fn start(
        args: &[String],
        log_filter: &str,
        log_path: &Path,
        ready_prefix: &str,
    ) -> Self {
        Self::start_with_env(args, &[], log_filter, log_path, ready_prefix)
    }

    /// [`Partyline::start`] with `env` added to the process environment.
    pub(crate) fn start_with_env(
        args: &[String],
        env: &[(String, String)],
        log_filter: &str,
        log_path: &Path,
        ready_prefix: &str,
    ) -> Self {
        Self::spawn_command(
            Command::new(env!("CARGO_BIN_EXE_partyline")),
            args,
            env,
            log_filter,
            log_path,
            ready_prefix,
        )
    }

    /// [`Partyline::start`] inside network namespace `netns` (`ip netns
    /// exec`, which execs: the pid is partyline's).
    pub(crate) fn start_in_netns(
        netns: &str,
        args: &[String],
        log_filter: &str,
        log_path: &Path,
        ready_prefix: &str,
    ) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_partyline"));
        Self::spawn_command(command, args, &[], log_filter, log_path, ready_prefix)
    }

    fn spawn_command(
        mut command: Command,
        args: &[String],
        env: &[(String, String)],
        log_filter: &str,
        log_path: &Path,
        ready_prefix: &str,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open process log");
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PARTYLINE_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn partyline");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let prefix = ready_prefix.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(ready) => Self {
                child: Some(child),
                ready,
                log_path: log_path.to_owned(),
            },
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "partyline {args:?} did not start: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        self.wait(timeout)
    }

    /// Sends SIGKILL and reaps the process.
    pub(crate) fn kill(&mut self) {
        self.signal("KILL");
        self.wait(Duration::from_secs(20));
    }

    /// Whether it is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().expect("try_wait").is_none())
    }

    /// Waits up to `timeout` for the exit; panics (killing it) past that.
    pub(crate) fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "partyline did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// ERROR lines of the log.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Partyline {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a `partyline` run that is expected to stop on its own left behind.
pub(crate) struct Exited {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// Everything it wrote to stdout (a readiness line means it served).
    pub stdout: String,
}

/// Runs `partyline ARGS` and waits up to `timeout` for it to exit by
/// itself; a process still running then is killed and the test fails, so a
/// check that should refuse to start cannot hang the suite by serving.
pub(crate) fn run_to_exit(args: &[&str], timeout: Duration) -> Exited {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_partyline"))
        .args(args)
        .env("PARTYLINE_LOG", "info")
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn partyline");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "partyline {args:?} still ran after {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        status,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
    }
}
