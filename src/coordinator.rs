//! `partyline coordinator`: one coordinator replica. Replicas elect a
//! leader through NATS KV; the leader tracks room nodes and publishes the
//! slot map.

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterSection, CoordinatorSection, FileConfig};
use crate::CommonArgs;

/// `partyline coordinator` flags.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    telemetry: crate::config::TelemetrySection,
    #[command(flatten)]
    cluster: ClusterSection,
    #[command(flatten)]
    coordinator: CoordinatorSection,
}

impl CoordinatorArgs {
    /// `[telemetry]` from the config file, under the flags.
    pub fn telemetry_settings(&self) -> anyhow::Result<crate::config::TelemetrySection> {
        let file = FileConfig::load(self.common.config.as_deref())?;
        Ok(self.telemetry.clone().merge(file.telemetry))
    }
}

/// Runs until SIGTERM/SIGINT (a leader hands its lease back on the way out).
pub async fn run(args: CoordinatorArgs, serving: crate::telemetry::Serving) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let cluster_options = args.cluster.merge(file.cluster).build();
    let config = args.coordinator.merge(file.coordinator).build()?;
    let shutdown = CancellationToken::new();
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
    partyline_coordinator::run(cluster, config, shutdown)
        .await
        .context("coordinator")?;
    tracing::info!(coordinator = %id, "stopped");
    Ok(())
}
