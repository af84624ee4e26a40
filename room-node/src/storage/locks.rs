//! Locks of the file backend: one process per data directory, and one
//! node per room among nodes sharing a directory. Both are `flock`s the
//! kernel releases when the holder dies, so a killed node strands nothing.
//! Owns no room data.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::time::Duration;

use super::files::{io_err, RoomFiles, StoreError};

/// Exclusive use of a data dir by one process: two processes appending to
/// the same room logs would interleave records. Held until dropped (or the
/// process exits; the kernel releases the lock even after `kill -9`).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks `data_dir/LOCK`.
    pub fn acquire(data_dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(data_dir).map_err(io_err("create data dir", data_dir))?;
        let path = data_dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::DataDirInUse(data_dir.to_owned())),
            Err(fs::TryLockError::Error(source)) => Err(io_err("lock data dir", &path)(source)),
        }
    }
}

/// Exclusive use of one room's files among nodes sharing a store
/// directory, held while the room is loaded. `flock` locks are released by
/// the kernel when the holder dies, so a killed node never strands a room.
#[derive(Debug)]
pub struct RoomLock {
    _file: File,
}

impl RoomLock {
    /// Locks `room`'s `lock` file, waiting up to `timeout` for another node
    /// to let go (blocking: run it on the blocking pool).
    pub fn acquire(data_dir: &Path, room: &str, timeout: Duration) -> Result<Self, StoreError> {
        let dir = RoomFiles::room_dir(data_dir, room);
        fs::create_dir_all(&dir).map_err(io_err("create room dir", &dir))?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open room lock", &path))?;
        let deadline = std::time::Instant::now() + timeout;
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(2), Duration::from_millis(50));
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(backoff.next_pause());
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::RoomBusy(room.to_owned()))
                }
                Err(fs::TryLockError::Error(source)) => {
                    return Err(io_err("lock room", &path)(source))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_locked_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(StoreError::DataDirInUse(_))
        ));
        drop(lock);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_room_lock_waits_for_its_holder_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let short = Duration::from_millis(50);
        let held = RoomLock::acquire(dir.path(), "doc-1", short).unwrap();
        assert!(matches!(
            RoomLock::acquire(dir.path(), "doc-1", short),
            Err(StoreError::RoomBusy(room)) if room == "doc-1"
        ));
        RoomLock::acquire(dir.path(), "doc-2", short).expect("other rooms are free");
        let waiter = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || RoomLock::acquire(&dir, "doc-1", Duration::from_secs(5)))
        };
        std::thread::sleep(Duration::from_millis(30));
        drop(held);
        waiter
            .join()
            .unwrap()
            .expect("acquired once the holder let go");
    }
}
