//! A room's stored versions on remote storage: the snapshots its list
//! still holds (two, or many in `history` mode), for `partyline admin` and
//! the server API. Reads only; [`super::remote`] writes and trims them.

use redis::AsyncCommands;

use super::remote::{RemoteError, RemoteStorage};

/// One stored snapshot of a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    /// Its name, to fetch it.
    pub name: String,
    /// The last log id it covers.
    pub covered: String,
    /// When that log entry was written (Unix ms).
    pub at_unix_ms: u64,
}

impl RemoteStorage {
    /// The snapshot versions of `room`, newest first (history mode keeps
    /// many; other modes two).
    pub async fn versions(&self, room: &str) -> Result<Vec<Version>, RemoteError> {
        let mut redis = self.redis.clone();
        let entries: Vec<String> = redis.lrange(self.snaps_key(room), 0, -1).await?;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let (covered, name) = entry.split_once(' ')?;
                Some(Version {
                    name: name.to_owned(),
                    covered: covered.to_owned(),
                    at_unix_ms: covered.split('-').next()?.parse().ok()?,
                })
            })
            .collect())
    }

    /// One version's document state (a Yjs update v1), `None` when it is
    /// gone or corrupt.
    pub async fn fetch_version(
        &self,
        room: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        self.read_snapshot(room, name).await
    }
}
