//! Gives memory back to the operating system after rooms unload.
//!
//! A room's document, log buffers and frames are freed when it unloads, but
//! glibc's allocator keeps freed pages in its arenas: a node that loads and
//! unloads thousands of rooms a day grew by tens of MiB per cycle of 400
//! rooms with nothing loaded (docs/bench.md). After unloads, once they stop
//! for [`crate::RoomNodeConfig::memory_trim_delay`], this asks glibc to
//! return its free pages (`malloc_trim`), on a blocking thread. Bursts of
//! unloads cost one trim; other allocators (musl, macOS) have nothing to
//! trim and skip it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tells the trimming task that a room went away. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Trimmer {
    unloaded: Arc<Notify>,
}

impl Trimmer {
    /// Starts the task: after unloads go quiet for `delay`, one trim.
    pub fn spawn(delay: Duration, tracker: &TaskTracker, cancel: CancellationToken) -> Self {
        Self::spawn_with(delay, tracker, cancel, trim)
    }

    fn spawn_with(
        delay: Duration,
        tracker: &TaskTracker,
        cancel: CancellationToken,
        trim: fn() -> bool,
    ) -> Self {
        let unloaded = Arc::new(Notify::new());
        tracker.spawn(run(unloaded.clone(), delay, cancel, trim));
        Self { unloaded }
    }

    /// A room unloaded (or failed, or moved away).
    pub fn room_unloaded(&self) {
        self.unloaded.notify_one();
    }
}

async fn run(
    unloaded: Arc<Notify>,
    delay: Duration,
    cancel: CancellationToken,
    trim: fn() -> bool,
) {
    loop {
        tokio::select! {
            _ = unloaded.notified() => {}
            _ = cancel.cancelled() => return,
        }
        // Wait for the burst to end: each unload restarts the delay.
        loop {
            tokio::select! {
                _ = unloaded.notified() => continue,
                _ = tokio::time::sleep(delay) => break,
                _ = cancel.cancelled() => return,
            }
        }
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(took = ?started.elapsed(), released, "returned free memory to the OS");
    }
}

/// `malloc_trim(0)`: returns every free page of every arena. `true` when
/// some memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    fn counted() -> bool {
        TRIMS.fetch_add(1, Ordering::SeqCst);
        true
    }

    #[tokio::test]
    async fn a_burst_of_unloads_costs_one_trim_once_it_goes_quiet() {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let delay = Duration::from_millis(200);
        let trimmer = Trimmer::spawn_with(delay, &tracker, cancel.clone(), counted);
        // Unloads every 20 ms for 400 ms: no trim while they go on.
        for _ in 0..20 {
            trimmer.room_unloaded();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0);
        tokio::time::sleep(delay * 3).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1);
        // Nothing unloads: nothing more.
        tokio::time::sleep(delay * 2).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
