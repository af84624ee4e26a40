//! Signatures on every webhook Partyline sends (the auth webhook, the state
//! callback, `load_url`, lifecycle events), in the
//! [Standard Webhooks](https://www.standardwebhooks.com) scheme so that a
//! receiver can check them with any of its libraries:
//!
//! - `webhook-id`: the message's id, the same on every retry of it;
//! - `webhook-timestamp`: when it was signed, in Unix seconds;
//! - `webhook-signature`: `v1,<base64>` per secret, space-separated, where
//!   each is HMAC-SHA256 of `"<id>.<timestamp>.<body>"` keyed with the
//!   secret's decoded bytes.
//!
//! The secret is written `whsec_<base64>` (what Standard Webhooks
//! libraries and dashboards hand out). Several secrets may be given, space-
//! or comma-separated: each signs, so a receiver that knows either accepts
//! while a new one is rotated in.
//!
//! Hand-written rather than the `standardwebhooks` crate: that crate holds
//! one secret per instance and would add a second `base64` and `time` to
//! the tree for what is one HMAC over three joined fields.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::codegen::http;

/// Header of the message id.
pub const ID_HEADER: &str = "webhook-id";
/// Header of the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header of the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The prefix of a secret as Standard Webhooks writes it.
const SECRET_PREFIX: &str = "whsec_";
/// Fewest key bytes accepted: HMAC-SHA256 with a shorter key is guessable.
pub const MIN_SECRET_BYTES: usize = 24;
/// Most secrets signing at once (one in use, one being rotated in, and a
/// spare); more would only make every request longer.
pub const MAX_SECRETS: usize = 3;

/// The keys every outgoing webhook is signed with.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSigner {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSigner({} secret(s))", self.keys.len())
    }
}

/// Why a `--webhook-secret` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing given.
    #[error("the webhook secret is empty")]
    Empty,
    /// Not `whsec_` followed by base64.
    #[error("a webhook secret is written whsec_<base64> (e.g. whsec_$(openssl rand -base64 32))")]
    Format,
    /// A key too short to be a secret.
    #[error("a webhook secret decodes to {0} bytes; at least {MIN_SECRET_BYTES} are needed")]
    Short(usize),
    /// More secrets than [`MAX_SECRETS`].
    #[error("{0} webhook secrets given; at most {MAX_SECRETS} sign at once")]
    TooMany(usize),
}

/// The three headers of one signed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
}

impl SignedHeaders {
    /// The headers, to add to a request (`RequestBuilder::headers`).
    pub fn header_map(&self) -> http::HeaderMap {
        [
            (ID_HEADER, &self.id),
            (TIMESTAMP_HEADER, &self.timestamp),
            (SIGNATURE_HEADER, &self.signature),
        ]
        .into_iter()
        .map(|(name, value)| {
            let value = http::HeaderValue::from_str(value)
                .expect("ids, digits and base64 are header values");
            (http::HeaderName::from_static(name), value)
        })
        .collect()
    }
}

impl WebhookSigner {
    /// Reads one or more `whsec_<base64>` secrets, separated by spaces or
    /// commas; the first is the current one.
    pub fn parse(secrets: &str) -> Result<Self, SecretError> {
        let keys = secrets
            .split([' ', ','])
            .filter(|secret| !secret.is_empty())
            .map(decode_secret)
            .collect::<Result<Vec<_>, _>>()?;
        match keys.len() {
            0 => Err(SecretError::Empty),
            n if n > MAX_SECRETS => Err(SecretError::TooMany(n)),
            _ => Ok(Self { keys }),
        }
    }

    /// Signs `body` as a new message (a fresh id, now).
    pub fn sign(&self, body: &[u8]) -> SignedHeaders {
        self.sign_message(&new_message_id(), body)
    }

    /// Signs `body` as message `id`, now (a retry keeps its message's id
    /// and is signed again with the time it is sent).
    pub fn sign_message(&self, id: &str, body: &[u8]) -> SignedHeaders {
        self.sign_as(id, unix_now(), body)
    }

    /// Signs `body` as message `id` sent at `timestamp` (Unix seconds).
    pub fn sign_as(&self, id: &str, timestamp: u64, body: &[u8]) -> SignedHeaders {
        let timestamp = timestamp.to_string();
        let signature = self
            .keys
            .iter()
            .map(|key| format!("v1,{}", signature(key, id, &timestamp, body)))
            .collect::<Vec<_>>()
            .join(" ");
        SignedHeaders {
            id: id.to_owned(),
            timestamp,
            signature,
        }
    }
}

/// A fresh message id: `msg_` and 16 random bytes, base64url.
pub fn new_message_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS has no random source");
    format!(
        "msg_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::Format)?;
    let key = STANDARD.decode(encoded).map_err(|_| SecretError::Format)?;
    if key.len() < MIN_SECRET_BYTES {
        return Err(SecretError::Short(key.len()));
    }
    Ok(key)
}

fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in [id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
        mac.update(part);
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example, as its reference libraries test it.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signs_the_specifications_example() {
        let signer = WebhookSigner::parse(SPEC_SECRET).unwrap();
        let headers = signer.sign_as(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            headers.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(headers.timestamp, "1614265330");
    }

    #[test]
    fn every_secret_signs_while_one_is_rotated_in() {
        let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let signer = WebhookSigner::parse(&format!("{SPEC_SECRET} {other}")).unwrap();
        let headers = signer.sign_as("msg_1", 1, b"{}");
        let parts: Vec<&str> = headers.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        let first = WebhookSigner::parse(SPEC_SECRET).unwrap();
        assert_eq!(parts[0], first.sign_as("msg_1", 1, b"{}").signature);
        assert_ne!(parts[0], parts[1]);
        let by_comma = WebhookSigner::parse(&format!("{SPEC_SECRET},{other}")).unwrap();
        assert_eq!(by_comma, signer);
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(WebhookSigner::parse(" "), Err(SecretError::Empty));
        assert_eq!(
            WebhookSigner::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SecretError::Format)
        );
        assert_eq!(
            WebhookSigner::parse("whsec_not base64!"),
            Err(SecretError::Format)
        );
        assert_eq!(
            WebhookSigner::parse("whsec_c2hvcnQ="),
            Err(SecretError::Short(5))
        );
        let many = [SPEC_SECRET; MAX_SECRETS + 1].join(" ");
        assert_eq!(
            WebhookSigner::parse(&many),
            Err(SecretError::TooMany(MAX_SECRETS + 1))
        );
    }

    #[test]
    fn the_headers_carry_the_signature() {
        let signer = WebhookSigner::parse(SPEC_SECRET).unwrap();
        let signed = signer.sign_message("msg_1", b"{}");
        let headers = signed.header_map();
        assert_eq!(headers[ID_HEADER], "msg_1");
        assert_eq!(headers[SIGNATURE_HEADER], signed.signature.as_str());
        assert_eq!(headers[TIMESTAMP_HEADER], signed.timestamp.as_str());
    }

    #[test]
    fn message_ids_are_fresh() {
        let (a, b) = (new_message_id(), new_message_id());
        assert!(a.starts_with("msg_") && a.len() > 20);
        assert_ne!(a, b);
    }
}
