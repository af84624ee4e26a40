//! `partyline room-node`: one room node of a cluster. Serves gRPC, follows
//! the slot map in NATS KV, heartbeats so the coordinators count it, and
//! drains on SIGTERM: it asks for no slots, waits until the map has moved
//! every slot (and so every room) away, then stops.

use std::time::Duration;

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use partyline_proto::{NodeId, NodeInfo};
use partyline_room_node::remote::{RemoteStorage, SnapshotStore};
use partyline_room_node::Ownership;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{
    effective, ClusterSection, FileConfig, LinkSection, NodeSection, RoomNodeSection,
    WebhooksSection, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL,
};
use crate::ServeArgs;

/// `partyline room-node` flags.
#[derive(Debug, clap::Args)]
pub struct RoomNodeArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    node: NodeSection,
    #[command(flatten)]
    cluster: ClusterSection,
    #[command(flatten)]
    room_node: RoomNodeSection,
    #[command(flatten)]
    webhooks: WebhooksSection,
    #[command(flatten)]
    link: LinkSection,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    node: NodeSection,
    cluster: partyline_coordinator::ClusterOptions,
    link: LinkSection,
    config: partyline_room_node::RoomNodeConfig,
    hooks: partyline_room_node::hooks::HooksConfig,
}

fn prepare(args: &RoomNodeArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let node = args.node.clone().merge(file.node);
    node.check()?;
    let cluster = args.cluster.clone().merge(file.cluster).build()?;
    let link = args.link.clone().merge(file.link);
    link.check()?;
    let mut room_node = args.room_node.clone().merge(file.room_node);
    // `--data-dir DIR` is the same as `--store file://DIR`.
    anyhow::ensure!(
        room_node.data_dir.is_none() || node.store.is_none(),
        "give the room store once: --store file:///dir or --data-dir, not both"
    );
    if room_node.data_dir.is_none() && node.redis.is_none() {
        room_node.data_dir = Some(node.store_dir()?);
    }
    let mut config = room_node.build(NodeId::new(node.node_id()))?;
    let webhooks = args.webhooks.clone().merge(file.webhooks);
    config.hooks = webhooks.build()?;
    let hooks = webhooks.config()?;
    // With Redis, fencing in Redis replaces the shared directory's file
    // locks; without, nodes share the directory and a room's files are
    // locked while it is loaded.
    config.room_locks = node.redis.is_none();
    if let Some(timeout) = node.room_lock_timeout {
        config.room_lock_timeout = timeout;
    }
    Ok(Prepared {
        node,
        cluster,
        link,
        config,
        hooks,
    })
}

/// `--print-effective-config`'s sections.
pub fn effective(
    args: &RoomNodeArgs,
    file: FileConfig,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let prepared = prepare(args, file)?;
    let remote = prepared.node.redis.as_deref().map(|redis| {
        serde_json::json!({
            "redis": effective::without_credentials(redis),
            "store": prepared.node.store.as_deref().unwrap_or("redis://"),
        })
    });
    Ok(vec![
        ("node", prepared.node.effective()),
        ("cluster", effective::cluster(&prepared.cluster)),
        ("link", prepared.link.effective()?),
        ("room_node", effective::room_node(&prepared.config)),
        ("remote", serde_json::json!(remote)),
        ("webhooks", effective::webhooks(&prepared.hooks)),
    ])
}

/// Runs until SIGTERM/SIGINT, then drains (see the module doc).
pub async fn run(
    args: RoomNodeArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let Prepared {
        node,
        cluster: cluster_options,
        link,
        mut config,
        ..
    } = prepare(&args, file)?;
    let node_id = config.node_id.clone();
    // Checked before anything connects; watched for the process's life.
    let link = link.build(CancellationToken::new()).await?;
    if let Some(redis) = &node.redis {
        // Logs in Redis, snapshots in the store.
        let store = node.store.as_deref().unwrap_or("redis://");
        let snapshots =
            SnapshotStore::from_url(store).with_context(|| format!("--store {store:?}"))?;
        let remote = RemoteStorage::connect(redis, snapshots, &cluster_options.cluster)
            .await
            .with_context(|| format!("connect to redis {redis}"))?;
        tracing::info!(%redis, %store, "rooms log to redis, snapshot to the store");
        config.remote = Some(remote);
    } else {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create store dir {}", config.data_dir.display()))?;
    }

    let listener = TcpListener::bind(node.grpc_listen())
        .await
        .with_context(|| format!("bind room node grpc on {}", node.grpc_listen()))?;
    let bound = listener.local_addr()?;
    let info = NodeInfo {
        id: node_id.clone(),
        grpc_url: node.advertise(bound),
    };

    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let cluster = Cluster::connect(&cluster_options)
        .await
        .context("connect to NATS")?;
    let slot_map = cluster.watch_slot_map(background.clone()).await?;
    let ownership = Ownership::new(node_id.clone(), slot_map.clone());
    let (draining_tx, draining_rx) = watch::channel(false);
    let heartbeat_interval = node
        .heartbeat_interval
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
    // Its last heartbeat says this process leaves, so a restart with the
    // same id joins at once instead of after `dead_after`.
    let heartbeats = tokio::spawn({
        let cluster = cluster.clone();
        let info = info.clone();
        let background = background.clone();
        let link = link.clone();
        async move {
            cluster
                .run_heartbeats_then_leave(info, heartbeat_interval, draining_rx, link, background)
                .await
        }
    });

    let ready = crate::ops::room_node_readiness(&config, &slot_map);
    serving.start_ops(ready, background.clone()).await?;
    tracing::info!(node = %node_id, grpc = %info.grpc_url, "room node started");
    let server = tokio::spawn(partyline_room_node::run(
        listener,
        config,
        slot_map,
        link,
        shutdown.clone(),
    ));
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline room-node {node_id} serving grpc on {bound}");

    let signalled = CancellationToken::new();
    tokio::spawn(crate::wait_for_signal(signalled.clone()));
    tokio::select! {
        _ = signalled.cancelled() => {
            let timeout = node.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
            drain(&draining_tx, ownership, timeout).await;
            shutdown.cancel();
        }
        _ = shutdown.cancelled() => {}
    }
    let result = server.await;
    background.cancel();
    // Bounded by the heartbeat's own send timeout.
    let _ = heartbeats.await;
    result.context("room node task")?;
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}

/// Asks the coordinators for no slots and waits until the map gives this
/// node none (each map change releases the rooms it moved), up to `timeout`.
async fn drain(draining: &watch::Sender<bool>, mut ownership: Ownership, timeout: Duration) {
    tracing::info!("draining: asking the cluster to move every room away");
    let _ = draining.send(true);
    let drained = tokio::time::timeout(timeout, async {
        while ownership.owned_slots() > 0 {
            if !ownership.changed().await {
                break;
            }
        }
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(epoch = ownership.epoch(), "drained: no slots left"),
        Err(_) => tracing::warn!(
            slots = ownership.owned_slots(),
            "drain timeout: stopping with slots still assigned (their rooms are snapshotted)"
        ),
    }
}
