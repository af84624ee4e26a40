//! The `partyline bench` flags and their validation into a [`Plan`].
//!
//! [`BenchArgs`] is a `clap::Args` struct for the binary's `bench`
//! subcommand; every flag is also read from `PARTYLINE_BENCH_<FLAG>`.
//! [`BenchArgs::default`] equals an empty command line, for callers that
//! build the arguments in code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::BenchError;

const DEFAULT_URL: &str = "ws://127.0.0.1:1999/bench-{room}";
const DEFAULT_ROOMS: usize = 10;
const DEFAULT_CLIENTS: usize = 5;
const DEFAULT_RATE: f64 = 2.0;
const DEFAULT_DURATION: &str = "30s";
const DEFAULT_DRAIN: &str = "5s";
const DEFAULT_CONNECT_CONCURRENCY: usize = 50;
const DEFAULT_CONNECT_TIMEOUT: &str = "10s";
const DEFAULT_PAYLOAD_BYTES: usize = 32;
const DEFAULT_RAMP_START: f64 = 2.0;
const DEFAULT_RAMP_STEP: f64 = 1.0;
const DEFAULT_RAMP_MAX: f64 = 30.0;
const DEFAULT_STEP_DURATION: &str = "10s";
const DEFAULT_P99_TARGET: &str = "250ms";

/// The placeholder replaced by the room name in `--url`.
pub(super) const ROOM_PLACEHOLDER: &str = "{room}";
/// Most connections one run may open.
const MAX_CONNECTIONS: usize = 100_000;
/// Most updates per second one connection may send.
const MAX_RATE: f64 = 1_000.0;
/// How many seconds of sends per connection the send log remembers: a
/// delivery later than this counts as missing.
const SEND_LOG_SECONDS: f64 = 60.0;
/// File descriptors kept free for everything but the connections.
const SPARE_FILES: u64 = 64;

/// Load-test a y-websocket server: rooms × clients × updates per second.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL template; `{room}` becomes `<room-prefix>-<room index>`.
    /// Repeat to spread connections over several servers (gateways); see
    /// --spread.
    #[arg(long, env = "PARTYLINE_BENCH_URL", default_value = DEFAULT_URL)]
    pub url: Vec<String>,

    /// How connections are spread over several --url: `client` gives
    /// connection k (room r, client c, k = r × clients + c) URL number
    /// k mod (number of URLs), so every room's clients are split over the
    /// servers, as behind a round-robin load balancer; `room` gives all of
    /// room r's clients URL number r mod (number of URLs), as behind a load
    /// balancer that hashes the request path.
    #[arg(long, env = "PARTYLINE_BENCH_SPREAD", value_enum, default_value_t = Spread::Client)]
    pub spread: Spread,

    /// Rooms to open.
    #[arg(long, env = "PARTYLINE_BENCH_ROOMS", default_value_t = DEFAULT_ROOMS)]
    pub rooms: usize,

    /// Clients (connections) per room.
    #[arg(long, env = "PARTYLINE_BENCH_CLIENTS", default_value_t = DEFAULT_CLIENTS)]
    pub clients: usize,

    /// Updates per second each client sends.
    #[arg(long, env = "PARTYLINE_BENCH_RATE", default_value_t = DEFAULT_RATE)]
    pub rate: f64,

    /// How long clients send (in --idle mode: how long connections are held).
    #[arg(long, env = "PARTYLINE_BENCH_DURATION", default_value = DEFAULT_DURATION, value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Wait after sending stops for in-flight deliveries; later ones count as missing.
    #[arg(long, env = "PARTYLINE_BENCH_DRAIN", default_value = DEFAULT_DRAIN, value_parser = humantime::parse_duration)]
    pub drain: Duration,

    /// Connections opened (and synced) at once while ramping up.
    #[arg(long, env = "PARTYLINE_BENCH_CONNECT_CONCURRENCY", default_value_t = DEFAULT_CONNECT_CONCURRENCY)]
    pub connect_concurrency: usize,

    /// Deadline for one connection's upgrade and SyncStep2.
    #[arg(long, env = "PARTYLINE_BENCH_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Filler bytes in each update's value.
    #[arg(long, env = "PARTYLINE_BENCH_PAYLOAD_BYTES", default_value_t = DEFAULT_PAYLOAD_BYTES)]
    pub payload_bytes: usize,

    /// Room name prefix; default is unique per run so every run starts with empty rooms.
    #[arg(long, env = "PARTYLINE_BENCH_ROOM_PREFIX")]
    pub room_prefix: Option<String>,

    /// A header every connection's upgrade request carries, `Name: value`
    /// (e.g. `Cookie: session=…`, `Origin: https://app.example.com`, what a
    /// browser would send); repeat for several.
    #[arg(
        long = "header",
        env = "PARTYLINE_BENCH_HEADERS",
        value_delimiter = '\n'
    )]
    pub headers: Vec<String>,

    /// Server process to measure: CPU seconds from /proc/PID/stat, RSS from
    /// /proc/PID/status. Repeat (or separate with commas) for a server made
    /// of several processes: CPU and RSS are then summed over them.
    #[arg(long, env = "PARTYLINE_BENCH_SERVER_PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,

    /// Add each room's longest delivery gap (and when it started) to the JSON line.
    #[arg(long, env = "PARTYLINE_BENCH_ROOM_GAPS")]
    pub room_gaps: bool,

    /// Only open rooms × clients connections, hold them for --duration, report RSS per connection.
    #[arg(long, env = "PARTYLINE_BENCH_IDLE", conflicts_with = "ramp")]
    pub idle: bool,

    /// Step the rate from --ramp-start by --ramp-step until a step misses --p99-target or errs.
    #[arg(long, env = "PARTYLINE_BENCH_RAMP")]
    pub ramp: bool,

    /// First rate of --ramp, updates/s per client.
    #[arg(long, env = "PARTYLINE_BENCH_RAMP_START", default_value_t = DEFAULT_RAMP_START)]
    pub ramp_start: f64,

    /// Rate increment between --ramp steps.
    #[arg(long, env = "PARTYLINE_BENCH_RAMP_STEP", default_value_t = DEFAULT_RAMP_STEP)]
    pub ramp_step: f64,

    /// Highest rate --ramp tries.
    #[arg(long, env = "PARTYLINE_BENCH_RAMP_MAX", default_value_t = DEFAULT_RAMP_MAX)]
    pub ramp_max: f64,

    /// Sending time of each --ramp step.
    #[arg(long, env = "PARTYLINE_BENCH_STEP_DURATION", default_value = DEFAULT_STEP_DURATION, value_parser = humantime::parse_duration)]
    pub step_duration: Duration,

    /// A step passes when its p99 fan-out latency is at most this and it had no errors.
    #[arg(long, env = "PARTYLINE_BENCH_P99_TARGET", default_value = DEFAULT_P99_TARGET, value_parser = humantime::parse_duration)]
    pub p99_target: Duration,
}

impl Default for BenchArgs {
    fn default() -> Self {
        let duration =
            |text: &str| humantime::parse_duration(text).expect("default durations parse");
        Self {
            url: vec![DEFAULT_URL.into()],
            spread: Spread::Client,
            rooms: DEFAULT_ROOMS,
            clients: DEFAULT_CLIENTS,
            rate: DEFAULT_RATE,
            duration: duration(DEFAULT_DURATION),
            drain: duration(DEFAULT_DRAIN),
            connect_concurrency: DEFAULT_CONNECT_CONCURRENCY,
            connect_timeout: duration(DEFAULT_CONNECT_TIMEOUT),
            payload_bytes: DEFAULT_PAYLOAD_BYTES,
            room_prefix: None,
            headers: Vec::new(),
            server_pid: Vec::new(),
            room_gaps: false,
            idle: false,
            ramp: false,
            ramp_start: DEFAULT_RAMP_START,
            ramp_step: DEFAULT_RAMP_STEP,
            ramp_max: DEFAULT_RAMP_MAX,
            step_duration: duration(DEFAULT_STEP_DURATION),
            p99_target: duration(DEFAULT_P99_TARGET),
        }
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One step at `--rate` for `--duration`.
    Load,
    /// Steps of rising rate.
    Ramp,
    /// Connections only.
    Idle,
}

/// How connections are spread over several URL templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Connection k uses template k mod n: a room's clients are split.
    Client,
    /// Room r's clients all use template r mod n.
    Room,
}

/// One sending step: a rate held for a duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Step {
    pub rate: f64,
    pub duration: Duration,
}

/// Validated arguments.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub mode: Mode,
    /// One or more `--url` templates, chosen per connection by `spread`.
    pub url_templates: Vec<String>,
    pub spread: Spread,
    pub room_prefix: String,
    pub rooms: usize,
    pub clients: usize,
    pub steps: Vec<Step>,
    /// In idle mode, how long connections are held.
    pub hold: Duration,
    pub drain: Duration,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    /// Headers of every upgrade request.
    pub headers: Vec<(String, String)>,
    pub payload_bytes: usize,
    /// Processes whose CPU and RSS are summed as "the server".
    pub server_pids: Vec<u32>,
    /// Report every room's longest delivery gap.
    pub room_gaps: bool,
    pub p99_target: Duration,
    /// Yjs client id of connection 0; connection `i` is `base + i`.
    /// Unique per run, so a reused room prefix never replays old clocks.
    pub client_id_base: u64,
    /// Updates remembered per sender in the send log.
    pub send_log_ring: usize,
}

impl Plan {
    /// Total connections.
    pub(crate) fn connections(&self) -> usize {
        self.rooms * self.clients
    }

    /// The URL connection `index` opens: its room, in the template that
    /// `spread` picks.
    pub(crate) fn connection_url(&self, index: usize) -> String {
        let room = index / self.clients;
        let pick = match self.spread {
            Spread::Client => index,
            Spread::Room => room,
        };
        let template = &self.url_templates[pick % self.url_templates.len()];
        room_url(template, &self.room_prefix, room)
    }

    /// The name of room `room`.
    pub(crate) fn room_name(&self, room: usize) -> String {
        format!("{}-{room}", self.room_prefix)
    }
}

/// Replaces `{room}` in `template` with `{prefix}-{room}`.
pub(crate) fn room_url(template: &str, prefix: &str, room: usize) -> String {
    template.replace(ROOM_PLACEHOLDER, &format!("{prefix}-{room}"))
}

impl BenchArgs {
    /// Checks the arguments and fixes the run's unique names.
    pub(crate) fn plan(&self) -> Result<Plan, BenchError> {
        let invalid = |message: String| Err(BenchError::InvalidArgs(message));
        if self.url.is_empty() {
            return invalid("at least one --url is needed".into());
        }
        for url in &self.url {
            if !url.contains(ROOM_PLACEHOLDER) {
                return invalid(format!("--url must contain {ROOM_PLACEHOLDER}: {url}"));
            }
            if !url.starts_with("ws://") {
                return invalid(format!(
                    "--url must be a ws:// URL (TLS is not built in): {url}"
                ));
            }
        }
        let mut sorted_pids = self.server_pid.clone();
        sorted_pids.sort_unstable();
        if let Some(pair) = sorted_pids.windows(2).find(|pair| pair[0] == pair[1]) {
            return invalid(format!(
                "--server-pid {} is given twice; it would be counted twice",
                pair[0]
            ));
        }
        if self.rooms == 0 || self.clients == 0 {
            return invalid("--rooms and --clients must be at least 1".into());
        }
        let connections = self.rooms.saturating_mul(self.clients);
        if connections > MAX_CONNECTIONS {
            return invalid(format!(
                "at most {MAX_CONNECTIONS} connections, asked for {connections}"
            ));
        }
        if self.connect_concurrency == 0 {
            return invalid("--connect-concurrency must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return invalid("--connect-timeout must be positive".into());
        }
        let mode = match (self.idle, self.ramp) {
            (true, true) => return invalid("--idle and --ramp exclude each other".into()),
            (true, false) => Mode::Idle,
            (false, true) => Mode::Ramp,
            (false, false) => Mode::Load,
        };
        let steps = match mode {
            Mode::Idle => Vec::new(),
            Mode::Load => vec![Step {
                rate: self.rate,
                duration: self.duration,
            }],
            Mode::Ramp => ramp_rates(self.ramp_start, self.ramp_step, self.ramp_max)?
                .into_iter()
                .map(|rate| Step {
                    rate,
                    duration: self.step_duration,
                })
                .collect(),
        };
        for step in &steps {
            if !(step.rate > 0.0 && step.rate <= MAX_RATE) {
                return invalid(format!(
                    "rates must be in (0, {MAX_RATE}] updates/s, got {}",
                    step.rate
                ));
            }
            if step.duration.is_zero() {
                return invalid("sending durations must be positive".into());
            }
        }
        let max_rate = steps.iter().map(|step| step.rate).fold(0.0, f64::max);
        let room_prefix = match &self.room_prefix {
            Some(prefix) if prefix.is_empty() => {
                return invalid("--room-prefix must not be empty".into())
            }
            Some(prefix) => prefix.clone(),
            None => format!("r{}", to_base36(run_nonce())),
        };
        if let Some(limit) = super::procfs::open_files_limit() {
            if connections as u64 + SPARE_FILES > limit {
                return invalid(format!(
                    "{connections} connections need more than the open-files limit of {limit}; raise `ulimit -n`"
                ));
            }
        }
        Ok(Plan {
            mode,
            url_templates: self.url.clone(),
            spread: self.spread,
            room_prefix,
            rooms: self.rooms,
            clients: self.clients,
            steps,
            hold: self.duration,
            drain: self.drain,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: self.connect_timeout,
            headers: self
                .headers
                .iter()
                .map(|line| {
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    (name.trim().to_owned(), value.trim().to_owned())
                })
                .collect(),
            payload_bytes: self.payload_bytes,
            server_pids: self.server_pid.clone(),
            room_gaps: self.room_gaps,
            p99_target: self.p99_target,
            // 20 bits of nonce above 32 bits of index: a 52-bit id, within
            // the 53 bits a JavaScript peer can hold.
            client_id_base: ((run_nonce() & 0xF_FFFF) | 1) << 32,
            send_log_ring: (max_rate * SEND_LOG_SECONDS).ceil() as usize,
        })
    }
}

/// The rates of a ramp: `start, start + step, …` up to `max`.
fn ramp_rates(start: f64, step: f64, max: f64) -> Result<Vec<f64>, BenchError> {
    if !(start > 0.0 && step > 0.0 && max >= start) {
        return Err(BenchError::InvalidArgs(format!(
            "ramp needs 0 < --ramp-start <= --ramp-max and --ramp-step > 0 (got {start}, {step}, {max})"
        )));
    }
    let count = ((max - start) / step + 1e-9).floor() as usize + 1;
    if count > super::sendlog::MAX_PHASES {
        return Err(BenchError::InvalidArgs(format!(
            "ramp has {count} steps, at most {} allowed",
            super::sendlog::MAX_PHASES
        )));
    }
    Ok((0..count).map(|i| start + step * i as f64).collect())
}

/// A number that differs between runs: wall-clock nanoseconds mixed with the pid.
fn run_nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 40)
}

fn to_base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::new();
    loop {
        digits.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn default_equals_empty_command_line() {
        let parsed = Cli::try_parse_from(["bench"]).unwrap().args;
        assert_eq!(parsed, BenchArgs::default());
    }

    #[test]
    fn flags_parse() {
        let parsed = Cli::try_parse_from([
            "bench",
            "--url",
            "ws://localhost:9/parties/main/{room}?token=t",
            "--rooms",
            "200",
            "--clients",
            "10",
            "--rate",
            "0.5",
            "--duration",
            "1m",
            "--drain",
            "500ms",
            "--server-pid",
            "42",
            "--ramp",
        ])
        .unwrap()
        .args;
        assert_eq!(parsed.rooms, 200);
        assert_eq!(parsed.rate, 0.5);
        assert_eq!(parsed.duration, Duration::from_secs(60));
        assert_eq!(parsed.drain, Duration::from_millis(500));
        assert_eq!(parsed.server_pid, vec![42]);
        assert_eq!(
            parsed.url,
            vec!["ws://localhost:9/parties/main/{room}?token=t"]
        );
        assert!(parsed.ramp);
        assert!(!parsed.room_gaps);
        assert!(Cli::try_parse_from(["bench", "--idle", "--ramp"]).is_err());
    }

    #[test]
    fn url_template_names_rooms_with_the_prefix() {
        assert_eq!(
            room_url("ws://127.0.0.1:1999/bench-{room}", "r1x", 7),
            "ws://127.0.0.1:1999/bench-r1x-7"
        );
        assert_eq!(
            room_url("ws://h/parties/main/{room}?token=a", "p", 0),
            "ws://h/parties/main/p-0?token=a"
        );
        let plan = BenchArgs {
            room_prefix: Some("fixed".into()),
            clients: 5,
            ..BenchArgs::default()
        }
        .plan()
        .unwrap();
        assert_eq!(plan.connection_url(17), "ws://127.0.0.1:1999/bench-fixed-3");
        assert_eq!(plan.room_name(3), "fixed-3");
    }

    #[test]
    fn several_urls_and_pids() {
        let parsed = Cli::try_parse_from([
            "bench",
            "--url",
            "ws://a:1/{room}",
            "--url",
            "ws://b:2/x/{room}",
            "--server-pid",
            "7,8",
            "--server-pid",
            "9",
            "--room-gaps",
        ])
        .unwrap()
        .args;
        assert_eq!(parsed.url, vec!["ws://a:1/{room}", "ws://b:2/x/{room}"]);
        assert_eq!(parsed.server_pid, vec![7, 8, 9]);
        assert!(parsed.room_gaps);
        assert_eq!(parsed.spread, Spread::Client);
        let plan_args = BenchArgs {
            room_prefix: Some("p".into()),
            rooms: 3,
            clients: 3,
            ..parsed
        };
        let plan = plan_args.clone().plan().unwrap();
        assert_eq!(plan.server_pids, vec![7, 8, 9]);
        // connection k = room × clients + client uses url[k % 2]
        let urls: Vec<String> = (0..9).map(|k| plan.connection_url(k)).collect();
        assert_eq!(
            urls,
            vec![
                "ws://a:1/p-0",
                "ws://b:2/x/p-0",
                "ws://a:1/p-0",
                "ws://b:2/x/p-1",
                "ws://a:1/p-1",
                "ws://b:2/x/p-1",
                "ws://a:1/p-2",
                "ws://b:2/x/p-2",
                "ws://a:1/p-2",
            ]
        );
        // --spread room: all of room r's clients use url[r % 2]
        let plan = BenchArgs {
            spread: Spread::Room,
            ..plan_args.clone()
        }
        .plan()
        .unwrap();
        let urls: Vec<String> = (0..9).map(|k| plan.connection_url(k)).collect();
        assert_eq!(
            urls,
            vec![
                "ws://a:1/p-0",
                "ws://a:1/p-0",
                "ws://a:1/p-0",
                "ws://b:2/x/p-1",
                "ws://b:2/x/p-1",
                "ws://b:2/x/p-1",
                "ws://a:1/p-2",
                "ws://a:1/p-2",
                "ws://a:1/p-2",
            ]
        );
        let refused = |args: BenchArgs| matches!(args.plan(), Err(BenchError::InvalidArgs(_)));
        assert!(refused(BenchArgs {
            url: Vec::new(),
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            url: vec!["ws://a:1/{room}".into(), "ws://b:1/fixed".into()],
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            server_pid: vec![5, 6, 5],
            ..BenchArgs::default()
        }));
    }

    #[test]
    fn default_prefix_and_client_ids_are_unique_per_run() {
        let first = BenchArgs::default().plan().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let second = BenchArgs::default().plan().unwrap();
        assert_ne!(first.room_prefix, second.room_prefix);
        assert!(first.room_prefix.chars().all(|c| c.is_ascii_alphanumeric()));
        let largest_id = first.client_id_base + MAX_CONNECTIONS as u64;
        assert!(largest_id < 1 << 53, "ids fit a JavaScript number");
        assert!(first.client_id_base > 0);
    }

    #[test]
    fn modes_and_steps() {
        let load = BenchArgs::default().plan().unwrap();
        assert_eq!(load.mode, Mode::Load);
        assert_eq!(
            load.steps,
            vec![Step {
                rate: 2.0,
                duration: Duration::from_secs(30)
            }]
        );
        let idle = BenchArgs {
            idle: true,
            ..BenchArgs::default()
        }
        .plan()
        .unwrap();
        assert_eq!(idle.mode, Mode::Idle);
        assert!(idle.steps.is_empty());
        let ramp = BenchArgs {
            ramp: true,
            ramp_start: 2.0,
            ramp_step: 1.0,
            ramp_max: 5.0,
            ..BenchArgs::default()
        }
        .plan()
        .unwrap();
        let rates: Vec<f64> = ramp.steps.iter().map(|step| step.rate).collect();
        assert_eq!(rates, vec![2.0, 3.0, 4.0, 5.0]);
        assert!(ramp
            .steps
            .iter()
            .all(|step| step.duration == Duration::from_secs(10)));
        assert_eq!(ramp_rates(0.5, 0.25, 1.0).unwrap(), vec![0.5, 0.75, 1.0]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let refused = |args: BenchArgs| matches!(args.plan(), Err(BenchError::InvalidArgs(_)));
        assert!(refused(BenchArgs {
            url: vec!["ws://127.0.0.1:1999/fixed".into()],
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            url: vec!["http://127.0.0.1:1999/{room}".into()],
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            rooms: 0,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            rate: 0.0,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            rate: f64::NAN,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            rooms: 1000,
            clients: 1000,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            ramp: true,
            ramp_start: 5.0,
            ramp_max: 2.0,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            ramp: true,
            ramp_step: 0.001,
            ..BenchArgs::default()
        }));
        assert!(refused(BenchArgs {
            room_prefix: Some(String::new()),
            ..BenchArgs::default()
        }));
    }

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }
}
