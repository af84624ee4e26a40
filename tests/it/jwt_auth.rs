//! HS256 JWT authorization through `partyline dev`: a secret shorter than
//! 32 bytes (the empty one included) refuses to start; tokens that are not
//! valid yet (`nbf`), carry a `crit` header, or name an audience when none
//! is configured get HTTP 401 before the upgrade, while a plain valid token
//! is let in.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::common::process::run_to_exit;
use crate::common::{status_of, DevServer};

const SECRET: &str = "jwt-auth-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(header: &Header, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn a_short_or_empty_secret_refuses_to_start() {
    for secret in ["", "only-31-bytes-long-0123456789ab"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().display().to_string();
        let exited = run_to_exit(
            &[
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &data,
                "--auth-mode",
                "jwt",
                "--jwt-secret",
                secret,
            ],
            Duration::from_secs(30),
        );
        assert!(!exited.status.success(), "{secret:?} was accepted");
        assert!(
            exited.stderr.contains("--jwt-secret") && exited.stderr.contains("at least 32"),
            "{secret:?}: stderr {}",
            exited.stderr
        );
        assert!(
            !exited.stdout.contains("listening"),
            "{secret:?}: served before refusing: {}",
            exited.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_crit_and_an_unexpected_audience_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = DevServer::start(dir.path(), &["--auth-mode", "jwt", "--jwt-secret", SECRET]);
    let room = "doc-jwt";
    let url = |token: &str| server.url(&format!("{room}?token={token}"));
    let claims = |extra: serde_json::Value| {
        let mut claims =
            serde_json::json!({"sub": "u", "exp": now() + 600, "rooms": {room: "write"}});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    let hs256 = Header::new(Algorithm::HS256);

    let good = status_of(&url(&sign(&hs256, claims(serde_json::json!({})))))
        .await
        .expect("a valid token is let in");
    good.wait_synced(WAIT).await.unwrap();
    let started = status_of(&url(&sign(
        &hs256,
        claims(serde_json::json!({"nbf": now() - 10})),
    )))
    .await
    .expect("a token valid since 10 s is let in");
    started.wait_synced(WAIT).await.unwrap();

    let mut critical = Header::new(Algorithm::HS256);
    critical.crit = Some(vec!["exp".to_owned()]);
    let refused = [
        (
            "nbf in an hour",
            sign(&hs256, claims(serde_json::json!({"nbf": now() + 3600}))),
        ),
        (
            "crit header",
            sign(&critical, claims(serde_json::json!({}))),
        ),
        (
            "aud without a configured audience",
            sign(&hs256, claims(serde_json::json!({"aud": "billing"}))),
        ),
    ];
    for (case, token) in refused {
        assert_eq!(status_of(&url(&token)).await.err(), Some(401), "{case}");
    }
    assert!(good.close_info().is_none());
    server.assert_no_errors();
}
