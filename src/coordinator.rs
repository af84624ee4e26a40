//! `partyline coordinator`: one coordinator replica. Replicas elect a
//! leader through NATS KV; the leader tracks room nodes and publishes the
//! slot map.

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use tokio_util::sync::CancellationToken;

use crate::config::{effective, ClusterSection, CoordinatorSection, FileConfig, LinkSection};
use crate::ServeArgs;

/// `partyline coordinator` flags.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    cluster: ClusterSection,
    #[command(flatten)]
    coordinator: CoordinatorSection,
    /// The link secret: room nodes prove they hold it in every heartbeat.
    #[command(flatten)]
    link: LinkSection,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    cluster: partyline_coordinator::ClusterOptions,
    coordinator: CoordinatorSection,
    config: partyline_coordinator::CoordinatorConfig,
    link: LinkSection,
}

fn prepare(args: &CoordinatorArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let cluster = args.cluster.clone().merge(file.cluster).build()?;
    let coordinator = args.coordinator.clone().merge(file.coordinator);
    let config = coordinator.build()?;
    let link = args.link.clone().merge(file.link);
    link.check()?;
    Ok(Prepared {
        cluster,
        coordinator,
        config,
        link,
    })
}

/// `--print-effective-config`'s sections.
pub fn effective(
    args: &CoordinatorArgs,
    file: FileConfig,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let prepared = prepare(args, file)?;
    let id_given = prepared
        .coordinator
        .id
        .as_deref()
        .is_some_and(|id| !id.is_empty());
    Ok(vec![
        ("cluster", effective::cluster(&prepared.cluster)),
        (
            "coordinator",
            effective::coordinator(&prepared.config, id_given),
        ),
        ("link", prepared.link.effective()?),
    ])
}

/// Runs until SIGTERM/SIGINT (a leader hands its lease back on the way out).
pub async fn run(
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
