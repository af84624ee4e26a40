//! A deleted room's marker. `DELETE /v1/rooms/{room}` keeps the room's log
//! and snapshots and stores a [`Tombstone`] beside them (a `tombstone`
//! file in the room's directory; a `:tombstone` key in Redis), plus an
//! entry in a node-wide index sorted by when it expires (`tombstones/`
//! under the data dir; a `tombstones` sorted set in Redis), so the owner
//! finds expired ones without walking every room. A load that finds the
//! marker reads nothing else: a deleted room refuses its clients (4404)
//! and costs one small read per attempt, whatever its size.
//!
//! Order of writes, so that a crash between two leaves nothing a sweep
//! cannot mend: the index entry is written before the marker and removed
//! after it. An index entry without a marker (the room restored, or the
//! crash came first) is dropped by the sweep; a marker is always indexed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest marker read back (ours are under 100 bytes).
pub(super) const MAX_MARKER_BYTES: u64 = 1024;

/// When a room was deleted and when its owner purges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// When it was deleted (Unix ms).
    pub deleted_at_ms: u64,
    /// When its data is purged (Unix ms); `u64::MAX` for a marker that
    /// could not be read (kept until restored or purged by hand).
    pub purge_at_ms: u64,
}

impl Tombstone {
    /// A room deleted now, purged after `retention`.
    pub fn now(retention: Duration) -> Self {
        let now = crate::unix_ms(std::time::SystemTime::now());
        Self {
            deleted_at_ms: now,
            purge_at_ms: now
                .saturating_add(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Whether its retention ended by `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.purge_at_ms <= now_ms
    }

    /// The marker's bytes (JSON).
    pub(super) fn encode(&self) -> String {
        serde_json::to_string(self).expect("two integers serialize")
    }

    /// A marker read back. One that does not parse still marks the room
    /// deleted (its data must not be served), but never expires: purging
    /// on a guess could lose a room somebody means to restore.
    pub(super) fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_else(|error| {
            tracing::warn!(%error, "unreadable tombstone marker: the room stays deleted until restored or purged");
            Self {
                deleted_at_ms: 0,
                purge_at_ms: u64::MAX,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_a_bad_one_never_expires() {
        let tombstone = Tombstone::now(Duration::from_secs(60));
        assert_eq!(tombstone.purge_at_ms - tombstone.deleted_at_ms, 60_000);
        assert_eq!(Tombstone::decode(tombstone.encode().as_bytes()), tombstone);
        assert!(!tombstone.expired(tombstone.deleted_at_ms));
        assert!(tombstone.expired(tombstone.purge_at_ms));
        let bad = Tombstone::decode(b"{\"deleted_at_ms\":");
        assert!(!bad.expired(u64::MAX - 1));
    }
}
