//! What the credentials in a `--nats` URL become: the connect options'
//! user and password (or token), and the user's own inbox prefix.
//!
//! Owns only this translation; it must not connect or log anything (the
//! URL's secrets end up nowhere but in the connect options).

/// The credentials in the first `--nats` entry that carries some:
/// `nats://user:password@host` (user and password) or `nats://token@host`
/// (a token), percent-decoded. async-nats parses them out of the URL but
/// sends only what its options say (and sends them still encoded), so
/// without this a server with authorization would refuse every role.
///
/// A user also gets its own inbox prefix ([`inbox_prefix`]).
pub(super) fn with_credentials(
    options: async_nats::ConnectOptions,
    nats_url: &str,
) -> async_nats::ConnectOptions {
    let credentials = nats_url
        .split(',')
        .filter_map(|entry| entry.trim().parse::<async_nats::ServerAddr>().ok())
        .find(|addr| addr.username().is_some());
    let Some(addr) = credentials else {
        return options;
    };
    match (addr.username().map(decode), addr.password().map(decode)) {
        (Some(user), Some(password)) => options
            .custom_inbox_prefix(inbox_prefix(Some(&user)))
            .user_and_password(user, password),
        (Some(token), None) => options.token(token),
        _ => options,
    }
}

/// `%XX` escapes of a URL's user or password, decoded (a password may
/// hold `@`, `:` or `/` only escaped).
fn decode(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox prefix of a client connecting as `user`: `_INBOX_{user}` when
/// the name can be a subject token (letters, digits, `-`, `_`), else
/// NATS' default `_INBOX`.
///
/// Request replies and KV watch deliveries come to subjects under it, so
/// a NATS config can allow each user to subscribe to `_INBOX_{user}.>`
/// only: no user reads another's replies, and nobody but the server and
/// a responder can write into them.
pub fn inbox_prefix(user: Option<&str>) -> String {
    match user {
        Some(user)
            if !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            format!("_INBOX_{user}")
        }
        _ => "_INBOX".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_get_their_own_inbox_and_credentials_are_decoded() {
        assert_eq!(inbox_prefix(Some("room-node")), "_INBOX_room-node");
        assert_eq!(inbox_prefix(Some("a.b")), "_INBOX");
        assert_eq!(inbox_prefix(Some("")), "_INBOX");
        assert_eq!(inbox_prefix(None), "_INBOX");
        assert_eq!(decode("p%40ss%3Aw%2Fd"), "p@ss:w/d");
        assert_eq!(decode("plain-100%"), "plain-100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
