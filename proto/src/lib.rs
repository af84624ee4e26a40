//! Cross-role types of Partyline: the gateway ↔ room-node gRPC contract
//! (generated from `proto/partyline/v1/*.proto` at build time), room names,
//! room → slot hashing, the slot map every process routes with, and the
//! WebSocket close codes both roles must agree on.
//!
//! This crate holds no I/O and no runtime state; every role depends on it and
//! it depends on no role.

pub mod close;
pub mod codec;
pub mod room;
pub mod slot;

/// Generated protobuf messages and tonic client/server for `partyline.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("partyline.v1");
}

pub use room::{RoomName, RoomNameError};
pub use slot::{slot_of, NodeId, NodeInfo, Slot, SlotMap, SlotMapError, SLOTS};
