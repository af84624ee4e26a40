//! The NATS layout every role shares: one connection, the KV buckets, the
//! subjects, and the slot map's encoding in KV.
//!
//! Owns: connecting (forever-retrying, so the data plane never dies because
//! NATS is down), the names derived from the cluster namespace, creating the
//! buckets, reading and watching the slot map, and publishing a room node's
//! heartbeats. It decides nothing: who leads and what the map says belong to
//! [`crate::election`] and [`crate::leader`]. It must not hold any state that
//! outlives a NATS outage except the last slot map a watcher has seen.
//!
//! Layout, for cluster namespace `C` (default `partyline`):
//!
//! | name | kind | contents |
//! |---|---|---|
//! | `C-map` | KV bucket, history 1 | key `slotmap` (JSON slot map), key `members` (JSON: node id → digest of the claim holding it), keys `drain.{node_id}` |
//! | `C-leader` | KV bucket, history 1, `max_age` = the lease | key `leader` = the leading coordinator's id |
//! | `C.heartbeat` | subject | [`Heartbeat`] JSON from every room node |
//! | `C.admin.nodes` | request/reply, leader only | node listing |
//! | `C.admin.rebalance` | request/reply, leader only | rebalance now |
//!
//! Only the coordinator creates the buckets ([`Cluster::create_map_store`],
//! [`Cluster::leader_store`]); every other role opens them and waits while
//! they do not exist, so it needs no right to create JetStream streams.
//! Replies come to `_INBOX_{user}.…` ([`inbox_prefix`]), so a NATS config
//! can let each user read its own replies only (deploy/nats/nats-server.conf).
//!
//! One file per concern: [`Cluster`] itself, the connection and the names
//! here; `credentials` (what a URL's user and password become), `buckets`
//! (opening the buckets, the keys read and written in them), `slot_map`
//! (the map's JSON), `map_watch` (following the map), `heartbeats` (what
//! room nodes send) and `backoff` (retry pauses). Everything public is
//! re-exported here, so `crate::cluster::X` stays the one path to each item.

mod backoff;
mod buckets;
mod credentials;
mod heartbeats;
mod map_watch;
mod slot_map;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, Event};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};
use tracing::{debug, info, warn};

pub use buckets::drain_key;
pub(crate) use buckets::is_valid_node_key;
pub use credentials::inbox_prefix;
pub use heartbeats::{new_claim, Heartbeat, LEAVE_TIMEOUT};
pub use slot_map::{decode_slot_map, encode_slot_map, SlotMapDecodeError};

/// Key of the slot map in the `{cluster}-map` bucket.
pub const SLOT_MAP_KEY: &str = "slotmap";
/// Key of the claim digests in the `{cluster}-map` bucket: node id → hex
/// SHA-256 of the claim the leader has bound it to
/// ([`crate::membership::claim_digest`]).
pub const MEMBERS_KEY: &str = "members";
/// Prefix of the drain keys (`drain.{node_id}`) in the `{cluster}-map` bucket.
pub const DRAIN_KEY_PREFIX: &str = "drain.";
/// Key of the leader lease in the `{cluster}-leader` bucket.
pub const LEADER_KEY: &str = "leader";

/// Longest wait between two reconnect attempts. Every role uses the same
/// schedule (each pause drawn at random below its step's ceiling, so they
/// do not retry in lockstep), so after a NATS restart all clients are back
/// within about this long of each other; the leader adds it to the grace it
/// gives nodes.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// Timeout of one JetStream request. Short, because a KV call that waits
/// longer than a lease is useless to the election anyway.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Client pings: a connection that silently stopped carrying traffic (a
/// partition rather than a closed socket) is noticed within about two of
/// these instead of async-nats' default two minutes.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Where and under which namespace to reach the cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterOptions {
    /// NATS server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// Namespace of every bucket and subject, so clusters can share a NATS.
    pub cluster: String,
}

/// Without the URL's credentials: options end up in logs.
impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted: Vec<String> = self
            .nats_url
            .split(',')
            .map(|entry| match entry.rsplit_once('@') {
                Some((head, host)) => match head.split_once("://") {
                    Some((scheme, _)) => format!("{scheme}://***@{host}"),
                    None => format!("***@{host}"),
                },
                None => entry.to_owned(),
            })
            .collect();
        f.debug_struct("ClusterOptions")
            .field("nats_url", &redacted.join(","))
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            cluster: "partyline".to_owned(),
        }
    }
}

/// What can go wrong talking to the cluster's NATS.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The namespace cannot be used in bucket and subject names.
    #[error("invalid cluster name {0:?}: use only letters, digits, '-' and '_'")]
    InvalidName(String),
    /// The NATS URL was refused (only malformed URLs fail: connecting itself retries forever).
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// The bucket does not exist (yet): only a coordinator creates it.
    #[error("KV bucket {0} does not exist yet (no coordinator has run in this cluster)")]
    MissingBucket(String),
    /// A KV bucket could not be opened.
    #[error("cannot open KV bucket {bucket}: {source}")]
    Open {
        /// The bucket.
        bucket: String,
        /// Why opening it failed.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
    /// A KV bucket could neither be created nor opened.
    #[error("cannot create or open KV bucket {bucket}: {source}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why creating it failed.
        #[source]
        source: async_nats::jetstream::context::CreateKeyValueError,
    },
    /// Reading a KV key failed.
    #[error("cannot read KV key {key}: {source}")]
    Read {
        /// The key.
        key: String,
        /// The KV error.
        #[source]
        source: kv::EntryError,
    },
    /// Writing a KV key failed.
    #[error("cannot write KV key {key}: {source}")]
    Write {
        /// The key.
        key: String,
        /// The KV error.
        #[source]
        source: kv::PutError,
    },
    /// Starting a KV watch failed.
    #[error("cannot watch KV key {key}: {source}")]
    Watch {
        /// The key.
        key: String,
        /// The KV error.
        #[source]
        source: kv::WatchError,
    },
    /// A running KV watch failed.
    #[error("KV watch failed: {0}")]
    Watcher(#[from] kv::WatcherError),
    /// The stored slot map is not valid.
    #[error("stored slot map is invalid: {0}")]
    Decode(#[from] SlotMapDecodeError),
}

/// A connection to the cluster's NATS plus the names derived from its namespace.
///
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    jetstream: jetstream::Context,
    name: Arc<str>,
    map_store: Arc<OnceCell<kv::Store>>,
    connects: watch::Receiver<u64>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("state", &self.client.connection_state())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts a NATS connection that retries and reconnects forever.
    ///
    /// Returns at once even when NATS is down; calls made before it is
    /// reachable fail or time out and are retried by their callers.
    pub async fn connect(options: &ClusterOptions) -> Result<Cluster, ClusterError> {
        validate_name(&options.cluster)?;
        let (connects_tx, connects) = watch::channel(0u64);
        let connects_tx = Arc::new(connects_tx);
        let client =
            credentials::with_credentials(async_nats::ConnectOptions::new(), &options.nats_url)
                .name(format!("partyline-{}", options.cluster))
                .retry_on_initial_connect()
                .max_reconnects(None)
                .reconnect_delay_callback(backoff::reconnect_delay)
                .ping_interval(PING_INTERVAL)
                .event_callback(move |event| {
                    let connects_tx = connects_tx.clone();
                    async move {
                        match event {
                            Event::Connected => {
                                info!("connected to NATS");
                                connects_tx.send_modify(|count| *count += 1);
                            }
                            Event::Disconnected => warn!("disconnected from NATS; retrying"),
                            other => debug!(event = %other, "NATS event"),
                        }
                    }
                })
                .connect(options.nats_url.as_str())
                .await?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(JETSTREAM_TIMEOUT);
        Ok(Cluster {
            client,
            jetstream,
            name: options.cluster.as_str().into(),
            map_store: Arc::new(OnceCell::new()),
            connects,
        })
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Counts successful (re)connections; changes each time NATS comes back.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.connects.clone()
    }

    /// Name of the bucket holding the slot map and the drain keys.
    pub fn map_bucket(&self) -> String {
        format!("{}-map", self.name)
    }

    /// Name of the bucket holding the leader lease.
    pub fn leader_bucket(&self) -> String {
        format!("{}-leader", self.name)
    }

    /// Subject room nodes publish [`Heartbeat`]s on.
    pub fn heartbeat_subject(&self) -> String {
        format!("{}.heartbeat", self.name)
    }

    /// Request/reply subject of the leader's node listing.
    pub fn admin_nodes_subject(&self) -> String {
        format!("{}.admin.nodes", self.name)
    }

    /// Request/reply subject of the leader's rebalance command.
    pub fn admin_rebalance_subject(&self) -> String {
        format!("{}.admin.rebalance", self.name)
    }
}

fn validate_name(name: &str) -> Result<(), ClusterError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ClusterError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("partyline").is_ok());
        assert!(validate_name("prod_eu-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a.b").is_err());
        assert!(validate_name("a b").is_err());
    }
}
