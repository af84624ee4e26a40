//! The file backend's fsync queue: log segments with appends not yet
//! fsynced, drained by one periodic task of the node for every room.
//! Never writes records itself (the room's [`super::files::RoomFiles`]
//! does).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// An open log segment, shared with the [`SyncQueue`] while it waits for
/// its fsync.
#[derive(Debug)]
pub(super) struct LogFile {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// Bytes of whole records in the file: a failed append is cut back to
    /// this, so a torn record never sits between two good ones.
    pub(super) len: AtomicU64,
    /// In the sync queue already; cleared just before its fsync, so an
    /// append after that point queues it again.
    pub(super) queued: AtomicBool,
}

/// The node's log segments with appends not yet fsynced. One periodic task
/// drains it for every room, instead of a timer and a blocking task per
/// room. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SyncQueue {
    pending: Arc<Mutex<Vec<Arc<LogFile>>>>,
}

impl SyncQueue {
    /// Queues `log` for the next sync, once.
    pub(super) fn push(&self, log: &Arc<LogFile>) {
        if !log.queued.swap(true, Ordering::AcqRel) {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(log.clone());
        }
    }

    /// fdatasyncs every queued segment (blocking I/O: run it on the
    /// blocking pool). Returns how many were synced; failures are logged,
    /// the data is still in the page cache and the next snapshot syncs again.
    pub fn sync_all(&self) -> usize {
        let logs =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        for log in &logs {
            log.queued.store(false, Ordering::Release);
            if let Err(error) = log.file.sync_data() {
                tracing::error!(path = %log.path.display(), %error, "fsync of a room log failed");
            }
        }
        logs.len()
    }
}
