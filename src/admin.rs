//! `partyline admin`: operator commands against a running cluster, printed
//! as plain tables, or as JSON with `--json`.

use std::time::Duration;

use anyhow::Context;
use partyline_coordinator::admin;
use partyline_coordinator::cluster::Cluster;
use partyline_gateway::{RoomApi, Router};
use partyline_proto::RoomName;
use partyline_room_node::storage::{RemoteStorage, SnapshotStore};
use serde::Serialize;

use crate::config::flags::{ClusterFlags, LinkFlags};
use crate::config::{layer, FileConfig, LinkSettings};
use crate::CommonArgs;

/// `partyline admin` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    cluster: ClusterFlags,
    /// The gRPC link's secret (for `export` and `import`, which call the
    /// rooms' owners as a gateway does).
    #[command(flatten)]
    link: LinkFlags,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The rooms' Redis (for `history` and `fetch-version`), as room nodes use it.
    #[arg(long, global = true, env = "PARTYLINE_NODE_REDIS")]
    redis: Option<String>,
    /// The snapshot store (for `history` and `fetch-version`), as room nodes use it
    /// [default: redis://].
    #[arg(long, global = true, env = "PARTYLINE_NODE_STORE")]
    store: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Live room nodes as the coordinator leader sees them.
    Nodes,
    /// The published slot map: epoch and each node's share.
    Slots,
    /// Which node owns a room.
    Locate {
        /// The room name (as clients name it; `parties/P/R` for party P ≠ main).
        room: String,
    },
    /// Move every slot away from a node; it keeps running with no rooms.
    Drain {
        /// The node id.
        node: String,
        /// Wait this long for the map to give the node no slots (0: do not wait).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Let a drained node own slots again.
    Undrain {
        /// The node id.
        node: String,
    },
    /// Recompute the slot map over the live nodes now (gives joined nodes
    /// their share when `rebalance_on_join` is off).
    Rebalance,
    /// List a room's stored snapshot versions, newest first (`history`
    /// rooms keep many).
    History {
        /// The room name.
        room: String,
    },
    /// Write one stored version of a room to stdout as a Yjs update (v1).
    FetchVersion {
        /// The room name.
        room: String,
        /// The version's name, from `history`.
        version: String,
    },
    /// Write a room's whole state to stdout as one Yjs update (v1), as
    /// `Y.applyUpdate` reads it.
    Export {
        /// The room name.
        room: String,
        /// Give up after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Apply a Yjs update (v1) read from stdin to a room, live: its clients
    /// see it at once and it is logged like any edit.
    Import {
        /// The room name.
        room: String,
        /// Give up after this long.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Runs one admin command.
pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.common.config.as_deref())?;
    let options = layer(file.cluster, &args.cluster)?.build()?;
    let link = file.link.layered(&args.link)?;
    let json = args.json;
    match args.command {
        AdminCommand::Nodes => {
            let cluster = connect(&options).await?;
            let report = admin::nodes(&cluster).await?;
            print(json, &report, || {
                let mut out = format!(
                    "leader {}\n{:<24} {:<32} {:>6} {:>9} {:>10}\n",
                    report.leader, "NODE", "GRPC", "SLOTS", "DRAINING", "SEEN (ms)"
                );
                for node in &report.nodes {
                    out += &format!(
                        "{:<24} {:<32} {:>6} {:>9} {:>10}\n",
                        node.id, node.grpc_url, node.slots, node.draining, node.last_seen_ms
                    );
                }
                out
            })
        }
        AdminCommand::Slots => {
            let cluster = connect(&options).await?;
            let slots = admin::slots(&cluster).await?;
            print(json, &slots, || {
                let mut out = format!(
                    "epoch {}\n{:<24} {:<32} {:>6}\n",
                    slots.epoch, "NODE", "GRPC", "SLOTS"
                );
                for node in &slots.nodes {
                    out += &format!("{:<24} {:<32} {:>6}\n", node.id, node.grpc_url, node.slots);
                }
                out
            })
        }
        AdminCommand::Locate { room } => {
            let cluster = connect(&options).await?;
            let location = admin::locate(&cluster, &room).await?;
            print(json, &location, || {
                format!(
                    "room {} → slot {} → {} ({}) at epoch {}\n",
                    location.room, location.slot, location.node, location.grpc_url, location.epoch
                )
            })
        }
        AdminCommand::Drain { node, wait } => {
            let cluster = connect(&options).await?;
            let wait = (!wait.is_zero()).then_some(wait);
            let report = admin::drain(&cluster, &node, wait).await?;
            print(json, &report, || {
                format!(
                    "{} drained: {} slots at epoch {}\n",
                    report.node, report.slots, report.epoch
                )
            })
        }
        AdminCommand::Undrain { node } => {
            let cluster = connect(&options).await?;
            admin::undrain(&cluster, &node).await?;
            let report = serde_json::json!({ "node": node, "draining": false });
            print(json, &report, || format!("{node} may own slots again\n"))
        }
        AdminCommand::History { room } => {
            let storage = storage(
                args.redis.as_deref(),
                args.store.as_deref(),
                &options.cluster,
            )
            .await?;
            let versions = storage.versions(&room).await?;
            print(json, &versions, || {
                let mut out = format!("{:<64} {:>15}\n", "VERSION", "AT (unix ms)");
                for version in &versions {
                    out += &format!("{:<64} {:>15}\n", version.name, version.at_unix_ms);
                }
                out
            })
        }
        AdminCommand::FetchVersion { room, version } => {
            let storage = storage(
                args.redis.as_deref(),
                args.store.as_deref(),
                &options.cluster,
            )
            .await?;
            let state = storage
                .fetch_version(&room, &version)
                .await?
                .with_context(|| format!("no valid version {version:?} of {room}"))?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &state)?;
            Ok(())
        }
        AdminCommand::Export { room, timeout } => {
            let name = room_name(&room)?;
            let rooms = room_api(&options, &link, timeout).await?;
            let (update, url) = rooms
                .state(&name, partyline_proto::pb::StateFormat::UpdateV1)
                .await?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &update)?;
            eprintln!("exported {} bytes of {room} from {url}", update.len());
            Ok(())
        }
        AdminCommand::Import { room, timeout } => {
            let name = room_name(&room)?;
            let rooms = room_api(&options, &link, timeout).await?;
            let mut update = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut update)
                .context("read the update from stdin")?;
            let bytes = update.len();
            let url = rooms.apply(&name, update.into()).await?;
            let report = serde_json::json!({ "room": room, "bytes": bytes, "node": url });
            print(json, &report, || {
                format!("imported {bytes} bytes into {room}\n")
            })
        }
        AdminCommand::Rebalance => {
            let cluster = connect(&options).await?;
            let report = admin::rebalance(&cluster).await?;
            print(json, &report, || {
                format!(
                    "epoch {}: {} slots moved\n",
                    report.epoch, report.moved_slots
                )
            })
        }
    }
}

/// The cluster's NATS; only the commands that ask it connect, so reading
/// stored versions works while NATS is down.
async fn connect(
    options: &partyline_coordinator::cluster::ClusterOptions,
) -> anyhow::Result<Cluster> {
    tokio::time::timeout(Duration::from_secs(5), Cluster::connect(options))
        .await
        .context("NATS did not answer within 5s")?
        .context("connect to NATS")
}

/// The rooms' remote storage, as room nodes open it.
async fn storage(
    redis: Option<&str>,
    store: Option<&str>,
    cluster: &str,
) -> anyhow::Result<RemoteStorage> {
    let redis = redis.context("--redis is needed to read stored versions")?;
    crate::config::check_redis(redis)?;
    let store = store.unwrap_or("redis://");
    crate::config::check_store(store)?;
    let snapshots = SnapshotStore::from_url(store).with_context(|| format!("--store {store:?}"))?;
    RemoteStorage::connect(redis, snapshots, cluster)
        .await
        .with_context(|| format!("connect to redis {redis}"))
}

/// Calls on rooms routed by the cluster's slot map, as a gateway's HTTP
/// API makes them: re-routed when the room moves mid-call.
async fn room_api(
    options: &partyline_coordinator::cluster::ClusterOptions,
    link: &LinkSettings,
    timeout: Duration,
) -> anyhow::Result<RoomApi> {
    // Followed for the life of the command.
    let forever = tokio_util::sync::CancellationToken::new();
    let link = link.build(forever.clone()).await?;
    let cluster = connect(options).await?;
    let slot_map = cluster.watch_slot_map(forever).await?;
    Ok(RoomApi::new(Router::new(slot_map, link), timeout))
}

fn room_name(room: &str) -> anyhow::Result<RoomName> {
    RoomName::new(room).with_context(|| format!("bad room name {room:?}"))
}

fn print<T: Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", table());
    }
    Ok(())
}
