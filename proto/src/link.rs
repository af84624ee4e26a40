//! The shared secret on the gRPC link to room nodes: who may open room
//! streams and call the server API (gateways, `partyline admin`).
//!
//! Every request carries `authorization: Bearer <secret>`; a room node
//! answers UNAUTHENTICATED, before any handler runs, to a request without
//! one it accepts. A stream is checked once, when it opens.
//!
//! The same secret signs room nodes' heartbeats ([`LinkSecret::sign`]), so
//! that only a process holding it can join the cluster as a room node and
//! be sent the secret by gateways.
//!
//! Secrets live in a file, one per line. The first line is the one sent;
//! every line is accepted. The file is re-read every [`RELOAD_EVERY`], so a
//! secret is rotated without a restart and without closing a stream: add the
//! new secret as a second line everywhere, move it to the first line
//! everywhere, then remove the old one (docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::chunk::{MAX_STREAM_MESSAGE, MAX_UNARY_MESSAGE};
use crate::pb::room_node_client::RoomNodeClient;
use crate::pb::room_node_server::{RoomNode, RoomNodeServer};

/// gRPC metadata key the secret travels in.
pub const AUTHORIZATION: &str = "authorization";
/// The shortest secret accepted: guessing must be hopeless.
pub const MIN_SECRET_CHARS: usize = 16;
/// A secret file larger than this is refused (it is a few lines).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// At most this many secrets in the file (each checked per request).
pub const MAX_SECRETS: usize = 8;
/// How often a secret file is read again for rotation.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

const BEARER: &str = "Bearer ";

/// Why a secret (file) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read the gRPC secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SECRET_FILE_BYTES`].
    #[error("the gRPC secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Its contents are not secrets.
    #[error("the gRPC secret file {path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, without the secret.
        problem: InvalidSecret,
    },
}

/// What is wrong with a secret (never showing it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSecret {
    /// No secret at all.
    #[error("it holds no secret (one per line; '#' starts a comment)")]
    Empty,
    /// More than [`MAX_SECRETS`].
    #[error("it holds more than {MAX_SECRETS} secrets")]
    TooMany,
    /// Shorter than [`MIN_SECRET_CHARS`].
    #[error("line {line}: a secret needs at least {MIN_SECRET_CHARS} characters")]
    TooShort {
        /// 1-based line number.
        line: usize,
    },
    /// A character outside printable ASCII, or a space inside.
    #[error("line {line}: a secret may hold printable ASCII only, without spaces")]
    BadCharacter {
        /// 1-based line number.
        line: usize,
    },
}

/// The secrets in force: the one sent and all those accepted.
struct Secrets {
    /// `Bearer <first secret>`.
    header: AsciiMetadataValue,
    /// Every secret, the first included.
    accepted: Vec<Box<[u8]>>,
}

impl Secrets {
    fn parse(text: &str) -> Result<Self, InvalidSecret> {
        let mut accepted = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let secret = line.trim();
            if secret.is_empty() || secret.starts_with('#') {
                continue;
            }
            if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(InvalidSecret::BadCharacter { line: line_no });
            }
            if secret.len() < MIN_SECRET_CHARS {
                return Err(InvalidSecret::TooShort { line: line_no });
            }
            if accepted.len() == MAX_SECRETS {
                return Err(InvalidSecret::TooMany);
            }
            accepted.push(Box::<[u8]>::from(secret.as_bytes()));
        }
        let first = accepted.first().ok_or(InvalidSecret::Empty)?;
        let header = MetadataValue::try_from([BEARER.as_bytes(), first].concat().as_slice())
            .map_err(|_| InvalidSecret::BadCharacter { line: 1 })?;
        Ok(Self { header, accepted })
    }

    fn signature(secret: &[u8], message: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(message);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Compare with every secret, in constant time per secret, so the
        // answer's timing tells nothing of a secret's bytes.
        self.accepted.iter().fold(false, |found, secret| {
            found | bool::from(secret.ct_eq(presented))
        })
    }
}

/// The link secret(s), current as the file changes. Cheap to clone.
#[derive(Clone)]
pub struct LinkSecret {
    current: watch::Receiver<Arc<Secrets>>,
}

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSecret")
            .field("secrets", &self.current.borrow().accepted.len())
            .finish_non_exhaustive()
    }
}

impl LinkSecret {
    /// One fixed secret (e.g. `partyline dev`'s own, or a test's).
    pub fn fixed(secret: &str) -> Result<Self, InvalidSecret> {
        let (_, current) = watch::channel(Arc::new(Secrets::parse(secret)?));
        Ok(Self { current })
    }

    /// A random secret only this process knows: for a link that never
    /// leaves it (`partyline dev`).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS has no random source");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::fixed(&hex).expect("64 hex digits are a valid secret")
    }

    /// The secrets in `path`, read again every [`RELOAD_EVERY`] until
    /// `shutdown` (or until no clone is left). A file that later becomes
    /// unreadable or invalid keeps the last good secrets, with a warning.
    pub async fn watch_file(path: &Path, shutdown: CancellationToken) -> Result<Self, SecretError> {
        Self::watch_file_every(path, RELOAD_EVERY, shutdown).await
    }

    async fn watch_file_every(
        path: &Path,
        every: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, SecretError> {
        let (text, secrets) = read(path).await?;
        let (tx, current) = watch::channel(Arc::new(secrets));
        tokio::spawn(reload(path.to_owned(), text, every, tx, shutdown));
        Ok(Self { current })
    }

    /// Whether `request` carries an accepted secret.
    pub fn admits<T>(&self, request: &Request<T>) -> bool {
        let Some(value) = request.metadata().get(AUTHORIZATION) else {
            return false;
        };
        let Some(presented) = value.as_bytes().strip_prefix(BEARER.as_bytes()) else {
            return false;
        };
        self.current.borrow().accepts(presented)
    }

    /// `message` signed with the secret being sent: HMAC-SHA256, hex.
    /// Proves the secret is known without showing it.
    pub fn sign(&self, message: &[u8]) -> String {
        let secrets = self.current.borrow();
        Secrets::signature(&secrets.accepted[0], message)
    }

    /// Whether `signature` is [`LinkSecret::sign`] of `message` under any
    /// accepted secret (so a rotation's overlap works here too).
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let secrets = self.current.borrow();
        secrets.accepted.iter().fold(false, |found, secret| {
            let expected = Secrets::signature(secret, message);
            found | bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
        })
    }

    /// The `authorization` value to send now.
    pub fn header(&self) -> AsciiMetadataValue {
        self.current.borrow().header.clone()
    }
}

async fn read(path: &Path) -> Result<(String, Secrets), SecretError> {
    let read_error = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLarge {
            path: path.to_owned(),
        });
    }
    let invalid = |problem| SecretError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let text =
        String::from_utf8(bytes).map_err(|_| invalid(InvalidSecret::BadCharacter { line: 1 }))?;
    let secrets = Secrets::parse(&text).map_err(invalid)?;
    Ok((text, secrets))
}

async fn reload(
    path: PathBuf,
    mut last_text: String,
    every: Duration,
    tx: watch::Sender<Arc<Secrets>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
        match read(&path).await {
            Ok((text, _)) if text == last_text => last_error = None,
            Ok((text, secrets)) => {
                tracing::info!(
                    path = %path.display(),
                    secrets = secrets.accepted.len(),
                    "gRPC link secrets reloaded"
                );
                tx.send_replace(Arc::new(secrets));
                last_text = text;
                last_error = None;
            }
            Err(error) => {
                let error = error.to_string();
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "keeping the previous gRPC link secrets");
                    last_error = Some(error);
                }
            }
        }
    }
}

/// How a process authenticates the gRPC link.
#[derive(Debug, Clone)]
pub enum LinkAuth {
    /// Send / require the shared secret.
    Secret(LinkSecret),
    /// No secret, by the operator's explicit choice
    /// (`--insecure-no-grpc-secret`): anyone who reaches the port is trusted.
    Insecure,
}

/// The room node's check of every request ([`LinkAuth::Insecure`] lets
/// all through).
#[derive(Debug, Clone)]
pub struct RequireSecret(pub LinkAuth);

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            LinkAuth::Secret(secret) if !secret.admits(&request) => {
                Err(Status::unauthenticated("missing or wrong gRPC link secret"))
            }
            _ => Ok(request),
        }
    }
}

/// A client's side: adds the current secret to every request.
#[derive(Debug, Clone)]
pub struct SendSecret(pub LinkAuth);

impl Interceptor for SendSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let LinkAuth::Secret(secret) = &self.0 {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, secret.header());
        }
        Ok(request)
    }
}

/// A channel to a room node that sends the link secret.
pub type NodeChannel = InterceptedService<tonic::transport::Channel, SendSecret>;

/// `channel` with `auth`'s secret on every request.
pub fn node_channel(channel: tonic::transport::Channel, auth: LinkAuth) -> NodeChannel {
    InterceptedService::new(channel, SendSecret(auth))
}

/// A room node's client for room streams (`OpenRoom`): messages up to
/// [`MAX_STREAM_MESSAGE`] (a chunk and its envelope; larger payloads
/// cross in chunks).
pub fn stream_client(channel: NodeChannel) -> RoomNodeClient<NodeChannel> {
    RoomNodeClient::new(channel)
        .max_decoding_message_size(MAX_STREAM_MESSAGE)
        .max_encoding_message_size(MAX_STREAM_MESSAGE)
}

/// A room node's client for the unary server-API calls, which carry whole
/// documents and updates: messages up to [`MAX_UNARY_MESSAGE`].
pub fn call_client(channel: NodeChannel) -> RoomNodeClient<NodeChannel> {
    RoomNodeClient::new(channel)
        .max_decoding_message_size(MAX_UNARY_MESSAGE)
        .max_encoding_message_size(MAX_UNARY_MESSAGE)
}

/// The room node's gRPC service behind the link-secret check, taking
/// messages up to [`MAX_UNARY_MESSAGE`] (its unary calls carry whole
/// documents; its streams carry chunks).
pub fn room_node_server<S: RoomNode>(
    service: S,
    auth: LinkAuth,
) -> InterceptedService<RoomNodeServer<S>, RequireSecret> {
    let server = RoomNodeServer::new(service)
        .max_decoding_message_size(MAX_UNARY_MESSAGE)
        .max_encoding_message_size(MAX_UNARY_MESSAGE);
    InterceptedService::new(server, RequireSecret(auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(AUTHORIZATION, value.parse().unwrap());
        request
    }

    #[test]
    fn every_line_is_accepted_and_the_first_is_sent() {
        let secrets =
            Secrets::parse("# rotation\nnew-secret-0123456789\n\n  old-secret-0123456789  \n")
                .unwrap();
        assert_eq!(
            secrets.header.to_str().unwrap(),
            "Bearer new-secret-0123456789"
        );
        assert!(secrets.accepts(b"new-secret-0123456789"));
        assert!(secrets.accepts(b"old-secret-0123456789"));
        assert!(!secrets.accepts(b"old-secret-012345678"));
        assert!(!secrets.accepts(b""));
    }

    #[test]
    fn weak_or_odd_secrets_are_refused_without_echoing_them() {
        assert_eq!(Secrets::parse("").err(), Some(InvalidSecret::Empty));
        assert_eq!(
            Secrets::parse("# only a comment").err(),
            Some(InvalidSecret::Empty)
        );
        assert_eq!(
            Secrets::parse("x-secret-0123456789\nshort").err(),
            Some(InvalidSecret::TooShort { line: 2 })
        );
        assert_eq!(
            Secrets::parse("with space 0123456789").err(),
            Some(InvalidSecret::BadCharacter { line: 1 })
        );
        assert_eq!(
            Secrets::parse("caf\u{e9}-0123456789-0123").err(),
            Some(InvalidSecret::BadCharacter { line: 1 })
        );
        let many = (0..=MAX_SECRETS)
            .map(|i| format!("secret-{i}-0123456789"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(Secrets::parse(&many).err(), Some(InvalidSecret::TooMany));
        let shown = InvalidSecret::TooShort { line: 2 }.to_string();
        assert!(!shown.contains("short"), "{shown}");
    }

    #[test]
    fn the_check_wants_the_bearer_form_of_an_accepted_secret() {
        let auth = LinkAuth::Secret(LinkSecret::fixed("the-secret-0123456789").unwrap());
        let mut check = RequireSecret(auth.clone());
        assert!(check
            .call(request_with("Bearer the-secret-0123456789"))
            .is_ok());
        for wrong in [
            "the-secret-0123456789",
            "Bearer the-secret-012345678",
            "Bearer the-secret-0123456789x",
            "bearer the-secret-0123456789",
        ] {
            let status = check.call(request_with(wrong)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{wrong}");
        }
        let status = check.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);

        let sent = SendSecret(auth).call(Request::new(())).unwrap();
        assert!(check.call(sent).is_ok());
        assert!(RequireSecret(LinkAuth::Insecure)
            .call(Request::new(()))
            .is_ok());
        assert!(SendSecret(LinkAuth::Insecure)
            .call(Request::new(()))
            .unwrap()
            .metadata()
            .get(AUTHORIZATION)
            .is_none());
    }

    #[test]
    fn signatures_prove_an_accepted_secret() {
        let old = LinkSecret::fixed("old-secret-0123456789").unwrap();
        let both = LinkSecret::fixed("new-secret-0123456789\nold-secret-0123456789").unwrap();
        let other = LinkSecret::fixed("other-secret-0123456789").unwrap();
        let signed = old.sign(b"node-1 http://n1:7001");
        assert_eq!(signed.len(), 64);
        assert!(!signed.contains("old-secret"));
        assert!(old.verify(b"node-1 http://n1:7001", &signed));
        assert!(
            both.verify(b"node-1 http://n1:7001", &signed),
            "any accepted secret"
        );
        assert!(both.verify(b"x", &both.sign(b"x")));
        assert!(
            !old.verify(b"x", &both.sign(b"x")),
            "signed with the new one"
        );
        assert!(!other.verify(b"node-1 http://n1:7001", &signed));
        assert!(!old.verify(b"node-1 http://n2:7001", &signed));
        assert!(!old.verify(b"node-1 http://n1:7001", ""));
    }

    #[test]
    fn random_secrets_differ() {
        let a = LinkSecret::random().header();
        let b = LinkSecret::random().header();
        assert_ne!(a, b);
        assert_eq!(a.len(), BEARER.len() + 64);
    }

    #[tokio::test]
    async fn a_changed_file_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first-secret-0123456789\n").unwrap();
        let shutdown = CancellationToken::new();
        let every = Duration::from_millis(10);
        let secret = LinkSecret::watch_file_every(&path, every, shutdown.clone())
            .await
            .unwrap();
        let admits = |s: &str| secret.admits(&request_with(&format!("Bearer {s}")));
        assert!(admits("first-secret-0123456789"));

        std::fs::write(&path, "second-secret-0123456789\nfirst-secret-0123456789\n").unwrap();
        eventually(|| admits("second-secret-0123456789")).await;
        assert_eq!(
            secret.header().to_str().unwrap(),
            "Bearer second-secret-0123456789"
        );
        assert!(admits("first-secret-0123456789"));

        std::fs::write(&path, "short\n").unwrap();
        // Several reloads of the broken file pass.
        tokio::time::sleep(every * 10).await;
        assert!(
            admits("second-secret-0123456789") && admits("first-secret-0123456789"),
            "a broken file keeps the old secrets"
        );

        std::fs::write(&path, "second-secret-0123456789\n").unwrap();
        eventually(|| !admits("first-secret-0123456789")).await;
        assert!(admits("second-secret-0123456789"));
        shutdown.cancel();
    }

    async fn eventually(condition: impl Fn() -> bool) {
        for _ in 0..500 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the secret file was not reloaded within 5 s");
    }

    #[tokio::test]
    async fn a_missing_or_huge_file_is_an_error_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let missing =
            LinkSecret::watch_file(&dir.path().join("none"), CancellationToken::new()).await;
        assert!(matches!(missing, Err(SecretError::Read { .. })));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let huge = LinkSecret::watch_file(&huge, CancellationToken::new()).await;
        assert!(matches!(huge, Err(SecretError::TooLarge { .. })));
    }
}
