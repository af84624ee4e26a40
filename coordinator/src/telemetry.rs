//! The coordinator's metrics on the OpenTelemetry API (the binary installs
//! the SDK; without it they are no-ops): whether this replica leads, the
//! epoch and size of the map it knows, slots moved by maps it wrote, and
//! heartbeats it refused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use opentelemetry::global;
use opentelemetry::metrics::{Counter, ObservableGauge};

/// Instrument scope (`otel_scope_name`) of the coordinator's metrics.
pub const SCOPE: &str = "partyline-coordinator";

static LEADING: AtomicBool = AtomicBool::new(false);
static EPOCH: AtomicU64 = AtomicU64::new(0);
static NODES: AtomicU64 = AtomicU64::new(0);

/// The coordinator's instruments.
pub struct Metrics {
    /// Slots that changed owner in maps this replica wrote.
    pub slot_moves: Counter<u64>,
    /// Heartbeats refused because another live incarnation holds the node
    /// id (`partyline_coordinator_heartbeats_refused_total`).
    pub heartbeats_refused: Counter<u64>,
    _leader: ObservableGauge<u64>,
    _epoch: ObservableGauge<u64>,
    _nodes: ObservableGauge<u64>,
}

/// The instruments, created on first use from the global meter provider.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter(SCOPE);
        Metrics {
            slot_moves: meter
                .u64_counter("partyline.coordinator.slot_moves")
                .with_description("Slots that changed owner in maps this replica wrote")
                .build(),
            heartbeats_refused: meter
                .u64_counter("partyline.coordinator.heartbeats_refused")
                .with_description(
                    "Heartbeats this replica refused: another live incarnation holds the node id, or the node's own claim named another endpoint",
                )
                .build(),
            _leader: meter
                .u64_observable_gauge("partyline.coordinator.leader")
                .with_description("1 while this replica holds the leader lease")
                .with_callback(|gauge| {
                    gauge.observe(u64::from(LEADING.load(Ordering::Relaxed)), &[])
                })
                .build(),
            _epoch: meter
                .u64_observable_gauge("partyline.coordinator.epoch")
                .with_description("Epoch of the slot map this replica knows")
                .with_callback(|gauge| gauge.observe(EPOCH.load(Ordering::Relaxed), &[]))
                .build(),
            _nodes: meter
                .u64_observable_gauge("partyline.coordinator.map_nodes")
                .with_description("Room nodes in the slot map this replica knows")
                .with_callback(|gauge| gauge.observe(NODES.load(Ordering::Relaxed), &[]))
                .build(),
        }
    })
}

/// This replica started or stopped leading.
pub fn set_leading(leading: bool) {
    metrics();
    LEADING.store(leading, Ordering::Relaxed);
}

/// The map this replica knows now.
pub fn set_map(epoch: u64, nodes: usize) {
    metrics();
    EPOCH.store(epoch, Ordering::Relaxed);
    NODES.store(nodes as u64, Ordering::Relaxed);
}

/// Whether this replica leads (for readiness and tests).
pub fn is_leading() -> bool {
    LEADING.load(Ordering::Relaxed)
}
