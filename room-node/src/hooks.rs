//! Webhooks to the app's backend (docs/webhooks.md): the debounced state
//! callback, which POSTs a room's state after it changed, and the
//! initial-content hook (`load_url`), asked once for a room that has no
//! stored state.
//!
//! This module only speaks HTTP; the room actor decides when (debounce,
//! retry) and owns the document.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Default for [`HooksConfig::debounce_wait`] (y-partykit's).
pub const DEFAULT_DEBOUNCE_WAIT: Duration = Duration::from_secs(2);
/// Default for [`HooksConfig::debounce_max_wait`] (y-partykit's).
pub const DEFAULT_DEBOUNCE_MAX_WAIT: Duration = Duration::from_secs(10);
/// Default for [`HooksConfig::callback_timeout`].
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`HooksConfig::callback_retries`].
pub const DEFAULT_CALLBACK_RETRIES: u32 = 5;
/// Default for [`HooksConfig::load_timeout`].
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// The signature header on callbacks: `t=<unix seconds>,v1=<hex>`, where
/// `v1` is HMAC-SHA256 of `"<t>.<body>"` keyed with the callback secret.
pub const SIGNATURE_HEADER: &str = "x-partyline-signature";

/// First delay before a failed callback is retried; doubles each time.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between callback retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Webhook settings: `[webhooks]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Where room states are POSTed after changes; `None`: no callback.
    pub callback_url: Option<String>,
    /// Key of the callbacks' HMAC signature; `None`: unsigned.
    pub callback_secret: Option<String>,
    /// A callback waits until the room was quiet this long…
    #[serde(with = "humantime_serde")]
    pub debounce_wait: Duration,
    /// …but never longer than this after the first unsent change.
    #[serde(with = "humantime_serde")]
    pub debounce_max_wait: Duration,
    /// How long one callback request may take.
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
    /// Retries of a failed callback (1 s, 2 s, 4 s … apart, at most 30 s).
    pub callback_retries: u32,
    /// Asked for a new room's first content; `None`: new rooms start empty.
    pub load_url: Option<String>,
    /// How long the initial-content request may take.
    #[serde(with = "humantime_serde")]
    pub load_timeout: Duration,
}

impl HooksConfig {
    /// Checks that the debounce makes sense.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if self.debounce_max_wait < self.debounce_wait {
            return Err(crate::config::ConfigError(
                "webhooks.debounce_max_wait must be at least webhooks.debounce_wait".into(),
            ));
        }
        Ok(())
    }

    /// Whether any hook is configured (else the node runs none).
    pub fn any(&self) -> bool {
        self.callback_url.is_some() || self.load_url.is_some()
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            callback_secret: None,
            debounce_wait: DEFAULT_DEBOUNCE_WAIT,
            debounce_max_wait: DEFAULT_DEBOUNCE_MAX_WAIT,
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
            callback_retries: DEFAULT_CALLBACK_RETRIES,
            load_url: None,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
        }
    }
}

/// Why a webhook request failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// No answer, or the connection failed.
    #[error("request to {url} failed: {source}")]
    Request {
        /// The hook's URL.
        url: String,
        /// What happened.
        source: reqwest::Error,
    },
    /// The app answered with a status that is not success.
    #[error("{url} answered {status}")]
    Status {
        /// The hook's URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// `load_url` answered 200 with something that is not a Yjs update.
    #[error("{url} answered with a body that is not a Yjs update (v1): {reason}")]
    NotAnUpdate {
        /// The hook's URL.
        url: String,
        /// The decoder's complaint.
        reason: String,
    },
}

/// Which state a callback carries, so the app can keep the newest when two
/// race (a retry from the node that gave the room away, say): the higher
/// `(epoch, taken)` is newer.
#[derive(Debug, Clone, Copy)]
pub struct StateVersion {
    /// Slot-map epoch of the node that took the state.
    pub epoch: u64,
    /// When the state was taken.
    pub taken: SystemTime,
}

/// A room's first content from `load_url`, checked and decoded once.
pub struct InitialContent {
    /// The body as received: the update to log.
    pub body: Bytes,
    /// The same update, decoded, to apply.
    pub update: yrs::Update,
}

/// The webhooks of a node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hooks {
    config: HooksConfig,
    http: reqwest::Client,
}

impl Hooks {
    /// Hooks with `config`; fails when the HTTP client cannot be built.
    pub fn new(config: HooksConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.callback_timeout.min(config.load_timeout))
            .build()?;
        Ok(Self { config, http })
    }

    /// The settings.
    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    /// Whether rooms call back with their state.
    pub fn has_callback(&self) -> bool {
        self.config.callback_url.is_some()
    }

    /// Asks `load_url` for `room`'s first content: `Some` on 200, `None` on
    /// 204 or 404 (start empty).
    pub async fn initial_content(&self, room: &str) -> Result<Option<InitialContent>, HookError> {
        let Some(url) = &self.config.load_url else {
            return Ok(None);
        };
        let request_error = |source| HookError::Request {
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .post(url)
            .timeout(self.config.load_timeout)
            .json(&serde_json::json!({ "room": room }))
            .send()
            .await
            .map_err(request_error)?;
        match response.status().as_u16() {
            204 | 404 => Ok(None),
            200 => {
                let body = response.bytes().await.map_err(request_error)?;
                let update = crate::protocol::decode_update(&body).map_err(|error| {
                    HookError::NotAnUpdate {
                        url: url.clone(),
                        reason: error.to_string(),
                    }
                })?;
                Ok(Some(InitialContent { body, update }))
            }
            status => Err(HookError::Status {
                url: url.clone(),
                status,
            }),
        }
    }

    /// POSTs one room state to the callback URL, retrying failures with a
    /// doubling delay up to `callback_retries` times. `json` is the state's
    /// top-level types rendered as JSON.
    pub async fn send_state(
        &self,
        room: &str,
        state: &[u8],
        json: serde_json::Value,
        version: StateVersion,
    ) -> Result<(), HookError> {
        let Some(url) = &self.config.callback_url else {
            return Ok(());
        };
        let taken_unix_ms = version
            .taken
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = serde_json::to_vec(&serde_json::json!({
            "room": room,
            "epoch": version.epoch,
            "taken_unix_ms": taken_unix_ms,
            "state": base64::engine::general_purpose::STANDARD.encode(state),
            "data": json,
        }))
        .expect("a JSON value serializes");
        let mut backoff = crate::backoff::Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut attempt = 0;
        loop {
            match self.post_once(url, &body).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= self.config.callback_retries => return Err(error),
                Err(error) => {
                    let delay = backoff.next_pause();
                    tracing::warn!(room, %error, retry_in = ?delay, "state callback failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn post_once(&self, url: &str, body: &[u8]) -> Result<(), HookError> {
        let mut request = self
            .http
            .post(url)
            .timeout(self.config.callback_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.config.callback_secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request.header(SIGNATURE_HEADER, sign(secret.as_bytes(), now, body));
        }
        let response =
            request
                .body(body.to_vec())
                .send()
                .await
                .map_err(|source| HookError::Request {
                    url: url.to_owned(),
                    source,
                })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(HookError::Status {
                url: url.to_owned(),
                status: response.status().as_u16(),
            })
        }
    }
}

/// The signature header's value for `body` sent at `unix_seconds`.
pub fn sign(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let t = unix_seconds.to_string();
    let digest = hmac_sha256_hex(secret, &[t.as_bytes(), b".", body]);
    format!("t={t},v1={digest}")
}

/// Hex HMAC-SHA256 of the concatenated `parts`.
fn hmac_sha256_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// When a room's pending callback is due: `debounce_wait` after the last
/// change, but no later than `debounce_max_wait` after the first unsent
/// one.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    first: tokio::time::Instant,
    last: tokio::time::Instant,
}

impl Debounce {
    /// A change at `now`, the first one not sent yet.
    pub fn new(now: tokio::time::Instant) -> Self {
        Self {
            first: now,
            last: now,
        }
    }

    /// Another change at `now`.
    pub fn touch(&mut self, now: tokio::time::Instant) {
        self.last = now;
    }

    /// When to send.
    pub fn due(&self, config: &HooksConfig) -> tokio::time::Instant {
        (self.last + config.debounce_wait).min(self.first + config.debounce_max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let expected = hmac_sha256_hex(b"secret", &[b"1700000000.{}"]);
        assert_eq!(
            sign(b"secret", 1_700_000_000, b"{}"),
            format!("t=1700000000,v1={expected}")
        );
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_past_the_max() {
        let config = HooksConfig {
            debounce_wait: Duration::from_secs(2),
            debounce_max_wait: Duration::from_secs(10),
            ..HooksConfig::default()
        };
        let start = tokio::time::Instant::now();
        let mut debounce = Debounce::new(start);
        assert_eq!(debounce.due(&config), start + Duration::from_secs(2));
        debounce.touch(start + Duration::from_secs(1));
        assert_eq!(debounce.due(&config), start + Duration::from_secs(3));
        debounce.touch(start + Duration::from_secs(9));
        assert_eq!(debounce.due(&config), start + Duration::from_secs(10));
    }
}
