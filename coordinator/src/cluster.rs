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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use partyline_proto::link::LinkAuth;
use partyline_proto::{NodeId, NodeInfo, Slot, SlotMap, SlotMapError, SLOTS};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
/// schedule, so after a NATS restart all clients are back within about this
/// long of each other; the leader adds it to the grace it gives nodes.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// Timeout of one JetStream request. Short, because a KV call that waits
/// longer than a lease is useless to the election anyway.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a role waiting for a coordinator to create the map bucket
/// looks again.
const MISSING_BUCKET_RETRY: Duration = Duration::from_millis(250);

/// How long a stopping node tries to get its leaving heartbeat out.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Why stored slot map bytes were rejected.
#[derive(Debug, thiserror::Error)]
pub enum SlotMapDecodeError {
    /// Not the expected JSON.
    #[error("not slot map JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of the right shape describing an impossible map.
    #[error(transparent)]
    Invalid(#[from] SlotMapError),
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

/// The credentials in the first `--nats` entry that carries some:
/// `nats://user:password@host` (user and password) or `nats://token@host`
/// (a token), percent-decoded. async-nats parses them out of the URL but
/// sends only what its options say (and sends them still encoded), so
/// without this a server with authorization would refuse every role.
///
/// A user also gets its own inbox prefix ([`inbox_prefix`]).
fn with_credentials(
    options: async_nats::ConnectOptions,
    nats_url: &str,
) -> async_nats::ConnectOptions {
    let credentials = nats_url
        .split(',')
        .filter_map(|entry| entry.trim().parse::<async_nats::ServerAddr>().ok())
        .find(|addr| addr.username().is_some());
    let Some(addr) = credentials else {
        return options;
    };
    match (addr.username().map(decode), addr.password().map(decode)) {
        (Some(user), Some(password)) => options
            .custom_inbox_prefix(inbox_prefix(Some(&user)))
            .user_and_password(user, password),
        (Some(token), None) => options.token(token),
        _ => options,
    }
}

/// `%XX` escapes of a URL's user or password, decoded (a password may
/// hold `@`, `:` or `/` only escaped).
fn decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox prefix of a client connecting as `user`: `_INBOX_{user}` when
/// the name can be a subject token (letters, digits, `-`, `_`), else
/// NATS' default `_INBOX`.
///
/// Request replies and KV watch deliveries come to subjects under it, so
/// a NATS config can allow each user to subscribe to `_INBOX_{user}.>`
/// only: no user reads another's replies, and nobody but the server and
/// a responder can write into them.
pub fn inbox_prefix(user: Option<&str>) -> String {
    match user {
        Some(user)
            if !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            format!("_INBOX_{user}")
        }
        _ => "_INBOX".to_owned(),
    }
}

/// A fresh incarnation claim: 128 random bits from the OS, as hex.
///
/// A room node sends it in every heartbeat; the coordinators bind the
/// node id to the claim of the first heartbeat that registered it and
/// ignore heartbeats for that id carrying another claim while it lives
/// ([`crate::membership`]). Only coordinators may read the heartbeat
/// subject, so another NATS user cannot learn it.
pub fn new_claim() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides random bytes");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
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
        let client = with_credentials(async_nats::ConnectOptions::new(), &options.nats_url)
            .name(format!("partyline-{}", options.cluster))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
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

    /// The `{cluster}-map` bucket, opened on first use; fails with
    /// [`ClusterError::MissingBucket`] until a coordinator has created it.
    ///
    /// Every role but the coordinator uses this: opening needs only the
    /// right to read the stream's info, not to create streams. A failure
    /// is not cached, so the next call tries again.
    pub async fn map_store(&self) -> Result<kv::Store, ClusterError> {
        self.map_store
            .get_or_try_init(|| open_existing(&self.jetstream, self.map_bucket()))
            .await
            .cloned()
    }

    /// The `{cluster}-map` bucket, created when it does not exist yet (the
    /// coordinator's way in; later [`Cluster::map_store`] calls share it).
    pub async fn create_map_store(&self) -> Result<kv::Store, ClusterError> {
        self.map_store
            .get_or_try_init(|| {
                open_bucket(
                    &self.jetstream,
                    kv::Config {
                        bucket: self.map_bucket(),
                        description: "Partyline slot map and drain marks".to_owned(),
                        history: 1,
                        ..Default::default()
                    },
                )
            })
            .await
            .cloned()
    }

    /// The `{cluster}-leader` bucket whose entries expire after `lease`.
    ///
    /// When the bucket already exists with another `max_age` it is opened as
    /// is (with a warning): the lease is then the stored one.
    pub async fn leader_store(&self, lease: Duration) -> Result<kv::Store, ClusterError> {
        let store = open_bucket(
            &self.jetstream,
            kv::Config {
                bucket: self.leader_bucket(),
                description: "Partyline coordinator leader lease".to_owned(),
                history: 1,
                max_age: lease,
                ..Default::default()
            },
        )
        .await?;
        let stored = store.stream.cached_info().config.max_age;
        if stored != lease {
            warn!(
                bucket = %store.name,
                configured = ?lease,
                stored = ?stored,
                "leader bucket exists with another lease; using the stored one"
            );
        }
        Ok(store)
    }

    /// The value of `key` in the map bucket: `None` when it was never put,
    /// was deleted, or the bucket does not exist yet.
    async fn map_entry(&self, key: &str) -> Result<Option<kv::Entry>, ClusterError> {
        let store = match self.map_store().await {
            Ok(store) => store,
            Err(ClusterError::MissingBucket(_)) => return Ok(None),
            Err(err) => return Err(err),
        };
        let entry = store
            .entry(key)
            .await
            .map_err(|source| ClusterError::Read {
                key: key.to_owned(),
                source,
            })?;
        Ok(entry.filter(|entry| entry.operation == kv::Operation::Put))
    }

    /// Reads the published slot map and its KV revision; `None` before the
    /// first one (the bucket not existing yet included).
    pub async fn read_slot_map(&self) -> Result<Option<(SlotMap, u64)>, ClusterError> {
        match self.map_entry(SLOT_MAP_KEY).await? {
            Some(entry) => Ok(Some((decode_slot_map(&entry.value)?, entry.revision))),
            None => Ok(None),
        }
    }

    /// Reads the stored claim digests ([`MEMBERS_KEY`]); empty when there
    /// are none (or no bucket yet). An unreadable record counts as empty:
    /// it only makes coordinators that start bind by endpoint alone.
    pub async fn read_claim_digests(&self) -> Result<BTreeMap<NodeId, String>, ClusterError> {
        let Some(entry) = self.map_entry(MEMBERS_KEY).await? else {
            return Ok(BTreeMap::new());
        };
        match serde_json::from_slice::<BTreeMap<String, String>>(&entry.value) {
            Ok(digests) => Ok(digests
                .into_iter()
                .map(|(id, digest)| (NodeId::new(id), digest))
                .collect()),
            Err(err) => {
                warn!(error = %err, "ignoring an invalid claim digest record");
                Ok(BTreeMap::new())
            }
        }
    }

    /// Stores the claim digests (the leader's, after they changed).
    pub async fn write_claim_digests(
        &self,
        digests: &BTreeMap<NodeId, String>,
    ) -> Result<(), ClusterError> {
        let store = self.create_map_store().await?;
        let wire: BTreeMap<&str, &str> = digests
            .iter()
            .map(|(id, digest)| (id.as_str(), digest.as_str()))
            .collect();
        let value = Bytes::from(serde_json::to_vec(&wire).expect("digests serialize"));
        store
            .put(MEMBERS_KEY, value)
            .await
            .map_err(|source| ClusterError::Write {
                key: MEMBERS_KEY.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// Follows the slot map: the receiver starts at the current map (`None`
    /// when there is none yet, or when NATS does not answer within 3 s —
    /// the longest this call waits) and a background task
    /// updates it until `shutdown` or until every receiver is dropped.
    ///
    /// The epoch never goes backwards: an older map is ignored, and a NATS
    /// outage just leaves the last map in place. Never fails on NATS
    /// trouble — the task keeps retrying — so a node starts with NATS down.
    pub async fn watch_slot_map(
        &self,
        shutdown: CancellationToken,
    ) -> Result<watch::Receiver<Option<Arc<SlotMap>>>, ClusterError> {
        let initial = match tokio::time::timeout(JETSTREAM_TIMEOUT, self.read_slot_map()).await {
            Ok(Ok(map)) => map.map(|(map, _)| Arc::new(map)),
            Ok(Err(err)) => {
                warn!(error = %err, "cannot read the slot map yet; following it in the background");
                None
            }
            Err(_) => {
                warn!("NATS did not answer; following the slot map in the background");
                None
            }
        };
        let (tx, rx) = watch::channel(initial);
        tokio::spawn(follow_slot_map(self.clone(), tx, shutdown));
        Ok(rx)
    }

    /// Publishes this node's heartbeat every `interval`, and at once whenever
    /// `draining` changes, until `shutdown`.
    ///
    /// Each call is one incarnation of the node: it draws a fresh claim
    /// ([`new_claim`]) and sends it in every heartbeat. While another
    /// incarnation's claim holds the node id (a previous process whose
    /// heartbeats have not stopped for `dead_after` yet), the coordinators
    /// ignore these heartbeats; then this one takes the id over.
    ///
    /// While NATS is unreachable nothing is sent (logged at debug): the
    /// leader does not count that time against the node.
    pub async fn run_heartbeats(
        &self,
        info: NodeInfo,
        interval: Duration,
        draining: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        self.heartbeat_until(
            info,
            interval,
            draining,
            LinkAuth::Insecure,
            shutdown,
            false,
        )
        .await;
    }

    /// [`Cluster::run_heartbeats`], then one last heartbeat saying this
    /// incarnation leaves (flushed, given up after [`LEAVE_TIMEOUT`]): the
    /// coordinators free the node id at once, so a restarted process with
    /// the same id joins without waiting `dead_after` for this one to fall
    /// silent. For a process that stops on purpose.
    ///
    /// With `link`'s secret every heartbeat carries a proof (the secret's
    /// signature of it, [`Heartbeat::proof_message`]): coordinators that
    /// hold the secret take no heartbeat without one.
    pub async fn run_heartbeats_then_leave(
        &self,
        info: NodeInfo,
        interval: Duration,
        draining: watch::Receiver<bool>,
        link: LinkAuth,
        shutdown: CancellationToken,
    ) {
        self.heartbeat_until(info, interval, draining, link, shutdown, true)
            .await;
    }

    async fn heartbeat_until(
        &self,
        info: NodeInfo,
        interval: Duration,
        mut draining: watch::Receiver<bool>,
        link: LinkAuth,
        shutdown: CancellationToken,
        leave: bool,
    ) {
        let subject = self.heartbeat_subject();
        let claim = new_claim();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining_open = true;
        loop {
            let leaving = tokio::select! {
                () = shutdown.cancelled() => {
                    if !leave {
                        return;
                    }
                    true
                }
                _ = ticker.tick() => false,
                changed = draining.changed(), if draining_open => {
                    // A dropped sender freezes the flag; heartbeats go on.
                    draining_open = changed.is_ok();
                    ticker.reset();
                    false
                }
            };
            let mut heartbeat = Heartbeat {
                id: info.id.clone(),
                grpc_url: info.grpc_url.clone(),
                draining: *draining.borrow_and_update() || leaving,
                claim: Some(claim.clone()),
                leaving,
                proof: None,
            };
            if let LinkAuth::Secret(secret) = &link {
                heartbeat.proof = Some(secret.sign(&heartbeat.proof_message(&self.name)));
            }
            let payload =
                Bytes::from(serde_json::to_vec(&heartbeat).expect("heartbeat serializes"));
            if leaving {
                let sent = tokio::time::timeout(LEAVE_TIMEOUT, async {
                    self.client.publish(subject.clone(), payload).await.ok()?;
                    self.client.flush().await.ok()
                })
                .await;
                match sent {
                    Ok(Some(())) => {
                        info!(node = %info.id, "told the coordinators this node leaves")
                    }
                    _ => {
                        debug!(node = %info.id, "the leaving heartbeat was not sent; the node expires after dead_after")
                    }
                }
                return;
            }
            if !self.is_connected() {
                debug!(node = %info.id, "NATS unreachable; heartbeat skipped");
                continue;
            }
            if let Err(err) = self.client.publish(subject.clone(), payload).await {
                debug!(node = %info.id, error = %err, "heartbeat not published");
            }
        }
    }
}

/// What a room node tells the coordinators every heartbeat interval.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "HeartbeatWire", into = "HeartbeatWire")]
pub struct Heartbeat {
    /// The node's id.
    pub id: NodeId,
    /// The gRPC endpoint gateways should dial.
    pub grpc_url: String,
    /// The node asks to be given no slots (it is shutting down).
    pub draining: bool,
    /// The sending process's incarnation claim ([`new_claim`]); `None` from
    /// nodes older than claims, which count as one claim of their own.
    pub claim: Option<String>,
    /// The incarnation stops: its last heartbeat. From the claim holder it
    /// frees the node id at once.
    pub leaving: bool,
    /// The link secret's signature of [`Heartbeat::proof_message`]: the
    /// sender holds the secret gateways will send to its URL.
    pub proof: Option<String>,
}

/// Without the claim: whoever knows it can speak for the node.
impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat")
            .field("id", &self.id)
            .field("grpc_url", &self.grpc_url)
            .field("draining", &self.draining)
            .field("claim", &self.claim.as_ref().map(|_| "***"))
            .field("leaving", &self.leaving)
            .field("proof", &self.proof.is_some())
            .finish()
    }
}

/// [`Heartbeat`]'s JSON: `NodeId` has no serde of its own.
#[derive(Serialize, Deserialize)]
struct HeartbeatWire {
    id: String,
    grpc_url: String,
    #[serde(default)]
    draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    leaving: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proof: Option<String>,
}

impl From<HeartbeatWire> for Heartbeat {
    fn from(wire: HeartbeatWire) -> Self {
        Self {
            id: NodeId::new(wire.id),
            grpc_url: wire.grpc_url,
            draining: wire.draining,
            claim: wire.claim,
            leaving: wire.leaving,
            proof: wire.proof,
        }
    }
}

impl From<Heartbeat> for HeartbeatWire {
    fn from(heartbeat: Heartbeat) -> Self {
        Self {
            id: heartbeat.id.as_str().to_owned(),
            grpc_url: heartbeat.grpc_url,
            draining: heartbeat.draining,
            claim: heartbeat.claim,
            leaving: heartbeat.leaving,
            proof: heartbeat.proof,
        }
    }
}

impl Heartbeat {
    /// What a proof signs: every other field and the cluster's name, as a
    /// JSON array (unambiguous whatever the fields hold).
    pub fn proof_message(&self, cluster: &str) -> Vec<u8> {
        serde_json::to_vec(&(
            "partyline heartbeat v1",
            cluster,
            self.id.as_str(),
            &self.grpc_url,
            &self.claim,
            self.draining,
            self.leaving,
        ))
        .expect("a tuple of strings and bools serializes")
    }

    /// Whether `link` takes this heartbeat: always without a secret; with
    /// one, only with a proof under an accepted secret.
    pub fn proven(&self, cluster: &str, link: &LinkAuth) -> bool {
        match link {
            LinkAuth::Insecure => true,
            LinkAuth::Secret(secret) => self
                .proof
                .as_deref()
                .is_some_and(|proof| secret.verify(&self.proof_message(cluster), proof)),
        }
    }

    /// The node as a slot map lists it.
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id.clone(),
            grpc_url: self.grpc_url.clone(),
        }
    }
}

/// The drain key of `node` in the `{cluster}-map` bucket.
pub fn drain_key(node: &NodeId) -> String {
    format!("{DRAIN_KEY_PREFIX}{node}")
}

/// The slot map as stored in KV (`SlotMap` itself has no serde).
#[derive(Serialize, Deserialize)]
struct SlotMapWire {
    epoch: u64,
    nodes: Vec<NodeWire>,
    owners: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct NodeWire {
    id: String,
    grpc_url: String,
}

/// Encodes a slot map as the JSON stored under [`SLOT_MAP_KEY`].
pub fn encode_slot_map(map: &SlotMap) -> Bytes {
    let nodes = map.nodes();
    let owners = Slot::all()
        .map(|slot| {
            let owner = map.owner(slot);
            // By address, not id: the map does not promise unique ids and
            // the owner reference points into `nodes()` itself.
            nodes
                .iter()
                .position(|node| std::ptr::eq(node, owner))
                .expect("a slot owner is one of the map's nodes") as u16
        })
        .collect::<Vec<u16>>();
    debug_assert_eq!(owners.len(), usize::from(SLOTS));
    let wire = SlotMapWire {
        epoch: map.epoch(),
        nodes: nodes
            .iter()
            .map(|node| NodeWire {
                id: node.id.as_str().to_owned(),
                grpc_url: node.grpc_url.clone(),
            })
            .collect(),
        owners,
    };
    Bytes::from(serde_json::to_vec(&wire).expect("slot map serializes"))
}

/// Decodes and validates a stored slot map.
pub fn decode_slot_map(bytes: &[u8]) -> Result<SlotMap, SlotMapDecodeError> {
    let wire: SlotMapWire = serde_json::from_slice(bytes)?;
    let nodes = wire
        .nodes
        .into_iter()
        .map(|node| NodeInfo {
            id: NodeId::new(node.id),
            grpc_url: node.grpc_url,
        })
        .collect();
    Ok(SlotMap::new(wire.epoch, nodes, wire.owners)?)
}

/// Creates a bucket, or opens it when another process created it first
/// (possibly with a different configuration, which the server refuses to
/// "create" again).
async fn open_bucket(
    jetstream: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, ClusterError> {
    let bucket = config.bucket.clone();
    match jetstream.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(create_err) => match jetstream.get_key_value(bucket.as_str()).await {
            Ok(store) => Ok(store),
            Err(open_err) => {
                debug!(%bucket, error = %open_err, "opening the bucket failed too");
                Err(ClusterError::Bucket {
                    bucket,
                    source: create_err,
                })
            }
        },
    }
}

/// Opens an existing bucket without trying to create it.
async fn open_existing(
    jetstream: &jetstream::Context,
    bucket: String,
) -> Result<kv::Store, ClusterError> {
    match jetstream.get_key_value(bucket.as_str()).await {
        Ok(store) => Ok(store),
        Err(err) if is_missing_stream(&err) => Err(ClusterError::MissingBucket(bucket)),
        Err(source) => Err(ClusterError::Open { bucket, source }),
    }
}

/// Whether opening a bucket failed because its stream does not exist.
fn is_missing_stream(err: &async_nats::jetstream::context::KeyValueError) -> bool {
    use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|err| {
            matches!(err.kind(), GetStreamErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
        })
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

/// Immediately, then 100 ms doubling up to [`RECONNECT_DELAY_MAX`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(RECONNECT_DELAY_MAX)
}

/// Replaces the watched map when `map` is newer; returns whether it did.
fn offer_map(tx: &watch::Sender<Option<Arc<SlotMap>>>, map: SlotMap) -> bool {
    tx.send_if_modified(|current| match current {
        Some(current) if current.epoch() >= map.epoch() => false,
        _ => {
            *current = Some(Arc::new(map));
            true
        }
    })
}

/// The watcher task: follows the key, re-establishing the watch after
/// errors and after every NATS reconnect (the server may have lost the
/// watch's consumer), with backoff while it keeps failing.
async fn follow_slot_map(
    cluster: Cluster,
    tx: watch::Sender<Option<Arc<SlotMap>>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connects = cluster.connections();
    loop {
        connects.mark_unchanged();
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            result = follow_once(&cluster, &tx, &mut connects, &mut backoff) => result,
        };
        let delay = match result {
            Ok(()) => {
                debug!("slot map watch restarting");
                backoff
            }
            Err(ClusterError::MissingBucket(bucket)) => {
                // No coordinator has made the bucket yet: look again soon,
                // without backing off (it is one cheap stream info request).
                debug!(%bucket, "no slot map bucket yet; waiting for a coordinator");
                MISSING_BUCKET_RETRY
            }
            Err(err) => {
                debug!(error = %err, "slot map watch failed; retrying");
                backoff
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
        if delay == backoff {
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// One watch, until it ends, fails, or NATS reconnects.
async fn follow_once(
    cluster: &Cluster,
    tx: &watch::Sender<Option<Arc<SlotMap>>>,
    connects: &mut watch::Receiver<u64>,
    backoff: &mut Duration,
) -> Result<(), ClusterError> {
    let store = cluster.map_store().await?;
    // With history: the first entry is the current map, so a watch started
    // after an outage catches up on whatever it missed.
    let mut watch = store
        .watch_with_history(SLOT_MAP_KEY)
        .await
        .map_err(|source| ClusterError::Watch {
            key: SLOT_MAP_KEY.to_owned(),
            source,
        })?;
    *backoff = Duration::from_millis(100);
    let mut connects_open = true;
    loop {
        let entry = tokio::select! {
            entry = watch.next() => entry,
            changed = connects.changed(), if connects_open => {
                if changed.is_ok() {
                    return Ok(());
                }
                connects_open = false;
                continue;
            }
        };
        let Some(entry) = entry else { return Ok(()) };
        let entry = entry?;
        if entry.operation != kv::Operation::Put {
            // Nobody deletes the map; if someone does, keep routing by the last one.
            warn!(operation = ?entry.operation, "slot map key removed; keeping the last map");
            continue;
        }
        match decode_slot_map(&entry.value) {
            Ok(map) => {
                let epoch = map.epoch();
                if offer_map(tx, map) {
                    debug!(epoch, "new slot map");
                }
            }
            Err(err) => {
                warn!(error = %err, revision = entry.revision, "ignoring an invalid slot map")
            }
        }
    }
}

fn validate_key_part(node: &str) -> bool {
    // KV keys allow `[-/_=.a-zA-Z0-9]`, and no leading or trailing dot.
    !node.is_empty()
        && !node.ends_with('.')
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
}

/// Whether `node` can be used in a `drain.{node}` key.
pub(crate) fn is_valid_node_key(node: &NodeId) -> bool {
    validate_key_part(node.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::assign;
    use crate::placement::tests::nodes;

    #[test]
    fn slot_map_round_trips_through_json() {
        let map = assign(42, &nodes(&["a", "b", "c"])).unwrap();
        let bytes = encode_slot_map(&map);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["epoch"], 42);
        assert_eq!(json["nodes"][0]["id"], "a");
        assert_eq!(json["nodes"][0]["grpc_url"], "http://a:7001");
        assert_eq!(json["owners"].as_array().unwrap().len(), 4096);
        assert_eq!(decode_slot_map(&bytes).unwrap(), map);
    }

    #[test]
    fn invalid_stored_maps_are_rejected() {
        assert!(matches!(
            decode_slot_map(b"{\"epoch\":1}"),
            Err(SlotMapDecodeError::Json(_))
        ));
        let short = br#"{"epoch":1,"nodes":[{"id":"a","grpc_url":"u"}],"owners":[0,0]}"#;
        assert!(matches!(
            decode_slot_map(short),
            Err(SlotMapDecodeError::Invalid(SlotMapError::WrongLength(2)))
        ));
    }

    #[test]
    fn heartbeat_json_is_flat() {
        let heartbeat = Heartbeat {
            id: NodeId::new("n1"),
            grpc_url: "http://n1:7001".to_owned(),
            draining: true,
            claim: Some("c0ffee".to_owned()),
            leaving: false,
            proof: None,
        };
        let json = serde_json::to_string(&heartbeat).unwrap();
        assert_eq!(
            json,
            r#"{"id":"n1","grpc_url":"http://n1:7001","draining":true,"claim":"c0ffee"}"#
        );
        assert!(!format!("{heartbeat:?}").contains("c0ffee"));
        // Heartbeats of nodes older than claims parse as unclaimed.
        let back: Heartbeat =
            serde_json::from_str(r#"{"id":"n1","grpc_url":"http://n1:7001"}"#).unwrap();
        assert!(!back.draining);
        assert_eq!(back.claim, None);
    }

    #[test]
    fn claims_are_128_random_bits() {
        let (a, b) = (new_claim(), new_claim());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn users_get_their_own_inbox_and_credentials_are_decoded() {
        assert_eq!(inbox_prefix(Some("room-node")), "_INBOX_room-node");
        assert_eq!(inbox_prefix(Some("a.b")), "_INBOX");
        assert_eq!(inbox_prefix(Some("")), "_INBOX");
        assert_eq!(inbox_prefix(None), "_INBOX");
        assert_eq!(decode("p%40ss%3Aw%2Fd"), "p@ss:w/d");
        assert_eq!(decode("plain-100%"), "plain-100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("partyline").is_ok());
        assert!(validate_name("prod_eu-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a.b").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_key_part("room-node-1"));
        assert!(validate_key_part("pod.ns"));
        assert!(!validate_key_part("a b"));
        assert!(!validate_key_part("a."));
    }

    #[test]
    fn older_maps_never_replace_newer_ones() {
        let (tx, rx) = watch::channel(None);
        assert!(offer_map(&tx, assign(5, &nodes(&["a"])).unwrap()));
        assert!(!offer_map(&tx, assign(4, &nodes(&["b"])).unwrap()));
        assert!(!offer_map(&tx, assign(5, &nodes(&["b"])).unwrap()));
        assert_eq!(rx.borrow().as_ref().unwrap().nodes()[0].id.as_str(), "a");
        assert!(offer_map(&tx, assign(6, &nodes(&["b"])).unwrap()));
    }

    #[test]
    fn reconnect_delay_is_capped() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(100));
        assert_eq!(reconnect_delay(3), Duration::from_millis(200));
        assert_eq!(reconnect_delay(100), RECONNECT_DELAY_MAX);
    }
}
