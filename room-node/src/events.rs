//! Lifecycle events to the app's backend (`--events-url`): sessions opened
//! and closed, rooms loaded, unloaded, deleted and restored, each POSTed as
//! `{"type", "timestamp", "data"}` and signed like every webhook (Standard
//! Webhooks, [`partyline_proto::webhook`]), as Liveblocks' and Hocuspocus'
//! webhooks tell an app who comes and goes.
//!
//! Delivery is in order per room: events are queued on one of a few
//! workers chosen by the room's name, and each worker sends its events one
//! after the other, retrying a failure (1 s, 2 s, 4 s … jittered, at most
//! 30 s apart) up to `events_retries` times before it gives up on that
//! event. Rooms on other workers go on meanwhile. The queues are bounded
//! (`events_queue` in all): an event that does not fit is dropped, counted
//! and logged, never waited for — a slow receiver must not slow a room.
//!
//! Owns the queue and the HTTP requests; what an event says is the room's
//! ([`crate::room`]) and the registry's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use partyline_proto::webhook::{self, WebhookSigner};
use tokio::sync::mpsc;

/// Workers, each delivering its rooms' events in order.
const WORKERS: usize = 4;
/// First pause before an event is sent again; doubles each time.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between tries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A full queue is logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// One event waiting to be sent.
struct Event {
    /// Its `webhook-id`, the same on every try.
    id: String,
    body: Vec<u8>,
    kind: &'static str,
}

/// Where and how events are sent.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// The receiver.
    pub url: String,
    /// Events queued at most, over all workers.
    pub queue: usize,
    /// Tries after the first failed one.
    pub retries: u32,
    /// How long one request may take.
    pub timeout: Duration,
}

/// The node's event queue. Cheap to share (`Arc`).
pub struct Events {
    settings: EventSettings,
    http: reqwest::Client,
    signer: Option<WebhookSigner>,
    queues: Vec<mpsc::Sender<Event>>,
    /// The workers' ends, taken when the first event starts them (a
    /// runtime is needed; building the queue needs none).
    receivers: Mutex<Vec<mpsc::Receiver<Event>>>,
    /// Whether the workers run (checked per event without the lock).
    started: std::sync::Once,
    /// Events emitted and not yet delivered, failed or dropped.
    pending: AtomicUsize,
    dropped: AtomicU64,
    /// When a dropped event was last logged (Unix ms).
    dropped_logged: AtomicU64,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Events({})", self.settings.url)
    }
}

impl Events {
    /// A queue for `settings`, signing with `signer`, sending with `http`.
    pub fn new(
        settings: EventSettings,
        http: reqwest::Client,
        signer: Option<WebhookSigner>,
    ) -> Arc<Self> {
        let per_worker = (settings.queue / WORKERS).max(1);
        let (queues, receivers) = (0..WORKERS).map(|_| mpsc::channel(per_worker)).unzip();
        Arc::new(Self {
            settings,
            http,
            signer,
            queues,
            receivers: Mutex::new(receivers),
            started: std::sync::Once::new(),
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            dropped_logged: AtomicU64::new(0),
        })
    }

    /// Queues event `kind` about `room` carrying `data` (room and time are
    /// added); never waits.
    pub fn emit(self: &Arc<Self>, kind: &'static str, room: &str, mut data: serde_json::Value) {
        self.start_workers();
        if let Some(fields) = data.as_object_mut() {
            fields.insert("room".to_owned(), room.into());
        }
        let body = serde_json::json!({
            "type": kind,
            "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "data": data,
        });
        let event = Event {
            id: webhook::new_message_id(),
            body: serde_json::to_vec(&body).expect("JSON serializes"),
            kind,
        };
        let worker = crc32fast::hash(room.as_bytes()) as usize % WORKERS;
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.queues[worker].try_send(event).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.note_dropped(kind);
        }
    }

    /// Waits until every queued event was delivered or given up, at most
    /// `within` (a node shutting down gives its last events a chance).
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Events dropped on a full queue so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn note_dropped(&self, kind: &'static str) {
        let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        count("dropped");
        let now = crate::unix_ms(SystemTime::now());
        let last = self.dropped_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64
            && self
                .dropped_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(kind, dropped_total = total, "event queue full; event dropped (raise --events-queue, or the receiver is too slow)");
        }
    }

    fn start_workers(self: &Arc<Self>) {
        self.started.call_once(|| self.spawn_workers());
    }

    fn spawn_workers(self: &Arc<Self>) {
        let receivers = std::mem::take(
            &mut *self
                .receivers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for mut receiver in receivers {
            // Weak: workers end once the node drops its queue.
            let events = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(event) = receiver.recv().await {
                    let Some(events) = events.upgrade() else {
                        return;
                    };
                    events.deliver(&event).await;
                    events.pending.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    }

    /// Sends one event, retrying failures.
    async fn deliver(&self, event: &Event) {
        let mut pauses = partyline_proto::retry::jittered(RETRY_FIRST, RETRY_MAX);
        let mut tries = 0;
        loop {
            match self.send_once(event).await {
                Ok(()) => {
                    count("delivered");
                    return;
                }
                Err(error) if tries >= self.settings.retries => {
                    count("failed");
                    tracing::error!(kind = event.kind, id = %event.id, %error, "event not delivered after its retries; given up");
                    return;
                }
                Err(error) => {
                    let pause = pauses.next().unwrap_or(RETRY_MAX);
                    tracing::warn!(kind = event.kind, id = %event.id, %error, retry_in = ?pause, "event not delivered; retrying");
                    tokio::time::sleep(pause).await;
                    tries += 1;
                }
            }
        }
    }

    async fn send_once(&self, event: &Event) -> Result<(), String> {
        let mut request = self
            .http
            .post(&self.settings.url)
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            request = request.headers(signer.sign_message(&event.id, &event.body).header_map());
        } else {
            request = request.header(webhook::ID_HEADER, &event.id);
        }
        let response = request
            .body(event.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}

fn count(outcome: &'static str) {
    crate::telemetry::metrics()
        .events
        .add(1, &[KeyValue::new("outcome", outcome)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(queue: usize) -> EventSettings {
        EventSettings {
            // Nothing listens there: every try fails at once.
            url: "http://127.0.0.1:9/events".to_owned(),
            queue,
            retries: 0,
            timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let events = Events::new(settings(WORKERS), reqwest::Client::new(), None);
        // One slot per worker; the workers take one event each and are
        // busy failing it: far more than fit are dropped at once.
        for n in 0..100 {
            events.emit("session.opened", "doc", serde_json::json!({ "n": n }));
        }
        assert!(events.dropped() >= 90, "{} dropped", events.dropped());
        events.flush(Duration::from_secs(5)).await;
        assert_eq!(events.pending.load(Ordering::SeqCst), 0);
    }
}
