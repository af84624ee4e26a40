//! Who may open a room, decided by the gateway before the WebSocket
//! upgrade. The token comes from the `token` query parameter (what
//! y-partykit's `params` and y-websocket's `params` send), an
//! `Authorization: Bearer` header, or the `Sec-WebSocket-Protocol` header.
//!
//! `jwt` verifies a signed token (HS256 with a shared secret; RS256, ES256 or
//! EdDSA with a PEM public key or the keys of a JWKS URL, fetched again when
//! a token names an unknown `kid` so key rotation needs no restart; `alg:
//! none` and every other algorithm are refused) and reads a grant of rooms from its `rooms` claim: exact names
//! or prefix patterns ending in `*`, each `"read"` or `"write"`; the exact
//! name wins, then the longest pattern. `none` lets every client write,
//! anonymously (only for `partyline dev` or with `--insecure-no-auth`).
//!
//! Beyond the signature a token must pass `exp` and `nbf` (both with
//! [`LEEWAY_SECS`] of clock skew), carry no `crit` header (we implement no
//! extension, so RFC 7515 §4.1.11 says refuse), and carry an `aud` only
//! when an audience is configured, and then that one: a token minted for
//! another service must not open rooms here.
//!
//! Decisions are made per connect: revocation is lazy, as PartyKit apps
//! expect (an open session continues; the next connect is checked again).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash (256 bits); a shorter one can be guessed offline
/// from any token a client holds.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Longest JOSE header segment read, in bytes of base64url: ours are a few
/// dozen; this only stops a client making the gateway decode a huge one.
const MAX_HEADER_SEGMENT_BYTES: usize = 4096;

/// How clients are authorized.
#[derive(Clone, Default)]
pub enum Authorizer {
    /// Everyone may write, anonymously.
    #[default]
    None,
    /// Signed tokens with a room grant.
    Jwt(Box<JwtAuthorizer>),
    /// The app's backend decides.
    Webhook(Arc<WebhookAuthorizer>),
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Jwt(jwt) => write!(f, "Jwt({:?})", jwt.validation.algorithms),
            Self::Webhook(hook) => write!(f, "Webhook({})", hook.url),
        }
    }
}

/// A session's identity and rights, as the room node enforces them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The token's `sub`, "" for anonymous.
    pub identity: String,
    /// The token's `name`, when given.
    pub name: Option<String>,
    /// Document updates are refused.
    pub read_only: bool,
}

/// Why a client may not open a room; the HTTP answer before the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token where one is needed.
    #[error("a token is required")]
    Missing,
    /// The token is malformed, badly signed, expired or of the wrong issuer.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token without a grant for this room.
    #[error("the token grants no access to room {0}")]
    Forbidden(String),
    /// The authorizer could not decide (webhook down, slow or erring):
    /// refused, fail closed.
    #[error("authorization unavailable: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The refusal as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::Invalid(_) => "token_invalid",
            Self::Forbidden(_) => "forbidden",
            Self::Unavailable(_) => "auth_unavailable",
        }
    }

    /// 401 for missing or bad tokens, 403 for a valid token without access.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Why an authorizer could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The PEM key could not be read as any supported key type.
    #[error("public key is not an RSA, EC (P-256) or Ed25519 PEM key: {0}")]
    BadKey(String),
    /// Neither a secret nor a key.
    #[error("jwt auth needs a secret or a public key")]
    NoKey,
    /// An HS256 secret shorter than [`MIN_SECRET_BYTES`].
    #[error("the HS256 secret is {0} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)")]
    ShortSecret(usize),
    /// The HTTP client for a webhook or JWKS URL could not be built.
    #[error("http client: {0}")]
    Http(String),
}

/// An HTTP client that gives up after `timeout`; without one a hung
/// webhook or JWKS server would hold connects forever.
fn http_client(timeout: Duration) -> Result<reqwest::Client, AuthConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| AuthConfigError::Http(e.to_string()))
}

/// JWT verification settings and keys.
#[derive(Clone)]
pub struct JwtAuthorizer {
    keys: Keys,
    validation: Validation,
}

/// Where verification keys come from.
#[derive(Clone)]
enum Keys {
    /// One configured key.
    Static(DecodingKey),
    /// A JWKS document, by `kid`.
    Jwks(Arc<Jwks>),
}

/// A JWKS URL's keys, fetched at start and again when a token names a
/// `kid` we do not know (at most once per `min_refresh`).
pub struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: Mutex<HashMap<String, (DecodingKey, Algorithm)>>,
    last_fetch: Mutex<Option<Instant>>,
    min_refresh: Duration,
}

/// Algorithms a JWKS key may use (never `none`, never HMAC from a public document).
const JWKS_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Jwks {
    /// Keys from `url`, refreshed at most once per `min_refresh`.
    pub fn new(url: &str, min_refresh: Duration) -> Result<Self, AuthConfigError> {
        Ok(Self {
            url: url.to_owned(),
            client: http_client(Duration::from_secs(5))?,
            keys: Mutex::default(),
            last_fetch: Mutex::default(),
            min_refresh,
        })
    }

    fn lookup(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    /// The key for `kid`, fetching the document again if it is unknown.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), Refusal> {
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        let due = {
            let mut last = self
                .last_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = last.is_none_or(|at| at.elapsed() >= self.min_refresh);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            if let Err(error) = self.fetch().await {
                tracing::warn!(url = %self.url, %error, "cannot fetch the JWKS");
            }
        }
        self.lookup(kid)
            .ok_or_else(|| Refusal::Invalid(format!("unknown key id {kid:?}")))
    }

    async fn fetch(&self) -> Result<usize, String> {
        let set: jsonwebtoken::jwk::JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|alg| alg.to_string().parse::<Algorithm>().ok());
            let (Some(algorithm), Ok(key)) = (algorithm, DecodingKey::from_jwk(jwk)) else {
                continue;
            };
            if JWKS_ALGORITHMS.contains(&algorithm) {
                keys.insert(kid, (key, algorithm));
            }
        }
        let count = keys.len();
        *self.keys.lock().unwrap_or_else(PoisonError::into_inner) = keys;
        tracing::info!(url = %self.url, keys = count, "JWKS fetched");
        Ok(count)
    }
}

/// The claims Partyline reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    /// Room name or `prefix*` → "read" | "write".
    #[serde(default)]
    rooms: BTreeMap<String, Grant>,
    /// Only whether it is there: jsonwebtoken checks its value when an
    /// audience is configured, but lets an `aud` of an unexpected type
    /// through when none is.
    #[serde(default)]
    aud: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Grant {
    Read,
    Write,
}

impl JwtAuthorizer {
    /// Verifies HS256 tokens with `secret` (at least [`MIN_SECRET_BYTES`]).
    pub fn with_secret(secret: &[u8]) -> Result<Self, AuthConfigError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::ShortSecret(secret.len()));
        }
        Ok(Self::new(
            DecodingKey::from_secret(secret),
            vec![Algorithm::HS256],
        ))
    }

    /// Verifies tokens signed by the private half of `pem` (RSA → RS256,
    /// EC P-256 → ES256, Ed25519 → EdDSA).
    pub fn with_public_key(pem: &[u8]) -> Result<Self, AuthConfigError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::new(key, vec![Algorithm::RS256]));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::new(key, vec![Algorithm::ES256]));
        }
        match DecodingKey::from_ed_pem(pem) {
            Ok(key) => Ok(Self::new(key, vec![Algorithm::EdDSA])),
            Err(error) => Err(AuthConfigError::BadKey(error.to_string())),
        }
    }

    /// Verifies tokens with the keys of a JWKS document (each token's
    /// `kid` picks the key; RS*, PS256, ES256/384 and EdDSA only).
    pub async fn with_jwks(url: &str) -> Result<Self, AuthConfigError> {
        let jwks = Jwks::new(url, Duration::from_secs(1))?;
        if let Err(error) = jwks.fetch().await {
            // Not fatal: the first token with a kid fetches it again.
            tracing::warn!(%url, %error, "cannot fetch the JWKS yet");
        }
        *jwks
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        Ok(Self::with_keys(
            Keys::Jwks(Arc::new(jwks)),
            JWKS_ALGORITHMS.to_vec(),
        ))
    }

    fn new(key: DecodingKey, algorithms: Vec<Algorithm>) -> Self {
        Self::with_keys(Keys::Static(key), algorithms)
    }

    fn with_keys(keys: Keys, algorithms: Vec<Algorithm>) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        // `validate_aud` stays on with no audience set: jsonwebtoken then
        // refuses any token that names one.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self { keys, validation }
    }

    /// Also requires this `iss`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self
    }

    /// Also requires this `aud`.
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        // Without this a token with no `aud` at all would pass.
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    async fn authorize(&self, token: &str, room: &str) -> Result<Access, Refusal> {
        let invalid = |error: jsonwebtoken::errors::Error| Refusal::Invalid(error.to_string());
        refuse_critical_header(token)?;
        let claims = match &self.keys {
            Keys::Static(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
                let kid = header
                    .kid
                    .ok_or_else(|| Refusal::Invalid("the token names no key id".to_owned()))?;
                let (key, algorithm) = jwks.key(&kid).await?;
                // The key's own algorithm, whatever the header claims.
                let mut validation = self.validation.clone();
                validation.algorithms = vec![algorithm];
                jsonwebtoken::decode::<Claims>(token, &key, &validation)
            }
        }
        .map_err(invalid)?
        .claims;
        if claims.aud.is_some() && self.validation.aud.is_none() {
            return Err(Refusal::Invalid(
                "the token names an audience and this server is configured with none".to_owned(),
            ));
        }
        let grant = claims.rooms.get(room).copied().or_else(|| {
            claims
                .rooms
                .iter()
                .filter_map(|(pattern, grant)| {
                    let prefix = pattern.strip_suffix('*')?;
                    room.starts_with(prefix).then_some((prefix.len(), *grant))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, grant)| grant)
        });
        match grant {
            Some(grant) => Ok(Access {
                identity: claims.sub,
                name: claims.name,
                read_only: grant == Grant::Read,
            }),
            None => Err(Refusal::Forbidden(room.to_owned())),
        }
    }
}

/// Refuses a token whose JOSE header carries `crit`. Read from the raw
/// header JSON, not jsonwebtoken's parsed `Header`, which would take
/// `"crit": null` for no `crit` at all.
fn refuse_critical_header(token: &str) -> Result<(), Refusal> {
    use base64::Engine as _;
    let malformed = |why: &str| Refusal::Invalid(format!("malformed token header: {why}"));
    let segment = token
        .split('.')
        .next()
        .filter(|_| token.split('.').count() == 3)
        .ok_or_else(|| malformed("not three segments"))?;
    if segment.len() > MAX_HEADER_SEGMENT_BYTES {
        return Err(malformed("too long"));
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed("not base64url"))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| malformed("not a JSON object"))?;
    if header.contains_key("crit") {
        return Err(Refusal::Invalid(
            "the token header has critical extensions (crit), none of which this server implements"
                .to_owned(),
        ));
    }
    Ok(())
}

impl Authorizer {
    /// Decides whether this upgrade request may open `room` (of PartyKit
    /// `party`, if any).
    pub async fn authorize(
        &self,
        room: &str,
        party: Option<&str>,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Access, Refusal> {
        match self {
            Self::None => Ok(Access {
                identity: String::new(),
                name: None,
                read_only: false,
            }),
            Self::Jwt(jwt) => {
                let token = token(query, headers).ok_or(Refusal::Missing)?;
                jwt.authorize(&token, room).await
            }
            Self::Webhook(hook) => hook.authorize(room, party, query, headers).await,
        }
    }

    /// Whether clients must present a token.
    pub fn requires_token(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// A webhook answer and when it came.
type Cached = (Instant, Result<Access, Refusal>);

/// The query parameter y-partykit fills with a fresh connection id on every
/// connect. It is sent to the webhook but left out of the cache key, or no
/// PartyKit client would ever be answered from the cache; so the webhook's
/// answer must not depend on it.
pub const CONNECTION_ID_PARAM: &str = "_pk";

/// SHA-256 of a webhook request without [`CONNECTION_ID_PARAM`]: a cache
/// entry costs 32 bytes of key however long the token and params were.
type CacheKey = [u8; 32];

/// Asks the app's backend, with a TTL cache of its answers.
pub struct WebhookAuthorizer {
    url: String,
    client: reqwest::Client,
    ttl: Duration,
    max_entries: usize,
    cache: Mutex<HashMap<CacheKey, Cached>>,
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
            ttl,
            max_entries,
            cache: Mutex::default(),
        })
    }

    async fn authorize(
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
        // cap and `max_entries` bound what that costs.
        let key = cache_key(&request);
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let answer = self.ask(&request).await;
        if !matches!(answer, Err(Refusal::Unavailable(_))) {
            self.remember(key, answer.clone());
        }
        answer
    }

    fn cached(&self, key: &CacheKey) -> Option<Result<Access, Refusal>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, answer) = cache.get(key)?;
        (at.elapsed() < self.ttl).then(|| answer.clone())
    }

    fn remember(&self, key: CacheKey, answer: Result<Access, Refusal>) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.max_entries {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= self.max_entries {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), answer));
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
                let answer: WebhookAnswer = response
                    .json()
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

/// What a cached answer is filed under (see [`CacheKey`]). JSON keeps the
/// fields apart, so no two different requests share a pre-image.
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

/// The query's parameters, percent-decoded (later duplicates win).
fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

/// The client's token: `?token=`, `Authorization: Bearer`, or a
/// `Sec-WebSocket-Protocol` entry shaped like a JWT.
pub fn token(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query_params(query).remove("token");
    let from_bearer = || {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    };
    from_query
        .filter(|t| !t.is_empty())
        .or_else(from_bearer)
        .or_else(|| protocol_token(headers))
}

/// A JWT-shaped entry of `Sec-WebSocket-Protocol`; the gateway must echo
/// it back as the chosen protocol or browsers drop the connection.
pub fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    value
        .split(',')
        .map(str::trim)
        .find(|entry| entry.matches('.').count() == 2)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn query(token: &str) -> String {
        format!("_pk=abc&token={token}")
    }

    #[test]
    fn grants_exact_names_and_the_longest_prefix() {
        let auth = Authorizer::Jwt(Box::new(JwtAuthorizer::with_secret(SECRET).unwrap()));
        let token = sign(serde_json::json!({
            "sub": "u1", "name": "Ada", "exp": now() + 60,
            "rooms": {"doc-*": "read", "doc-mine-*": "write", "doc-shared": "write"}
        }));
        let q = query(&token);
        let headers = HeaderMap::new();
        let check = |room: &str| {
            futures_util::FutureExt::now_or_never(auth.authorize(room, None, Some(&q), &headers))
                .unwrap()
        };
        assert!(check("doc-1").unwrap().read_only);
        assert!(!check("doc-mine-1").unwrap().read_only);
        assert!(!check("doc-shared").unwrap().read_only);
        assert_eq!(check("doc-1").unwrap().identity, "u1");
        assert_eq!(check("doc-1").unwrap().name.as_deref(), Some("Ada"));
        assert_eq!(
            check("diagram-1"),
            Err(Refusal::Forbidden("diagram-1".into()))
        );
    }

    #[tokio::test]
    async fn bad_tokens_are_refused_with_401() {
        let auth = Authorizer::Jwt(Box::new(
            JwtAuthorizer::with_secret(SECRET).unwrap().issuer("app"),
        ));
        let headers = HeaderMap::new();
        let rooms = serde_json::json!({"*": "write"});
        let expired = sign(
            serde_json::json!({"sub": "u", "exp": now() - 3600, "iss": "app", "rooms": rooms}),
        );
        let wrong_issuer = sign(
            serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "other", "rooms": rooms}),
        );
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "app", "rooms": rooms}),
            &EncodingKey::from_secret(b"not-the-secret"),
        )
        .unwrap();
        // alg "none": header {"alg":"none"}, no signature.
        let none = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            base64_url(
                &serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "app", "rooms": rooms})
                    .to_string()
            )
        );
        let not_yet = sign(serde_json::json!({
            "sub": "u", "exp": now() + 7200, "nbf": now() + 3600, "iss": "app", "rooms": rooms
        }));
        let mut critical_header = Header::new(Algorithm::HS256);
        critical_header.crit = Some(vec!["exp".to_owned()]);
        let critical = jsonwebtoken::encode(
            &critical_header,
            &serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "app", "rooms": rooms}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let other_audience = sign(serde_json::json!({
            "sub": "u", "exp": now() + 60, "iss": "app", "aud": "billing", "rooms": rooms
        }));
        let odd_audience = sign(serde_json::json!({
            "sub": "u", "exp": now() + 60, "iss": "app", "aud": 7, "rooms": rooms
        }));
        for token in [
            expired,
            wrong_issuer,
            forged,
            none,
            not_yet,
            critical,
            other_audience,
            odd_audience,
            "garbage".to_owned(),
        ] {
            let refused = auth
                .authorize("room", None, Some(&query(&token)), &headers)
                .await
                .unwrap_err();
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{token}: {refused}"
            );
        }
        assert_eq!(
            futures_util::FutureExt::now_or_never(auth.authorize(
                "room",
                None,
                Some("_pk=1"),
                &headers
            ))
            .unwrap(),
            Err(Refusal::Missing)
        );
        let good =
            sign(serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "app", "rooms": rooms}));
        assert!(auth
            .authorize("room", None, Some(&query(&good)), &headers)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn audiences_and_nbf_within_the_leeway() {
        let rooms = serde_json::json!({"*": "write"});
        let headers = HeaderMap::new();
        let for_us =
            sign(serde_json::json!({"sub": "u", "exp": now() + 60, "aud": "docs", "rooms": rooms}));
        let no_aud = sign(serde_json::json!({"sub": "u", "exp": now() + 60, "rooms": rooms}));
        let just_started = sign(serde_json::json!({
            "sub": "u", "exp": now() + 60, "nbf": now() + LEEWAY_SECS - 2, "rooms": rooms
        }));
        let with_audience = Authorizer::Jwt(Box::new(
            JwtAuthorizer::with_secret(SECRET).unwrap().audience("docs"),
        ));
        let without = Authorizer::Jwt(Box::new(JwtAuthorizer::with_secret(SECRET).unwrap()));
        let check = |auth: &Authorizer, token: &str| {
            let query = query(token);
            let auth = auth.clone();
            let headers = headers.clone();
            async move { auth.authorize("room", None, Some(&query), &headers).await }
        };
        assert!(check(&with_audience, &for_us).await.is_ok());
        assert!(
            check(&with_audience, &no_aud).await.is_err(),
            "an audience is configured, so it is required"
        );
        assert!(check(&without, &no_aud).await.is_ok());
        assert!(check(&without, &for_us).await.is_err());
        assert!(
            check(&without, &just_started).await.is_ok(),
            "nbf has the leeway"
        );
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

    #[test]
    fn short_secrets_are_refused() {
        for secret in [&b""[..], b"short", &[b'x'; MIN_SECRET_BYTES - 1]] {
            assert!(matches!(
                JwtAuthorizer::with_secret(secret),
                Err(AuthConfigError::ShortSecret(len)) if len == secret.len()
            ));
        }
        assert!(JwtAuthorizer::with_secret(&[b'x'; MIN_SECRET_BYTES]).is_ok());
    }

    #[test]
    fn the_token_comes_from_query_bearer_or_protocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            token(Some("token=a%2Eb.c"), &headers).as_deref(),
            Some("a.b.c")
        );
        headers.insert(header::AUTHORIZATION, "Bearer x.y.z".parse().unwrap());
        assert_eq!(token(None, &headers).as_deref(), Some("x.y.z"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "y-sync, p.q.r".parse().unwrap(),
        );
        assert_eq!(token(None, &headers).as_deref(), Some("p.q.r"));
        assert_eq!(token(Some("_pk=1"), &HeaderMap::new()), None);
    }

    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
