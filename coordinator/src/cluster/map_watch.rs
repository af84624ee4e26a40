//! Following the slot map: [`Cluster::watch_slot_map`] and the task behind
//! it, which keeps a KV watch on `slotmap` alive through errors and NATS
//! reconnects.
//!
//! Owns the only state the cluster layer keeps across an outage, the last
//! map seen; the epoch it hands out never goes backwards. It must not
//! write to the bucket.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use partyline_proto::SlotMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::backoff::Backoff;
use super::{decode_slot_map, Cluster, ClusterError, JETSTREAM_TIMEOUT, SLOT_MAP_KEY};

/// How often a role waiting for a coordinator to create the map bucket
/// looks again.
const MISSING_BUCKET_RETRY: Duration = Duration::from_millis(250);

/// Ceiling of the first pause after the watch failed or ended; it doubles
/// while the watch keeps failing, up to [`WATCH_RETRY_MAX`].
const WATCH_RETRY_BASE: Duration = Duration::from_millis(100);

/// Highest ceiling of the pause between two failed watches.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

impl Cluster {
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
/// watch's consumer), with jittered backoff while it keeps failing.
async fn follow_slot_map(
    cluster: Cluster,
    tx: watch::Sender<Option<Arc<SlotMap>>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(WATCH_RETRY_BASE, WATCH_RETRY_MAX);
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
                backoff.next_pause()
            }
            Err(ClusterError::MissingBucket(bucket)) => {
                // No coordinator has made the bucket yet: look again soon,
                // without backing off (it is one cheap stream info request).
                debug!(%bucket, "no slot map bucket yet; waiting for a coordinator");
                MISSING_BUCKET_RETRY
            }
            Err(err) => {
                debug!(error = %err, "slot map watch failed; retrying");
                backoff.next_pause()
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One watch, until it ends, fails, or NATS reconnects.
async fn follow_once(
    cluster: &Cluster,
    tx: &watch::Sender<Option<Arc<SlotMap>>>,
    connects: &mut watch::Receiver<u64>,
    backoff: &mut Backoff,
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
    backoff.reset();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::assign;
    use crate::placement::tests::nodes;

    #[test]
    fn older_maps_never_replace_newer_ones() {
        let (tx, rx) = watch::channel(None);
        assert!(offer_map(&tx, assign(5, &nodes(&["a"])).unwrap()));
        assert!(!offer_map(&tx, assign(4, &nodes(&["b"])).unwrap()));
        assert!(!offer_map(&tx, assign(5, &nodes(&["b"])).unwrap()));
        assert_eq!(rx.borrow().as_ref().unwrap().nodes()[0].id.as_str(), "a");
        assert!(offer_map(&tx, assign(6, &nodes(&["b"])).unwrap()));
    }
}
