//! The room node's metrics and frame spans, on the OpenTelemetry API (the
//! binary installs the SDK; without it every instrument is a no-op).
//!
//! Labels are low-cardinality only (a result, a refusal reason), never a
//! room. A client frame that arrives with a `traceparent` gets a span that
//! joins the gateway's trace.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::trace::{Span, SpanKind, Tracer};
use opentelemetry::{global, KeyValue};

/// Instrument scope (`otel_scope_name`) of the room node's metrics and spans.
pub const SCOPE: &str = "partyline-room-node";

/// Latency buckets (seconds) for appends, batches, loads and snapshots.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

/// The room node's instruments.
pub struct Metrics {
    /// Rooms in memory now.
    pub rooms_loaded: UpDownCounter<i64>,
    /// Room loads, by `result` (ok, failed).
    pub room_loads: Counter<u64>,
    /// Time to load a room (snapshot + log + decode).
    pub load_duration: Histogram<f64>,
    /// Client sessions open now.
    pub sessions: UpDownCounter<i64>,
    /// Time of one batch's log append (group commit).
    pub append_duration: Histogram<f64>,
    /// Appends the log refused (unreachable; the batch waits).
    pub append_failures: Counter<u64>,
    /// Time from a batch's first input to its frames leaving (log included).
    pub batch_duration: Histogram<f64>,
    /// Snapshots written, by `result` (ok, failed).
    pub snapshots: Counter<u64>,
    /// Size of snapshot states.
    pub snapshot_bytes: Histogram<u64>,
    /// Time to write a snapshot.
    pub snapshot_duration: Histogram<f64>,
    /// Corrupt or missing snapshots skipped by loads.
    pub corrupt_snapshots: Counter<u64>,
    /// Writes refused and sessions ended by rooms, by `reason`.
    pub refusals: Counter<u64>,
    /// Rooms handed to a new owner after their slot moved.
    pub releases: Counter<u64>,
    /// Lifecycle events, by `outcome` (delivered, failed after its
    /// retries, dropped on a full queue).
    pub events: Counter<u64>,
}

/// The instruments, created on first use from the global meter provider.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter(SCOPE);
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(latency_buckets())
                .build()
        };
        Metrics {
            rooms_loaded: meter
                .i64_up_down_counter("partyline.rooms.loaded")
                .with_description("Rooms in memory")
                .build(),
            room_loads: meter
                .u64_counter("partyline.room.loads")
                .with_description("Room loads, by result")
                .build(),
            load_duration: seconds("partyline.room.load.duration", "Time to load a room"),
            sessions: meter
                .i64_up_down_counter("partyline.room.sessions")
                .with_description("Client sessions open in rooms")
                .build(),
            append_duration: seconds(
                "partyline.log.append.duration",
                "Time of one batch's update-log append",
            ),
            append_failures: meter
                .u64_counter("partyline.log.append.failures")
                .with_description("Log appends that failed (the batch waits and retries)")
                .build(),
            batch_duration: seconds(
                "partyline.room.batch.duration",
                "Time from a batch's input to its frames leaving, log append included",
            ),
            snapshots: meter
                .u64_counter("partyline.snapshots")
                .with_description("Snapshots written, by result")
                .build(),
            snapshot_bytes: meter
                .u64_histogram("partyline.snapshot.size")
                .with_unit("By")
                .with_description("Size of snapshot states")
                .with_boundaries(vec![1e3, 1e4, 1e5, 1e6, 1e7, 1e8])
                .build(),
            snapshot_duration: seconds("partyline.snapshot.duration", "Time to write a snapshot"),
            corrupt_snapshots: meter
                .u64_counter("partyline.snapshots.corrupt")
                .with_description("Corrupt or missing snapshots skipped by loads")
                .build(),
            refusals: meter
                .u64_counter("partyline.room.refusals")
                .with_description("Writes refused and sessions ended by rooms, by reason")
                .build(),
            releases: meter
                .u64_counter("partyline.room.releases")
                .with_description("Rooms handed to a new owner after their slot moved")
                .build(),
            events: meter
                .u64_counter("partyline.events")
                .with_description("Lifecycle events, by outcome (delivered, failed, dropped)")
                .build(),
        }
    })
}

/// Counts one refusal.
pub fn refuse(reason: &'static str) {
    metrics()
        .refusals
        .add(1, &[KeyValue::new("reason", reason)]);
}

/// `result="ok"` or `result="failed"`.
pub fn result(ok: bool) -> [KeyValue; 1] {
    [KeyValue::new("result", if ok { "ok" } else { "failed" })]
}

/// The room's span for one client frame, joined to the gateway's trace by
/// `traceparent`; ends when dropped.
pub struct FrameSpan(global::BoxedSpan);

impl Drop for FrameSpan {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Starts the span of a frame that carries a `traceparent` (none when the
/// gateway does not trace).
pub fn frame_span(traceparent: &str, room: &str, session: u64) -> Option<FrameSpan> {
    if traceparent.is_empty() {
        return None;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let tracer = global::tracer(SCOPE);
    let span = tracer
        .span_builder("room.client_frame")
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("room", room.to_owned()),
            KeyValue::new("session", session as i64),
        ])
        .start_with_context(&tracer, &parent);
    Some(FrameSpan(span))
}

/// Reports the epoch of the slot map this node follows, as a gauge.
pub fn observe_epoch(slot_map: crate::SlotMapWatch) {
    // The provider keeps the callback; the handle is not needed.
    let _gauge = global::meter(SCOPE)
        .u64_observable_gauge("partyline.room_node.epoch")
        .with_description("Epoch of the slot map this room node follows")
        .with_callback(move |gauge| {
            let epoch = slot_map.borrow().as_ref().map_or(0, |map| map.epoch());
            gauge.observe(epoch, &[]);
        })
        .build();
}
