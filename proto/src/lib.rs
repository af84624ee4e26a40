//! Cross-role types of Partyline: the gateway ↔ room-node gRPC contract
//! (generated from `proto/partyline/v1/*.proto` at build time), room names,
//! room → slot hashing, the slot map every process routes with, the
//! WebSocket close codes both roles must agree on, and the y-sync message
//! type of a frame (`ysync`).
//!
//! `rt` is the runtime glue every role's servers and gRPC clients share:
//! how hyper's HTTP/2 tasks are spawned, and the accept step; `link` is the
//! shared secret on the gRPC link (read from its file); `directory` is the
//! live-actors-by-room table both the room node and the gateway keep (a
//! type they own an instance of); `webhook` signs what every role sends to
//! the app's backend. Apart from those this crate holds no I/O
//! and no runtime state; every role depends on it and it depends on no
//! role.

pub mod chunk;
pub mod close;
pub mod codec;
pub mod directory;
pub mod link;
pub mod retry;
pub mod room;
pub mod rt;
pub mod slot;
pub mod webhook;
pub mod ysync;

/// Generated protobuf messages and tonic client/server for `partyline.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("partyline.v1");
}

/// A y-sync SyncStep1 with an empty state vector (`sync`, `step1`, a
/// one-byte buffer holding zero entries): asks for the whole document. A
/// gateway sends it for each client after a room's owner died, when nobody
/// can tell what the clients already have.
pub const SYNC_STEP1_EMPTY: &[u8] = &[0, 0, 1, 0];

/// Largest server message (`POST /v1/rooms/{room}/messages`, the
/// `SendMessage` RPC): custom messages are app signals (a JSON object), not
/// documents.
pub const MAX_SERVER_MESSAGE_BYTES: usize = 64 * 1024;

/// gRPC metadata key of the epoch a room node knows, on a
/// FAILED_PRECONDITION answer to a server-API call for a room it does not
/// own.
pub const EPOCH_METADATA: &str = "partyline-epoch";

/// gRPC metadata key set (to `1`) on a NOT_FOUND answer about a room that
/// is deleted but restorable.
pub const DELETED_METADATA: &str = "partyline-deleted";

pub use room::{RoomName, RoomNameError};
pub use slot::{slot_of, Epoch, NodeId, NodeInfo, Slot, SlotMap, SlotMapError, SLOTS};
