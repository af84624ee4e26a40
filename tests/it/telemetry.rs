//! Telemetry end to end: `/metrics` counters move for a real session;
//! `/readyz` of a room node follows its Redis and of a coordinator its
//! NATS, going unready when the dependency goes and ready when it returns;
//! and with `--otlp-endpoint` spans from the gateway and the room node (two
//! processes) reach an OTLP receiver in the test sharing one trace id, and
//! metrics are pushed too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use partyline_bench::client::YClient;

use crate::common;
use crate::common::cluster::TestCluster;
use crate::common::redis_server::RedisServer;
use crate::common::DevServer;

const WAIT: Duration = Duration::from_secs(10);

/// The value of `name` in a Prometheus text exposition (summed over label
/// sets), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let bare = key.split('{').next()?;
            (bare == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_for_a_real_session() {
    let dir = tempfile::tempdir().unwrap();
    let ops_port = common::nats::free_port();
    let ops = format!("127.0.0.1:{ops_port}");
    let server = DevServer::start(dir.path(), &["--ops-listen", &ops]);
    let metrics_url = format!("http://{ops}/metrics");
    assert_eq!(get(&format!("http://{ops}/healthz")).await.0, 200);
    assert_eq!(get(&format!("http://{ops}/readyz")).await.0, 200);
    // The client port answers probes too.
    assert_eq!(get(&format!("http://{}/readyz", server.addr)).await.0, 200);

    let (_, before) = get(&metrics_url).await;
    let a = YClient::connect(&server.url("doc-metrics")).await.unwrap();
    let b = YClient::connect(&server.url("doc-metrics")).await.unwrap();
    a.wait_synced(WAIT).await.unwrap();
    b.wait_synced(WAIT).await.unwrap();
    for i in 0..10 {
        a.push_text("t", &format!("{i};")).await.unwrap();
    }
    b.wait_for_text("t", "0;1;2;3;4;5;6;7;8;9;", WAIT)
        .await
        .unwrap();
    let (_, during) = get(&metrics_url).await;
    for (name, at_least) in [
        ("partyline_gateway_frames_in_total", 10.0),
        ("partyline_gateway_frames_out_total", 20.0),
        ("partyline_log_append_duration_seconds_count", 1.0),
        ("partyline_gateway_fanout_duration_seconds_count", 10.0),
    ] {
        let grew = metric(&during, name) - metric(&before, name);
        assert!(grew >= at_least, "{name} grew by {grew}:\n{during}");
    }
    assert_eq!(metric(&during, "partyline_gateway_connections"), 2.0);
    assert_eq!(metric(&during, "partyline_room_sessions"), 2.0);
    assert_eq!(metric(&during, "partyline_rooms_loaded"), 1.0);
    assert_eq!(metric(&during, "partyline_gateway_upstreams"), 1.0);

    // A refusal is counted by reason.
    let refused = YClient::connect(&format!("ws://{}/", server.addr)).await;
    assert!(refused.is_err());
    b.close(WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, after) = get(&metrics_url).await;
        if metric(&after, "partyline_gateway_connections") == 1.0
            && metric(&after, "partyline_room_sessions") == 1.0
            && after.contains("reason=\"bad_room_name\"")
        {
            break;
        }
        assert!(Instant::now() < deadline, "gauges did not follow:\n{after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until process `name`'s `/readyz` answers `want`; returns the body.
async fn wait_status(cluster: &TestCluster, name: &str, want: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = cluster.ops_get(name, "/readyz").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{name} /readyz stayed {status} ({body}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_for_a_room_node_and_nats_for_a_coordinator() {
    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    let mut cluster = TestCluster::start_with(1, 1, 1, &["--redis", &redis_url]);
    wait_status(&cluster, "node-0", 200).await;
    wait_status(&cluster, "coordinator-0", 200).await;
    wait_status(&cluster, "gateway-0", 200).await;

    redis.stop();
    let why = wait_status(&cluster, "node-0", 503).await;
    assert!(why.contains("redis"), "{why}");
    redis.restart();
    wait_status(&cluster, "node-0", 200).await;

    cluster.nats.stop();
    let why = wait_status(&cluster, "coordinator-0", 503).await;
    assert!(why.contains("NATS"), "{why}");
    // The data plane does not wait on NATS: the gateway keeps its map.
    assert_eq!(cluster.ops_get("gateway-0", "/readyz").await.0, 200);
    cluster.nats.restart();
    wait_status(&cluster, "coordinator-0", 200).await;
    assert_eq!(cluster.ops_get("node-0", "/healthz").await.0, 200);
}

/// One received span: service, name, trace id.
type SpanSeen = (String, String, Vec<u8>);

/// A tiny OTLP/gRPC receiver: keeps the spans it got and counts metric
/// exports.
#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<SpanSeen>>>,
    metric_exports: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name, span.trace_id));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frame_is_one_trace_across_gateway_and_room_node() {
    let sink = Sink::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn({
        let sink = sink.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()))
                .add_service(MetricsServiceServer::new(sink))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        }
    });
    // Short export intervals (standard OTel variables, inherited by the
    // processes) so the test is quick. nextest runs each test in a process
    // of its own.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "500");
    let cluster = TestCluster::start_with_all(
        1,
        1,
        1,
        &[],
        &["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "1"],
    );
    let client = YClient::connect(&cluster.url(0, "doc-traced"))
        .await
        .unwrap();
    client.wait_synced(WAIT).await.unwrap();
    client.push_text("t", "traced;").await.unwrap();

    let deadline = Instant::now() + WAIT;
    let shared = loop {
        let spans = sink.spans.lock().unwrap().clone();
        let mut services: HashMap<Vec<u8>, HashSet<String>> = HashMap::new();
        for (service, name, trace) in &spans {
            if name == "gateway.client_frame" || name == "room.client_frame" {
                services
                    .entry(trace.clone())
                    .or_default()
                    .insert(service.clone());
            }
        }
        let joined = services
            .iter()
            .filter(|(_, s)| {
                s.iter().any(|x| x.contains("partyline-gateway"))
                    && s.iter().any(|x| x.contains("partyline-room-node"))
            })
            .count();
        if joined > 0 {
            break joined;
        }
        assert!(
            Instant::now() < deadline,
            "no trace with spans of both processes; got {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{shared} traces hold spans of both the gateway and the room node");
    let deadline = Instant::now() + WAIT;
    while sink.metric_exports.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no OTLP metrics export arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
