//! The y-sync message type of a binary WebSocket frame, read from its
//! leading bytes without decoding the rest.
//!
//! A y-sync frame starts with its message type as a varint (0 sync,
//! 1 awareness, 2 auth, 3 query awareness); a sync message's second byte,
//! also a varint, is its step (0 SyncStep1, 1 SyncStep2, 2 update). Every
//! known value fits in one byte, so a first byte of 0x80 or more is a type
//! this helper does not know. Decoding and checking the message is the
//! room node's job; callers here only label, route or keep frames.

/// What a y-sync frame is, by its leading type bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Sync step 1: a state vector, answered with what the sender lacks.
    SyncStep1,
    /// Sync step 2: the answer to a SyncStep1 (possibly a whole document).
    SyncStep2,
    /// Sync update: an edit.
    Update,
    /// A sync message whose step byte is missing or unknown.
    OtherSync,
    /// An awareness update.
    Awareness,
    /// An auth message.
    Auth,
    /// A query for every awareness state.
    QueryAwareness,
}

impl SyncKind {
    /// Whether the frame is a sync message (type 0), whatever its step.
    pub fn is_sync(self) -> bool {
        matches!(
            self,
            Self::SyncStep1 | Self::SyncStep2 | Self::Update | Self::OtherSync
        )
    }
}

/// The kind of the y-sync frame `frame`; `None` for an empty frame or a
/// message type y-sync does not define.
pub fn message_kind(frame: &[u8]) -> Option<SyncKind> {
    Some(match frame {
        [0, 0, ..] => SyncKind::SyncStep1,
        [0, 1, ..] => SyncKind::SyncStep2,
        [0, 2, ..] => SyncKind::Update,
        [0, ..] => SyncKind::OtherSync,
        [1, ..] => SyncKind::Awareness,
        [2, ..] => SyncKind::Auth,
        [3, ..] => SyncKind::QueryAwareness,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leading_bytes_name_the_kind() {
        let cases: &[(&[u8], Option<SyncKind>)] = &[
            (&[0, 0, 1, 0], Some(SyncKind::SyncStep1)),
            (&[0, 1, 5, 1, 2, 3, 4, 5], Some(SyncKind::SyncStep2)),
            (&[0, 1], Some(SyncKind::SyncStep2)),
            (&[0, 2, 0], Some(SyncKind::Update)),
            (&[0], Some(SyncKind::OtherSync)),
            (&[0, 3], Some(SyncKind::OtherSync)),
            (&[0, 0x80, 1], Some(SyncKind::OtherSync)),
            (&[1, 1, 0], Some(SyncKind::Awareness)),
            (&[1], Some(SyncKind::Awareness)),
            (&[2, 0, 0], Some(SyncKind::Auth)),
            (&[3], Some(SyncKind::QueryAwareness)),
            (&[], None),
            (&[4, 0], None),
            // A multi-byte varint type: 0x80 0x00 would be 0 written long,
            // which no y-sync encoder does.
            (&[0x80, 0x00], None),
            (&[0xff], None),
        ];
        for &(frame, kind) in cases {
            assert_eq!(message_kind(frame), kind, "{frame:?}");
        }
        assert_eq!(
            message_kind(crate::SYNC_STEP1_EMPTY),
            Some(SyncKind::SyncStep1)
        );
    }

    #[test]
    fn every_sync_step_is_sync_and_nothing_else_is() {
        for first in 0..=255u8 {
            for second in [0, 1, 2, 3, 0xff] {
                let frame = [first, second];
                let sync = message_kind(&frame).is_some_and(SyncKind::is_sync);
                assert_eq!(sync, first == 0, "{frame:?}");
            }
        }
    }
}
