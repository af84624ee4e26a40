//! The app's backend decides: each connect's room, party, token, query
//! parameters, path, client address and the request headers it asked for
//! (`cookie`, `origin`, `user-agent` by default) are posted to
//! `webhook_url`, signed with the webhook secret (Standard Webhooks), and
//! its answer (200 with an access, 401, 403) is the decision; anything
//! else, or no answer within `webhook_timeout`, refuses the client (fail
//! closed). A 200 may bind a user (`user: {id, name}`) and end the grant
//! (`expires_at`: Unix seconds or RFC 3339).
//!
//! Owns the request and answer formats and what a cached answer is filed
//! under; the keeping is `cache`'s. It reads no token itself beyond the
//! parent's `token` and never sees the socket.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, StatusCode};
use partyline_proto::webhook::WebhookSigner;
use serde::Deserialize;

use super::cache::{AnswerCache, CacheKey};
use super::{
    http_client, query_params, token, Access, AuthConfigError, ConnectRequest, Grant, Refusal,
};

/// The query parameter y-partykit fills with a fresh connection id on every
/// connect. It is sent to the webhook but left out of the cache key, or no
/// PartyKit client would ever be answered from the cache; so the webhook's
/// answer must not depend on it.
pub const CONNECTION_ID_PARAM: &str = "_pk";

/// Request headers forwarded to the webhook unless configured otherwise:
/// what a cookie-session app checks.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &["cookie", "origin", "user-agent"];

/// Longest value of one forwarded header, in bytes; a longer one is cut.
/// Browsers cap a cookie at 4 KiB and send a few of them.
pub(super) const MAX_FORWARDED_VALUE_BYTES: usize = 16 * 1024;

/// How the webhook is asked.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Where connects are POSTed.
    pub url: String,
    /// How long it may take to answer.
    pub timeout: Duration,
    /// How long an answer is reused for the same request.
    pub ttl: Duration,
    /// Answers kept at most.
    pub max_entries: usize,
    /// Request headers sent along (lower-case names).
    pub forward_headers: Vec<HeaderName>,
    /// Signs each request; `None`: unsigned.
    pub signer: Option<WebhookSigner>,
}

/// Asks the app's backend, with a TTL cache of its answers.
pub struct WebhookAuthorizer {
    settings: WebhookSettings,
    client: reqwest::Client,
    cache: AnswerCache,
}

/// What the webhook receives.
#[derive(Debug, serde::Serialize)]
struct WebhookRequest<'a> {
    room: &'a str,
    party: Option<&'a str>,
    token: Option<String>,
    params: BTreeMap<String, String>,
    path: &'a str,
    ip: Option<String>,
    headers: BTreeMap<&'a str, String>,
}

/// What a 200 from the webhook carries.
#[derive(Debug, Deserialize)]
struct WebhookAnswer {
    access: Grant,
    #[serde(default)]
    user: Option<WebhookUser>,
    #[serde(default)]
    expires_at: Option<ExpiresAt>,
}

#[derive(Debug, Deserialize)]
struct WebhookUser {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: Option<String>,
}

/// When a grant ends: Unix seconds, or an RFC 3339 time.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExpiresAt {
    Unix(f64),
    Rfc3339(String),
}

impl ExpiresAt {
    fn time(&self) -> Result<SystemTime, String> {
        match self {
            Self::Unix(seconds) if seconds.is_finite() && *seconds >= 0.0 => {
                Duration::try_from_secs_f64(*seconds)
                    .ok()
                    .and_then(|since| UNIX_EPOCH.checked_add(since))
                    .ok_or_else(|| format!("expires_at {seconds} is out of range"))
            }
            Self::Unix(seconds) => Err(format!("expires_at {seconds} is not a time")),
            Self::Rfc3339(text) => {
                humantime::parse_rfc3339_weak(text).map_err(|e| format!("expires_at {text:?}: {e}"))
            }
        }
    }
}

impl WebhookAuthorizer {
    /// An authorizer asking as `settings` say.
    pub fn new(settings: WebhookSettings) -> Result<Self, AuthConfigError> {
        Ok(Self {
            client: http_client(settings.timeout)?,
            cache: AnswerCache::new(settings.ttl, settings.max_entries),
            settings,
        })
    }

    /// Where the webhook is.
    pub(super) fn url(&self) -> &str {
        &self.settings.url
    }

    /// The request headers it is sent.
    pub(super) fn forward_headers(&self) -> &[HeaderName] {
        &self.settings.forward_headers
    }

    /// Asks the webhook (or the cache) whether this connect may open its
    /// room.
    pub(super) async fn authorize(&self, connect: &ConnectRequest<'_>) -> Result<Access, Refusal> {
        let request = self.request(connect);
        // The same client asking again is answered from the cache until the
        // TTL runs out. Junk params make new keys (the webhook sees every
        // param, so they may change its answer); the gateway's query size
        // cap and `max_entries` bound what that costs. Concurrent identical
        // checks (a reconnect storm) share one call.
        self.cache
            .get_or_ask(cache_key(&request), self.ask(&request))
            .await
    }

    /// Asks the webhook itself (a recheck: the cached answer may be the
    /// one being taken back); its answer replaces the cached one.
    pub(super) async fn authorize_fresh(
        &self,
        connect: &ConnectRequest<'_>,
    ) -> Result<Access, Refusal> {
        let request = self.request(connect);
        let answer = self.ask(&request).await;
        self.cache.keep(cache_key(&request), &answer).await;
        answer
    }

    /// Drops the cached answer for this connect (its session's access was
    /// revoked: a reconnect must ask again).
    pub(super) async fn forget(&self, connect: &ConnectRequest<'_>) {
        self.cache.forget(&cache_key(&self.request(connect))).await;
    }

    fn request<'a>(&'a self, connect: &ConnectRequest<'a>) -> WebhookRequest<'a> {
        WebhookRequest {
            room: connect.room,
            party: connect.party,
            token: token(connect.query, connect.headers),
            params: query_params(connect.query),
            path: connect.path,
            ip: connect.ip.map(|ip| ip.to_string()),
            headers: forwarded(connect.headers, &self.settings.forward_headers),
        }
    }

    async fn ask(&self, request: &WebhookRequest<'_>) -> Result<Access, Refusal> {
        let url = &self.settings.url;
        let unavailable = |why: String| {
            tracing::warn!(%url, room = request.room, reason = %why, "auth webhook failed; refusing the client (fail closed)");
            Refusal::Unavailable(why)
        };
        let body = serde_json::to_vec(request).expect("a request serializes");
        let mut post = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.settings.signer {
            post = post.headers(signer.sign(&body).header_map());
        }
        let response = post
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match response.status() {
            StatusCode::OK => {
                let answer: WebhookAnswer = super::bounded_json(response)
                    .await
                    .map_err(|e| unavailable(format!("bad answer: {e}")))?;
                let expires_at = answer
                    .expires_at
                    .map(|at| at.time())
                    .transpose()
                    .map_err(|e| unavailable(format!("bad answer: {e}")))?;
                let user = answer.user.unwrap_or(WebhookUser {
                    id: String::new(),
                    name: None,
                });
                Ok(Access {
                    identity: user.id,
                    name: user.name,
                    read_only: answer.access == Grant::Read,
                    expires_at,
                })
            }
            StatusCode::UNAUTHORIZED => {
                Err(Refusal::Invalid("refused by the auth webhook".to_owned()))
            }
            StatusCode::FORBIDDEN => Err(Refusal::Forbidden(request.room.to_owned())),
            other => Err(unavailable(format!("answered {other}"))),
        }
    }
}

/// The headers named in `names` that the request carries, by lower-case
/// name; several of one name are joined with `, ` (`; ` for cookies, as
/// HTTP/2 splits them), each value cut at [`MAX_FORWARDED_VALUE_BYTES`].
pub(super) fn forwarded<'a>(
    headers: &HeaderMap,
    names: &'a [HeaderName],
) -> BTreeMap<&'a str, String> {
    names
        .iter()
        .filter_map(|name| {
            let separator = if name == axum::http::header::COOKIE {
                "; "
            } else {
                ", "
            };
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect();
            (!values.is_empty()).then(|| {
                let mut joined = values.join(separator);
                if joined.len() > MAX_FORWARDED_VALUE_BYTES {
                    let mut cut = MAX_FORWARDED_VALUE_BYTES;
                    while !joined.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    joined.truncate(cut);
                }
                (name.as_str(), joined)
            })
        })
        .collect()
}

/// What a cached answer is filed under: SHA-256 of the request without
/// [`CONNECTION_ID_PARAM`]. JSON keeps the fields apart, so no two
/// different requests share a pre-image.
fn cache_key(request: &WebhookRequest<'_>) -> CacheKey {
    use sha2::{Digest, Sha256};
    let params: BTreeMap<&str, &str> = request
        .params
        .iter()
        .filter(|(key, _)| key.as_str() != CONNECTION_ID_PARAM)
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let fields = (
        request.room,
        request.party,
        &request.token,
        params,
        request.path,
        &request.ip,
        &request.headers,
    );
    Sha256::digest(serde_json::to_vec(&fields).unwrap_or_default()).into()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Webhook calls by token, as the webhook saw them.
    type Calls = Arc<Mutex<HashMap<String, usize>>>;

    /// A webhook on a loopback port that lets every token write, answering
    /// after `delay`; its URL and its calls.
    async fn webhook(delay: Duration) -> (String, Calls) {
        let calls = Calls::default();
        let seen = calls.clone();
        let answer = move |axum::Json(body): axum::Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let token = body["token"].as_str().unwrap_or_default().to_owned();
                *seen.lock().unwrap().entry(token).or_default() += 1;
                tokio::time::sleep(delay).await;
                axum::Json(serde_json::json!({"access": "write", "user": {"id": "u"}}))
            }
        };
        let app = axum::Router::new().route("/auth", axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/auth", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn settings(url: &str, ttl: Duration, max_entries: usize) -> WebhookSettings {
        WebhookSettings {
            url: url.to_owned(),
            timeout: Duration::from_secs(5),
            ttl,
            max_entries,
            forward_headers: DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect(),
            signer: None,
        }
    }

    fn authorizer(url: &str, max_entries: usize) -> WebhookAuthorizer {
        WebhookAuthorizer::new(settings(url, Duration::from_secs(60), max_entries)).unwrap()
    }

    async fn check(hook: &WebhookAuthorizer, query: &str) -> Result<Access, Refusal> {
        let headers = HeaderMap::new();
        let connect = ConnectRequest {
            party: Some("main"),
            ..super::super::connect("doc", Some(query), &headers)
        };
        hook.authorize(&connect).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_checks_make_one_webhook_call() {
        let (url, calls) = webhook(Duration::from_millis(300)).await;
        let hook = Arc::new(authorizer(&url, 100));
        // A reconnect storm: each client with its own connection id, which
        // is not part of the key.
        let checks = (0..16).map(|n| {
            let hook = hook.clone();
            tokio::spawn(async move { check(&hook, &format!("_pk={n}&token=t")).await })
        });
        for answer in futures_util::future::join_all(checks).await {
            assert_eq!(answer.unwrap().unwrap().identity, "u");
        }
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.get("t"), Some(&1), "{calls:?}");
    }

    #[tokio::test]
    async fn a_full_cache_stays_bounded_and_keeps_what_is_asked_often() {
        const ENTRIES: usize = 16;
        let (url, calls) = webhook(Duration::ZERO).await;
        let hook = authorizer(&url, ENTRIES);
        // moka counts how often a key is asked only once the cache is half
        // full, and its bookkeeping runs in batches: `len` runs it now.
        for n in 0..ENTRIES / 2 {
            check(&hook, &format!("token=warm-{n}")).await.unwrap();
        }
        hook.cache.len().await;
        for _ in 0..20 {
            check(&hook, "token=often").await.unwrap();
        }
        hook.cache.len().await;
        // Ten times as many one-off clients as there is room for.
        for n in 0..ENTRIES * 10 {
            check(&hook, &format!("token=once-{n}")).await.unwrap();
        }
        let kept = hook.cache.len().await;
        assert!(
            kept <= ENTRIES as u64,
            "{kept} answers kept, over {ENTRIES}"
        );
        check(&hook, "token=often").await.unwrap();
        let calls = calls.lock().unwrap();
        assert_eq!(calls["often"], 1, "the full cache was emptied");
        assert_eq!(calls.len(), 1 + ENTRIES / 2 + ENTRIES * 10);
    }

    #[tokio::test]
    async fn an_answer_over_the_byte_limit_refuses_the_client() {
        let padding = "x".repeat(super::super::MAX_ANSWER_BYTES);
        let answer = move || {
            let padding = padding.clone();
            async move {
                axum::Json(
                    serde_json::json!({"access": "write", "user": {"id": "u", "name": padding}}),
                )
            }
        };
        let app = axum::Router::new().route("/auth", axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/auth", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hook = authorizer(&url, 100);
        match check(&hook, "token=t").await {
            Err(Refusal::Unavailable(why)) => assert!(why.contains("bytes"), "{why}"),
            other => panic!("a huge answer was taken: {:?}", other.map(|a| a.identity)),
        }
    }

    #[tokio::test]
    async fn a_zero_ttl_keeps_no_answer() {
        let (url, calls) = webhook(Duration::ZERO).await;
        let hook = WebhookAuthorizer::new(settings(&url, Duration::ZERO, 100)).unwrap();
        check(&hook, "token=t").await.unwrap();
        check(&hook, "token=t").await.unwrap();
        assert_eq!(calls.lock().unwrap()["t"], 2);
    }

    #[test]
    fn expires_at_reads_unix_seconds_and_rfc_3339() {
        let read = |json: &str| serde_json::from_str::<ExpiresAt>(json).unwrap().time();
        assert_eq!(
            read("1700000000"),
            Ok(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            read("1700000000.5"),
            Ok(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(
            read("\"2023-11-14T22:13:20Z\""),
            Ok(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(read("-1").is_err());
        assert!(read("1e300").is_err());
        assert!(read("\"tomorrow\"").is_err());
    }

    #[test]
    fn only_the_named_headers_are_forwarded_and_long_ones_are_cut() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", "a=1".parse().unwrap());
        headers.append("cookie", "b=2".parse().unwrap());
        headers.insert("x-secret", "no".parse().unwrap());
        headers.insert(
            "user-agent",
            "é".repeat(MAX_FORWARDED_VALUE_BYTES).parse().unwrap(),
        );
        let names = settings("http://x", Duration::ZERO, 1).forward_headers;
        let forwarded = forwarded(&headers, &names);
        assert_eq!(forwarded["cookie"], "a=1; b=2");
        assert!(!forwarded.contains_key("x-secret"));
        assert!(!forwarded.contains_key("origin"));
        assert!(forwarded["user-agent"].len() <= MAX_FORWARDED_VALUE_BYTES);
    }

    #[tokio::test]
    async fn a_cached_grant_past_its_end_is_refused() {
        let answer =
            || async { axum::Json(serde_json::json!({"access": "write", "expires_at": 1})) };
        let app = axum::Router::new().route("/auth", axum::routing::post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/auth", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let authorizer =
            super::super::Authorizer::Webhook(std::sync::Arc::new(authorizer(&url, 10)));
        let headers = HeaderMap::new();
        let refused = authorizer
            .authorize(&super::super::connect("doc", Some("token=t"), &headers))
            .await;
        assert_eq!(
            refused,
            Err(Refusal::Invalid("the grant has expired".to_owned()))
        );
    }

    #[test]
    fn cache_keys_ignore_only_the_connection_id() {
        let request = |room, query: &str| WebhookRequest {
            room,
            party: Some("main"),
            token: token(Some(query), &HeaderMap::new()),
            params: query_params(Some(query)),
            path: "/parties/main/r",
            ip: None,
            headers: BTreeMap::new(),
        };
        let key = |room, query: &str| cache_key(&request(room, query));
        assert_eq!(key("r", "_pk=1&token=t"), key("r", "_pk=2&token=t"));
        assert_ne!(key("r", "token=t"), key("r", "token=u"));
        assert_ne!(key("r", "token=t"), key("s", "token=t"));
        assert_ne!(key("r", "token=t&a=1"), key("r", "token=t&a=2"));
        assert_ne!(
            key("r", "a=1&b=2"),
            key("r", "a=1%26b%3D2"),
            "params stay apart"
        );
    }
}
