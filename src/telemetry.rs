//! Logs, traces and metrics of a serving role: the tracing subscriber
//! (stderr; spans also to OTLP with `--otlp-endpoint`), the OpenTelemetry
//! meter provider (a Prometheus registry behind `/metrics`; also OTLP with
//! `--otlp-endpoint`) and the W3C trace-context propagator that carries a
//! client frame's trace from the gateway to the room node.

use std::time::Duration;

use anyhow::Context;
use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Label sets kept per instrument (more fold into one overflow series).
const MAX_LABEL_SETS: usize = 64;

/// Default for [`TelemetrySettings::trace_sample_ratio`].
pub(crate) const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.05;

/// `[telemetry]`: metrics, health and traces of a serving role
/// (docs/operations.md).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TelemetrySettings {
    /// Where /metrics, /healthz and /readyz are served; `None`: not served.
    pub ops_listen: Option<std::net::SocketAddr>,
    /// OTLP/gRPC collector; `None` (or empty): no export.
    pub otlp_endpoint: Option<String>,
    /// Share of client frames that start a trace (0 to 1).
    pub trace_sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            ops_listen: None,
            otlp_endpoint: None,
            trace_sample_ratio: DEFAULT_TRACE_SAMPLE_RATIO,
        }
    }
}

impl TelemetrySettings {
    /// The file's `[telemetry]` under the flags; an empty endpoint (e.g.
    /// an unset variable in a compose file) is none.
    pub(crate) fn layered(
        self,
        flags: &crate::config::flags::TelemetryFlags,
    ) -> anyhow::Result<Self> {
        let mut settings = crate::config::layer(self, flags)?;
        settings.otlp_endpoint = settings
            .otlp_endpoint
            .filter(|endpoint| !endpoint.is_empty());
        Ok(settings)
    }

    /// Checks the OTLP endpoint (naming the flag) and the sample ratio.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let schemes = crate::config::HTTP_SCHEMES;
            crate::config::check_url("--otlp-endpoint", endpoint, schemes, true)?;
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.trace_sample_ratio),
            "telemetry.trace_sample_ratio must be between 0 and 1"
        );
        Ok(())
    }

    /// `--print-effective-config`'s `telemetry`, checked.
    pub(crate) fn effective(&self) -> anyhow::Result<serde_json::Value> {
        self.validate()?;
        Ok(serde_json::json!(self))
    }
}

/// How often metrics are pushed to the OTLP endpoint.
const OTLP_METRICS_INTERVAL: Duration = Duration::from_secs(10);

/// The installed telemetry of this process.
pub(crate) struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracers: Option<SdkTracerProvider>,
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("PARTYLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn fmt_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for people; log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

/// Logs to stderr only (commands that serve nothing: admin, bench).
pub(crate) fn init_logging() {
    tracing_subscriber::registry()
        .with(env_filter())
        .with(fmt_layer())
        .init();
}

impl Telemetry {
    /// Installs logs, metrics and (with an endpoint) OTLP export for
    /// `service` (`partyline-gateway`, …). Runs inside the tokio runtime:
    /// the OTLP exporters use it. `sample_ratio` of client frames start a
    /// trace.
    pub(crate) fn init(
        service: &'static str,
        otlp_endpoint: Option<&str>,
        sample_ratio: f64,
    ) -> anyhow::Result<Self> {
        let resource = Resource::builder().with_service_name(service).build();
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .context("build the Prometheus exporter")?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus)
            // Labels are a few reasons and kinds; the SDK's default room
            // for 2,000 label sets per instrument costs megabytes.
            .with_view(|_: &Instrument| {
                Stream::builder()
                    .with_cardinality_limit(MAX_LABEL_SETS)
                    .build()
                    .ok()
            });
        let mut tracers = None;
        if let Some(endpoint) = otlp_endpoint {
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("OTLP metrics exporter for {endpoint}"))?;
            let mut reader = PeriodicReader::builder(metrics);
            // The standard OTEL_METRIC_EXPORT_INTERVAL wins when set.
            if std::env::var_os("OTEL_METRIC_EXPORT_INTERVAL").is_none() {
                reader = reader.with_interval(OTLP_METRICS_INTERVAL);
            }
            meters = meters.with_reader(reader.build());
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .with_context(|| format!("OTLP span exporter for {endpoint}"))?;
            tracers = Some(
                SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                        sample_ratio,
                    ))))
                    .with_batch_exporter(spans)
                    .build(),
            );
        }
        let meters = meters.build();
        global::set_meter_provider(meters.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        let otel_layer = tracers.as_ref().map(|provider| {
            global::set_tracer_provider(provider.clone());
            tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
        });
        tracing_subscriber::registry()
            .with(env_filter())
            .with(fmt_layer())
            .with(otel_layer)
            .init();
        if let Some(endpoint) = otlp_endpoint {
            tracing::info!(%endpoint, sample_ratio, "exporting traces and metrics over OTLP");
        }
        Ok(Self {
            registry,
            meters,
            tracers,
        })
    }

    /// Whether traces are exported (client frames then carry spans).
    pub(crate) fn traces(&self) -> bool {
        self.tracers.is_some()
    }

    /// The registry `/metrics` renders.
    pub(crate) fn registry(&self) -> prometheus::Registry {
        self.registry.clone()
    }

    /// Flushes what is buffered (spans, the last metrics) before exit.
    pub(crate) fn shutdown(self) {
        if let Some(tracers) = self.tracers {
            if let Err(error) = tracers.shutdown() {
                eprintln!("flushing spans failed: {error}");
            }
        }
        if let Err(error) = self.meters.shutdown() {
            eprintln!("flushing metrics failed: {error}");
        }
    }
}

/// What a serving role gets from `main`: its metrics registry, whether
/// client frames are traced, and where to serve the ops endpoint.
pub(crate) struct Serving {
    /// The registry `/metrics` renders.
    pub registry: prometheus::Registry,
    /// Whether traces are exported.
    pub traces: bool,
    /// `--ops-listen`.
    pub ops_listen: Option<std::net::SocketAddr>,
}

impl Serving {
    /// Serves `/metrics`, `/healthz` and `/readyz` (with `ready`) until
    /// `shutdown`, when `--ops-listen` is set.
    pub(crate) async fn start_ops(
        &self,
        ready: crate::ops::Readiness,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(addr) = self.ops_listen {
            crate::ops::start(addr, self.registry.clone(), ready, shutdown).await?;
        }
        Ok(())
    }
}

/// Runs a serving role with telemetry installed from `settings`, then
/// flushes it.
pub(crate) async fn serve<F, Fut>(
    service: &'static str,
    settings: TelemetrySettings,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Serving) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    settings.validate()?;
    let telemetry = Telemetry::init(
        service,
        settings.otlp_endpoint.as_deref(),
        settings.trace_sample_ratio,
    )?;
    let serving = Serving {
        registry: telemetry.registry(),
        traces: telemetry.traces(),
        ops_listen: settings.ops_listen,
    };
    let result = run(serving).await;
    // Blocking flushes; the exporters need the runtime's other threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    result
}
