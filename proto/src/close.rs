//! WebSocket close codes Partyline sends, shared so the room node (which
//! decides) and the gateway (which closes the socket) agree. DESIGN.md's
//! error table is the contract; docs/protocol.md lists them for users.

/// Normal closure.
pub const NORMAL: u16 = 1000;
/// Server shutting down (SIGTERM/SIGINT on `partyline dev`).
pub const GOING_AWAY: u16 = 1001;
/// Malformed y-sync frame (bad varint, unknown message type, undecodable update).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame that is neither a `y-pk-batch#` marker nor a `__YPS:` message.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A close frame without a code. Never sent (RFC 6455 §7.4.1): reported
/// in lifecycle events.
pub const NO_STATUS: u16 = 1005;
/// The socket ended without a close frame. Never sent (RFC 6455 §7.4.1):
/// reported in lifecycle events.
pub const ABNORMAL: u16 = 1006;
/// Policy violation (e.g. a client too slow to keep up with its room).
pub const POLICY_VIOLATION: u16 = 1008;
/// Frame or reassembled batch over the configured size limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The room failed (panic, storage error); the client should reconnect.
pub const INTERNAL_ERROR: u16 = 1011;
/// Gateway restarting: reconnect (to another gateway).
pub const SERVICE_RESTART: u16 = 1012;
/// Room owner unreachable for longer than the re-route budget.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The session's grant ended: the webhook's `expires_at` or the JWT's
/// `exp` passed, or its access was revoked through the sessions API. A
/// 44xx code: y-websocket 3 does not reconnect with the stale token.
pub const UNAUTHORIZED: u16 = 4401;
/// A read-only session kept writing.
pub const READ_ONLY: u16 = 4403;
/// The room was deleted through the server API. y-websocket 3 does not
/// reconnect after a 44xx code, so its document is not uploaded again.
pub const ROOM_DELETED: u16 = 4404;
/// The room's name matches no room policy and the node refuses such rooms
/// (`refuse_unlisted_rooms`). A 44xx code: y-websocket 3 does not retry.
pub const ROOM_NOT_ALLOWED: u16 = 4400;
