//! Signed client tokens: HS256 with a shared secret, RS256/ES256/EdDSA
//! with a PEM public key, or the keys of a JWKS URL (fetched again, at most
//! once per `min_refresh`, when a token names an unknown `kid`).
//!
//! Owns signature and claim checks (`exp`, `nbf`, `iss`, `aud`, no `crit`)
//! and reading a token's room grant. Where the token comes from is the
//! parent's (`token`); this module never reads a request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{http_client, Access, AuthConfigError, Grant, Refusal};

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash (256 bits); a shorter one can be guessed offline
/// from any token a client holds.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// Longest JOSE header segment read, in bytes of base64url: ours are a few
/// dozen; this only stops a client making the gateway decode a huge one.
const MAX_HEADER_SEGMENT_BYTES: usize = 4096;

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
struct Jwks {
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
    fn new(url: &str, min_refresh: Duration) -> Result<Self, AuthConfigError> {
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
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?;
        let set: jsonwebtoken::jwk::JwkSet = super::bounded_json(response).await?;
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
    /// Required (`set_required_spec_claims`), checked by jsonwebtoken;
    /// read here to end the session when it passes.
    exp: u64,
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

    /// The algorithms a token may be signed with.
    pub(super) fn algorithms(&self) -> &[Algorithm] {
        &self.validation.algorithms
    }

    /// Verifies `token` and reads its grant of `room`.
    pub(super) async fn authorize(&self, token: &str, room: &str) -> Result<Access, Refusal> {
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
                // The instant jsonwebtoken would start refusing the token.
                // (None past what a SystemTime holds: no end.)
                expires_at: UNIX_EPOCH
                    .checked_add(Duration::from_secs(claims.exp.saturating_add(LEEWAY_SECS))),
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

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, StatusCode};
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::auth::Authorizer;

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
            futures_util::FutureExt::now_or_never(auth.authorize(&super::super::connect(
                room,
                Some(&q),
                &headers,
            )))
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
                .authorize(&super::super::connect(
                    "room",
                    Some(&query(&token)),
                    &headers,
                ))
                .await
                .unwrap_err();
            assert_eq!(
                refused.status(),
                StatusCode::UNAUTHORIZED,
                "{token}: {refused}"
            );
        }
        assert_eq!(
            futures_util::FutureExt::now_or_never(auth.authorize(&super::super::connect(
                "room",
                Some("_pk=1"),
                &headers
            )))
            .unwrap(),
            Err(Refusal::Missing)
        );
        let good =
            sign(serde_json::json!({"sub": "u", "exp": now() + 60, "iss": "app", "rooms": rooms}));
        assert!(auth
            .authorize(&super::super::connect(
                "room",
                Some(&query(&good)),
                &headers
            ))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn grants_end_at_exp_plus_leeway_and_long_user_ids_are_refused() {
        let auth = Authorizer::Jwt(Box::new(JwtAuthorizer::with_secret(SECRET).unwrap()));
        let headers = HeaderMap::new();
        let exp = now() + 600;
        let token = sign(serde_json::json!({"sub": "u", "exp": exp, "rooms": {"*": "write"}}));
        let first = query(&token);
        let access = auth
            .authorize(&super::super::connect("room", Some(&first), &headers))
            .await
            .unwrap();
        let end = std::time::UNIX_EPOCH + Duration::from_secs(exp + LEEWAY_SECS);
        assert_eq!(access.expires_at, Some(end));
        let long = "u".repeat(super::super::MAX_USER_ID_BYTES + 1);
        let token = sign(serde_json::json!({"sub": long, "exp": exp, "rooms": {"*": "write"}}));
        let second = query(&token);
        let refused = auth
            .authorize(&super::super::connect("room", Some(&second), &headers))
            .await;
        assert!(matches!(refused, Err(Refusal::Invalid(why)) if why.contains("user id")));
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
            async move {
                auth.authorize(&super::super::connect("room", Some(&query), &headers))
                    .await
            }
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
    fn short_secrets_are_refused() {
        for secret in [&b""[..], b"short", &[b'x'; MIN_SECRET_BYTES - 1]] {
            assert!(matches!(
                JwtAuthorizer::with_secret(secret),
                Err(AuthConfigError::ShortSecret(len)) if len == secret.len()
            ));
        }
        assert!(JwtAuthorizer::with_secret(&[b'x'; MIN_SECRET_BYTES]).is_ok());
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
