//! Partyline coordinator: the cluster's control plane over NATS.
//!
//! Decides which room node owns each slot and publishes it as a versioned
//! slot map; every gateway and room node follows that map. Two or more
//! coordinators run; one leads at a time through a lease ([`election`]).
//! Every coordinator follows the room nodes' heartbeats ([`membership`]);
//! the leader turns them into new maps ([`leader`]) and answers operators
//! ([`admin`] is the client side). [`cluster`] is the NATS layout all roles
//! share, including the slot map watcher and the heartbeat publisher the
//! data plane uses. Placement itself is [`placement::assign`].
//!
//! It never talks to clients or touches documents, and the data plane never
//! waits on it: if NATS or every coordinator is down, the last map stays in
//! force.

pub mod admin;
pub mod cluster;
pub mod election;
pub mod leader;
pub mod membership;
pub mod placement;
pub mod telemetry;

use std::time::Duration;

use partyline_proto::link::LinkAuth;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use cluster::{Cluster, ClusterError, ClusterOptions, Heartbeat};
pub use placement::assign;

/// The next item of an optional stream (a subscription or KV watch that
/// may not exist right now); pending forever when absent, so a `select!`
/// branch on it simply never fires.
pub(crate) async fn next_of<S>(stream: &mut Option<S>) -> Option<S::Item>
where
    S: futures_util::Stream + Unpin,
{
    match stream {
        Some(stream) => futures_util::StreamExt::next(stream).await,
        None => std::future::pending().await,
    }
}

/// A coordinator's settings (`[coordinator]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's unique id; empty picks `{hostname}-{pid}-{random}`.
    pub id: String,
    /// How often room nodes send heartbeats (the coordinator's warm-up
    /// before its first change is 1.5 of these).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node silent this long is dead and loses its slots.
    #[serde(with = "humantime_serde")]
    pub dead_after: Duration,
    /// Leader lease: a dead leader is replaced within about this long.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Rebalance as soon as a node joins (it gets ~1/n of the slots at
    /// once); when false a join only takes effect on `admin rebalance`.
    pub rebalance_on_join: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            heartbeat_interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            lease: Duration::from_secs(3),
            rebalance_on_join: true,
        }
    }
}

/// Smallest lease: renewals every lease/3 must stay well above a round trip.
pub const MIN_LEASE: Duration = Duration::from_millis(300);

impl CoordinatorConfig {
    /// Checks that the timings make sense together.
    pub fn validate(&self) -> Result<(), CoordinatorError> {
        if self.heartbeat_interval.is_zero() {
            return Err(CoordinatorError::InvalidConfig(
                "heartbeat_interval must be positive".to_owned(),
            ));
        }
        if self.dead_after <= self.heartbeat_interval {
            return Err(CoordinatorError::InvalidConfig(format!(
                "dead_after ({:?}) must be longer than heartbeat_interval ({:?})",
                self.dead_after, self.heartbeat_interval
            )));
        }
        if self.lease < MIN_LEASE {
            return Err(CoordinatorError::InvalidConfig(format!(
                "lease ({:?}) must be at least {MIN_LEASE:?}",
                self.lease
            )));
        }
        Ok(())
    }

    /// The configured id, or a generated one when it is empty.
    pub fn effective_id(&self) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        use std::hash::BuildHasher;
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "coordinator".to_owned());
        let pid = std::process::id();
        // Two pods can both be pid 1; the per-process random hasher seed
        // tells them apart.
        let random = std::collections::hash_map::RandomState::new().hash_one(pid) & 0xffff_ffff;
        format!("{host}-{pid}-{random:08x}")
    }
}

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Settings that cannot work.
    #[error("invalid coordinator configuration: {0}")]
    InvalidConfig(String),
    /// The heartbeat subscription could not be made (the client is closed).
    #[error("cannot subscribe to heartbeats: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
}

/// Runs one coordinator until `shutdown`: campaigns for leadership, follows
/// heartbeats, and while leading publishes slot maps and serves admin requests.
/// With `link`'s secret, only heartbeats carrying its proof count (a room
/// node must hold the secret gateways will send it).
///
/// On shutdown a leader gives up its lease at once, so a standby takes over
/// without waiting for it to expire.
pub async fn run(
    cluster: Cluster,
    config: CoordinatorConfig,
    link: LinkAuth,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    config.validate()?;
    let id = config.effective_id();
    telemetry::metrics();
    tracing::info!(coordinator = %id, cluster = cluster.name(), "coordinator starting");
    let (leading_tx, leading_rx) = watch::channel(false);
    // The election outlives a failed leader loop only until this fires.
    let stop = shutdown.child_token();
    let election = election::campaign(
        cluster.clone(),
        id.clone(),
        config.lease,
        leading_tx,
        stop.clone(),
    );
    let leader = async {
        let result = leader::run(cluster, id.clone(), config, link, leading_rx, stop.clone()).await;
        stop.cancel();
        result
    };
    let ((), result) = tokio::join!(election, leader);
    tracing::info!(coordinator = %id, "coordinator stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_humantime_and_rejects_unknown_keys() {
        let config: CoordinatorConfig = serde_json::from_str(
            r#"{"id":"c1","heartbeat_interval":"200ms","dead_after":"1s","lease":"1s","rebalance_on_join":false}"#,
        )
        .unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(config.lease, Duration::from_secs(1));
        assert!(!config.rebalance_on_join);
        config.validate().unwrap();

        let defaults: CoordinatorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, CoordinatorConfig::default());
        assert!(serde_json::from_str::<CoordinatorConfig>(r#"{"leese":"1s"}"#).is_err());
    }

    #[test]
    fn bad_timings_are_refused() {
        let config = CoordinatorConfig {
            dead_after: Duration::from_secs(1),
            ..CoordinatorConfig::default()
        };
        assert!(config.validate().is_err());
        let config = CoordinatorConfig {
            lease: Duration::from_millis(10),
            ..CoordinatorConfig::default()
        };
        assert!(config.validate().is_err());
        CoordinatorConfig::default().validate().unwrap();
    }

    #[test]
    fn an_empty_id_is_generated_and_unique() {
        let config = CoordinatorConfig::default();
        let a = config.effective_id();
        let b = config.effective_id();
        assert!(!a.is_empty());
        assert_ne!(a, b);
        let named = CoordinatorConfig {
            id: "c1".to_owned(),
            ..config
        };
        assert_eq!(named.effective_id(), "c1");
    }
}
