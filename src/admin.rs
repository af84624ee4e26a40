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
    /// The gRPC link's secret (for `export`, `import`, and `history` /
    /// `fetch-version` without `--redis`, which call the rooms' owners as
    /// a gateway does).
    #[command(flatten)]
    link: LinkFlags,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The rooms' Redis, as room nodes use it: `history` and
    /// `fetch-version` then read remote storage directly, which works with
    /// no room node running (without it they ask the rooms' owners, as the
    /// HTTP API does).
    #[arg(long, global = true, env = "PARTYLINE_NODE_REDIS")]
    redis: Option<String>,
    /// The snapshot store (with `--redis`), as room nodes use it
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
    /// rooms keep many): from its owner, on any store, or with `--redis`
    /// straight from remote storage.
    History {
        /// The room name.
        room: String,
        /// Give up after this long (asking the owner).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Write one stored version of a room to stdout as a Yjs update (v1):
    /// from its owner, or with `--redis` straight from remote storage.
    FetchVersion {
        /// The room name.
        room: String,
        /// The version's name, from `history`.
        version: String,
        /// Give up after this long (asking the owner).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
        AdminCommand::History { room, timeout } => {
            let versions: Vec<ListedVersion> = match args.redis.as_deref() {
                Some(redis) => {
                    let storage = storage(redis, args.store.as_deref(), &options.cluster).await?;
                    let versions = storage.versions(&room).await?;
                    versions.into_iter().map(ListedVersion::from).collect()
                }
                None => {
                    let name = room_name(&room)?;
                    let rooms = room_api(&options, &link, timeout).await?;
                    let versions = rooms.versions(&name).await?;
                    versions.into_iter().map(ListedVersion::from).collect()
                }
            };
            print(json, &versions, || {
                let mut out = format!(
                    "{:<64} {:>15} {:>10}  LABEL\n",
                    "VERSION", "AT (unix ms)", "BYTES"
                );
                for version in &versions {
                    let size = version.size.map_or("-".to_owned(), |size| size.to_string());
                    let label = version.label.as_deref().unwrap_or("");
                    out += &format!(
                        "{:<64} {:>15} {:>10}  {label}\n",
                        version.name, version.at_unix_ms, size
                    );
                }
                out
            })
        }
        AdminCommand::FetchVersion {
            room,
            version,
            timeout,
        } => {
            let state = match args.redis.as_deref() {
                Some(redis) => {
                    let storage = storage(redis, args.store.as_deref(), &options.cluster).await?;
                    storage
                        .fetch_version(&room, &version)
                        .await?
                        .with_context(|| format!("no valid version {version:?} of {room}"))?
                }
                None => {
                    let name = room_name(&room)?;
                    let rooms = room_api(&options, &link, timeout).await?;
                    let format = partyline_proto::pb::StateFormat::UpdateV1;
                    rooms.version(&name, &version, format).await?.to_vec()
                }
            };
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

/// One stored version as `history` prints it, read from storage or from
/// the room's owner.
#[derive(Debug, Serialize)]
struct ListedVersion {
    /// Its name: what `fetch-version` and the HTTP API take.
    name: String,
    /// When it was taken (Unix ms).
    at_unix_ms: u64,
    /// The last log entry it covers (read from storage only).
    #[serde(skip_serializing_if = "Option::is_none")]
    covered: Option<String>,
    /// Its size as one Yjs update v1, when known.
    size: Option<u64>,
    /// The label it was taken with, if any.
    label: Option<String>,
}

impl From<partyline_room_node::storage::Version> for ListedVersion {
    fn from(version: partyline_room_node::storage::Version) -> Self {
        Self {
            name: version.name,
            at_unix_ms: version.at_unix_ms,
            covered: Some(version.covered),
            size: version.size,
            label: version.label,
        }
    }
}

impl From<partyline_proto::pb::VersionInfo> for ListedVersion {
    fn from(version: partyline_proto::pb::VersionInfo) -> Self {
        Self {
            name: version.id,
            at_unix_ms: version.taken_at_unix_ms,
            covered: None,
            size: version.size,
            label: version.label,
        }
    }
}

/// The rooms' remote storage, as room nodes open it.
async fn storage(redis: &str, store: Option<&str>, cluster: &str) -> anyhow::Result<RemoteStorage> {
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
