//! `partyline`: the one binary. Parses flags, loads config, starts logging
//! and calls the roles' `run` functions; no protocol or storage logic lives
//! here.

mod config;
mod dev;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Self-hosted, horizontally scalable Yjs collaboration backend,
/// compatible with y-partykit and y-websocket providers.
#[derive(Debug, Parser)]
#[command(name = "partyline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Gateway + room node in one process with local directory storage: no
    /// Redis, NATS or S3 needed.
    Dev(dev::DevArgs),
    /// Load-test any y-websocket server: N rooms × M clients × R updates/s.
    Bench(partyline_bench::BenchArgs),
}

/// Arguments every serving role shares.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// TOML config file; env vars and flags override it.
    #[arg(long, env = "PARTYLINE_CONFIG")]
    pub config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Bench(args) => {
                let report = partyline_bench::run(args).await?;
                // The table is for people, the JSON line for scripts.
                eprintln!("{report}");
                println!("{}", report.to_json_line());
                Ok(())
            }
        }
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARTYLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
