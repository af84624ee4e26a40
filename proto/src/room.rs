//! Room names: the validated, percent-decoded name a client asked for.
//!
//! Rules (DESIGN.md "Paths"): UTF-8, 1..=256 bytes after percent-decoding,
//! no control characters (C0, DEL, C1: they forge log lines and break
//! terminals and key-value tools). Any other character is allowed, `/`
//! included, because y-websocket takes the whole rest of the URL path as
//! the room.
//!
//! `Display` is for logs and escapes what is not printable (format
//! characters such as bidi overrides, line separators, quotes and
//! backslashes as in `{:?}`); the name itself is [`RoomName::as_str`].

use std::fmt;

/// Longest room name accepted, in bytes of UTF-8.
pub const MAX_ROOM_NAME_BYTES: usize = 256;

/// Why a room name was refused (answered with HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    /// Nothing after the path prefix.
    #[error("room name is empty")]
    Empty,
    /// Longer than [`MAX_ROOM_NAME_BYTES`].
    #[error("room name is {0} bytes, the limit is {MAX_ROOM_NAME_BYTES}")]
    TooLong(usize),
    /// Percent-decoding produced bytes that are not UTF-8.
    #[error("room name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    /// A control character (C0, DEL or C1), e.g. a newline.
    #[error("room name contains the control character {0:?}")]
    ControlCharacter(char),
    /// A PartyKit party name with `/` in it.
    #[error("party name must not contain '/'")]
    PartySlash,
}

/// A valid room name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl RoomName {
    /// Validates an already-decoded name.
    pub fn new(name: impl Into<String>) -> Result<Self, RoomNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > MAX_ROOM_NAME_BYTES {
            return Err(RoomNameError::TooLong(name.len()));
        }
        if let Some(control) = name.chars().find(|c| c.is_control()) {
            return Err(RoomNameError::ControlCharacter(control));
        }
        Ok(Self(name))
    }

    /// Validates percent-decoded bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, RoomNameError> {
        let name = String::from_utf8(bytes).map_err(|_| RoomNameError::NotUtf8)?;
        Self::new(name)
    }

    /// The name as the client sent it (decoded).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_up_to_the_limit() {
        assert!(RoomName::new("doc-abc123").is_ok());
        assert!(RoomName::new("a/b/c").is_ok());
        assert!(RoomName::new("x".repeat(MAX_ROOM_NAME_BYTES)).is_ok());
    }

    #[test]
    fn refuses_control_characters_and_escapes_the_rest_in_display() {
        for name in ["a\nb", "a\rb", "\0", "a\u{7f}", "a\u{85}b", "a\u{9f}"] {
            assert!(
                matches!(RoomName::new(name), Err(RoomNameError::ControlCharacter(_))),
                "{name:?}"
            );
        }
        let spoof = RoomName::new("a\u{202e}b\u{2028}c").unwrap();
        assert_eq!(spoof.to_string(), "a\\u{202e}b\\u{2028}c");
        assert_eq!(spoof.as_str(), "a\u{202e}b\u{2028}c");
        assert_eq!(RoomName::new("doc ✓/1").unwrap().to_string(), "doc ✓/1");
    }

    #[test]
    fn refuses_empty_long_and_non_utf8() {
        assert_eq!(RoomName::new(""), Err(RoomNameError::Empty));
        assert_eq!(
            RoomName::new("x".repeat(300)),
            Err(RoomNameError::TooLong(300))
        );
        assert_eq!(
            RoomName::from_bytes(vec![0xff, 0xfe]),
            Err(RoomNameError::NotUtf8)
        );
    }
}
