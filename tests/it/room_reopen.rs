//! A room whose stream keeps failing is given up, not re-opened in a hot
//! loop: the gateway backs off between re-opens (100 ms, doubling) and,
//! after `room_reopen_attempts` quick failures in a row, closes the room's
//! clients with 1011 "room cannot be served: …".
//!
//! The room node here is a stand-in that attaches every stream and then
//! fails it, as a node does when a room cannot be loaded or served; it
//! counts the opens, so a loop would show.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use partyline_bench::client::YClient;
use partyline_proto::pb::room_node_server::{RoomNode, RoomNodeServer};
use partyline_proto::pb::{self, node_frame};
use partyline_proto::{NodeId, NodeInfo, SlotMap};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::common;

/// Attaches every room stream, then fails it.
#[derive(Clone, Default)]
struct FailingNode {
    opens: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl RoomNode for FailingNode {
    type OpenRoomStream = ReceiverStream<Result<pb::NodeFrame, Status>>;

    async fn open_room(
        &self,
        _: Request<Streaming<pb::GatewayFrame>>,
    ) -> Result<Response<Self::OpenRoomStream>, Status> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(4);
        let attached = node_frame::Kind::Attached(pb::Attached {
            epoch: 1,
            node_id: "n".into(),
        });
        tx.send(Ok(pb::NodeFrame {
            kind: Some(attached),
        }))
        .await
        .unwrap();
        tx.send(Err(Status::internal("room storage is broken")))
            .await
            .unwrap();
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn room_info(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RoomInfoReply>, Status> {
        Err(not_here())
    }

    async fn room_state(
        &self,
        _: Request<pb::RoomStateRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        Err(not_here())
    }

    async fn apply_update(
        &self,
        _: Request<pb::ApplyUpdateRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        Err(not_here())
    }

    async fn delete_room(
        &self,
        _: Request<pb::DeleteRoomRequest>,
    ) -> Result<Response<pb::DeleteRoomReply>, Status> {
        Err(not_here())
    }

    async fn restore_room(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RestoreRoomReply>, Status> {
        Err(not_here())
    }

    async fn warm_room(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::WarmRoomReply>, Status> {
        Err(not_here())
    }

    async fn list_rooms(
        &self,
        _: Request<pb::ListRoomsRequest>,
    ) -> Result<Response<pb::ListRoomsReply>, Status> {
        Err(not_here())
    }

    async fn list_sessions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListSessionsReply>, Status> {
        Err(not_here())
    }

    async fn close_sessions(
        &self,
        _: Request<pb::CloseSessionsRequest>,
    ) -> Result<Response<pb::CloseSessionsReply>, Status> {
        Err(not_here())
    }

    async fn recheck_sessions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::RecheckSessionsReply>, Status> {
        Err(not_here())
    }

    async fn send_message(
        &self,
        _: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageReply>, Status> {
        Err(not_here())
    }

    async fn list_versions(
        &self,
        _: Request<pb::RoomRequest>,
    ) -> Result<Response<pb::ListVersionsReply>, Status> {
        Err(not_here())
    }

    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::RoomStateReply>, Status> {
        Err(not_here())
    }

    async fn take_version(
        &self,
        _: Request<pb::TakeVersionRequest>,
    ) -> Result<Response<pb::VersionInfo>, Status> {
        Err(not_here())
    }

    async fn restore_version(
        &self,
        _: Request<pb::RestoreVersionRequest>,
    ) -> Result<Response<pb::ApplyUpdateReply>, Status> {
        Err(not_here())
    }
}

fn not_here() -> Status {
    Status::unimplemented("only OpenRoom is part of this test")
}

/// A gateway in this process whose slot map names `node` for every room.
async fn gateway_for(node: SocketAddr, shutdown: &CancellationToken) -> SocketAddr {
    let map = Some(Arc::new(SlotMap::single(
        1,
        NodeInfo {
            id: NodeId::new("n"),
            grpc_url: format!("http://{node}"),
        },
    )));
    let (map_tx, map_rx) = watch::channel(map);
    let config = partyline_gateway::GatewayConfig::new("g");
    common::inproc::spawn_gateway(config, map_tx, map_rx, shutdown).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_keeps_failing_is_closed_with_1011_after_a_few_backed_off_reopens() {
    let shutdown = CancellationToken::new();
    let node = FailingNode::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = listener.local_addr().unwrap();
    tokio::spawn(partyline_room_node::grpc::serve(
        listener,
        Routes::new(RoomNodeServer::new(node.clone())),
        shutdown.clone(),
    ));
    let gateway = gateway_for(node_addr, &shutdown).await;

    let started = Instant::now();
    let client = YClient::connect(&format!("ws://{gateway}/doc-broken"))
        .await
        .unwrap();
    let closed = client.wait_closed(Duration::from_secs(30)).await.unwrap();
    let took = started.elapsed();
    assert_eq!(closed.code, 1011, "{closed}");
    assert!(closed.reason.contains("room cannot be served"), "{closed}");
    // Five opens (the default attempts), with 100 + 200 + 400 + 800 ms of
    // back-off between them: no loop.
    let opens = node.opens.load(Ordering::SeqCst);
    assert_eq!(opens, 5, "opens: {opens}");
    assert!(took >= Duration::from_millis(1_500), "{took:?}");
    // Nothing re-opens it behind the client's back afterwards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.opens.load(Ordering::SeqCst), 5);
    shutdown.cancel();
}
