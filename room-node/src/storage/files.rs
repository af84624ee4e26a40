//! Embedded persistence: an append-only file log and snapshots per room,
//! under `<data dir>/rooms/<sha256(room)[..32]>/`.
//!
//! ```text
//! log-<segment>.bin       records: u32 len | u32 crc32(payload) | payload (Yjs update v1)
//! snapshot-<covered>.bin  full state covering every log segment ≤ covered
//! snapshot-<covered>.meta its version metadata (JSON: taken at, size, label)
//! room                    the room's name, for people and tools
//! tombstone               set while the room is deleted but restorable
//! ```
//!
//! Deleted rooms are also indexed by expiry, as empty files
//! `<data dir>/tombstones/<purge at, Unix ms, 20 digits>-<room id>`
//! ([`super::tombstone`]).
//!
//! Durability contract (DESIGN.md): the actor appends an update with
//! [`RoomFiles::append`] before anyone sees it (a `write(2)` to the page
//! cache survives `kill -9`); the node's [`SyncQueue`] fsyncs appended
//! segments on a timer so they also survive power loss. Taking a snapshot first rotates the log to a new
//! segment, then writes the snapshot (temp file, fsync, rename, fsync dir),
//! then deletes only what the *previous* snapshot covered: a corrupt newest
//! snapshot is recovered from the one before plus the log. Older snapshots
//! go too, unless the room keeps versions (`history` mode: the newest
//! `history_versions`, none older than `history_max_age` but the newest
//! two; [`Retention`]). Loading takes the
//! newest snapshot whose checksum holds plus every later segment; a torn
//! record at the end of the newest segment (a crash mid-write) is cut off.
//!
//! Sync I/O: callers run the heavy calls ([`RoomFiles::open`],
//! [`SnapshotJob::write`], [`RoomFiles::delete`]) on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::codec::{self, Covered, SnapshotHeader};
pub use super::locks::{DataDirLock, RoomLock};
use super::sync_queue::LogFile;
pub use super::sync_queue::SyncQueue;
use super::tombstone::{Tombstone, MAX_MARKER_BYTES};
use super::versions::{valid_id, Version, VersionMeta};

const RECORD_HEADER: usize = 8;

/// The file that marks a room deleted ([`Tombstone`]).
const MARKER: &str = "tombstone";

/// Storage failures. A room that cannot persist stops accepting updates.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error, with what was being done.
    #[error("{action} {path}: {source}")]
    Io {
        /// What failed, as a verb phrase.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A record longer than the format allows.
    #[error("update of {0} bytes is too large for the log")]
    RecordTooLarge(usize),
    /// Another process holds the data dir's lock.
    #[error("data dir {} is in use by another partyline process", .0.display())]
    DataDirInUse(PathBuf),
    /// Another node kept the room's lock past the timeout.
    #[error("room {0} is still held by another node")]
    RoomBusy(String),
}

impl StoreError {
    /// The filesystem is out of space (or quota): writes may work again
    /// once space is freed, so the room holds its updates and retries.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if source.kind() == io::ErrorKind::StorageFull
                || source.kind() == io::ErrorKind::QuotaExceeded
                || raw_disk_full(source.raw_os_error()))
    }
}

/// ENOSPC / EDQUOT by number, for errors std did not classify. The numbers
/// differ between Unix systems and mean other things on Windows.
#[cfg(unix)]
fn raw_disk_full(code: Option<i32>) -> bool {
    matches!(code, Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(not(unix))]
fn raw_disk_full(_code: Option<i32>) -> bool {
    false
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What [`RoomFiles::open`] found on disk.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Snapshot payload then log records, to apply in order.
    pub updates: Vec<Vec<u8>>,
    /// Snapshots skipped because their checksum or header was bad.
    pub corrupt_snapshots: Vec<PathBuf>,
    /// Bytes cut from the end of the newest log segment (torn write).
    pub truncated_bytes: u64,
    /// Set when the room is deleted (and nothing else was read).
    pub tombstone: Option<Tombstone>,
}

/// Which snapshots a room keeps besides the newest and the previous
/// valid one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many (at most 2: none older than the previous).
    pub keep: usize,
    /// None older than this, but the newest two.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    /// The newest and the previous valid snapshot (`snapshot` mode).
    fn default() -> Self {
        Self {
            keep: 2,
            max_age: None,
        }
    }
}

/// One room's files. Owned by the room actor.
#[derive(Debug)]
pub struct RoomFiles {
    dir: PathBuf,
    room: String,
    segment: u64,
    log: Option<Arc<LogFile>>,
    sync_queue: SyncQueue,
    /// Boxed: every room's actor future holds this.
    retention: Option<Box<Retention>>,
}

impl RoomFiles {
    /// The directory of `room` under `data_dir`.
    pub fn room_dir(data_dir: &Path, room: &str) -> PathBuf {
        let digest = Sha256::digest(room.as_bytes());
        let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        data_dir.join("rooms").join(name)
    }

    /// Opens a room's files and reads its state. Creates nothing until the
    /// first append, so probing an unknown room leaves no trace.
    pub fn open(
        data_dir: &Path,
        room: &str,
        sync_queue: SyncQueue,
    ) -> Result<(Self, Loaded), StoreError> {
        let dir = Self::room_dir(data_dir, room);
        let mut loaded = Loaded::default();
        let files = Self {
            dir,
            room: room.to_owned(),
            segment: 0,
            log: None,
            sync_queue,
            retention: None,
        };
        // A deleted room reads nothing more: refusing its clients costs
        // one small read, whatever its size.
        loaded.tombstone = read_marker(&files.dir)?;
        if loaded.tombstone.is_some() {
            return Ok((files, loaded));
        }
        let dir = &files.dir;
        let (snapshots, segments) = list(dir)?;
        remove_stale_temp_files(dir);
        let mut covered = 0;
        for &(snapshot_covered, ref path) in snapshots.iter().rev() {
            match read_snapshot(path) {
                Ok((header, payload)) if header.covered == Covered::Segment(snapshot_covered) => {
                    covered = snapshot_covered;
                    loaded.updates.push(payload);
                    break;
                }
                _ => loaded.corrupt_snapshots.push(path.clone()),
            }
        }
        let newest = segments.last().map(|&(n, _)| n);
        for &(number, ref path) in segments.iter().filter(|(n, _)| *n > covered) {
            let valid_len = read_records(path, &mut loaded.updates)?;
            let file_len = fs::metadata(path).map_err(io_err("stat", path))?.len();
            if valid_len < file_len && Some(number) == newest {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open", path))?;
                file.set_len(valid_len).map_err(io_err("truncate", path))?;
                loaded.truncated_bytes = file_len - valid_len;
            }
        }
        let segment = newest.unwrap_or(0).max(covered + 1);
        Ok((Self { segment, ..files }, loaded))
    }

    /// Keeps snapshots as `retention` says (the default: two).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = (retention != Retention::default()).then(|| Box::new(retention));
        self
    }

    /// Appends updates to the current segment (one `write(2)` for the batch).
    pub fn append(&mut self, updates: &[bytes::Bytes]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(updates.iter().map(|u| u.len() + RECORD_HEADER).sum());
        for update in updates {
            let len = u32::try_from(update.len())
                .map_err(|_| StoreError::RecordTooLarge(update.len()))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(update).to_le_bytes());
            buf.extend_from_slice(update);
        }
        let log = match &self.log {
            Some(log) => log,
            None => {
                self.create_dir()?;
                // Built only when a segment opens: formatting it on every
                // append was a tenth of the room actor's time under load.
                let path = self.segment_path(self.segment);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err("open log", &path))?;
                let len = file.metadata().map_err(io_err("open log", &path))?.len();
                self.log.insert(Arc::new(LogFile {
                    file,
                    path,
                    len: AtomicU64::new(len),
                    queued: AtomicBool::new(false),
                }))
            }
        };
        if let Err(error) = (&log.file).write_all(&buf) {
            // Part of the batch may be on disk (a full disk takes what fits):
            // cut it off, so a retry appends after the last whole record.
            let whole = log.len.load(Ordering::Relaxed);
            log.file
                .set_len(whole)
                .map_err(io_err("cut a failed append from log", &log.path))?;
            return Err(io_err("append to log", &log.path)(error));
        }
        log.len.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.sync_queue.push(log);
        Ok(())
    }

    /// Starts a snapshot, labelled `label` when it is a version taken
    /// through the API: closes the current segment so later appends go to
    /// a new one, and returns the job that writes state covering it.
    pub fn begin_snapshot(
        &mut self,
        epoch: u64,
        state: Vec<u8>,
        label: Option<String>,
    ) -> SnapshotJob {
        let covered = self.segment;
        let log = self.log.take();
        self.segment += 1;
        let meta = VersionMeta::now(state.len(), label);
        SnapshotJob {
            dir: self.dir.clone(),
            covered,
            version: meta.version(snapshot_name(covered), covered.to_string()),
            retention: self.retention.as_deref().copied().unwrap_or_default(),
            header: SnapshotHeader {
                room: self.room.clone(),
                epoch,
                covered: Covered::Segment(covered),
            },
            state,
            closed_log: log,
        }
    }

    /// Deletes the room's log, snapshots and tombstone (blocking I/O),
    /// then `tombstone`'s index entry. The `lock` file of shared
    /// directories stays: another node may be waiting on it, and a new
    /// file would let two holders in.
    pub fn delete(&mut self, tombstone: Option<Tombstone>) -> Result<(), StoreError> {
        self.delete_files()?;
        if let Some(tombstone) = tombstone {
            remove_if_there(&index_entry(&self.dir, &tombstone))?;
        }
        Ok(())
    }

    /// What changing the room's tombstone needs, to take to the blocking
    /// pool.
    pub fn marker(&self) -> Marker {
        Marker {
            dir: self.dir.clone(),
            room: self.room.clone(),
        }
    }

    fn delete_files(&mut self) -> Result<(), StoreError> {
        self.log = None;
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("list room dir", &self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list room dir", &self.dir))?;
            // The marker goes last: a crash midway must not serve what
            // is left of a deleted room.
            if entry.file_name() == "lock" || entry.file_name() == MARKER {
                continue;
            }
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("delete room file", &path))?;
        }
        remove_if_there(&self.dir.join(MARKER))?;
        // Fails while a lock file stays; the directory is then kept.
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }

    /// Up to `limit` deleted rooms under `data_dir` whose retention ended
    /// by `now_ms`, oldest first (blocking). Index entries of rooms no
    /// longer deleted are dropped on the way.
    pub fn expired(data_dir: &Path, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let index = data_dir.join("tombstones");
        let entries = match fs::read_dir(&index) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list tombstones", &index)(e)),
        };
        let mut due = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list tombstones", &index))?;
            let name = entry.file_name();
            let Some((at, id)) = name.to_str().and_then(|n| n.split_once('-')) else {
                continue;
            };
            match at.parse::<u64>() {
                Ok(at) if at <= now_ms => due.push((at, id.to_owned(), entry.path())),
                _ => {}
            }
        }
        due.sort_unstable();
        let mut rooms = Vec::new();
        for (_, id, entry) in due {
            if rooms.len() == limit {
                break;
            }
            let dir = data_dir.join("rooms").join(&id);
            let name = fs::read_to_string(dir.join("room"));
            match (name, read_marker(&dir)?) {
                (Ok(name), Some(_)) => rooms.push(name),
                // Restored, purged, or a crash between two writes.
                _ => remove_if_there(&entry)?,
            }
        }
        Ok(rooms)
    }

    /// The snapshot versions of `room` under `data_dir`, newest first
    /// (blocking; reads only the small metadata files).
    pub fn versions(data_dir: &Path, room: &str) -> Result<Vec<Version>, StoreError> {
        let (snapshots, _) = list(&Self::room_dir(data_dir, room))?;
        Ok(snapshots
            .iter()
            .rev()
            .map(|(covered, path)| {
                let name = snapshot_name(*covered);
                match read_meta(path) {
                    Some(meta) => meta.version(name, covered.to_string()),
                    None => Version {
                        name,
                        covered: covered.to_string(),
                        at_unix_ms: modified_ms(path).unwrap_or_default(),
                        size: None,
                        label: None,
                    },
                }
            })
            .collect())
    }

    /// One version's state (a Yjs update v1), `None` when it is gone or
    /// fails its checks (blocking).
    pub fn fetch_version(
        data_dir: &Path,
        room: &str,
        name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if !valid_id(name) {
            return Ok(None);
        }
        let path = Self::room_dir(data_dir, room).join(name);
        let Some(covered) = name
            .strip_prefix("snapshot-")
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return Ok(None);
        };
        match read_snapshot(&path) {
            Ok((header, state))
                if header.covered == Covered::Segment(covered) && header.room == room =>
            {
                Ok(Some(state))
            }
            Ok(_) | Err(SnapshotFileError::Codec(_)) => Ok(None),
            Err(SnapshotFileError::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(SnapshotFileError::Io(error)) => Err(io_err("read snapshot", &path)(error)),
        }
    }

    /// Whether `room` has a log or a snapshot under `data_dir` (blocking).
    pub fn has_state(data_dir: &Path, room: &str) -> Result<bool, StoreError> {
        let dir = Self::room_dir(data_dir, room);
        let (snapshots, segments) = list(&dir)?;
        Ok(!snapshots.is_empty() || !segments.is_empty() || dir.join(MARKER).exists())
    }

    /// Names of rooms with stored state under `data_dir` that start with
    /// `prefix` and sort after `after`, in order, at most `limit` of them,
    /// and whether more follow (blocking; reads every room's name file).
    pub fn list_rooms(
        data_dir: &Path,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let rooms = data_dir.join("rooms");
        let entries = match fs::read_dir(&rooms) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
            Err(e) => return Err(io_err("list rooms", &rooms)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let dir = entry.map_err(io_err("list rooms", &rooms))?.path();
            // The name file is written with the room's first append.
            let Ok(name) = fs::read_to_string(dir.join("room")) else {
                continue;
            };
            if !name.starts_with(prefix) || name.as_str() <= after {
                continue;
            }
            // Deleted rooms are not listed (they are restorable by name).
            if dir.join(MARKER).exists() {
                continue;
            }
            let (snapshots, segments) = list(&dir)?;
            if !snapshots.is_empty() || !segments.is_empty() {
                names.push(name);
            }
        }
        names.sort_unstable();
        let more = names.len() > limit;
        names.truncate(limit);
        Ok((names, more))
    }

    fn create_dir(&self) -> Result<(), StoreError> {
        create_room_dir(&self.dir, &self.room)
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("log-{segment:020}.bin"))
    }
}

/// A room's directory, to mark it deleted or restore it on the blocking
/// pool; see [`RoomFiles::marker`].
#[derive(Debug)]
pub struct Marker {
    dir: PathBuf,
    room: String,
}

impl Marker {
    /// Marks the room deleted until `tombstone.purge_at_ms`, its data
    /// kept (blocking): the index entry first, then the marker, each
    /// durable.
    pub fn tombstone(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        create_room_dir(&self.dir, &self.room)?;
        let entry = index_entry(&self.dir, tombstone);
        let index = entry.parent().expect("an index entry has a directory");
        fs::create_dir_all(index).map_err(io_err("create tombstone index", index))?;
        File::create(&entry).map_err(io_err("index tombstone", &entry))?;
        sync_dir(index)?;
        write_durably(&self.dir, MARKER, tombstone.encode().as_bytes())
    }

    /// Takes the room's tombstone away (blocking): the room is served
    /// again, with everything it held.
    pub fn restore(&self, tombstone: &Tombstone) -> Result<(), StoreError> {
        remove_if_there(&self.dir.join(MARKER))?;
        sync_dir(&self.dir)?;
        remove_if_there(&index_entry(&self.dir, tombstone))
    }
}

/// Where `tombstone`'s index entry for the room in `dir` is.
fn index_entry(dir: &Path, tombstone: &Tombstone) -> PathBuf {
    let data_dir = dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let id = dir
        .file_name()
        .map(|id| id.to_string_lossy())
        .unwrap_or_default();
    (data_dir.join("tombstones")).join(format!("{:020}-{id}", tombstone.purge_at_ms))
}

/// A snapshot to write on the blocking pool; see [`RoomFiles::begin_snapshot`].
#[derive(Debug)]
pub struct SnapshotJob {
    dir: PathBuf,
    /// The last segment it covers.
    covered: u64,
    /// The version it stores.
    version: Version,
    /// Which older snapshots stay.
    retention: Retention,
    header: SnapshotHeader,
    state: Vec<u8>,
    closed_log: Option<Arc<LogFile>>,
}

impl SnapshotJob {
    /// The version it stores.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Writes the snapshot durably, then trims what the previous one covered.
    pub fn write(self) -> Result<(), StoreError> {
        if let Some(log) = &self.closed_log {
            log.file
                .sync_data()
                .map_err(io_err("sync log", &log.path))?;
        }
        fs::create_dir_all(&self.dir).map_err(io_err("create room dir", &self.dir))?;
        let covered = self.covered;
        let path = self.dir.join(snapshot_name(covered));
        let tmp = self.dir.join(format!("snapshot-{covered:020}.tmp"));
        // Before the snapshot: a crash in between leaves metadata of no
        // snapshot (never listed), not a snapshot without its label.
        let meta = VersionMeta {
            at: self.version.at_unix_ms,
            size: self.version.size.unwrap_or_default(),
            label: self.version.label.clone(),
        };
        let meta_path = meta_path(&path);
        fs::write(&meta_path, meta.to_json()).map_err(io_err("write snapshot meta", &meta_path))?;
        let bytes = codec::encode(&self.header, &self.state);
        {
            let mut file = File::create(&tmp).map_err(io_err("create snapshot", &tmp))?;
            file.write_all(&bytes)
                .map_err(io_err("write snapshot", &tmp))?;
            file.sync_all().map_err(io_err("sync snapshot", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io_err("rename snapshot", &path))?;
        sync_dir(&self.dir)?;
        self.trim(covered)
    }

    /// Deletes log segments covered by the previous valid snapshot and every
    /// snapshot older than that one.
    fn trim(&self, newest: u64) -> Result<(), StoreError> {
        let (snapshots, segments) = list(&self.dir)?;
        let previous = snapshots
            .iter()
            .rev()
            .filter(|(covered, _)| *covered < newest)
            .find(|(covered, path)| matches!(read_snapshot(path), Ok((h, _)) if h.covered == Covered::Segment(*covered)));
        let Some(&(previous_covered, _)) = previous else {
            return Ok(());
        };
        for (number, path) in segments.iter().filter(|(n, _)| *n <= previous_covered) {
            fs::remove_file(path).map_err(io_err("remove log segment", path))?;
            tracing::debug!(segment = number, "trimmed log segment");
        }
        // Newest first: what is kept counts from the previous one on.
        let mut kept = snapshots
            .iter()
            .filter(|(c, _)| *c >= previous_covered)
            .count();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (_, path) in snapshots
            .iter()
            .rev()
            .filter(|(c, _)| *c < previous_covered)
        {
            let too_old = self.retention.max_age.is_some_and(|age| {
                let at = read_meta(path).map(|m| m.at).or_else(|| modified_ms(path));
                at.is_some_and(|at| now.saturating_sub(at) > age.as_millis() as u64)
            });
            if kept < self.retention.keep && !too_old {
                kept += 1;
                continue;
            }
            fs::remove_file(path).map_err(io_err("remove snapshot", path))?;
            let meta = meta_path(path);
            if let Err(error) = fs::remove_file(&meta) {
                if error.kind() != io::ErrorKind::NotFound {
                    return Err(io_err("remove snapshot meta", &meta)(error));
                }
            }
        }
        Ok(())
    }
}

/// The file name of the snapshot covering segment `covered` (its version id).
fn snapshot_name(covered: u64) -> String {
    format!("snapshot-{covered:020}.bin")
}

/// The metadata file beside a snapshot file.
fn meta_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("meta")
}

/// A snapshot's metadata, `None` when its file is missing or not ours.
fn read_meta(snapshot: &Path) -> Option<VersionMeta> {
    VersionMeta::from_json(&fs::read(meta_path(snapshot)).ok()?)
}

/// When a file was last written (Unix ms).
fn modified_ms(path: &Path) -> Option<u64> {
    let modified = fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Makes a rename in `dir` durable (fsync of the directory).
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync dir", dir))
}

/// Windows cannot open a directory as a file (nor fsync one): NTFS journals
/// the rename itself. `partyline dev` on a Windows laptop must still
/// snapshot.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

type Numbered = Vec<(u64, PathBuf)>;

/// Snapshots and log segments in a room dir, each sorted by number.
fn list(dir: &Path) -> Result<(Numbered, Numbered), StoreError> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((snapshots, segments)),
        Err(e) => return Err(io_err("list room dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list room dir", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let number = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(".bin"))
                .and_then(|n| n.parse::<u64>().ok())
        };
        if let Some(n) = number("snapshot-") {
            snapshots.push((n, entry.path()));
        } else if let Some(n) = number("log-") {
            segments.push((n, entry.path()));
        }
    }
    snapshots.sort();
    segments.sort();
    Ok((snapshots, segments))
}

/// Creates a room's directory with its name file.
fn create_room_dir(dir: &Path, room: &str) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_err("create room dir", dir))?;
    let name_path = dir.join("room");
    if !name_path.exists() {
        fs::write(&name_path, room.as_bytes()).map_err(io_err("write room name", &name_path))?;
    }
    Ok(())
}

/// The room's tombstone, if it is deleted.
fn read_marker(dir: &Path) -> Result<Option<Tombstone>, StoreError> {
    let path = dir.join(MARKER);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(file) => file
            .take(MAX_MARKER_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io_err("read tombstone", &path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read tombstone", &path)(e)),
    };
    Ok(Some(Tombstone::decode(&bytes)))
}

/// Writes `dir/name` so that a crash leaves the old file or the new one
/// whole: a temp file, fsynced, renamed into place, the directory fsynced.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
    }
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

/// Removes a file; one already gone is fine.
fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Deletes `*.tmp` files a crash mid-snapshot left behind; they were never
/// renamed into place, so nothing refers to them. Best effort.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            if let Err(error) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), %error, "cannot remove a stale snapshot temp file");
            }
        }
    }
}

/// Reads valid records into `out`; returns the length of the valid prefix.
fn read_records(path: &Path, out: &mut Vec<Vec<u8>>) -> Result<u64, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err("read log", path))?;
    let mut offset = 0;
    while bytes.len() - offset >= RECORD_HEADER {
        let len =
            u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap_or_default());
        let start = offset + RECORD_HEADER;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            tracing::warn!(path = %path.display(), offset, "log record checksum mismatch; ignoring the rest of the segment");
            break;
        }
        out.push(payload.to_vec());
        offset = start + len;
    }
    Ok(offset as u64)
}

/// A snapshot file's header and state, if it passes every check.
fn read_snapshot(path: &Path) -> Result<(SnapshotHeader, Vec<u8>), SnapshotFileError> {
    let bytes = fs::read(path)?;
    Ok(codec::decode(&bytes)?)
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
enum SnapshotFileError {
    #[error("read: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn updates(n: u8) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(vec![i; 3])).collect()
    }

    #[test]
    fn appended_segments_are_queued_once_until_synced() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SyncQueue::default();
        let (mut a, _) = RoomFiles::open(dir.path(), "a", queue.clone()).unwrap();
        let (mut b, _) = RoomFiles::open(dir.path(), "b", queue.clone()).unwrap();
        a.append(&updates(2)).unwrap();
        a.append(&updates(1)).unwrap();
        b.append(&updates(1)).unwrap();
        assert_eq!(queue.sync_all(), 2, "one entry per segment, not per append");
        assert_eq!(queue.sync_all(), 0);
        a.append(&updates(1)).unwrap();
        assert_eq!(queue.sync_all(), 1, "an append after the sync queues again");
    }

    #[test]
    fn log_survives_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, loaded) = RoomFiles::open(dir.path(), "a/b", SyncQueue::default()).unwrap();
        assert!(loaded.updates.is_empty());
        assert!(
            !RoomFiles::room_dir(dir.path(), "a/b").exists(),
            "nothing created on open"
        );
        files.append(&updates(3)).unwrap();
        drop(files);
        let segment = RoomFiles::room_dir(dir.path(), "a/b").join(format!("log-{:020}.bin", 1));
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let (_, loaded) = RoomFiles::open(dir.path(), "a/b", SyncQueue::default()).unwrap();
        assert_eq!(loaded.updates, vec![vec![0; 3], vec![1; 3], vec![2; 3]]);
        assert_eq!(loaded.truncated_bytes, 6);
    }

    #[test]
    fn snapshot_then_tail_and_previous_snapshot_rescues_a_corrupt_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = RoomFiles::open(dir.path(), "r", SyncQueue::default()).unwrap();
        files.append(&updates(1)).unwrap();
        files
            .begin_snapshot(0, b"S1".to_vec(), None)
            .write()
            .unwrap();
        files.append(&[Bytes::from_static(b"u2")]).unwrap();
        files
            .begin_snapshot(0, b"S2".to_vec(), None)
            .write()
            .unwrap();
        files.append(&[Bytes::from_static(b"u3")]).unwrap();
        // A crash mid-snapshot leaves a temp file; loading ignores and removes it.
        let room_dir = RoomFiles::room_dir(dir.path(), "r");
        let stale = room_dir.join(format!("snapshot-{:020}.tmp", 9));
        fs::write(&stale, b"half a snapshot").unwrap();
        let (_, loaded) = RoomFiles::open(dir.path(), "r", SyncQueue::default()).unwrap();
        assert_eq!(loaded.updates, vec![b"S2".to_vec(), b"u3".to_vec()]);
        assert!(!stale.exists());

        // Corrupt the newest snapshot: S1 plus the kept log must restore it.
        let newest = room_dir.join(format!("snapshot-{:020}.bin", 2));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        let (_, loaded) = RoomFiles::open(dir.path(), "r", SyncQueue::default()).unwrap();
        assert_eq!(loaded.corrupt_snapshots, vec![newest]);
        assert_eq!(
            loaded.updates,
            vec![b"S1".to_vec(), b"u2".to_vec(), b"u3".to_vec()]
        );
    }

    #[test]
    fn trimming_keeps_only_what_the_previous_snapshot_does_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (mut files, _) = RoomFiles::open(dir.path(), "r", SyncQueue::default()).unwrap();
        for i in 0..4u8 {
            edit_and_snapshot(&mut files, i, None);
        }
        let (snapshots, segments) = list(&RoomFiles::room_dir(dir.path(), "r")).unwrap();
        let numbers = |v: &Numbered| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        assert_eq!(numbers(&snapshots), vec![3, 4]);
        assert_eq!(numbers(&segments), vec![4]);
        let (_, loaded) = RoomFiles::open(dir.path(), "r", SyncQueue::default()).unwrap();
        assert_eq!(loaded.updates, vec![vec![b'S', 3]]);
    }

    /// Logs update `[i]`, then writes snapshot `S i` labelled `label`.
    fn edit_and_snapshot(files: &mut RoomFiles, i: u8, label: Option<String>) {
        files.append(&[Bytes::from(vec![i])]).unwrap();
        let snapshot = files.begin_snapshot(0, vec![b'S', i], label);
        snapshot.write().unwrap();
    }

    /// Room `r` under `dir`, keeping versions as a `history` room.
    fn history_room(dir: &Path, keep: usize, max_age: Option<Duration>) -> RoomFiles {
        let (files, _) = RoomFiles::open(dir, "r", SyncQueue::default()).unwrap();
        files.with_retention(Retention { keep, max_age })
    }

    #[test]
    fn history_keeps_versions_listed_with_labels_and_fetchable() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = history_room(dir.path(), 3, None);
        for i in 0..5u8 {
            let label = (i == 4).then(|| "last".to_owned());
            edit_and_snapshot(&mut files, i, label);
        }
        let versions = RoomFiles::versions(dir.path(), "r").unwrap();
        let names: Vec<&str> = versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "snapshot-00000000000000000005.bin",
                "snapshot-00000000000000000004.bin",
                "snapshot-00000000000000000003.bin"
            ]
        );
        assert_eq!(versions[0].label.as_deref(), Some("last"));
        assert_eq!(versions[1].label, None);
        assert_eq!(versions[0].size, Some(2));
        assert!(versions[0].at_unix_ms > versions[2].at_unix_ms);
        let fetch = |name: &str| RoomFiles::fetch_version(dir.path(), "r", name).unwrap();
        assert_eq!(fetch(&versions[2].name), Some(vec![b'S', 2]));
        assert_eq!(fetch("snapshot-00000000000000000001.bin"), None, "trimmed");
        assert_eq!(fetch("snapshot-../../x.bin"), None);
        assert_eq!(
            RoomFiles::fetch_version(dir.path(), "other", &versions[0].name).unwrap(),
            None
        );
        // The trimmed versions' metadata went with them.
        let metas = fs::read_dir(RoomFiles::room_dir(dir.path(), "r"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("meta".as_ref()))
            .count();
        assert_eq!(metas, 3);
        // Only the segments the previous snapshot covered went.
        let (_, segments) = list(&RoomFiles::room_dir(dir.path(), "r")).unwrap();
        assert_eq!(
            segments.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![5]
        );
    }

    #[test]
    fn history_drops_versions_past_their_age_but_the_newest_two() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = history_room(dir.path(), 10, Some(Duration::from_millis(1)));
        for i in 0..4u8 {
            edit_and_snapshot(&mut files, i, None);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(RoomFiles::versions(dir.path(), "r").unwrap().len(), 2);
    }
}
