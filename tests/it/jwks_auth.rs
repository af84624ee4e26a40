//! JWT authorization with keys from a JWKS URL (a small HTTP server in the
//! test, Ed25519 keys made by `openssl`): a key rotation is picked up
//! without a restart, and the retired key stops working.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use partyline_bench::client::{ClientError, YClient};

use crate::common::DevServer;

/// An Ed25519 key pair: the private PEM and the JWK of the public half.
fn key_pair(dir: &Path, kid: &str) -> (Vec<u8>, serde_json::Value) {
    let private = dir.join(format!("{kid}.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl genpkey");
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&private)
        .output()
        .expect("run openssl");
    assert!(public.status.success());
    // The raw key is the last 32 bytes of the SubjectPublicKeyInfo.
    let raw = &public.stdout[public.stdout.len() - 32..];
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid,
        "x": base64_url(raw),
    });
    (std::fs::read(private).unwrap(), jwk)
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn token(private_pem: &[u8], kid: &str, room: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({"sub": "u", "exp": exp, "rooms": {room: "write"}}),
        &EncodingKey::from_ed_pem(private_pem).unwrap(),
    )
    .unwrap()
}

#[derive(Clone, Default)]
struct Provider {
    document: Arc<Mutex<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks(State(provider): State<Provider>) -> axum::response::Response {
    provider.fetches.fetch_add(1, Ordering::Relaxed);
    let body = provider.document.lock().unwrap().to_string();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn connect(url: &str) -> Result<YClient, u16> {
    match YClient::connect(url).await {
        Ok(client) => Ok(client),
        Err(ClientError::Rejected { status, .. }) => Err(status),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_key_rotation_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_private, old_jwk) = key_pair(dir.path(), "k-old");
    let (new_private, new_jwk) = key_pair(dir.path(), "k-new");
    let provider = Provider::default();
    *provider.document.lock().unwrap() = serde_json::json!({"keys": [old_jwk]});
    let app = axum::Router::new()
        .route("/jwks.json", axum::routing::get(jwks))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = DevServer::start(
        &dir.path().join("data"),
        &["--auth-mode", "jwt", "--jwks-url", &jwks_url],
    );
    let room = "doc-jwks";
    let url = |token: &str| server.url(&format!("{room}?token={token}"));
    let client = connect(&url(&token(&old_private, "k-old", room)))
        .await
        .expect("the current key works");
    client.wait_synced(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        connect(&url(&token(&new_private, "k-new", room)))
            .await
            .err(),
        Some(401),
        "a key the provider does not publish yet is refused"
    );

    // The provider rotates: only the new key is published now.
    *provider.document.lock().unwrap() = serde_json::json!({"keys": [new_jwk]});
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refresh rate limit
    let rotated = connect(&url(&token(&new_private, "k-new", room)))
        .await
        .expect("the new key works without a restart");
    rotated.wait_synced(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        connect(&url(&token(&old_private, "k-old", room)))
            .await
            .err(),
        Some(401),
        "the retired key is refused"
    );
    assert!(client.close_info().is_none(), "open sessions continue");
    assert!(provider.fetches.load(Ordering::Relaxed) <= 4);
}
