//! Partyline's y-websocket client and load tool.
//!
//! - [`client`]: [`YClient`], a y-websocket client on yrs that speaks the
//!   handshake like the npm provider; used by tests of the other crates.
//! - [`load`]: the load generator behind `partyline bench` — rooms × clients
//!   × updates/s against any y-websocket URL, reporting connect time,
//!   fan-out latency, delivery counts and the server's CPU and RSS.
//!
//! Nothing here depends on the Partyline server: both modules speak only the
//! wire protocol, so they run against any y-websocket server.

pub mod client;
pub mod load;

pub use client::YClient;
pub use load::{run, BenchArgs, Report};
