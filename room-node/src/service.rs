//! The `RoomNode` gRPC service: accepts gateway streams, checks ownership
//! and hands each stream to its room actor, which reads it from then on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use partyline_proto::pb::{self, gateway_frame, node_frame, room_node_server::RoomNode};
use partyline_proto::RoomName;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ownership::Ownership;
use crate::registry::{AttachError, Registry};

/// How long a new stream may take to send its `Attach` frame.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC face of a room node.
pub struct RoomNodeService {
    registry: Registry,
    ownership: Ownership,
    link_queue: usize,
    next_link: AtomicU64,
}

impl RoomNodeService {
    /// A service serving the rooms `ownership` says are this node's.
    pub fn new(registry: Registry, ownership: Ownership, link_queue: usize) -> Self {
        Self {
            registry,
            ownership,
            link_queue,
            next_link: AtomicU64::new(1),
        }
    }
}

type NodeStream = ReceiverStream<Result<pb::NodeFrame, Status>>;

#[tonic::async_trait]
impl RoomNode for RoomNodeService {
    type OpenRoomStream = NodeStream;

    async fn open_room(
        &self,
        request: Request<Streaming<pb::GatewayFrame>>,
    ) -> Result<Response<NodeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(ATTACH_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no attach frame"))??;
        let Some(pb::GatewayFrame {
            kind: Some(gateway_frame::Kind::Attach(attach)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first frame must be attach"));
        };
        let room =
            RoomName::new(attach.room).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(self.link_queue);
        let epoch = match self.ownership.check(&room) {
            Ok(epoch) => epoch,
            Err(epoch) => {
                let not_owner = node_frame::Kind::NotOwner(pb::NotOwner { epoch });
                let _ = tx.try_send(Ok(pb::NodeFrame {
                    kind: Some(not_owner),
                }));
                return Ok(Response::new(ReceiverStream::new(rx)));
            }
        };
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        match self
            .registry
            .attach(&room, epoch, link, tx, Box::pin(inbound))
            .await
        {
            Ok(()) => {}
            // The refusal is already queued on the stream.
            Err(AttachError::NotOwner(_)) => return Ok(Response::new(ReceiverStream::new(rx))),
            Err(error) => return Err(Status::unavailable(error.to_string())),
        }
        tracing::debug!(room = %room, link, gateway = %attach.gateway_id, "gateway stream attached");
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
