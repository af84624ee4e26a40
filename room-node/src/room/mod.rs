//! Rooms: one actor per live room, the only code that touches the room's
//! document, awareness, sessions and files.
//!
//! Reached through [`RoomHandle`] (a bounded command channel). Each gateway
//! stream attached to the room is a *link* carrying many client sessions;
//! a broadcast is sent once per link and the gateway fans it out.
//!
//! Commands are handled in batches: every command waiting in the channel is
//! handled, the updates they produced are appended to the log in one write
//! (group commit), and only then do the batch's frames leave — so nothing a
//! client sees from the server is missing from the log.
//!
//! The actor (`actor.rs`) is the loop and the dispatch; what it applies
//! lives in small files beside it. The links, the pending log, the snapshot
//! schedule, the awareness throttle and the callback debounce are types the
//! actor owns, each unit-tested on paused time:
//!
//! | file | owns |
//! |---|---|
//! | `handle.rs` | the commands, the handle, the exit reasons |
//! | `links.rs` | gateway links, their sessions, admission and repeat limits |
//! | `pending.rs` | the batch's log entries and frames: group commit, the hold while the log is unreachable |
//! | `snapshots.rs` | when to snapshot, and when to retry a failed one |
//! | `awareness.rs` | the per-session awareness throttle |
//! | `callback.rs` | the state callback's debounce, one in flight at a time |
//! | `messages.rs` | what the actor does with a client's message or a server-API update |
//! | `sessions.rs` | the sessions API: closing a user's sessions, rechecks, downgrades |
//! | `ending.rs` | release, delete and unload: the last snapshot, callback and goodbyes |
//! | `load.rs` | loading a room (filled from the initial-content hook when new) and starting its actor |
//! | `deleted.rs` | a deleted room's stand-in: refuses sessions (4404), restores or purges it |
//!
//! The actor ends with an [`ExitReason`]: `Idle` after `idle_timeout`
//! without links (snapshot first), `Shutdown` on the process token
//! (snapshot first), `Failed` when storage fails, `Deleted` or `Restored`
//! through the server API. A panic unwinds the task
//! only; the registry logs it and the links' streams end, which closes that
//! room's sessions and nothing else.

mod actor;
mod awareness;
mod callback;
mod deleted;
mod ending;
mod handle;
mod links;
mod load;
mod messages;
mod pending;
mod sessions;
mod snapshots;

pub use deleted::{refuse_link, Refusal};
pub use handle::{
    ApplyError, DeleteHow, Deleted, ExitReason, LinkId, LinkInbound, LinkSender, Rejected,
    RoomCommand, RoomHandle, RoomInfo, ATTACH_DEADLINE,
};
pub use load::spawn_actor;
