//! `partyline room-node`: one room node of a cluster. Serves gRPC, follows
//! the slot map in NATS KV, heartbeats so the coordinators count it, and
//! drains on SIGTERM: it asks for no slots, waits until the map has moved
//! every slot (and so every room) away, then stops.

use std::time::Duration;

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use partyline_proto::{NodeId, NodeInfo};
use partyline_room_node::storage::{NodeStorage, RemoteStorage, SnapshotStore};
use partyline_room_node::Ownership;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::flags::{ClusterFlags, LinkFlags, NodeFlags, RoomNodeFlags, WebhooksFlags};
use crate::config::{effective, host_name, layer, FileConfig, LinkSettings, NodeSettings};
use crate::ServeArgs;

/// `partyline room-node` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RoomNodeArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    node: NodeFlags,
    #[command(flatten)]
    cluster: ClusterFlags,
    #[command(flatten)]
    room_node: RoomNodeFlags,
    #[command(flatten)]
    webhooks: WebhooksFlags,
    #[command(flatten)]
    link: LinkFlags,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    node: NodeSettings,
    cluster: partyline_coordinator::ClusterOptions,
    link: LinkSettings,
    config: partyline_room_node::RoomNodeConfig,
    hooks: partyline_room_node::hooks::HooksConfig,
    /// The webhooks' client, built from `hooks`.
    live_hooks: Option<partyline_room_node::hooks::Hooks>,
}

fn prepare(args: &RoomNodeArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let node = layer(file.node, &args.node)?;
    check_node(&node)?;
    let cluster = layer(file.cluster, &args.cluster)?.build()?;
    let link = file.link.layered(&args.link)?;
    link.check()?;
    let mut room_node = layer(file.room_node, &args.room_node)?;
    // `--data-dir DIR` is the same as `--store file://DIR`.
    anyhow::ensure!(
        room_node.data_dir.is_none() || node.store.is_none(),
        "give the room store once: --store file:///dir or --data-dir, not both"
    );
    if room_node.data_dir.is_none() && node.redis.is_none() {
        room_node.data_dir = Some(store_dir(&node)?);
    }
    let node_id = NodeId::new(node_id(&node));
    let mut config = room_node.into_config(node_id, &args.room_node.room_mode)?;
    let hooks = layer(file.webhooks, &args.webhooks)?;
    let live_hooks = crate::config::hooks(&hooks)?;
    // With Redis, fencing in Redis replaces the shared directory's file
    // locks; without, nodes share the directory and a room's files are
    // locked while it is loaded.
    config.room_locks = node.redis.is_none();
    config.room_lock_timeout = node.room_lock_timeout;
    Ok(Prepared {
        node,
        cluster,
        link,
        config,
        hooks,
        live_hooks,
    })
}

/// `--print-effective-config`'s sections.
pub(crate) fn effective(
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
        ("node", effective_node(&prepared.node)),
        ("cluster", effective::cluster(&prepared.cluster)),
        ("link", prepared.link.effective()?),
        (
            "room_node",
            effective::room_node(&prepared.config, prepared.live_hooks.is_some()),
        ),
        ("remote", serde_json::json!(remote)),
        ("webhooks", effective::webhooks(&prepared.hooks)),
    ])
}

/// Runs until SIGTERM/SIGINT, then drains (see the module doc).
pub(crate) async fn run(
    args: RoomNodeArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let Prepared {
        node,
        cluster: cluster_options,
        link,
        config,
        live_hooks,
        ..
    } = prepare(&args, file)?;
    let node_id = config.node_id.clone();
    // Checked before anything connects; watched for the process's life.
    let link = link.build(CancellationToken::new()).await?;
    let storage = if let Some(redis) = &node.redis {
        // Logs in Redis, snapshots in the store.
        let store = node.store.as_deref().unwrap_or("redis://");
        let snapshots =
            SnapshotStore::from_url(store).with_context(|| format!("--store {store:?}"))?;
        let remote = RemoteStorage::connect(redis, snapshots, &cluster_options.cluster)
            .await
            .with_context(|| format!("connect to redis {redis}"))?;
        tracing::info!(%redis, %store, "rooms log to redis, snapshot to the store");
        NodeStorage::remote(remote)
    } else {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create store dir {}", config.data_dir.display()))?;
        NodeStorage::files(&config)
    };

    let listener = TcpListener::bind(node.grpc_listen)
        .await
        .with_context(|| format!("bind room node grpc on {}", node.grpc_listen))?;
    let bound = listener.local_addr()?;
    let info = NodeInfo {
        id: node_id.clone(),
        grpc_url: advertise(&node, bound),
    };

    let shutdown = CancellationToken::new();
    let background = CancellationToken::new();
    let cluster = Cluster::connect(&cluster_options)
        .await
        .context("connect to NATS")?;
    let slot_map = cluster.watch_slot_map(background.clone()).await?;
    let ownership = Ownership::new(node_id.clone(), slot_map.clone());
    let (draining_tx, draining_rx) = watch::channel(false);
    let heartbeat_interval = node.heartbeat_interval;
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

    let ready = crate::ops::room_node_readiness(&node_id, &storage, &slot_map);
    serving.start_ops(ready, background.clone()).await?;
    tracing::info!(node = %node_id, grpc = %info.grpc_url, "room node started");
    let hooks = live_hooks.map(std::sync::Arc::new);
    let events = hooks.as_ref().and_then(|hooks| hooks.events().cloned());
    let renders = partyline_room_node::render::Renders::new(config.render_concurrency);
    let server = tokio::spawn(partyline_room_node::run(
        listener,
        config,
        partyline_room_node::Resources {
            storage,
            hooks,
            renders,
        },
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
            drain(&draining_tx, ownership, node.drain_timeout).await;
            shutdown.cancel();
        }
        _ = shutdown.cancelled() => {}
    }
    let result = server.await;
    crate::config::flush_events(events).await;
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
        Ok(()) => tracing::info!(epoch = ownership.epoch().get(), "drained: no slots left"),
        Err(_) => tracing::warn!(
            slots = ownership.owned_slots(),
            "drain timeout: stopping with slots still assigned (their rooms are snapshotted)"
        ),
    }
}

/// Checks `--advertise`, `--redis` and `--store`, naming the flag of a
/// bad one. `--advertise` must be a URL: a bare `host:port` is refused
/// rather than guessed, since gateways dial exactly what is published.
fn check_node(node: &NodeSettings) -> anyhow::Result<()> {
    if let Some(advertise) = &node.advertise {
        let schemes = crate::config::HTTP_SCHEMES;
        crate::config::check_url("--advertise", advertise, schemes, true)?;
    }
    if let Some(redis) = &node.redis {
        crate::config::check_redis(redis)?;
    }
    if let Some(store) = &node.store {
        crate::config::check_store(store)?;
    }
    Ok(())
}

/// The node id: the setting, else the host name.
fn node_id(node: &NodeSettings) -> String {
    node.node_id.clone().unwrap_or_else(host_name)
}

/// The URL gateways dial, given the address actually bound.
fn advertise(node: &NodeSettings, bound: std::net::SocketAddr) -> String {
    if let Some(url) = &node.advertise {
        return url.clone();
    }
    if bound.ip().is_unspecified() {
        format!("http://{}:{}", host_name(), bound.port())
    } else {
        format!("http://{bound}")
    }
}

/// The store directory from `--store file:///dir`.
fn store_dir(node: &NodeSettings) -> anyhow::Result<std::path::PathBuf> {
    let Some(url) = &node.store else {
        return Ok(partyline_room_node::config::DEFAULT_DATA_DIR.into());
    };
    match url.strip_prefix("file://") {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ => anyhow::bail!(
            "--store {url:?} is not supported without --redis: logs need a shared directory, \
             file:///path (object stores and redis:// hold snapshots of a --redis log)"
        ),
    }
}

/// `--print-effective-config`'s `node`.
fn effective_node(node: &NodeSettings) -> serde_json::Value {
    serde_json::json!({
        "node_id": node_id(node),
        "grpc_listen": node.grpc_listen,
        "advertise": advertise(node, node.grpc_listen),
        "store": node.store,
        "redis": node.redis.as_deref().map(effective::without_credentials),
        "heartbeat_interval": effective::duration(node.heartbeat_interval),
        "drain_timeout": effective::duration(node.drain_timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_settings_come_from_the_file() {
        let file: FileConfig = toml::from_str(
            "[node]\nnode_id = \"n7\"\nstore = \"file:///srv/rooms\"\ndrain_timeout = \"45s\"\n",
        )
        .unwrap();
        let node = file.node;
        assert_eq!(node_id(&node), "n7");
        assert_eq!(
            store_dir(&node).unwrap(),
            std::path::PathBuf::from("/srv/rooms")
        );
        assert_eq!(node.drain_timeout, Duration::from_secs(45));
        assert_eq!(
            advertise(&node, "0.0.0.0:7001".parse().unwrap()),
            format!("http://{}:7001", host_name())
        );
        assert_eq!(
            advertise(&node, "127.0.0.1:7001".parse().unwrap()),
            "http://127.0.0.1:7001"
        );
        let s3 = NodeSettings {
            store: Some("s3://bucket/rooms".into()),
            ..Default::default()
        };
        assert!(store_dir(&s3).is_err(), "only file:// stores without redis");
    }
}
