//! The gateway's metrics and frame spans, on the OpenTelemetry API. The
//! binary installs the SDK (Prometheus `/metrics`, OTLP export); without it
//! every instrument is a no-op, as in tests that build a gateway in-process.
//!
//! Labels are low-cardinality only (a frame kind, a refusal reason): never a
//! room or a session. A client frame's span is ended at once and its
//! context travels to the room node inside the frame (`traceparent`), so
//! one client frame is one trace across processes.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};
use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use partyline_proto::ysync::{message_kind, SyncKind};

/// Instrument scope (`otel_scope_name`) of the gateway's metrics and spans.
pub(crate) const SCOPE: &str = "partyline-gateway";

/// The gateway's instruments.
pub(crate) struct Metrics {
    /// Client WebSockets open now.
    pub connections: UpDownCounter<i64>,
    /// Client frames received, by `kind`.
    pub frames_in: Counter<u64>,
    /// Frames written to clients, by `kind` (one per delivery).
    pub frames_out: Counter<u64>,
    /// Time to hand one room frame to every local session of the room.
    pub fanout: Histogram<f64>,
    /// Refused connections and closed sessions, by `reason`.
    pub refusals: Counter<u64>,
    /// Room streams (gateway → owner) open now.
    pub upstreams: UpDownCounter<i64>,
    /// Rooms re-opened on another node (moves and failures).
    pub reroutes: Counter<u64>,
    /// Room streams that failed (ended or broke without a planned move).
    pub stream_failures: Counter<u64>,
}

/// The instruments, created on first use from the global meter provider.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter(SCOPE);
        Metrics {
            connections: meter
                .i64_up_down_counter("partyline.gateway.connections")
                .with_description("Client WebSockets open")
                .build(),
            frames_in: meter
                .u64_counter("partyline.gateway.frames.in")
                .with_description("Client frames received, by y-sync kind")
                .build(),
            frames_out: meter
                .u64_counter("partyline.gateway.frames.out")
                .with_description("Frames written to clients, by y-sync kind")
                .build(),
            fanout: meter
                .f64_histogram("partyline.gateway.fanout.duration")
                .with_unit("s")
                .with_description("Time to write one room frame to every local client of the room")
                .with_boundaries(vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.1,
                ])
                .build(),
            refusals: meter
                .u64_counter("partyline.gateway.refusals")
                .with_description(
                    "Connections refused and sessions closed by the gateway, by reason",
                )
                .build(),
            upstreams: meter
                .i64_up_down_counter("partyline.gateway.upstreams")
                .with_description("Room streams open to room nodes")
                .build(),
            reroutes: meter
                .u64_counter("partyline.gateway.reroutes")
                .with_description("Rooms re-opened on a new owner (moves, failures)")
                .build(),
            stream_failures: meter
                .u64_counter("partyline.gateway.room_stream_failures")
                .with_description("Room streams that failed without a planned move")
                .build(),
        }
    })
}

/// Counts one refusal.
pub(crate) fn refuse(reason: &'static str) {
    metrics()
        .refusals
        .add(1, &[KeyValue::new("reason", reason)]);
}

/// The y-sync kind of a frame, as a label (every sync step is one label:
/// the steps are counted by the room node).
pub(crate) fn frame_kind(payload: &[u8], text: bool) -> &'static str {
    if text {
        return "text";
    }
    match message_kind(payload) {
        Some(
            SyncKind::SyncStep1 | SyncKind::SyncStep2 | SyncKind::Update | SyncKind::OtherSync,
        ) => "sync",
        Some(SyncKind::Awareness) => "awareness",
        Some(SyncKind::Auth) => "auth",
        Some(SyncKind::QueryAwareness) => "query_awareness",
        None => "other",
    }
}

/// Starts and ends the gateway's span for one client frame and returns its
/// W3C `traceparent`, for the room node's span to join.
pub(crate) fn frame_traceparent(
    room: &str,
    session: u64,
    kind: &'static str,
    bytes: usize,
) -> String {
    let tracer = global::tracer(SCOPE);
    let mut span = tracer
        .span_builder("gateway.client_frame")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("room", room.to_owned()),
            KeyValue::new("session", session as i64),
            KeyValue::new("kind", kind),
            KeyValue::new("bytes", bytes as i64),
        ])
        .start(&tracer);
    let traceparent = {
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut carrier = HashMap::new();
        global::get_text_map_propagator(|propagator| propagator.inject_context(&cx, &mut carrier));
        carrier.remove("traceparent").unwrap_or_default()
    };
    span.end();
    traceparent
}

/// Reports the epoch of the slot map this gateway routes with, as a gauge.
pub(crate) fn observe_epoch(slot_map: crate::SlotMapWatch) {
    // The provider keeps the callback; the handle is not needed.
    let _gauge = global::meter(SCOPE)
        .u64_observable_gauge("partyline.gateway.epoch")
        .with_description("Epoch of the slot map this gateway routes with")
        .with_callback(move |gauge| {
            let epoch = slot_map.borrow().as_ref().map_or(0, |map| map.epoch());
            gauge.observe(epoch, &[]);
        })
        .build();
}
