//! `partyline`: the one binary. Parses flags, loads config, starts logging
//! and calls the roles' `run` functions; no protocol or storage logic lives
//! here.

mod admin;
mod config;
mod coordinator;
mod dev;
mod gateway;
mod ops;
mod room_node;
mod telemetry;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Self-hosted, horizontally scalable Yjs collaboration backend,
/// compatible with y-partykit and y-websocket providers.
#[derive(Debug, Parser)]
#[command(name = "partyline", version, about)]
struct Cli {
    /// Runtime worker threads [default: one per CPU core; one for a
    /// coordinator]. One thread per process spends slightly less CPU per
    /// delivered update on a small machine (~5 % on 2 cores); more serve
    /// more load.
    #[arg(long, global = true, env = "PARTYLINE_WORKER_THREADS")]
    worker_threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gateway + room node in one process with local directory storage: no
    /// Redis, NATS or S3 needed.
    Dev(Box<dev::DevArgs>),
    /// A stateless WebSocket gateway of a cluster: routes rooms to their
    /// owners by the slot map in NATS.
    Gateway(Box<gateway::GatewayArgs>),
    /// A room node of a cluster: serves the rooms whose slots it owns,
    /// heartbeats over NATS, drains on SIGTERM.
    RoomNode(Box<room_node::RoomNodeArgs>),
    /// A coordinator replica: leader election, membership, slot map.
    Coordinator(coordinator::CoordinatorArgs),
    /// Operator commands: nodes, slots, locate, drain, undrain, rebalance, export, import.
    Admin(admin::AdminArgs),
    /// Load-test any y-websocket server: N rooms × M clients × R updates/s.
    Bench(partyline_bench::BenchArgs),
}

/// The config file flag, for every command that reads one.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// TOML config file; env vars and flags override it.
    #[arg(long, env = "PARTYLINE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Arguments every serving role shares.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    telemetry: config::flags::TelemetryFlags,
    /// Print the settings this command would run with (file ← env ← flags
    /// and defaults, secrets redacted) as JSON and exit, connecting nowhere.
    #[arg(long, hide = true)]
    print_effective_config: bool,
}

impl ServeArgs {
    /// Reads the config file, once: the role's sections, and `[telemetry]`
    /// under the flags.
    fn load(&self) -> anyhow::Result<(config::FileConfig, config::TelemetrySettings)> {
        let mut file = config::FileConfig::load(self.common.config.as_deref())?;
        let telemetry = std::mem::take(&mut file.telemetry).layered(&self.telemetry)?;
        Ok((file, telemetry))
    }
}

/// Stack of every runtime thread (the default is 2 MiB).
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A coordinator handles a few messages a second: a second thread would
    // only add wake-ups (two idle coordinators spent ~15 % less CPU with one).
    let default_threads = matches!(cli.command, Command::Coordinator(_)).then_some(1);
    if let Some(threads) = cli.worker_threads.map(|n| n.get()).or(default_threads) {
        runtime.worker_threads(threads);
    }
    // Room actors run yrs, which recurses once per level of nested shared
    // types when it deletes or renders a subtree. The rooms refuse nesting
    // past `--max-type-depth` (256, well inside 2 MiB even in debug
    // builds); a 4x larger stack is the margin behind that check. Pages
    // are committed only when touched, so resident memory does not grow.
    runtime.thread_stack_size(WORKER_STACK_BYTES);
    let runtime = runtime.enable_all().build()?;
    // `block_on` polls its future on this (non-worker) thread, so every
    // event for a role's main loop would cost a cross-thread wake-up; as a
    // spawned task it runs on the workers beside the I/O driver. Two idle
    // coordinators spent ~16 % less CPU this way.
    runtime.block_on(async move {
        match tokio::spawn(run(cli.command)).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(join.into()),
        }
    })
}

/// Runs one subcommand to completion.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => {
            let (file, settings) = args.serve.load()?;
            if args.serve.print_effective_config {
                let mut sections = dev::effective(&args, file)?;
                sections.push(("telemetry", settings.effective()?));
                return config::effective::print(sections);
            }
            telemetry::serve("partyline-dev", settings, |serving| {
                dev::run(*args, file, serving)
            })
            .await
        }
        Command::Gateway(args) => {
            let (file, settings) = args.serve.load()?;
            if args.serve.print_effective_config {
                let mut sections = gateway::effective(&args, file)?;
                sections.push(("telemetry", settings.effective()?));
                return config::effective::print(sections);
            }
            telemetry::serve("partyline-gateway", settings, |serving| {
                gateway::run(*args, file, serving)
            })
            .await
        }
        Command::RoomNode(args) => {
            let (file, settings) = args.serve.load()?;
            if args.serve.print_effective_config {
                let mut sections = room_node::effective(&args, file)?;
                sections.push(("telemetry", settings.effective()?));
                return config::effective::print(sections);
            }
            telemetry::serve("partyline-room-node", settings, |serving| {
                room_node::run(*args, file, serving)
            })
            .await
        }
        Command::Coordinator(args) => {
            let (file, settings) = args.serve.load()?;
            if args.serve.print_effective_config {
                let mut sections = coordinator::effective(&args, file)?;
                sections.push(("telemetry", settings.effective()?));
                return config::effective::print(sections);
            }
            telemetry::serve("partyline-coordinator", settings, |serving| {
                coordinator::run(args, file, serving)
            })
            .await
        }
        Command::Admin(args) => {
            telemetry::init_logging();
            admin::run(args).await
        }
        Command::Bench(args) => {
            telemetry::init_logging();
            let report = partyline_bench::run(args).await?;
            // The table is for people, the JSON line for scripts.
            eprintln!("{report}");
            println!("{}", report.to_json_line());
            Ok(())
        }
    }
}

/// Cancels `shutdown` on the first SIGINT, SIGTERM or SIGHUP. SIGHUP (a
/// closed terminal, or forwarded by the npm launcher) would otherwise kill
/// the process without the graceful stop.
#[cfg(unix)]
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = hup.recv() => tracing::info!("SIGHUP: shutting down"),
    }
    shutdown.cancel();
}

/// Ctrl-C (and Ctrl-Break, a console close) where there are no Unix
/// signals: what a supervisor such as npm-run-all sends on Windows.
#[cfg(not(unix))]
async fn wait_for_signal(shutdown: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        tracing::error!("cannot install the Ctrl-C handler");
        return;
    }
    tracing::info!("Ctrl-C: shutting down");
    shutdown.cancel();
}
