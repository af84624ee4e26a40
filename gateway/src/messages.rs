//! What a client's session and its room's upstream hand each other: the
//! client's messages going up ([`ClientFrame`]), who the client is
//! ([`SessionGrant`]) and why a socket is closed coming down
//! ([`CloseReason`]).
//!
//! Plain values, no I/O and no task. [`crate::session`],
//! [`crate::client_socket`] and [`crate::upstream`] all depend on this
//! module and it on none of them, so the socket's write side and the
//! upstream never need each other's types both ways.

use bytes::Bytes;
use partyline_proto::pb;
use partyline_proto::ysync::{message_kind, SyncKind};

/// One message from a client, whole (a `y-pk-batch` already joined), on
/// its way to the room node.
#[derive(Debug)]
pub(crate) struct ClientFrame {
    /// The message as the client sent it.
    pub payload: Bytes,
    /// A text frame (a `__YPS:` side-protocol message) rather than a
    /// binary y-sync one.
    pub text: bool,
    /// W3C `traceparent` of the gateway's span for this frame, for the room
    /// node's span to join; empty when frames are not traced.
    pub traceparent: String,
}

impl ClientFrame {
    /// A binary (y-sync) message, not traced.
    pub(crate) fn binary(payload: Bytes) -> Self {
        Self {
            payload,
            text: false,
            traceparent: String::new(),
        }
    }

    /// A text (side-protocol) message, not traced.
    pub(crate) fn text(payload: Bytes) -> Self {
        Self {
            payload,
            text: true,
            traceparent: String::new(),
        }
    }

    /// The y-sync kind of a binary frame; `None` for text and for types
    /// y-sync does not define.
    pub(crate) fn kind(&self) -> Option<SyncKind> {
        if self.text {
            return None;
        }
        message_kind(&self.payload)
    }

    /// The frame as session `session_id`'s message on the room stream.
    pub(crate) fn into_message(self, session_id: u64) -> pb::ClientMessage {
        pb::ClientMessage {
            session_id,
            payload: self.payload,
            kind: frame_kind(self.text) as i32,
            traceparent: self.traceparent,
            more: false,
        }
    }
}

/// The room stream's name for a text or binary WebSocket message.
fn frame_kind(text: bool) -> pb::FrameKind {
    if text {
        pb::FrameKind::Text
    } else {
        pb::FrameKind::Binary
    }
}

/// Who the client is and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct SessionGrant {
    /// Authenticated identity, "" for anonymous.
    pub identity: String,
    /// Whether document updates are refused.
    pub read_only: bool,
    /// The connect as its authorizer saw it, to authorize the session again
    /// on a recheck; `None` when nothing could change.
    pub record: Option<std::sync::Arc<crate::auth::ConnectRecord>>,
}

/// Why the gateway closes a client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Human-readable reason (≤ 123 bytes on the wire).
    pub reason: String,
}

impl CloseReason {
    /// A close reason.
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_keeps_its_kind_and_trace_on_the_room_stream() {
        let mut frame = ClientFrame::binary(Bytes::from_static(&[1, 0]));
        assert_eq!(frame.kind(), Some(SyncKind::Awareness));
        frame.traceparent = "00-trace".to_owned();
        let message = frame.into_message(7);
        assert_eq!(message.session_id, 7);
        assert_eq!(message.kind(), pb::FrameKind::Binary);
        assert_eq!(message.traceparent, "00-trace");
        assert_eq!(&message.payload[..], &[1, 0]);
        assert!(!message.more);

        // A text payload is never read as y-sync, whatever its first byte.
        let text = ClientFrame::text(Bytes::from_static(&[1]));
        assert_eq!(text.kind(), None);
        assert_eq!(text.into_message(1).kind(), pb::FrameKind::Text);
    }
}
