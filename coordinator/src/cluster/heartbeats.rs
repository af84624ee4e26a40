//! Room nodes' heartbeats: the [`Heartbeat`] message, its JSON and proof,
//! the incarnation claim, and the publishing loop a room node runs.
//!
//! Owns what a heartbeat says and how it is sent. It must not judge one:
//! which heartbeats count is [`crate::membership`]'s and the leader's.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use partyline_proto::link::LinkAuth;
use partyline_proto::{NodeId, NodeInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Cluster;

/// How long a stopping node tries to get its leaving heartbeat out.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
