//! Which room a WebSocket URL path names (DESIGN.md "Paths").
//!
//! `/parties/{party}/{room}` (y-partykit ≥ 0.0.30, y-partyserver),
//! `/party/{room}` (older y-partykit) and `/{room…}` (y-websocket: the whole
//! rest of the path, `/` included). The room part is percent-decoded after
//! the split, so `%2F` inside a PartyKit room name stays in the name.
//!
//! Parties are namespaces, as on PartyKit. The default party `main` (and
//! `/party/…`) shares rooms with y-websocket paths, so `/parties/main/x`,
//! `/party/x` and `/x` are one document; room `x` of another party `p` is
//! stored as `parties/p/x`, a name no y-websocket path can reach (such paths
//! parse as a party path), so namespaces never collide.

use partyline_proto::{RoomName, RoomNameError};
use percent_encoding::percent_decode_str;

/// The party y-partykit uses unless told otherwise.
pub const DEFAULT_PARTY: &str = "main";

/// A parsed client path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPath {
    /// The PartyKit party (`main` for most apps); `None` for y-websocket paths.
    pub party: Option<String>,
    /// The room.
    pub room: RoomName,
}

/// Parses the path of a WebSocket request.
pub fn parse(path: &str) -> Result<RoomPath, RoomNameError> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if let Some(parties) = rest.strip_prefix("parties/") {
        if let Some((party, room)) = parties.split_once('/') {
            let party = decode(party)?.as_str().to_owned();
            if party.contains('/') {
                return Err(RoomNameError::PartySlash);
            }
            let room = decode(room)?;
            let room = if party == DEFAULT_PARTY {
                room
            } else {
                RoomName::new(format!("parties/{party}/{}", room.as_str()))?
            };
            return Ok(RoomPath {
                party: Some(party),
                room,
            });
        }
    }
    if let Some(room) = rest.strip_prefix("party/") {
        return Ok(RoomPath {
            party: Some(DEFAULT_PARTY.to_owned()),
            room: decode(room)?,
        });
    }
    Ok(RoomPath {
        party: None,
        room: decode(rest)?,
    })
}

fn decode(raw: &str) -> Result<RoomName, RoomNameError> {
    RoomName::from_bytes(percent_decode_str(raw).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(path: &str) -> String {
        parse(path).unwrap().room.as_str().to_owned()
    }

    #[test]
    fn the_three_path_forms() {
        let p = parse("/parties/main/doc-abc123").unwrap();
        assert_eq!(
            (p.party.as_deref(), p.room.as_str()),
            (Some("main"), "doc-abc123")
        );
        let p = parse("/party/diagram-xyz789").unwrap();
        assert_eq!(
            (p.party.as_deref(), p.room.as_str()),
            (Some("main"), "diagram-xyz789")
        );
        let p = parse("/team/a/doc.v1_x-y").unwrap();
        assert_eq!((p.party, p.room.as_str()), (None, "team/a/doc.v1_x-y"));
    }

    #[test]
    fn other_parties_are_namespaces() {
        assert_eq!(room("/parties/cursors/doc-1"), "parties/cursors/doc-1");
        assert_eq!(room("/parties/main/doc-1"), room("/doc-1"));
        assert_eq!(parse("/parties/a%2Fb/x"), Err(RoomNameError::PartySlash));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(room("/a%20b"), "a b");
        assert_eq!(room("/parties/main/a%2Fb"), "a/b");
        assert_eq!(room("/%E2%9C%93"), "✓");
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("/"), Err(RoomNameError::Empty));
        assert_eq!(parse("/parties/main/"), Err(RoomNameError::Empty));
        assert_eq!(parse("/party/"), Err(RoomNameError::Empty));
        assert_eq!(
            parse(&format!("/{}", "x".repeat(300))),
            Err(RoomNameError::TooLong(300))
        );
        assert_eq!(parse("/%ff%fe"), Err(RoomNameError::NotUtf8));
        assert_eq!(parse("/a%0Ab"), Err(RoomNameError::ControlCharacter('\n')));
        assert_eq!(
            parse("/parties/main/a%7F"),
            Err(RoomNameError::ControlCharacter('\u{7f}'))
        );
    }
}
