//! The load generator behind `partyline bench`.
//!
//! [`run`] opens rooms × clients WebSocket connections to any y-websocket
//! URL, ramped `--connect-concurrency` at a time, then drives one of three
//! modes:
//!
//! - **load**: every client sends `--rate` updates/s for `--duration`, then
//!   everyone keeps receiving for `--drain`;
//! - **ramp**: the same in steps of rising rate (`--ramp-start`,
//!   `--ramp-step`, `--ramp-max`, `--step-duration` each) until a step misses
//!   `--p99-target` or has an error; the report names the highest passing rate;
//! - **idle**: connections only, held `--duration`, to measure server memory
//!   per connection.
//!
//! **Latency.** Each update is one map write from a per-connection Yjs client
//! id, so `(client id, clock)` names it; the sender records the update's
//! *scheduled* send time in a shared send log before writing it, and every
//! receiver decodes the update (without applying it), looks the time up and
//! records `receive time − scheduled send time`. Measuring from the schedule,
//! not from when the bench got round to sending, keeps a slow server (or a
//! starved bench) from hiding its delay. The server echoes updates to their
//! sender too: that echo is counted as a delivery and timed separately
//! (`echo`, the server's acknowledgement); `fanout` is the latency to the
//! *other* clients of the room, what collaborators feel. Expected deliveries
//! are `sent × connected clients of the room` (echo included); whatever has
//! not arrived when the drain ends is missing.
//!
//! **Cost.** One tokio task per connection, no document replica per
//! connection (see `connection`), shared lock-free histograms; everything
//! runs on the caller's multi-threaded runtime. Every loop ends by count or
//! deadline: connects time out, steps end at their deadline, the drain is
//! bounded, and stopping connections get [`connection::CLOSE_GRACE`] before
//! they are aborted.

mod args;
mod connection;
mod gaps;
mod histogram;
pub mod procfs;
mod report;
mod sendlog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, Semaphore};

pub use args::{BenchArgs, Mode, Spread};
pub use histogram::Percentiles;
pub use report::{
    ConnectReport, ErrorCounts, IdleReport, PidReport, Report, RoomGap, ServerReport, StepReport,
};

use args::Plan;
use connection::{Connected, Control};
use gaps::RoomGaps;
use histogram::Histogram;
use procfs::ProcSample;
use sendlog::SendLog;

/// Error messages kept for the report.
const MAX_ERROR_SAMPLES: usize = 10;
/// Lead time between announcing a step and its first send, so every
/// connection task has seen the announcement.
const STEP_LEAD: Duration = Duration::from_millis(200);
/// Slack on top of the computed worst-case ramp-up time.
const CONNECT_SLACK: Duration = Duration::from_secs(5);

/// Why a bench could not run at all. Problems during a run (refused
/// connections, closes, missing deliveries) are in the [`Report`] instead.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The arguments are inconsistent or out of range.
    #[error("invalid bench arguments: {0}")]
    InvalidArgs(String),
    /// `--server-pid` names a process whose /proc entry cannot be read.
    #[error("cannot read /proc for server pid {pid}: {source}")]
    ServerPid {
        /// The pid given.
        pid: u32,
        /// The read error.
        source: std::io::Error,
    },
}

/// Counters of one sending step, shared by every connection task.
#[derive(Default)]
pub(crate) struct PhaseStats {
    sent: AtomicU64,
    expected: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    unexpected_closes: AtomicU64,
    send_failures: AtomicU64,
    protocol_errors: AtomicU64,
    fanout: Histogram,
    echo: Histogram,
    /// Per room, the longest time without a delivery.
    gaps: RoomGaps,
}

impl PhaseStats {
    fn new(rooms: usize) -> Self {
        Self {
            gaps: RoomGaps::new(rooms),
            ..Self::default()
        }
    }
}

/// Run-wide error counters and the first messages.
#[derive(Default)]
pub(crate) struct ErrorLog {
    connect_failures: AtomicU64,
    unexpected_closes: AtomicU64,
    protocol_errors: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl ErrorLog {
    fn connect_failure(&self, message: String) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.sample(message);
    }

    fn unexpected_close(&self, message: String) {
        self.unexpected_closes.fetch_add(1, Ordering::Relaxed);
        self.sample(message);
    }

    fn protocol_error(&self, message: String) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        self.sample(message);
    }

    fn sample(&self, message: String) {
        tracing::debug!(%message, "bench error");
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() < MAX_ERROR_SAMPLES {
            samples.push(message);
        }
    }
}

/// State every connection task shares with the run.
pub(crate) struct RunState {
    plan: Plan,
    /// Time zero of the send log's timestamps (and of gap times).
    epoch: Instant,
    send_log: SendLog,
    /// One per step; indexed by the phase number in the send log.
    phases: Vec<PhaseStats>,
    connect_time: Histogram,
    errors: ErrorLog,
    /// Deliveries whose send record was already overwritten (later than the
    /// send log remembers) or unknown; they show up as missing.
    unmatched_deliveries: AtomicU64,
}

impl RunState {
    fn send_log_ring(&self) -> usize {
        self.send_log.ring()
    }
}

/// One reading of every `--server-pid`, in the order given.
#[derive(Debug, Clone, PartialEq)]
struct ServerSample(Vec<ProcSample>);

impl ServerSample {
    /// Reads every pid; fails on the first unreadable one.
    fn read(pids: &[u32]) -> Result<Self, BenchError> {
        pids.iter()
            .map(|&pid| procfs::sample(pid).map_err(|source| BenchError::ServerPid { pid, source }))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// CPU seconds and RSS summed over the processes.
    fn total(&self) -> ProcSample {
        ProcSample {
            cpu_seconds: self.0.iter().map(|sample| sample.cpu_seconds).sum(),
            system_seconds: self.0.iter().map(|sample| sample.system_seconds).sum(),
            rss_bytes: self.0.iter().map(|sample| sample.rss_bytes).sum(),
        }
    }
}

/// Runs a bench as `args` describe and reports what it measured.
pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    let plan = args.plan()?;
    let server_pids = plan.server_pids.clone();
    let server_start = if server_pids.is_empty() {
        None
    } else {
        Some(ServerSample::read(&server_pids)?)
    };
    let bench_start = procfs::sample(std::process::id()).ok();
    let connections = plan.connections();
    let epoch = Instant::now();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    let run = Arc::new(RunState {
        epoch,
        send_log: SendLog::new(
            if plan.steps.is_empty() {
                0
            } else {
                connections
            },
            plan.send_log_ring,
        ),
        phases: plan
            .steps
            .iter()
            .map(|_| PhaseStats::new(plan.rooms))
            .collect(),
        connect_time: Histogram::default(),
        errors: ErrorLog::default(),
        unmatched_deliveries: AtomicU64::new(0),
        plan,
    });
    let plan = &run.plan;
    tracing::info!(
        mode = ?plan.mode,
        rooms = plan.rooms,
        clients = plan.clients,
        prefix = %plan.room_prefix,
        "bench starting"
    );

    // Ramp up.
    let (control_tx, control_rx) = watch::channel(Control::Hold);
    let (connected_tx, mut connected_rx) = mpsc::channel(connections.min(1024));
    let permits = Arc::new(Semaphore::new(plan.connect_concurrency));
    let ramp_started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            tokio::spawn(connection::run_connection(
                run.clone(),
                index,
                permits.clone(),
                control_rx.clone(),
                connected_tx.clone(),
            ))
        })
        .collect();
    drop(connected_tx);
    let waves = connections.div_ceil(plan.connect_concurrency) as u32;
    let ramp_deadline = tokio::time::Instant::now() + plan.connect_timeout * waves + CONNECT_SLACK;
    let mut members = vec![0u64; plan.rooms];
    let mut connected = 0;
    for _ in 0..connections {
        match tokio::time::timeout_at(ramp_deadline, connected_rx.recv()).await {
            Ok(Some(Connected { index, ok })) => {
                if ok {
                    members[index / plan.clients] += 1;
                    connected += 1;
                }
            }
            Ok(None) => break, // every task has reported or ended
            Err(_) => {
                tracing::warn!("connection ramp-up overran its deadline");
                break;
            }
        }
    }
    permits.close(); // connections not started by now never will be
    let ramp_seconds = round(ramp_started.elapsed().as_secs_f64(), 3);
    tracing::info!(
        connected,
        attempted = connections,
        ramp_seconds,
        "connections ready"
    );
    let connect = ConnectReport {
        attempted: connections,
        connected,
        time: run.connect_time.summary(),
        ramp_seconds,
    };

    // Measure.
    let members: Arc<[u64]> = members.into();
    let mut steps = Vec::new();
    let mut idle = None;
    let mut server_end: Option<ServerSample> = None;
    let mut server_read_error = None;
    // Where the per-process CPU is measured from: the start of the sending
    // window, or (idle) before the first connect.
    let mut per_pid_start = server_start.clone();
    let mut measured_cpu = None;
    let read_server = |error_slot: &mut Option<String>| -> Option<ServerSample> {
        if server_pids.is_empty() {
            return None;
        }
        ServerSample::read(&server_pids)
            .map_err(|error| *error_slot = Some(error.to_string()))
            .ok()
    };
    match plan.mode {
        Mode::Idle => {
            tokio::time::sleep(plan.hold).await;
            let after = read_server(&mut server_read_error);
            let (start, end) = (
                server_start.as_ref().map(ServerSample::total),
                after.as_ref().map(ServerSample::total),
            );
            server_end = after;
            measured_cpu = start
                .zip(end)
                .map(|(start, end)| end.cpu_seconds - start.cpu_seconds);
            idle = Some(IdleReport {
                connections: connected,
                hold_seconds: plan.hold.as_secs_f64(),
                server_rss_before_bytes: start.map(|s| s.rss_bytes),
                server_rss_after_bytes: end.map(|s| s.rss_bytes),
                server_rss_per_connection_bytes: match (start, end) {
                    (Some(before), Some(after)) if connected > 0 => Some(round(
                        (after.rss_bytes as f64 - before.rss_bytes as f64) / connected as f64,
                        1,
                    )),
                    _ => None,
                },
            });
        }
        Mode::Load | Mode::Ramp if connected > 0 => {
            let window_start = read_server(&mut server_read_error);
            for (phase, step) in plan.steps.iter().enumerate() {
                let before = read_server(&mut server_read_error);
                let start = Instant::now() + STEP_LEAD;
                let until = start + step.duration;
                tracing::info!(phase, rate = step.rate, "step starting");
                let _ = control_tx.send(Control::Send {
                    phase,
                    rate: step.rate,
                    start,
                    until,
                    members: members.clone(),
                });
                tokio::time::sleep_until((until + plan.drain).into()).await;
                let after = read_server(&mut server_read_error);
                let mut report = step_report(
                    &run.phases[phase],
                    step.rate,
                    step.duration,
                    plan.p99_target,
                    before.as_ref().map(ServerSample::total),
                    after.as_ref().map(ServerSample::total),
                );
                if plan.room_gaps {
                    report.room_gaps = Some(room_gaps(&run.phases[phase].gaps, plan));
                }
                tracing::info!(
                    phase,
                    rate = step.rate,
                    p99_ms = ?report.judged_p99_ms,
                    errors = report.errors,
                    "step done"
                );
                let passed = report.ok;
                steps.push(report);
                if plan.mode == Mode::Ramp && !passed {
                    break;
                }
            }
            server_end = read_server(&mut server_read_error);
            measured_cpu = window_start
                .as_ref()
                .zip(server_end.as_ref())
                .map(|(start, end)| end.total().cpu_seconds - start.total().cpu_seconds);
            per_pid_start = window_start;
        }
        Mode::Load | Mode::Ramp => tracing::warn!("no connection succeeded; nothing to measure"),
    }

    // Stop: every task closes its socket and ends, or is aborted.
    let _ = control_tx.send(Control::Stop);
    let stop_deadline =
        tokio::time::Instant::now() + connection::CLOSE_GRACE + Duration::from_secs(1);
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(stop_deadline, task).await.is_err() {
            abort.abort();
        }
    }

    let bench_cpu_seconds = bench_start
        .zip(procfs::sample(std::process::id()).ok())
        .map(|(start, end)| round(end.cpu_seconds - start.cpu_seconds, 3));
    let delivered: u64 = steps.iter().map(|step| step.delivered).sum();
    let server = (!server_pids.is_empty()).then(|| ServerReport {
        per_pid: per_pid_reports(&server_pids, per_pid_start.as_ref(), server_end.as_ref()),
        pids: server_pids.clone(),
        cpu_seconds: measured_cpu.map(|cpu| round(cpu, 3)),
        rss_bytes: server_end.as_ref().map(|sample| sample.total().rss_bytes),
        cpu_seconds_per_1k_delivered: measured_cpu.and_then(|cpu| per_thousand(cpu, delivered)),
        read_error: server_read_error,
    });
    let errors = error_counts(&run.errors, &steps);
    let ok = match plan.mode {
        Mode::Load => errors.total == 0 && steps.iter().all(|step| step.ok) && !steps.is_empty(),
        Mode::Ramp => errors.connect_failures == 0 && steps.first().is_some_and(|step| step.ok),
        Mode::Idle => errors.total == 0,
    };
    let max_ok_rate = (plan.mode == Mode::Ramp)
        .then(|| {
            steps
                .iter()
                .take_while(|step| step.ok)
                .map(|step| step.rate)
                .last()
        })
        .flatten();
    let error_samples = run
        .errors
        .samples
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    Ok(Report {
        mode: plan.mode,
        url_template: plan.url_templates[0].clone(),
        url_templates: plan.url_templates.clone(),
        spread: plan.spread,
        started_unix_ms,
        room_prefix: plan.room_prefix.clone(),
        rooms: plan.rooms,
        clients_per_room: plan.clients,
        connect,
        steps,
        max_ok_rate,
        idle,
        server,
        bench_cpu_seconds,
        unmatched_deliveries: run.unmatched_deliveries.load(Ordering::Relaxed),
        errors,
        error_samples,
        ok,
    })
}

/// Summarises one step from its counters and the server readings around it.
fn step_report(
    stats: &PhaseStats,
    rate: f64,
    duration: Duration,
    p99_target: Duration,
    server_before: Option<ProcSample>,
    server_after: Option<ProcSample>,
) -> StepReport {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (sent, expected, delivered) = (
        load(&stats.sent),
        load(&stats.expected),
        load(&stats.delivered),
    );
    let missing = expected.saturating_sub(delivered);
    let (unexpected_closes, send_failures, protocol_errors) = (
        load(&stats.unexpected_closes),
        load(&stats.send_failures),
        load(&stats.protocol_errors),
    );
    let errors = unexpected_closes + send_failures + protocol_errors + missing;
    let fanout = stats.fanout.summary();
    let echo = stats.echo.summary();
    let judged_p99_ms = if fanout.count > 0 {
        fanout.p99_ms
    } else {
        echo.p99_ms
    };
    let target_ms = p99_target.as_secs_f64() * 1000.0;
    let server_cpu_seconds = server_before
        .zip(server_after)
        .map(|(before, after)| round(after.cpu_seconds - before.cpu_seconds, 3));
    let server_system_cpu_seconds = server_before
        .zip(server_after)
        .map(|(before, after)| round(after.system_seconds - before.system_seconds, 3));
    StepReport {
        gap: gaps::summarize(&stats.gaps.snapshot()),
        room_gaps: None,
        rate,
        duration_seconds: duration.as_secs_f64(),
        sent,
        expected_deliveries: expected,
        delivered,
        missing,
        duplicates: load(&stats.duplicates),
        out_of_order: load(&stats.out_of_order),
        delivered_per_second: round(delivered as f64 / duration.as_secs_f64(), 1),
        fanout,
        echo,
        judged_p99_ms,
        unexpected_closes,
        send_failures,
        protocol_errors,
        errors,
        server_cpu_seconds,
        server_cpu_seconds_per_1k_delivered: server_cpu_seconds
            .and_then(|cpu| per_thousand(cpu, delivered)),
        server_system_cpu_seconds,
        ok: errors == 0 && delivered > 0 && judged_p99_ms.is_some_and(|p99| p99 <= target_ms),
    }
}

/// Every room's longest gap, times in ms (gap start relative to the run's
/// start, like every time of the run).
fn room_gaps(gaps: &RoomGaps, plan: &args::Plan) -> Vec<RoomGap> {
    let ms = |micros: u64| round(micros as f64 / 1000.0, 3);
    gaps.snapshot()
        .into_iter()
        .enumerate()
        .map(|(room, tracker)| RoomGap {
            room: plan.room_name(room),
            delivery_frames: tracker.deliveries,
            missing_deliveries: gaps.missing(room),
            max_gap_ms: tracker.max_gap().map(ms),
            gap_started_ms: tracker.max_gap().map(|_| ms(tracker.gap_started_micros)),
            last_delivery_ms: (tracker.deliveries > 0).then(|| ms(tracker.last_micros)),
        })
        .collect()
}

/// Each server process's own CPU and RSS, when there are several.
fn per_pid_reports(
    pids: &[u32],
    start: Option<&ServerSample>,
    end: Option<&ServerSample>,
) -> Vec<PidReport> {
    if pids.len() < 2 {
        return Vec::new();
    }
    pids.iter()
        .enumerate()
        .map(|(i, &pid)| {
            let (start, end) = (
                start.and_then(|sample| sample.0.get(i)),
                end.and_then(|sample| sample.0.get(i)),
            );
            PidReport {
                pid,
                cpu_seconds: start
                    .zip(end)
                    .map(|(start, end)| round(end.cpu_seconds - start.cpu_seconds, 3)),
                rss_bytes: end.map(|sample| sample.rss_bytes),
            }
        })
        .collect()
}

fn per_thousand(cpu_seconds: f64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| round(cpu_seconds / (delivered as f64 / 1000.0), 6))
}

/// Rounds to `decimals` places, so the JSON shows no float noise.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn error_counts(errors: &ErrorLog, steps: &[StepReport]) -> ErrorCounts {
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let mut counts = ErrorCounts {
        connect_failures: load(&errors.connect_failures),
        unexpected_closes: load(&errors.unexpected_closes),
        missing_deliveries: steps.iter().map(|step| step.missing).sum(),
        send_failures: steps.iter().map(|step| step.send_failures).sum(),
        protocol_errors: load(&errors.protocol_errors),
        total: 0,
    };
    counts.total = counts.connect_failures
        + counts.unexpected_closes
        + counts.missing_deliveries
        + counts.send_failures
        + counts.protocol_errors;
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(cpu_seconds: f64) -> Option<ProcSample> {
        Some(ProcSample {
            cpu_seconds,
            system_seconds: cpu_seconds / 4.0,
            rss_bytes: 1 << 20,
        })
    }

    #[test]
    fn step_report_counts_missing_and_judges_p99() {
        let stats = PhaseStats::default();
        stats.sent.store(10, Ordering::Relaxed);
        stats.expected.store(30, Ordering::Relaxed);
        stats.delivered.store(30, Ordering::Relaxed);
        for _ in 0..20 {
            stats.fanout.record_micros(5_000);
        }
        for _ in 0..10 {
            stats.echo.record_micros(2_000);
        }
        let target = Duration::from_millis(250);
        let report = step_report(
            &stats,
            2.0,
            Duration::from_secs(5),
            target,
            sample(1.0),
            sample(1.6),
        );
        assert_eq!(report.missing, 0);
        assert_eq!(report.errors, 0);
        assert!(report.ok);
        assert_eq!(report.delivered_per_second, 6.0);
        assert!(
            (report.judged_p99_ms.unwrap() - 5.0).abs() < 0.1,
            "fan-out judges"
        );
        assert!((report.server_cpu_seconds.unwrap() - 0.6).abs() < 1e-9);
        assert!((report.server_cpu_seconds_per_1k_delivered.unwrap() - 20.0).abs() < 1e-6);
        assert!((report.server_system_cpu_seconds.unwrap() - 0.15).abs() < 1e-9);

        stats.expected.store(32, Ordering::Relaxed);
        let short = step_report(&stats, 2.0, Duration::from_secs(5), target, None, None);
        assert_eq!(short.missing, 2);
        assert!(!short.ok, "missing deliveries fail a step");
        assert_eq!(short.server_cpu_seconds, None);

        let slow = step_report(
            &stats,
            2.0,
            Duration::from_secs(5),
            Duration::from_millis(1),
            None,
            None,
        );
        assert!(!slow.ok, "p99 over target fails a step");
    }

    #[test]
    fn single_client_rooms_are_judged_by_echo() {
        let stats = PhaseStats::default();
        stats.sent.store(1, Ordering::Relaxed);
        stats.expected.store(1, Ordering::Relaxed);
        stats.delivered.store(1, Ordering::Relaxed);
        stats.echo.record_micros(3_000);
        let report = step_report(
            &stats,
            1.0,
            Duration::from_secs(1),
            Duration::from_millis(250),
            None,
            None,
        );
        let p99 = report.judged_p99_ms.unwrap();
        assert!((p99 - 3.0).abs() < 3.0 / 64.0, "echo judges: {p99}");
        assert!(report.ok);
    }

    #[test]
    fn empty_step_is_not_ok() {
        let report = step_report(
            &PhaseStats::default(),
            1.0,
            Duration::from_secs(1),
            Duration::from_millis(250),
            None,
            None,
        );
        assert!(!report.ok);
    }

    #[test]
    fn error_totals_add_up() {
        let errors = ErrorLog::default();
        errors.connect_failure("a".into());
        errors.unexpected_close("b".into());
        errors.protocol_error("c".into());
        for i in 0..20 {
            errors.protocol_error(format!("more {i}"));
        }
        let stats = PhaseStats::default();
        stats.expected.store(5, Ordering::Relaxed);
        stats.send_failures.store(1, Ordering::Relaxed);
        let step = step_report(
            &stats,
            1.0,
            Duration::from_secs(1),
            Duration::from_millis(250),
            None,
            None,
        );
        let counts = error_counts(&errors, &[step]);
        assert_eq!(counts.connect_failures, 1);
        assert_eq!(counts.missing_deliveries, 5);
        assert_eq!(counts.send_failures, 1);
        assert_eq!(counts.protocol_errors, 21);
        assert_eq!(counts.total, 1 + 1 + 5 + 1 + 21);
        assert_eq!(errors.samples.lock().unwrap().len(), MAX_ERROR_SAMPLES);
    }

    #[tokio::test]
    async fn unreachable_server_reports_connect_failures() {
        // A loopback port that was just free: every connect is refused at
        // once, and the run still ends with a report.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let report = run(BenchArgs {
            url: vec![format!("ws://127.0.0.1:{port}/{{room}}")],
            rooms: 2,
            clients: 2,
            duration: Duration::from_millis(100),
            drain: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(2),
            ..BenchArgs::default()
        })
        .await
        .unwrap();
        assert_eq!(report.connect.attempted, 4);
        assert_eq!(report.connect.connected, 0);
        assert_eq!(report.errors.connect_failures, 4);
        assert!(report.steps.is_empty());
        assert!(!report.ok);
        assert!(!report.error_samples.is_empty());
        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(json["errors"]["connect_failures"], 4);
    }

    #[tokio::test]
    async fn bad_server_pid_is_refused_before_connecting() {
        let result = run(BenchArgs {
            server_pid: vec![u32::MAX],
            ..BenchArgs::default()
        })
        .await;
        assert!(matches!(result, Err(BenchError::ServerPid { .. })));
        let ours = std::process::id();
        let result = run(BenchArgs {
            server_pid: vec![ours, u32::MAX],
            ..BenchArgs::default()
        })
        .await;
        assert!(
            matches!(result, Err(BenchError::ServerPid { pid, .. }) if pid == u32::MAX),
            "every pid is checked"
        );
    }
}
