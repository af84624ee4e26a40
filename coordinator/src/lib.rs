//! Partyline coordinator: decides which room node owns each slot.
//!
//! At this stage it holds the placement computation only ([`assign`]); the
//! membership tracking, leader election and NATS KV publication that call it
//! come with the cluster. It never talks to clients or touches documents.

pub mod placement;

pub use placement::assign;
