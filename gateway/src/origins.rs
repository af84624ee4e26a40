//! Which web pages may use this gateway (`--allowed-origins`): the
//! `Origin` a browser sends with every WebSocket upgrade and cross-origin
//! API call is checked before anything else runs, and a page of another
//! origin is refused with 403. Requests without an `Origin` (servers, Node
//! clients) are not browsers acting for a page, and pass: an origin check
//! protects users' browsers, not the server from a client that can write
//! any header it likes.
//!
//! Owns the patterns and the API's CORS answers; the caller decides where
//! they apply.

use axum::http::{header, HeaderMap, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: every origin.
    Any,
    /// `https://app.example.com` (scheme, host and port as browsers send
    /// them).
    Exact(String),
    /// `https://*.example.com`: any subdomain of `example.com` over
    /// `https`, not `example.com` itself.
    Subdomains {
        /// `https://`.
        scheme: String,
        /// `.example.com`.
        suffix: String,
    },
}

/// The origins allowed; [`AllowedOrigins::any`] when none are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins {
    patterns: Vec<Pattern>,
}

impl Default for AllowedOrigins {
    fn default() -> Self {
        Self::any()
    }
}

impl AllowedOrigins {
    /// Every origin (`partyline dev`'s default).
    pub fn any() -> Self {
        Self {
            patterns: vec![Pattern::Any],
        }
    }

    /// Reads `--allowed-origins` entries: `*`, `https://app.example.com`,
    /// `https://*.example.com`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let patterns = entries
            .iter()
            .map(|entry| entry.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .map(|entry| parse_pattern(&entry))
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err("--allowed-origins names no origin (use * for any)".to_owned());
        }
        Ok(Self { patterns })
    }

    /// The patterns as written (normalised), for printing the config.
    pub fn entries(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|pattern| match pattern {
                Pattern::Any => "*".to_owned(),
                Pattern::Exact(origin) => origin.clone(),
                Pattern::Subdomains { scheme, suffix } => format!("{scheme}*{suffix}"),
            })
            .collect()
    }

    /// Whether every origin is allowed.
    pub fn allows_any(&self) -> bool {
        self.patterns.contains(&Pattern::Any)
    }

    /// Whether a page of `origin` may connect.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        self.patterns.iter().any(|pattern| match pattern {
            Pattern::Any => true,
            Pattern::Exact(exact) => *exact == origin,
            Pattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                }),
        })
    }

    /// The request's `Origin` when it is one that is not allowed (what to
    /// refuse with 403); `None` when there is none or it is allowed.
    pub fn refused<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        headers
            .get(header::ORIGIN)
            .filter(|origin| !self.allows(origin.as_bytes()))
    }

    /// CORS for the HTTP API: preflights answered and responses marked for
    /// allowed origins (the API's bearer key is a header, so no
    /// credentials mode is needed).
    pub fn cors(&self) -> CorsLayer {
        let allowed = self.clone();
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |origin, _| {
                allowed.allows(origin.as_bytes())
            }))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600))
    }
}

fn parse_pattern(entry: &str) -> Result<Pattern, String> {
    if entry == "*" {
        return Ok(Pattern::Any);
    }
    let bad = |why: &str| format!("allowed origin {entry:?}: {why}");
    let (scheme, host) = entry
        .split_once("://")
        .ok_or_else(|| bad("write it as scheme://host[:port], e.g. https://app.example.com"))?;
    if scheme.is_empty() || host.is_empty() || host.contains('/') {
        return Err(bad("write it as scheme://host[:port], without a path"));
    }
    match host.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && !suffix.contains('*') && suffix.len() > 1 => {
            Ok(Pattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: suffix.to_owned(),
            })
        }
        Some(_) => Err(bad(
            "a wildcard stands for subdomains only: https://*.example.com",
        )),
        None if host.contains('*') => Err(bad(
            "a wildcard stands for subdomains only: https://*.example.com",
        )),
        None => Ok(Pattern::Exact(entry.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_origins_and_subdomain_patterns() {
        let allowed = origins(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:5173/",
        ]);
        assert!(allowed.allows(b"https://app.example.com"));
        assert!(allowed.allows(b"HTTPS://App.Example.com"));
        assert!(!allowed.allows(b"http://app.example.com"));
        assert!(!allowed.allows(b"https://app.example.com.evil.net"));
        assert!(allowed.allows(b"https://a.example.org"));
        assert!(allowed.allows(b"https://a.b.example.org"));
        assert!(!allowed.allows(b"https://example.org"));
        assert!(!allowed.allows(b"https://evilexample.org"));
        assert!(!allowed.allows(b"https://a.example.org:8443"));
        assert!(!allowed.allows(b"https://x/y.example.org"));
        assert!(allowed.allows(b"http://localhost:5173"));
        assert!(!allowed.allows(b"null"));
        assert!(!allowed.allows(&[0xff]));
        assert!(!allowed.allows_any());
        assert!(origins(&["*"]).allows(b"null"));
    }

    #[test]
    fn a_request_without_an_origin_is_not_refused() {
        let allowed = origins(&["https://app.example.com"]);
        let mut headers = HeaderMap::new();
        assert!(allowed.refused(&headers).is_none());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(allowed.refused(&headers).is_some());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example.com"),
        );
        assert!(allowed.refused(&headers).is_none());
    }

    #[test]
    fn bad_patterns_are_named() {
        for bad in [
            "example.com",
            "https://*",
            "https://a.*.com",
            "https://*example.com",
            "https://x.com/path",
            "",
        ] {
            let entries = vec![bad.to_owned()];
            assert!(
                AllowedOrigins::parse(&entries).is_err(),
                "{bad:?} was taken"
            );
        }
    }
}
