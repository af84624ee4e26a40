//! Webhooks to the app's backend (docs/webhooks.md): the debounced state
//! callback, which POSTs a room's state after it changed, the
//! initial-content hook (`load_url`), asked once for a room that has no
//! stored state, and the lifecycle events' queue ([`crate::events`]).
//!
//! This module only speaks HTTP; the room actor decides when (debounce,
//! retry) and owns the document.

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use partyline_proto::webhook::WebhookSigner;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

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
/// Default for [`HooksConfig::events_queue`].
pub const DEFAULT_EVENTS_QUEUE: usize = 10_000;
/// Default for [`HooksConfig::events_retries`].
pub const DEFAULT_EVENTS_RETRIES: u32 = 5;

/// The header naming the room of a `binary` callback or load request
/// (percent-encoded UTF-8).
pub const ROOM_HEADER: &str = "x-partyline-room";

/// First delay before a failed callback is retried; doubles each time.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between callback retries.
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Most `--callback-header`s: a handful of credentials, not a payload.
const MAX_EXTRA_HEADERS: usize = 16;

/// What the state callback's body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackFormat {
    /// `{room, epoch, taken_unix_ms, state (base64), data (JSON)}`.
    #[default]
    Json,
    /// The raw `Y.encodeStateAsUpdate` bytes, `application/octet-stream`,
    /// the room in [`ROOM_HEADER`]; `load_url` is asked with an empty body
    /// and the same header.
    Binary,
}

/// Webhook settings: `[webhooks]` in the config file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Where room states are POSTed after changes; `None`: no callback.
    pub callback_url: Option<String>,
    /// `whsec_<base64>` secret(s) every outgoing webhook is signed with
    /// (Standard Webhooks); `None`: unsigned.
    pub secret: Option<String>,
    /// Retired: the callback is signed with [`Self::secret`] now. Kept
    /// only to refuse it with a message saying so.
    pub callback_secret: Option<String>,
    /// The callback's body: `json` or `binary`.
    pub callback_format: CallbackFormat,
    /// `Name: value` headers added to callback and `load_url` requests
    /// (e.g. `Authorization: Bearer …`).
    pub callback_headers: Vec<String>,
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
    /// Where lifecycle events are POSTed; `None`: no events.
    pub events_url: Option<String>,
    /// Events queued at most before new ones are dropped (counted).
    pub events_queue: usize,
    /// Retries of an event that failed (1 s, 2 s, 4 s … apart, at most 30 s).
    pub events_retries: u32,
}

impl HooksConfig {
    /// Checks that the debounce makes sense, the secret and the extra
    /// headers read, and that the retired `callback_secret` is not used.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let error = |message: String| Err(crate::config::ConfigError(message));
        if self.debounce_max_wait < self.debounce_wait {
            return error(
                "webhooks.debounce_max_wait must be at least webhooks.debounce_wait".into(),
            );
        }
        if self.callback_secret.is_some() {
            return error(
                "webhooks.callback_secret (--callback-secret) is replaced by webhooks.secret \
                 (--webhook-secret whsec_<base64>): callbacks are now signed the Standard Webhooks \
                 way (webhook-id, webhook-timestamp, webhook-signature headers) instead of \
                 X-Partyline-Signature; see docs/webhooks.md"
                    .into(),
            );
        }
        if self.events_queue == 0 {
            return error("webhooks.events_queue (--events-queue) must be at least 1".into());
        }
        self.signer()?;
        self.extra_headers()?;
        Ok(())
    }

    /// Whether any hook is configured (else the node runs none).
    pub fn any(&self) -> bool {
        self.callback_url.is_some() || self.load_url.is_some() || self.events_url.is_some()
    }

    /// The signer of [`Self::secret`], if one is set.
    pub fn signer(&self) -> Result<Option<WebhookSigner>, crate::config::ConfigError> {
        self.secret
            .as_deref()
            .map(WebhookSigner::parse)
            .transpose()
            .map_err(|e| {
                crate::config::ConfigError(format!("webhooks.secret (--webhook-secret): {e}"))
            })
    }

    /// [`Self::callback_headers`] as headers.
    fn extra_headers(&self) -> Result<HeaderMap, crate::config::ConfigError> {
        let bad = |why: String| {
            crate::config::ConfigError(format!(
                "webhooks.callback_headers (--callback-header): {why}"
            ))
        };
        if self.callback_headers.len() > MAX_EXTRA_HEADERS {
            return Err(bad(format!("at most {MAX_EXTRA_HEADERS} headers")));
        }
        let mut headers = HeaderMap::new();
        for line in &self.callback_headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("{line:?} is not `Name: value`")))?;
            let name = HeaderName::try_from(name.trim())
                .map_err(|_| bad(format!("{:?} is not a header name", name.trim())))?;
            if [CONTENT_TYPE.as_str(), ROOM_HEADER, "host", "content-length"]
                .contains(&name.as_str())
                || name.as_str().starts_with("webhook-")
            {
                return Err(bad(format!("{name} is set by Partyline")));
            }
            let mut value = HeaderValue::try_from(value.trim())
                .map_err(|_| bad(format!("the value of {name} is not a header value")))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        Ok(headers)
    }
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            callback_url: None,
            secret: None,
            callback_secret: None,
            callback_format: CallbackFormat::Json,
            callback_headers: Vec::new(),
            debounce_wait: DEFAULT_DEBOUNCE_WAIT,
            debounce_max_wait: DEFAULT_DEBOUNCE_MAX_WAIT,
            callback_timeout: DEFAULT_CALLBACK_TIMEOUT,
            callback_retries: DEFAULT_CALLBACK_RETRIES,
            load_url: None,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            events_url: None,
            events_queue: DEFAULT_EVENTS_QUEUE,
            events_retries: DEFAULT_EVENTS_RETRIES,
        }
    }
}

/// Why the hooks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HooksSetupError {
    /// A setting does not read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The HTTP client could not be built.
    #[error("webhooks' http client: {0}")]
    Http(#[from] reqwest::Error),
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
    /// `load_url` answered with more than the room may hold.
    #[error("{url} answered with more than {limit} bytes")]
    TooLarge {
        /// The hook's URL.
        url: String,
        /// The limit (the room's `max_doc_bytes`).
        limit: u64,
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
    signer: Option<WebhookSigner>,
    extra_headers: HeaderMap,
    events: Option<std::sync::Arc<crate::events::Events>>,
}

impl Hooks {
    /// Hooks with `config`; fails when a setting does not read or the
    /// HTTP client cannot be built.
    pub fn new(config: HooksConfig) -> Result<Self, HooksSetupError> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(config.callback_timeout.min(config.load_timeout))
            .build()?;
        let signer = config.signer()?;
        let events = config.events_url.as_ref().map(|url| {
            let settings = crate::events::EventSettings {
                url: url.clone(),
                queue: config.events_queue,
                retries: config.events_retries,
                timeout: config.callback_timeout,
            };
            crate::events::Events::new(settings, http.clone(), signer.clone())
        });
        Ok(Self {
            signer,
            extra_headers: config.extra_headers()?,
            events,
            config,
            http,
        })
    }

    /// The lifecycle-event queue, when `events_url` is set.
    pub fn events(&self) -> Option<&std::sync::Arc<crate::events::Events>> {
        self.events.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    /// Whether rooms call back with their state.
    pub fn has_callback(&self) -> bool {
        self.config.callback_url.is_some()
    }

    /// Whether the state callback carries the room's JSON (`data`).
    pub fn sends_json(&self) -> bool {
        self.config.callback_format == CallbackFormat::Json
    }

    /// A POST of `body` to `url` with the extra headers, signed.
    fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(url)
            .headers(self.extra_headers.clone())
            .header(CONTENT_TYPE, content_type);
        if let Some(signer) = &self.signer {
            request = request.headers(signer.sign(&body).header_map());
        }
        request.body(body)
    }

    /// Asks `load_url` for `room`'s first content: `Some` on 200, `None` on
    /// 204 or 404 (start empty). An answer over `max_bytes` is refused as
    /// it streams in.
    pub async fn initial_content(
        &self,
        room: &str,
        max_bytes: u64,
    ) -> Result<Option<InitialContent>, HookError> {
        let Some(url) = &self.config.load_url else {
            return Ok(None);
        };
        let request_error = |source| HookError::Request {
            url: url.clone(),
            source,
        };
        let request = match self.config.callback_format {
            CallbackFormat::Json => self.post(
                url,
                serde_json::to_vec(&serde_json::json!({ "room": room })).expect("JSON serializes"),
                "application/json",
            ),
            CallbackFormat::Binary => self
                .post(url, Vec::new(), "application/octet-stream")
                .header(ROOM_HEADER, room_header(room)),
        };
        let mut response = request
            .timeout(self.config.load_timeout)
            .send()
            .await
            .map_err(request_error)?;
        match response.status().as_u16() {
            204 | 404 => Ok(None),
            200 => {
                let too_large = || HookError::TooLarge {
                    url: url.clone(),
                    limit: max_bytes,
                };
                if response.content_length().is_some_and(|len| len > max_bytes) {
                    return Err(too_large());
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(request_error)? {
                    if (body.len() + chunk.len()) as u64 > max_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                let body = Bytes::from(body);
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
    /// top-level types rendered as JSON (`null` when the render was
    /// refused; unused by the `binary` format).
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
        let (body, content_type) = match self.config.callback_format {
            CallbackFormat::Json => {
                let taken_unix_ms = crate::unix_ms(version.taken);
                let body = serde_json::to_vec(&serde_json::json!({
                    "room": room,
                    "epoch": version.epoch,
                    "taken_unix_ms": taken_unix_ms,
                    "state": base64::engine::general_purpose::STANDARD.encode(state),
                    "data": json,
                }))
                .expect("a JSON value serializes");
                (body, "application/json")
            }
            CallbackFormat::Binary => (state.to_vec(), "application/octet-stream"),
        };
        let mut backoff = crate::backoff::Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut attempt = 0;
        loop {
            match self.post_once(url, room, &body, content_type).await {
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

    async fn post_once(
        &self,
        url: &str,
        room: &str,
        body: &[u8],
        content_type: &'static str,
    ) -> Result<(), HookError> {
        let mut request = self
            .post(url, body.to_vec(), content_type)
            .timeout(self.config.callback_timeout);
        if self.config.callback_format == CallbackFormat::Binary {
            request = request.header(ROOM_HEADER, room_header(room));
        }
        let response = request.send().await.map_err(|source| HookError::Request {
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

/// What [`room_header`] leaves as it is: what JavaScript's
/// `encodeURIComponent` leaves, so `decodeURIComponent` reads it back and
/// plain names read as themselves.
const ROOM_HEADER_KEEPS: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// A room name as a header value: percent-encoded UTF-8 (as
/// `encodeURIComponent` encodes), so that any name (room names may hold
/// any non-control character) is one.
pub fn room_header(room: &str) -> String {
    percent_encoding::utf8_percent_encode(room, ROOM_HEADER_KEEPS).to_string()
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
    fn room_headers_encode_as_encode_uri_component() {
        assert_eq!(room_header("doc-1_a.b"), "doc-1_a.b");
        assert_eq!(room_header("team/doc é"), "team%2Fdoc%20%C3%A9");
    }

    #[test]
    fn callback_headers_are_checked() {
        let with = |lines: &[&str]| HooksConfig {
            callback_headers: lines.iter().map(|l| l.to_string()).collect(),
            ..HooksConfig::default()
        };
        assert_eq!(
            with(&["Authorization: Bearer abc", "X-Extra:1"])
                .extra_headers()
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "no colon",
            "Bad Name: x",
            "Content-Type: text/plain",
            "webhook-id: forged",
            "X: \u{7f}",
        ] {
            assert!(with(&[bad]).validate().is_err(), "{bad:?} was taken");
        }
        let retired = HooksConfig {
            callback_secret: Some("old".into()),
            ..HooksConfig::default()
        };
        assert!(retired
            .validate()
            .unwrap_err()
            .0
            .contains("--webhook-secret"));
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
