//! The CPU floor of the gateway → room node gRPC hop in S1's shape.
//!
//! `partyline dev` must carry every client frame over real tonic gRPC on
//! loopback (one code path for dev and cluster), so each update pays one
//! `OpenRoom` round trip in-process: a `ClientMessage` up, a `Broadcast`
//! down. This bench measures only that: 100 streams on one connection, each
//! sending a 40-byte frame every 100 ms (1,000 round trips/s, S1's update
//! rate) to a server that answers each with a broadcast of the same bytes
//! and does nothing else. It runs the same pacing once without the hop, so
//! the figure printed is the hop's own cost: process CPU seconds (user +
//! system, from `/proc/self/stat`) per 1,000 round trips, and the same per
//! 1,000 S1 deliveries (each update reaches 10 clients).
//!
//! It runs only under `cargo bench` (which passes `--bench`), so
//! `cargo test --all-targets` does not spend 40 s on it.
//!
//!   cargo bench -p partyline-room-node --bench grpc_hop
//!   ROOMS=100 SECONDS=20 WORKERS=2 cargo bench -p partyline-room-node --bench grpc_hop

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use partyline_proto::pb::{
    self, gateway_frame, node_frame,
    room_node_client::RoomNodeClient,
    room_node_server::{RoomNode, RoomNodeServer},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Deliveries per update in S1 (10 clients per room).
const S1_CLIENTS: f64 = 10.0;
const PAYLOAD: [u8; 40] = [7; 40];
const SEND_EVERY: Duration = Duration::from_millis(100);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().skip(1).any(|arg| arg == "--bench") {
        return;
    }
    let rooms: u64 = env_or("ROOMS", 100);
    let seconds: u64 = env_or("SECONDS", 20);
    let workers: usize = env_or("WORKERS", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = connect(start_echo_node().await).await;
        let run = Duration::from_secs(seconds);
        let pacing = measure(rooms, run, None).await;
        let hop = measure(rooms, run, Some(&channel)).await;
        let hop_cpu = hop.cpu_seconds - pacing.cpu_seconds;
        let per_1k = hop_cpu / (hop.round_trips as f64 / 1000.0);
        println!(
            "grpc_hop: {rooms} streams, 1 frame/100 ms each, {seconds} s, {workers} worker threads"
        );
        println!(
            "  pacing alone:  {:>7} timer ticks,  cpu {:.3} s (kernel {:.3} s)",
            pacing.round_trips, pacing.cpu_seconds, pacing.system_seconds
        );
        println!(
            "  with the hop:  {:>7} round trips,  cpu {:.3} s (kernel {:.3} s)",
            hop.round_trips, hop.cpu_seconds, hop.system_seconds
        );
        println!(
            "  the hop alone: {:.4} cpu s per 1,000 round trips = {:.1} µs each; \
             {:.4} cpu s per 1,000 S1 deliveries",
            per_1k,
            per_1k * 1000.0,
            per_1k / S1_CLIENTS
        );
    });
}

/// What one run cost the whole process.
struct Cost {
    round_trips: u64,
    cpu_seconds: f64,
    system_seconds: f64,
}

/// Paces `rooms` streams at one frame per [`SEND_EVERY`] for `run`, over
/// `node` or (None) without sending anything.
async fn measure(rooms: u64, run: Duration, node: Option<&Channel>) -> Cost {
    let done = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for room in 0..rooms {
        let link = match node {
            Some(channel) => Some(open_stream(channel.clone(), room).await),
            None => None,
        };
        streams.push(link);
    }
    // Settle the connection and every stream before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = own_cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (room, link) in streams.into_iter().enumerate() {
        let done = done.clone();
        let offset = SEND_EVERY * room as u32 / rooms as u32;
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut ticks = tokio::time::interval_at(start, SEND_EVERY);
            let mut link = link;
            while started.elapsed() < run {
                ticks.tick().await;
                if let Some((tx, rx)) = link.as_mut() {
                    let frame = client_message(room as u64);
                    tx.send(frame).await.expect("stream open");
                    match rx.next().await {
                        Some(Ok(pb::NodeFrame {
                            kind: Some(node_frame::Kind::Broadcast(_)),
                        })) => {}
                        other => panic!("expected a broadcast, got {other:?}"),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("stream task");
    }
    let after = own_cpu();
    Cost {
        round_trips: done.load(Ordering::Relaxed),
        cpu_seconds: after.cpu_seconds - before.cpu_seconds,
        system_seconds: after.system_seconds - before.system_seconds,
    }
}

type Link = (mpsc::Sender<pb::GatewayFrame>, Streaming<pb::NodeFrame>);

/// One HTTP/2 connection to the node, as a gateway keeps per room node.
async fn connect(addr: SocketAddr) -> Channel {
    partyline_proto::rt::endpoint(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Opens one `OpenRoom` stream (attach, then wait for attached).
async fn open_stream(channel: Channel, room: u64) -> Link {
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::GatewayFrame {
        kind: Some(gateway_frame::Kind::Attach(pb::Attach {
            room: format!("room-{room}"),
            epoch: 1,
            gateway_id: "bench".into(),
        })),
    })
    .await
    .expect("queue attach");
    let mut inbound = RoomNodeClient::new(channel)
        .open_room(ReceiverStream::new(rx))
        .await
        .expect("open_room")
        .into_inner();
    match inbound.next().await {
        Some(Ok(pb::NodeFrame {
            kind: Some(node_frame::Kind::Attached(_)),
        })) => {}
        other => panic!("expected attached, got {other:?}"),
    }
    (tx, inbound)
}

fn client_message(session_id: u64) -> pb::GatewayFrame {
    pb::GatewayFrame {
        kind: Some(gateway_frame::Kind::ClientMessage(pb::ClientMessage {
            session_id,
            payload: PAYLOAD.to_vec().into(),
            kind: pb::FrameKind::Binary as i32,
            traceparent: String::new(),
            more: false,
        })),
    }
}

/// A room node that broadcasts each client message back and does nothing
/// else: no document, no log.
struct EchoNode;

#[tonic::async_trait]
impl RoomNode for EchoNode {
    type OpenRoomStream = ReceiverStream<Result<pb::NodeFrame, Status>>;

    async fn open_room(
        &self,
        request: Request<Streaming<pb::GatewayFrame>>,
    ) -> Result<Response<Self::OpenRoomStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = inbound.next().await {
                let reply = match frame.kind {
                    Some(gateway_frame::Kind::Attach(_)) => {
                        node_frame::Kind::Attached(pb::Attached {
                            epoch: 1,
                            node_id: "echo".into(),
                        })
                    }
                    Some(gateway_frame::Kind::ClientMessage(message)) => {
                        node_frame::Kind::Broadcast(pb::Broadcast {
                            payload: message.payload,
                            kind: message.kind,
                            has_except: false,
                            except_session: 0,
                            more: false,
                        })
                    }
                    _ => continue,
                };
                if tx
                    .send(Ok(pb::NodeFrame { kind: Some(reply) }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn room_info(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RoomInfoReply>, Status> {
        Err(not_benched())
    }

    async fn room_state(
        &self,
        _: Request<pb::RoomStateRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        Err(not_benched())
    }

    async fn apply_update(
        &self,
        _: Request<pb::ApplyUpdateRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        Err(not_benched())
    }

    async fn delete_room(
        &self,
        _: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomReply>, Status> {
        Err(not_benched())
    }

    async fn restore_room(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RestoreRoomReply>, Status> {
        Err(not_benched())
    }

    async fn warm_room(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::WarmRoomReply>, Status> {
        Err(not_benched())
    }

    async fn list_rooms(
        &self,
        _: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsReply>, Status> {
        Err(not_benched())
    }

    async fn list_sessions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListSessionsReply>, Status> {
        Err(not_benched())
    }

    async fn close_sessions(
        &self,
        _: Request<pb::CloseSessionsRequest>,
    ) -> Result<Response<pb::CloseSessionsReply>, Status> {
        Err(not_benched())
    }

    async fn recheck_sessions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RecheckSessionsReply>, Status> {
        Err(not_benched())
    }

    async fn send_message(
        &self,
        _: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageReply>, Status> {
        Err(not_benched())
    }

    async fn list_versions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListVersionsReply>, Status> {
        Err(not_benched())
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        Err(not_benched())
    }

    async fn take_version(
        &self,
        _: Request<pb::TakeVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        Err(not_benched())
    }

    async fn restore_version(
        &self,
        _: Request<pb::RestoreVersionRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        Err(not_benched())
    }
}

fn not_benched() -> Status {
    Status::unimplemented("only OpenRoom is part of this benchmark")
}

/// Serves [`EchoNode`] on a free loopback port with the room node's server.
async fn start_echo_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(partyline_room_node::grpc::serve(
        listener,
        Routes::new(RoomNodeServer::new(EchoNode)),
        CancellationToken::new(),
    ));
    addr
}

/// This process's CPU time so far.
struct CpuTime {
    /// User and system.
    cpu_seconds: f64,
    /// System alone.
    system_seconds: f64,
}

/// This process's CPU time so far (`getrusage`).
fn own_cpu() -> CpuTime {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is
    // given, and only reads its first argument.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTime {
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        system_seconds: seconds(usage.ru_stime),
    }
}
