//! The result of a bench run: one JSON line for machines, a table for people.
//!
//! [`Report`] is plain data built by `load::run` after every connection has
//! ended. Print [`Report::to_json_line`] on stdout (one line, nothing before
//! it, so `partyline bench … | tail -1 | jq` works) and the `Display` table on
//! stderr.

use std::fmt;

use super::args::{Mode, Spread};
use super::histogram::Percentiles;

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// `load`, `ramp` or `idle`.
    pub mode: Mode,
    /// The first `--url` template.
    pub url_template: String,
    /// Every `--url` template.
    pub url_templates: Vec<String>,
    /// How connections were spread over the templates (`--spread`).
    pub spread: Spread,
    /// Wall-clock time of the run's time zero, ms since the Unix epoch: every
    /// time in the report (`gap_started_ms`, `last_delivery_ms`) counts from
    /// it, so a script can place its own events (a killed node) on the same
    /// axis.
    pub started_unix_ms: u64,
    /// The room name prefix this run used.
    pub room_prefix: String,
    /// Rooms opened.
    pub rooms: usize,
    /// Clients per room.
    pub clients_per_room: usize,
    /// Connection ramp-up: upgrade + handshake until SyncStep2.
    pub connect: ConnectReport,
    /// One entry per sending step (one for `load`, one per rate for `ramp`,
    /// none for `idle`).
    pub steps: Vec<StepReport>,
    /// `ramp`: the highest rate whose step passed (`None` if none did).
    pub max_ok_rate: Option<f64>,
    /// `idle`: memory per held connection.
    pub idle: Option<IdleReport>,
    /// The server processes, with `--server-pid`.
    pub server: Option<ServerReport>,
    /// CPU seconds the bench process itself used, to tell when the bench,
    /// not the server, was the bottleneck.
    pub bench_cpu_seconds: Option<f64>,
    /// Deliveries of updates older than the send log remembers (about 60 s
    /// of sends per client) or not sent by this run; counted as missing.
    pub unmatched_deliveries: u64,
    /// Errors of the whole run.
    pub errors: ErrorCounts,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
    /// `load`: no errors and the step passed; `ramp`: every connection
    /// opened and at least the first step passed; `idle`: no errors.
    pub ok: bool,
}

/// Connection ramp-up results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectReport {
    /// Connections tried.
    pub attempted: usize,
    /// Connections that reached SyncStep2.
    pub connected: usize,
    /// Time from starting the TCP connect to applying SyncStep2.
    pub time: Percentiles,
    /// Seconds the whole ramp-up took.
    pub ramp_seconds: f64,
}

/// One sending step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Updates per second per client.
    pub rate: f64,
    /// Seconds of sending.
    pub duration_seconds: f64,
    /// Updates sent.
    pub sent: u64,
    /// Deliveries owed: each update to every connected client of its room,
    /// the sender's own echo included.
    pub expected_deliveries: u64,
    /// Deliveries received (each (update, receiver) counted once).
    pub delivered: u64,
    /// Expected minus delivered, after the drain.
    pub missing: u64,
    /// Deliveries received more than once.
    pub duplicates: u64,
    /// Deliveries that arrived after a later update of the same sender
    /// (counted as delivered; e.g. updates re-sent after a failover).
    pub out_of_order: u64,
    /// Deliveries per second of sending time.
    pub delivered_per_second: f64,
    /// Latency to the other clients of the room: receive time minus the
    /// update's scheduled send time.
    pub fanout: Percentiles,
    /// Latency of the sender's own echo (the server's acknowledgement).
    pub echo: Percentiles,
    /// Per room, the longest time between two consecutive deliveries to any
    /// of its clients during the step and its drain; percentiles over the
    /// rooms (`count` = rooms with at least two deliveries).
    pub gap: Percentiles,
    /// With `--room-gaps`: every room's longest gap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_gaps: Option<Vec<RoomGap>>,
    /// p99 the step is judged by: fan-out, or echo when rooms have one client.
    pub judged_p99_ms: Option<f64>,
    /// Connections that closed or failed during the step.
    pub unexpected_closes: u64,
    /// Sends that failed.
    pub send_failures: u64,
    /// Frames that were not y-sync, or not one message per frame.
    pub protocol_errors: u64,
    /// `unexpected_closes + send_failures + protocol_errors + missing`.
    pub errors: u64,
    /// Server CPU seconds over the step and its drain.
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU seconds per 1,000 deliveries.
    pub server_cpu_seconds_per_1k_delivered: Option<f64>,
    /// The kernel's share of `server_cpu_seconds` (`stime`): system calls,
    /// and on loopback most of the receivers' TCP path too.
    pub server_system_cpu_seconds: Option<f64>,
    /// No errors and p99 within the target.
    pub ok: bool,
}

/// `--idle` results.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct IdleReport {
    /// Connections held.
    pub connections: usize,
    /// Seconds they were held before measuring.
    pub hold_seconds: f64,
    /// Server RSS before the first connect.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS after holding every connection.
    pub server_rss_after_bytes: Option<u64>,
    /// (after − before) / connections.
    pub server_rss_per_connection_bytes: Option<f64>,
}

/// One room's longest delivery gap in a step (`--room-gaps`). Times are ms
/// since the run's start ([`Report::started_unix_ms`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RoomGap {
    /// The room name (`<prefix>-<index>`).
    pub room: String,
    /// Frames that brought a client of the room something new (the
    /// deliveries the gaps are measured between).
    pub delivery_frames: u64,
    /// Deliveries (update × client) owed to the room and not received.
    pub missing_deliveries: u64,
    /// The longest time between two consecutive deliveries (`None` with
    /// fewer than two).
    pub max_gap_ms: Option<f64>,
    /// When that gap started: the delivery before it.
    pub gap_started_ms: Option<f64>,
    /// The room's last delivery in the step: a room whose deliveries stopped
    /// for good shows here, not as a gap.
    pub last_delivery_ms: Option<f64>,
}

/// The server: the `--server-pid` processes, summed. CPU over all steps and
/// drains (`idle`: from before the first connect to the end of the hold),
/// RSS at the end.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerReport {
    /// The `--server-pid`s.
    pub pids: Vec<u32>,
    /// CPU seconds (user + system) over the measured window, summed over
    /// the processes.
    pub cpu_seconds: Option<f64>,
    /// Resident memory at the end, before connections close, summed.
    pub rss_bytes: Option<u64>,
    /// CPU seconds per 1,000 delivered updates.
    pub cpu_seconds_per_1k_delivered: Option<f64>,
    /// Why a reading failed, if one did.
    pub read_error: Option<String>,
    /// With several pids: each one's share (empty with one pid).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_pid: Vec<PidReport>,
}

/// One of several server processes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PidReport {
    /// The process.
    pub pid: u32,
    /// Its CPU seconds over the measured window.
    pub cpu_seconds: Option<f64>,
    /// Its resident memory at the end.
    pub rss_bytes: Option<u64>,
}

/// Error counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCounts {
    /// Connections that failed to upgrade or sync in time.
    pub connect_failures: u64,
    /// Connections closed or broken by the other side before the end.
    pub unexpected_closes: u64,
    /// Deliveries still missing after the drain.
    pub missing_deliveries: u64,
    /// Sends that failed.
    pub send_failures: u64,
    /// Frames that were not y-sync, or not one message per frame.
    pub protocol_errors: u64,
    /// Sum of the above.
    pub total: u64,
}

impl Report {
    /// The report as a single line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|error| format!(r#"{{"error":"report not serializable: {error}"}}"#))
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |value| format!("{value:.1}"))
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |value| format!("{value:.2}"))
}

fn mib(value: Option<u64>) -> String {
    value.map_or_else(
        || "-".into(),
        |value| format!("{:.1} MiB", value as f64 / (1024.0 * 1024.0)),
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Load => "load",
            Mode::Ramp => "ramp",
            Mode::Idle => "idle",
        };
        writeln!(
            f,
            "partyline bench ({mode}): {} rooms × {} clients, rooms {}-N at {}{}",
            self.rooms,
            self.clients_per_room,
            self.room_prefix,
            self.url_templates.join(" , "),
            match (self.url_templates.len() > 1, self.spread) {
                (false, _) => "",
                (true, Spread::Client) => " (each room's clients split over them)",
                (true, Spread::Room) => " (each room on one of them)",
            }
        )?;
        let connect = &self.connect;
        writeln!(
            f,
            "connect: {}/{} in {:.1}s   p50 {} ms   p99 {} ms   max {} ms",
            connect.connected,
            connect.attempted,
            connect.ramp_seconds,
            ms(connect.time.p50_ms),
            ms(connect.time.p99_ms),
            ms(connect.time.max_ms)
        )?;
        if !self.steps.is_empty() {
            writeln!(
                f,
                "{:>6} {:>9} {:>11} {:>11} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>4}",
                "rate",
                "sent",
                "expected",
                "delivered",
                "missing",
                "deliv/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "echo99",
                "errors",
                "cpu s",
                "sys s",
                "cpu s/1k",
                "ok"
            )?;
            for step in &self.steps {
                writeln!(
                    f,
                    "{:>6} {:>9} {:>11} {:>11} {:>8} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>4}",
                    step.rate,
                    step.sent,
                    step.expected_deliveries,
                    step.delivered,
                    step.missing,
                    step.delivered_per_second,
                    ms(step.fanout.p50_ms),
                    ms(step.fanout.p99_ms),
                    ms(step.fanout.max_ms),
                    ms(step.echo.p99_ms),
                    step.errors,
                    seconds(step.server_cpu_seconds),
                    seconds(step.server_system_cpu_seconds),
                    step.server_cpu_seconds_per_1k_delivered
                        .map_or_else(|| "-".into(), |value| format!("{value:.4}")),
                    if step.ok { "yes" } else { "NO" }
                )?;
            }
            for step in &self.steps {
                writeln!(
                    f,
                    "rate {}: longest delivery gap per room: p50 {} ms   p99 {} ms   max {} ms   ({} rooms)",
                    step.rate,
                    ms(step.gap.p50_ms),
                    ms(step.gap.p99_ms),
                    ms(step.gap.max_ms),
                    step.gap.count
                )?;
            }
        }
        if self.mode == Mode::Ramp {
            match self.max_ok_rate {
                Some(rate) => writeln!(f, "highest passing rate: {rate} updates/s per client")?,
                None => writeln!(f, "highest passing rate: none")?,
            }
        }
        if let Some(idle) = &self.idle {
            writeln!(
                f,
                "idle: {} connections held {:.0}s; server rss {} → {}; {} per connection",
                idle.connections,
                idle.hold_seconds,
                mib(idle.server_rss_before_bytes),
                mib(idle.server_rss_after_bytes),
                idle.server_rss_per_connection_bytes
                    .map_or_else(|| "-".into(), |bytes| format!("{:.1} KiB", bytes / 1024.0))
            )?;
        }
        if let Some(server) = &self.server {
            let pids: Vec<String> = server.pids.iter().map(u32::to_string).collect();
            let (label, sum) = if pids.len() == 1 {
                ("pid", "")
            } else {
                ("pids", " (summed)")
            };
            write!(
                f,
                "server {label} {}{sum}: cpu {} s, rss {}, {} cpu s per 1k delivered",
                pids.join(", "),
                seconds(server.cpu_seconds),
                mib(server.rss_bytes),
                server
                    .cpu_seconds_per_1k_delivered
                    .map_or_else(|| "-".into(), |value| format!("{value:.4}"))
            )?;
            if let Some(error) = &server.read_error {
                write!(f, " (read error: {error})")?;
            }
            writeln!(f)?;
            for process in &server.per_pid {
                writeln!(
                    f,
                    "  pid {}: cpu {} s, rss {}",
                    process.pid,
                    seconds(process.cpu_seconds),
                    mib(process.rss_bytes)
                )?;
            }
        }
        if let Some(cpu) = self.bench_cpu_seconds {
            writeln!(f, "bench process cpu: {cpu:.2} s")?;
        }
        let errors = &self.errors;
        writeln!(
            f,
            "errors: {} (connect {}, closes {}, missing {}, send {}, protocol {})",
            errors.total,
            errors.connect_failures,
            errors.unexpected_closes,
            errors.missing_deliveries,
            errors.send_failures,
            errors.protocol_errors
        )?;
        for sample in &self.error_samples {
            writeln!(f, "  {sample}")?;
        }
        write!(f, "result: {}", if self.ok { "ok" } else { "FAILED" })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        let latency = Percentiles {
            count: 10,
            p50_ms: Some(1.5),
            p99_ms: Some(9.25),
            max_ms: Some(12.0),
        };
        Report {
            mode: Mode::Load,
            url_template: "ws://127.0.0.1:1999/bench-{room}".into(),
            url_templates: vec!["ws://127.0.0.1:1999/bench-{room}".into()],
            spread: Spread::Client,
            started_unix_ms: 1_700_000_000_000,
            room_prefix: "rabc".into(),
            rooms: 2,
            clients_per_room: 3,
            connect: ConnectReport {
                attempted: 6,
                connected: 6,
                time: latency.clone(),
                ramp_seconds: 0.2,
            },
            steps: vec![StepReport {
                rate: 2.0,
                duration_seconds: 10.0,
                sent: 120,
                expected_deliveries: 360,
                delivered: 360,
                missing: 0,
                duplicates: 0,
                out_of_order: 0,
                delivered_per_second: 36.0,
                fanout: latency.clone(),
                echo: latency,
                gap: Percentiles {
                    count: 2,
                    p50_ms: Some(310.5),
                    p99_ms: Some(4210.0),
                    max_ms: Some(4210.0),
                },
                room_gaps: None,
                judged_p99_ms: Some(9.25),
                unexpected_closes: 0,
                send_failures: 0,
                protocol_errors: 0,
                errors: 0,
                server_cpu_seconds: Some(0.5),
                server_cpu_seconds_per_1k_delivered: Some(1.3889),
                server_system_cpu_seconds: Some(0.2),
                ok: true,
            }],
            max_ok_rate: None,
            idle: None,
            server: Some(ServerReport {
                pids: vec![42],
                cpu_seconds: Some(0.5),
                rss_bytes: Some(50 << 20),
                cpu_seconds_per_1k_delivered: Some(1.3889),
                read_error: None,
                per_pid: Vec::new(),
            }),
            bench_cpu_seconds: Some(0.1),
            unmatched_deliveries: 0,
            errors: ErrorCounts::default(),
            error_samples: Vec::new(),
            ok: true,
        }
    }

    #[test]
    fn json_is_one_line_with_the_documented_shape() {
        let line = sample_report().to_json_line();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["mode"], "load");
        assert_eq!(json["connect"]["connected"], 6);
        assert_eq!(json["connect"]["time"]["p99_ms"], 9.25);
        let step = &json["steps"][0];
        for key in [
            "rate",
            "sent",
            "expected_deliveries",
            "delivered",
            "missing",
            "delivered_per_second",
            "fanout",
            "echo",
            "gap",
            "errors",
            "server_cpu_seconds_per_1k_delivered",
            "server_system_cpu_seconds",
            "ok",
        ] {
            assert!(step.get(key).is_some(), "step has {key}");
        }
        assert_eq!(step["fanout"]["p50_ms"], 1.5);
        assert_eq!(json["server"]["rss_bytes"], 50 << 20);
        assert_eq!(json["server"]["pids"], serde_json::json!([42]));
        assert!(
            json["server"].get("per_pid").is_none(),
            "one pid: no breakdown"
        );
        assert_eq!(json["started_unix_ms"], 1_700_000_000_000u64);
        assert_eq!(step["gap"]["p99_ms"], 4210.0);
        assert!(step.get("room_gaps").is_none(), "only with --room-gaps");
        assert_eq!(json["errors"]["total"], 0);
        assert!(json["idle"].is_null());
        assert_eq!(json["ok"], true);
    }

    #[test]
    fn table_mentions_the_numbers() {
        let table = sample_report().to_string();
        assert!(table.contains("connect: 6/6"));
        assert!(table.contains("9.2") || table.contains("9.3"), "{table}");
        assert!(table.contains("server pid 42: cpu 0.50 s"), "{table}");
        assert!(
            table.contains("gap per room: p50 310.5 ms   p99 4210.0 ms"),
            "{table}"
        );
        assert!(table.ends_with("result: ok"));
        let mut idle = sample_report();
        idle.mode = Mode::Idle;
        idle.steps.clear();
        idle.idle = Some(IdleReport {
            connections: 6,
            hold_seconds: 5.0,
            server_rss_before_bytes: Some(10 << 20),
            server_rss_after_bytes: Some(16 << 20),
            server_rss_per_connection_bytes: Some(1024.0 * 1024.0),
        });
        let table = idle.to_string();
        assert!(table.contains("1024.0 KiB per connection"), "{table}");
        assert!(!table.contains("deliv/s"));
    }

    #[test]
    fn cluster_report_lists_urls_pids_and_room_gaps() {
        let mut report = sample_report();
        report.url_templates = vec!["ws://a:1/{room}".into(), "ws://b:2/{room}".into()];
        report.server = Some(ServerReport {
            pids: vec![7, 8],
            cpu_seconds: Some(1.5),
            rss_bytes: Some(30 << 20),
            cpu_seconds_per_1k_delivered: Some(4.1667),
            read_error: None,
            per_pid: vec![
                PidReport {
                    pid: 7,
                    cpu_seconds: Some(1.0),
                    rss_bytes: Some(20 << 20),
                },
                PidReport {
                    pid: 8,
                    cpu_seconds: Some(0.5),
                    rss_bytes: Some(10 << 20),
                },
            ],
        });
        report.steps[0].room_gaps = Some(vec![RoomGap {
            room: "rabc-0".into(),
            delivery_frames: 180,
            missing_deliveries: 0,
            max_gap_ms: Some(4210.0),
            gap_started_ms: Some(12_003.25),
            last_delivery_ms: Some(40_100.0),
        }]);
        let table = report.to_string();
        assert!(
            table.contains("ws://a:1/{room} , ws://b:2/{room}"),
            "{table}"
        );
        assert!(
            table.contains("server pids 7, 8 (summed): cpu 1.50 s, rss 30.0 MiB"),
            "{table}"
        );
        assert!(
            table.contains("  pid 8: cpu 0.50 s, rss 10.0 MiB"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json_line()).unwrap();
        assert_eq!(json["url_templates"][1], "ws://b:2/{room}");
        assert_eq!(json["server"]["pids"], serde_json::json!([7, 8]));
        assert_eq!(json["server"]["cpu_seconds"], 1.5);
        assert_eq!(json["server"]["per_pid"][0]["cpu_seconds"], 1.0);
        let gap = &json["steps"][0]["room_gaps"][0];
        assert_eq!(gap["room"], "rabc-0");
        assert_eq!(gap["max_gap_ms"], 4210.0);
        assert_eq!(gap["gap_started_ms"], 12_003.25);
        assert_eq!(gap["last_delivery_ms"], 40_100.0);
    }
}
