//! The app's backend decides: each connect's room, party, token and query
//! parameters are posted to `webhook_url`, and its answer (200 with an
//! access, 401, 403) is the decision; anything else, or no answer within
//! `webhook_timeout`, refuses the client (fail closed).
//!
//! Owns the request and answer formats and what a cached answer is filed
//! under; the keeping is `cache`'s. It reads no token itself beyond the
//! parent's `token` and never sees the socket.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::cache::{AnswerCache, CacheKey};
use super::{http_client, query_params, token, Access, AuthConfigError, Grant, Refusal};

/// The query parameter y-partykit fills with a fresh connection id on every
/// connect. It is sent to the webhook but left out of the cache key, or no
/// PartyKit client would ever be answered from the cache; so the webhook's
/// answer must not depend on it.
pub const CONNECTION_ID_PARAM: &str = "_pk";

/// Asks the app's backend, with a TTL cache of its answers.
pub struct WebhookAuthorizer {
    url: String,
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
}

/// What a 200 from the webhook carries.
#[derive(Debug, Deserialize)]
struct WebhookAnswer {
    access: Grant,
    #[serde(default)]
    user: Option<WebhookUser>,
}

#[derive(Debug, Deserialize)]
struct WebhookUser {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: Option<String>,
}

impl WebhookAuthorizer {
    /// Posts to `url`, waits at most `timeout`, caches answers for `ttl`
    /// (up to `max_entries` of them).
    pub fn new(
        url: &str,
        timeout: Duration,
        ttl: Duration,
        max_entries: usize,
    ) -> Result<Self, AuthConfigError> {
        Ok(Self {
            url: url.to_owned(),
            client: http_client(timeout)?,
            cache: AnswerCache::new(ttl, max_entries),
        })
    }

    /// Where the webhook is.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// Asks the webhook (or the cache) whether this connect may open `room`.
    pub(super) async fn authorize(
        &self,
        room: &str,
        party: Option<&str>,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Access, Refusal> {
        let request = WebhookRequest {
            room,
            party,
            token: token(query, headers),
            params: query_params(query),
        };
        // The same client asking again is answered from the cache until the
        // TTL runs out. Junk params make new keys (the webhook sees every
        // param, so they may change its answer); the gateway's query size
        // cap and `max_entries` bound what that costs. Concurrent identical
        // checks (a reconnect storm) share one call.
        self.cache
            .get_or_ask(cache_key(&request), self.ask(&request))
            .await
    }

    async fn ask(&self, request: &WebhookRequest<'_>) -> Result<Access, Refusal> {
        let unavailable = |why: String| {
            tracing::warn!(url = %self.url, room = request.room, reason = %why, "auth webhook failed; refusing the client (fail closed)");
            Refusal::Unavailable(why)
        };
        let response = self
            .client
            .post(&self.url)
            .json(request)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match response.status() {
            StatusCode::OK => {
                let answer: WebhookAnswer = super::bounded_json(response)
                    .await
                    .map_err(|e| unavailable(format!("bad answer: {e}")))?;
                let user = answer.user.unwrap_or(WebhookUser {
                    id: String::new(),
                    name: None,
                });
                Ok(Access {
                    identity: user.id,
                    name: user.name,
                    read_only: answer.access == Grant::Read,
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
    let fields = (request.room, request.party, &request.token, params);
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

    fn authorizer(url: &str, max_entries: usize) -> WebhookAuthorizer {
        let (timeout, ttl) = (Duration::from_secs(5), Duration::from_secs(60));
        WebhookAuthorizer::new(url, timeout, ttl, max_entries).unwrap()
    }

    async fn check(hook: &WebhookAuthorizer, query: &str) -> Result<Access, Refusal> {
        hook.authorize("doc", Some("main"), Some(query), &HeaderMap::new())
            .await
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
        let hook =
            WebhookAuthorizer::new(&url, Duration::from_secs(5), Duration::ZERO, 100).unwrap();
        check(&hook, "token=t").await.unwrap();
        check(&hook, "token=t").await.unwrap();
        assert_eq!(calls.lock().unwrap()["t"], 2);
    }

    #[test]
    fn cache_keys_ignore_only_the_connection_id() {
        let request = |room, query: &str| WebhookRequest {
            room,
            party: Some("main"),
            token: token(Some(query), &HeaderMap::new()),
            params: query_params(Some(query)),
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
