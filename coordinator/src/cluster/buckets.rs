//! The `{cluster}-map` and `{cluster}-leader` buckets: creating or opening
//! them, and the keys read and written there outside the election and the
//! slot map's compare-and-set (the claim digests, the drain keys' names).
//!
//! Owns how a bucket is opened (only a coordinator creates one) and the
//! KV key syntax. It must not decide what is written: callers do.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use partyline_proto::{NodeId, SlotMap};
use tracing::{debug, warn};

use super::{decode_slot_map, Cluster, ClusterError, DRAIN_KEY_PREFIX, MEMBERS_KEY, SLOT_MAP_KEY};

impl Cluster {
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
}

/// The drain key of `node` in the `{cluster}-map` bucket.
pub fn drain_key(node: &NodeId) -> String {
    format!("{DRAIN_KEY_PREFIX}{node}")
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

    #[test]
    fn node_keys_are_validated() {
        assert!(validate_key_part("room-node-1"));
        assert!(validate_key_part("pod.ns"));
        assert!(!validate_key_part("a b"));
        assert!(!validate_key_part("a."));
    }
}
