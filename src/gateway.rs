//! `partyline gateway`: a stateless WebSocket edge of a cluster. Follows
//! the slot map in NATS KV and routes each room to its owner; on SIGTERM
//! closes its clients with 1012 so they reconnect through another gateway.

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use partyline_proto::close;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{
    host_name, AuthSection, ClusterSection, FileConfig, GatewaySection, LinkSection,
};
use crate::ServeArgs;

/// `partyline gateway` flags.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    cluster: ClusterSection,
    #[command(flatten)]
    gateway: GatewaySection,
    #[command(flatten)]
    auth: AuthSection,
    #[command(flatten)]
    link: LinkSection,
    /// Let any client open and edit any room, without a token.
    #[arg(long, env = "PARTYLINE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(
    args: GatewayArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let gateway = args.gateway.merge(file.gateway);
    let cluster_options = args.cluster.merge(file.cluster).build()?;
    let mut config = gateway.build(format!("{}-{}", host_name(), std::process::id()))?;
    config.shutdown_close_code = close::SERVICE_RESTART;
    let auth = args.auth.merge(file.auth);
    config.auth = auth.build(args.insecure_no_auth).await?;
    config.max_session = auth.max_session;
    config.trace_frames = serving.traces;

    let shutdown = CancellationToken::new();
    let link = args.link.merge(file.link).build(shutdown.clone()).await?;
    let cluster = Cluster::connect(&cluster_options)
        .await
        .context("connect to NATS")?;
    let slot_map = cluster.watch_slot_map(shutdown.clone()).await?;
    let listener = TcpListener::bind(gateway.listen())
        .await
        .with_context(|| format!("bind gateway on {}", gateway.listen()))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::wait_for_signal(shutdown.clone()));
    let ready = {
        let map = slot_map.clone();
        crate::ops::readiness(move || {
            let has_map = map.borrow().is_some();
            async move {
                has_map
                    .then_some(())
                    .ok_or_else(|| "no slot map yet".to_owned())
            }
        })
    };
    serving.start_ops(ready, shutdown.clone()).await?;
    tracing::info!(%addr, epoch = slot_map.borrow().as_ref().map(|m| m.epoch()), "gateway started");
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline gateway listening on ws://{addr}");
    partyline_gateway::run(listener, config, slot_map, link, shutdown)
        .await
        .context("gateway")?;
    tracing::info!("stopped");
    Ok(())
}
