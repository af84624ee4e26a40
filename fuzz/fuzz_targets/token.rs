//! The gateway's token extraction and JWT check, as `open_room` runs them
//! before the upgrade: the token from `?token=`, `Authorization: Bearer`
//! or a JWT-shaped `Sec-WebSocket-Protocol` entry (`auth::token`,
//! `auth::protocol_token`), then the HS256 authorizer (the `crit` header
//! check, signature, `exp`/`nbf`/`aud`, the room grant). The input is four
//! lines: query, Authorization, Sec-WebSocket-Protocol, room (see
//! `format::token_input`); the seeds are tokens signed with
//! `format::JWT_SECRET`.
//!
//! Checked besides "no panic": the echoed subprotocol is one trimmed entry
//! of the header shaped like a JWT, and a static-key check never waits.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use partyline_fuzz::format;
use partyline_gateway::auth::{self, Authorizer, JwtAuthorizer};

fn authorizer() -> &'static Authorizer {
    static AUTH: OnceLock<Authorizer> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authorizer::Jwt(Box::new(
            JwtAuthorizer::with_secret(format::JWT_SECRET).expect("fuzz secret accepted"),
        ))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let mut next = || lines.next().filter(|line| !line.is_empty());
    let query = next().and_then(|q| std::str::from_utf8(q).ok());
    let mut headers = HeaderMap::new();
    for name in [AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL] {
        if let Some(value) = next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, value);
        }
    }
    let room = next()
        .and_then(|r| std::str::from_utf8(r).ok())
        .unwrap_or("doc");

    let _ = auth::token(query, &headers);
    if let Some(entry) = auth::protocol_token(&headers) {
        assert_eq!(entry.matches('.').count(), 2, "{entry:?} is not JWT-shaped");
        assert_eq!(entry.trim(), entry, "{entry:?} is not trimmed");
        assert!(!entry.contains(','), "{entry:?} is more than one entry");
    }
    let connect = auth::ConnectRequest {
        room,
        party: None,
        path: "/",
        query,
        headers: &headers,
        ip: None,
    };
    let check = pin!(authorizer().authorize(&connect));
    let mut context = Context::from_waker(Waker::noop());
    assert!(
        matches!(check.poll(&mut context), Poll::Ready(_)),
        "a static-key JWT check waited"
    );
});
