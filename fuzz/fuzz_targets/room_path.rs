//! The gateway's room URL parsing, as `open_room` runs it on every
//! upgrade: the request target as hyper hands it over (`http::Uri`), then
//! `path::parse` of its path (the three path forms, percent-decoding, the
//! room-name rules). The input is a request target (`/parties/main/room?x=1`).
//!
//! Checked besides "no panic": every accepted name is 1–256 bytes of UTF-8
//! without control characters and logs (`Display`) without any; a party
//! never contains `/` and names another party's namespace; and every valid
//! name, percent-encoded, comes back as itself from all three path forms of
//! the default party (one document, whichever provider opens it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use partyline_gateway::path::{self, DEFAULT_PARTY};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

fn check(target: &str) {
    let Ok(parsed) = path::parse(target) else {
        return;
    };
    let room = parsed.room.as_str();
    assert!(
        !room.is_empty() && room.len() <= 256,
        "room name of {} bytes",
        room.len()
    );
    assert!(
        !room.chars().any(char::is_control),
        "control character in {room:?}"
    );
    let shown = parsed.room.to_string();
    assert!(
        !shown.chars().any(char::is_control),
        "control character logged: {shown:?}"
    );
    if let Some(party) = parsed.party.as_deref() {
        assert!(!party.contains('/'), "party {party:?} with a slash");
        if party != DEFAULT_PARTY {
            assert!(
                room.starts_with(&format!("parties/{party}/")),
                "room {room:?} of party {party:?} outside its namespace"
            );
        }
    }
    let encoded = utf8_percent_encode(room, NON_ALPHANUMERIC).to_string();
    for form in [
        format!("/{encoded}"),
        format!("/party/{encoded}"),
        format!("/parties/{DEFAULT_PARTY}/{encoded}"),
    ] {
        let again = path::parse(&form).unwrap_or_else(|e| panic!("{form:?} refused: {e}"));
        assert_eq!(again.room.as_str(), room, "{form:?} names another room");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(uri) = http::Uri::try_from(data) {
        check(uri.path());
        // What the gateway compares with --max-query-bytes.
        let _ = uri.query().map(str::len);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});
