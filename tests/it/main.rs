//! Partyline's integration tests, one binary (`it`) with one module per
//! area: the harness in `common` is compiled once and linked once.
//!
//! Run one area with `cargo nextest run --test it -E 'test(/^storage::/)'`
//! (or `cargo test --test it storage::`). The cluster-sized modules
//! (`cluster`, `coordinator`, `compose`, `sessions`, `versions`) run one at a
//! time: the `cluster` test group in .config/nextest.toml.

mod common;

mod abuse_limits;
mod cluster;
mod compose;
mod coordinator;
mod deploy;
mod dev_defaults;
mod dev_server;
mod disk_full;
mod durability;
mod effective_config;
mod hostile_clients;
mod http_api;
mod jwks_auth;
mod jwt_auth;
mod large_documents;
mod link_auth;
mod nats_roles;
mod partition;
mod reroute;
mod room_reopen;
mod s3;
mod sessions;
mod startup_checks;
mod storage;
mod telemetry;
mod versions;
mod webhook_auth;
mod webhooks;
