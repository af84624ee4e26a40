//! `partyline coordinator`: one coordinator replica. Replicas elect a
//! leader through NATS KV; the leader tracks room nodes and publishes the
//! slot map.

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use tokio_util::sync::CancellationToken;

use crate::config::flags::{ClusterFlags, CoordinatorFlags, LinkFlags};
use crate::config::{effective, layer, FileConfig, LinkSettings};
use crate::ServeArgs;

/// `partyline coordinator` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CoordinatorArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    cluster: ClusterFlags,
    #[command(flatten)]
    coordinator: CoordinatorFlags,
    /// The link secret: room nodes prove they hold it in every heartbeat.
    #[command(flatten)]
    link: LinkFlags,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    cluster: partyline_coordinator::ClusterOptions,
    config: partyline_coordinator::CoordinatorConfig,
    id_given: bool,
    link: LinkSettings,
}

fn prepare(args: &CoordinatorArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let cluster = layer(file.cluster, &args.cluster)?.build()?;
    let mut config = layer(file.coordinator, &args.coordinator)?;
    let id_given = !config.id.is_empty();
    config.id = config.effective_id();
    config.validate()?;
    let link = file.link.layered(&args.link)?;
    link.check()?;
    Ok(Prepared {
        cluster,
        config,
        id_given,
        link,
    })
}

/// `--print-effective-config`'s sections.
pub(crate) fn effective(
    args: &CoordinatorArgs,
    file: FileConfig,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let prepared = prepare(args, file)?;
    Ok(vec![
        ("cluster", effective::cluster(&prepared.cluster)),
        (
            "coordinator",
            effective::coordinator(&prepared.config, prepared.id_given),
        ),
        ("link", prepared.link.effective()?),
    ])
}

/// Runs until SIGTERM/SIGINT (a leader hands its lease back on the way out).
pub(crate) async fn run(
    args: CoordinatorArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let Prepared {
        cluster: cluster_options,
        config,
        link,
        ..
    } = prepare(&args, file)?;
    let shutdown = CancellationToken::new();
    let link = link.build(shutdown.clone()).await?;
    tokio::spawn(crate::wait_for_signal(shutdown.clone()));
    let cluster = Cluster::connect(&cluster_options)
        .await
        .context("connect to NATS")?;
    let id = config.id.clone();
    let ready = {
        let cluster = cluster.clone();
        crate::ops::readiness(move || {
            let connected = cluster.is_connected();
            async move {
                connected
                    .then_some(())
                    .ok_or_else(|| "not connected to NATS".to_owned())
            }
        })
    };
    serving.start_ops(ready, shutdown.clone()).await?;
    tracing::info!(coordinator = %id, cluster = %cluster_options.cluster, "coordinator started");
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline coordinator {id} started");
    partyline_coordinator::run(cluster, config, link, shutdown)
        .await
        .context("coordinator")?;
    tracing::info!(coordinator = %id, "stopped");
    Ok(())
}
