//! The leader's answers to the admin subjects (`nodes`, `rebalance`).
//!
//! Owns the replies' content; the loop has already dropped requests
//! without a reply subject. It must not act for a coordinator that does
//! not lead: a standby answers "not the leader".

use std::collections::HashMap;

use async_nats::Message;
use partyline_proto::NodeId;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, info};

use super::decide::Mode;
use super::{LeaderStreams, State, RETRY};
use crate::admin::{NodeStatus, NodesReport, Reply};

impl State {
    pub(super) async fn answer_nodes(&self, request: &Message) {
        let now = Instant::now().into_std();
        let reply = if self.leading {
            let counts: HashMap<&NodeId, usize> = match &self.current {
                Some((map, _)) => map
                    .nodes()
                    .iter()
                    .map(|n| &n.id)
                    .zip(map.slot_counts())
                    .collect(),
                None => HashMap::new(),
            };
            Reply::Done(NodesReport {
                leader: self.id.clone(),
                nodes: self
                    .membership
                    .members(now)
                    .into_iter()
                    .map(|member| NodeStatus {
                        slots: counts.get(&member.info.id).copied().unwrap_or(0),
                        draining: member.draining || self.drains.contains(&member.info.id),
                        last_seen_ms: u64::try_from(member.last_seen_age.as_millis())
                            .unwrap_or(u64::MAX),
                        id: member.info.id.to_string(),
                        grpc_url: member.info.grpc_url,
                    })
                    .collect(),
            })
        } else {
            Reply::Failed {
                error: "not the leader".to_owned(),
            }
        };
        self.respond(request, &reply).await;
    }

    pub(super) async fn answer_rebalance(
        &mut self,
        request: &Message,
        streams: &mut LeaderStreams,
    ) {
        let reply = if !self.leading {
            Reply::Failed {
                error: "not the leader".to_owned(),
            }
        } else {
            if self.needs_resync && self.cluster.is_connected() {
                if let Err(err) = self.resync(streams).await {
                    debug!(coordinator = %self.id, error = %err, "resync failed");
                }
            }
            if self.needs_resync || self.warm_until.is_some_and(|until| Instant::now() < until) {
                Reply::Failed {
                    error: "the leader is still gathering heartbeats; retry in a moment".to_owned(),
                }
            } else {
                match self.publish(Mode::Rebalance).await {
                    Ok(report) => {
                        info!(coordinator = %self.id, epoch = report.epoch, moved_slots = report.moved_slots, "rebalanced on request");
                        Reply::Done(report)
                    }
                    Err(error) => {
                        // The tick tries again (a conflict re-read the map,
                        // which may need a sticky correction of its own).
                        self.retry_at = Some(Instant::now() + RETRY);
                        Reply::Failed { error }
                    }
                }
            }
        };
        self.respond(request, &reply).await;
    }

    async fn respond<T: Serialize>(&self, request: &Message, reply: &T) {
        let Some(subject) = request.reply.clone() else {
            return;
        };
        let payload = serde_json::to_vec(reply).expect("admin replies serialize");
        if let Err(err) = self.cluster.client().publish(subject, payload.into()).await {
            debug!(error = %err, "admin reply not sent");
        }
    }
}
