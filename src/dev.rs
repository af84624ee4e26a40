//! `partyline dev`: one process running a gateway and a room node with a
//! static one-node slot map. The gateway reaches the room node over real
//! gRPC on a loopback port, the same path a cluster uses.

use std::sync::Arc;

use anyhow::Context;
use partyline_proto::{NodeId, NodeInfo, SlotMap};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthSection, FileConfig, GatewaySection, RoomNodeSection, WebhooksSection};
use crate::ServeArgs;

/// `partyline dev` flags.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    gateway: GatewaySection,
    #[command(flatten)]
    room_node: RoomNodeSection,
    #[command(flatten)]
    auth: AuthSection,
    #[command(flatten)]
    webhooks: WebhooksSection,
}

/// Runs until SIGINT/SIGTERM, then shuts down gracefully: client sockets
/// closed with 1001, every dirty room snapshotted.
pub async fn run(
    args: DevArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let gateway = args.gateway.merge(file.gateway);
    let room_node = args.room_node.merge(file.room_node);
    let node_id = NodeId::new("dev");
    let mut room_config = room_node.build(node_id.clone())?;
    room_config.hooks = args.webhooks.merge(file.webhooks).build()?;
    let _data_dir_lock = partyline_room_node::store::DataDirLock::acquire(&room_config.data_dir)?;
    let mut gateway_config = gateway.build("dev".to_owned())?;
    let auth = args.auth.merge(file.auth);
    gateway_config.auth = auth.build(true).await?;
    gateway_config.max_session = auth.max_session;
    gateway_config.trace_frames = serving.traces;

    let grpc_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind room node grpc")?;
    let grpc_addr = grpc_listener.local_addr()?;
    let listener = TcpListener::bind(gateway.listen())
        .await
        .with_context(|| format!("bind gateway on {}", gateway.listen()))?;
    let addr = listener.local_addr()?;

    let map = SlotMap::single(
        0,
        NodeInfo {
            id: node_id,
            grpc_url: format!("http://{grpc_addr}"),
        },
    );
    let (_map_tx, map_rx) = watch::channel(Some(Arc::new(map)));
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::wait_for_signal(shutdown.clone()));

    let ready = crate::ops::room_node_readiness(&room_config, &map_rx);
    serving.start_ops(ready, shutdown.clone()).await?;
    tracing::info!(data_dir = %room_config.data_dir.display(), %grpc_addr, "room node started");
    let room_node = tokio::spawn(partyline_room_node::run(
        grpc_listener,
        room_config,
        map_rx.clone(),
        shutdown.clone(),
    ));
    let gateway = tokio::spawn(partyline_gateway::run(
        listener,
        gateway_config,
        map_rx,
        shutdown.clone(),
    ));
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline dev listening on ws://{addr}");

    // Either role ending (on shutdown, or on its own with an error) stops
    // the other, so the process never serves half a system.
    let (gateway_result, room_node_result) = tokio::join!(
        async {
            let result = gateway.await;
            shutdown.cancel();
            result
        },
        async {
            let result = room_node.await;
            shutdown.cancel();
            result
        },
    );
    gateway_result.context("gateway task")?.context("gateway")?;
    room_node_result.context("room node task")?;
    tracing::info!("stopped");
    Ok(())
}
