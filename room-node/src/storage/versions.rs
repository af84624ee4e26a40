//! A room's stored versions: the snapshots its storage still holds (the
//! newest two, or up to `history_versions` in `history` mode), for
//! `partyline admin` and the server API (list, fetch, restore). Each
//! snapshot carries a little metadata beside it ([`VersionMeta`]: when it
//! was taken, its size, an optional label), written with it: a sidecar
//! file on the embedded store, a field of the room's `:versions` hash in
//! Redis. Snapshots written before the metadata existed list with what
//! their name or file tells (the covered log entry's time, the file's
//! size).
//!
//! A version's id is its snapshot's name (`snapshot-….bin`): stable for
//! as long as the version is kept, unique per room, and URL-safe
//! ([`valid_id`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;

use super::remote::{RemoteError, RemoteStorage};

/// Longest label of a version, in bytes.
pub const MAX_LABEL_BYTES: usize = 200;
/// Longest version id, in bytes.
pub(super) const MAX_ID_BYTES: usize = 200;

/// One stored snapshot of a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    /// Its name: the id to fetch or restore it by.
    pub name: String,
    /// The last log entry (remote: stream id) or segment (files) it covers.
    pub covered: String,
    /// When it was taken (Unix ms).
    pub at_unix_ms: u64,
    /// Size of its state (one Yjs update v1) in bytes, when known.
    pub size: Option<u64>,
    /// The label it was taken with through the API, if any.
    pub label: Option<String>,
}

/// What is stored beside a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct VersionMeta {
    /// When it was taken (Unix ms).
    pub(super) at: u64,
    /// Size of its state in bytes.
    pub(super) size: u64,
    /// Its label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) label: Option<String>,
}

impl VersionMeta {
    /// Metadata of a snapshot of `size` bytes taken now.
    pub(super) fn now(size: usize, label: Option<String>) -> Self {
        Self {
            at: taken_now_ms(),
            size: size as u64,
            label,
        }
    }

    /// Its JSON (small, one line).
    pub(super) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parsed from JSON, `None` when it is not ours.
    pub(super) fn from_json(text: &[u8]) -> Option<Self> {
        serde_json::from_slice(text).ok()
    }

    /// The version it describes.
    pub(super) fn version(self, name: String, covered: String) -> Version {
        Version {
            name,
            covered,
            at_unix_ms: self.at,
            size: Some(self.size),
            label: self.label,
        }
    }
}

/// The time now in Unix ms, strictly later than every earlier answer in
/// this process: two snapshots of a room taken within one millisecond
/// still get different names.
pub(super) fn taken_now_ms() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(0);
    now.max(previous + 1)
}

/// Whether `id` can name a version: a snapshot name of this store's
/// alphabet (`snapshot-`, letters, digits, `-`, `_`, `.bin`), so it is safe
/// in a URL, a file name and an object path.
pub fn valid_id(id: &str) -> bool {
    id.len() <= MAX_ID_BYTES
        && id
            .strip_prefix("snapshot-")
            .and_then(|rest| rest.strip_suffix(".bin"))
            .is_some_and(|middle| {
                !middle.is_empty()
                    && middle
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
}

/// Whether `label` may label a version: at most [`MAX_LABEL_BYTES`], no
/// control characters.
pub fn valid_label(label: &str) -> bool {
    label.len() <= MAX_LABEL_BYTES && !label.chars().any(char::is_control)
}

impl RemoteStorage {
    /// The snapshot versions of `room`, newest first (history mode keeps
    /// many; other modes two).
    pub async fn versions(&self, room: &str) -> Result<Vec<Version>, RemoteError> {
        let mut redis = self.redis.clone();
        let entries: Vec<String> = redis.lrange(self.snaps_key(room), 0, -1).await?;
        let metas: std::collections::HashMap<String, Vec<u8>> =
            redis.hgetall(self.versions_key(room)).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let (covered, name) = entry.split_once(' ')?;
                let meta = metas.get(name).and_then(|m| VersionMeta::from_json(m));
                Some(match meta {
                    Some(meta) => meta.version(name.to_owned(), covered.to_owned()),
                    None => Version {
                        name: name.to_owned(),
                        covered: covered.to_owned(),
                        at_unix_ms: covered.split('-').next()?.parse().ok()?,
                        size: None,
                        label: None,
                    },
                })
            })
            .collect())
    }

    /// One version's document state (a Yjs update v1), `None` when it is
    /// gone, corrupt, or not one of the room's listed versions.
    pub async fn fetch_version(
        &self,
        room: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        if !valid_id(name) {
            return Ok(None);
        }
        self.read_snapshot(room, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_snapshot_names_of_a_safe_alphabet() {
        assert!(valid_id("snapshot-00000000000000000003.bin"));
        assert!(valid_id(
            "snapshot-1700000000000-3-node_1-5-1700000000123.bin"
        ));
        for bad in [
            "",
            "snapshot-.bin",
            "snapshot-../x.bin",
            "snapshot-a/b.bin",
            "snapshot-1.tmp",
            "log-0001.bin",
            "snapshot-1.bin.meta",
            "snapshot-%2e.bin",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        let long = format!("snapshot-{}.bin", "1".repeat(MAX_ID_BYTES));
        assert!(!valid_id(&long));
    }

    #[test]
    fn labels_are_bounded_and_printable() {
        assert!(valid_label(""));
        assert!(valid_label("Before the review ✓"));
        assert!(!valid_label(&"x".repeat(MAX_LABEL_BYTES + 1)));
        assert!(!valid_label("two\nlines"));
    }

    #[test]
    fn taken_times_never_repeat() {
        let a = taken_now_ms();
        let b = taken_now_ms();
        assert!(b > a);
    }

    #[test]
    fn metadata_reads_back_and_foreign_json_is_ignored() {
        let meta = VersionMeta {
            at: 5,
            size: 7,
            label: Some("l".into()),
        };
        assert_eq!(
            VersionMeta::from_json(meta.to_json().as_bytes()),
            Some(meta)
        );
        assert_eq!(VersionMeta::from_json(b"{\"x\":1}"), None);
    }
}
