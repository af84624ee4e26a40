//! A y-websocket client on yrs, for tests and the load tool's checks.
//!
//! [`YClient`] is a handle; one background task per client owns the
//! WebSocket and a `yrs::sync::Awareness`, which owns the `yrs::Doc` (the
//! handle + command channel + one owning task shape of async-nats). The task
//! receives all the time — pings are answered, updates applied, awareness
//! renewed every 15 s — so a test can leave a client alone and look at it
//! later. The handle talks to the task through a bounded command channel and
//! reads status (synced, close frame, counters) from a `watch`.
//!
//! The handshake is the npm y-websocket provider's: send SyncStep1 (and our
//! awareness, if set) on open, answer the server's SyncStep1 with SyncStep2,
//! apply SyncStep2 and Updates, and count as synced once a SyncStep2 has been
//! applied. Edits go out as one `SyncMessage::Update` per binary frame. Text
//! frames from the server are counted and ignored, as the npm clients do.
//!
//! Lifecycle: the socket ends when the server closes it, when
//! [`YClient::close`] runs the closing handshake, or when the handle is
//! dropped (the task stops and the TCP connection is dropped without a close
//! frame — a vanished browser tab). After the socket ends the task keeps
//! serving reads of the document until the handle is dropped. The task never
//! panics on server input; a bad frame is counted in [`ClientStats`].

mod protocol;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::{Doc, GetString, Map, ReadTxn, Text, Transact, TransactionMut, WriteTxn};

use protocol::ClientProtocol;
pub use protocol::ClientStats;

/// How long [`YClient::connect`] waits for the WebSocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a set awareness state is re-announced (y-protocols: 30 s / 2).
pub const AWARENESS_RENEWAL: Duration = Duration::from_secs(15);
/// Close code reported when the connection ended without a close frame
/// (what a browser reports as `CloseEvent.code`).
pub const ABNORMAL_CLOSURE: u16 = 1006;
/// Close code reported for a close frame without a status code.
pub const NO_STATUS_RECEIVED: u16 = 1005;

/// Commands queued to the owning task; more than this and callers wait.
const COMMAND_CAPACITY: usize = 64;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type EditFn = Box<dyn for<'doc> FnOnce(&mut TransactionMut<'doc>) + Send>;
type ReadFn = Box<dyn FnOnce(&Doc) + Send>;
type AwarenessStates = BTreeMap<u64, serde_json::Value>;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered the upgrade request with a non-101 status.
    #[error("server refused the websocket upgrade with http {status}: {body}")]
    Rejected {
        /// HTTP status code.
        status: u16,
        /// Response body, lossily decoded.
        body: String,
    },
    /// The URL was bad or the TCP / WebSocket handshake failed.
    #[error("websocket connect failed: {0}")]
    Connect(#[source] Box<tungstenite::Error>),
    /// A wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// What was awaited.
        what: &'static str,
    },
    /// The connection is closed, so the operation cannot take effect.
    #[error("connection closed ({0})")]
    Closed(CloseInfo),
    /// The awareness state could not be serialized as JSON.
    #[error("awareness state is not serializable: {0}")]
    Awareness(#[from] serde_json::Error),
}

/// How a connection ended, as a browser's `CloseEvent` would report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CloseInfo {
    /// Close code: the server's, [`NO_STATUS_RECEIVED`] for an empty close
    /// frame, [`ABNORMAL_CLOSURE`] when the socket ended without one.
    pub code: u16,
    /// The close reason, or the I/O error when there was no close frame.
    pub reason: String,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

/// What the owning task publishes after every frame.
#[derive(Debug, Clone, Default)]
struct Status {
    synced: bool,
    close: Option<CloseInfo>,
    stats: ClientStats,
}

enum Predicate {
    Doc(Box<dyn FnMut(&Doc) -> bool + Send>),
    Awareness(Box<dyn FnMut(&AwarenessStates) -> bool + Send>),
}

/// A pending `wait_*` call: resolved when its predicate holds, dropped
/// (which the caller sees as "closed") when the socket ends first.
struct Waiter {
    predicate: Predicate,
    done: oneshot::Sender<()>,
}

enum Command {
    Edit {
        edit: EditFn,
        sent: oneshot::Sender<Result<(), ClientError>>,
    },
    Read(ReadFn),
    Wait(Waiter),
    SetAwareness {
        json: String,
        sent: oneshot::Sender<Result<(), ClientError>>,
    },
    AwarenessStates(oneshot::Sender<AwarenessStates>),
    SendRaw {
        message: WsMessage,
        sent: oneshot::Sender<Result<(), ClientError>>,
    },
    Close,
}

/// A y-websocket client connected to one room. Cheap to share by reference;
/// every method takes `&self` except [`YClient::close`].
#[derive(Debug)]
pub struct YClient {
    command_tx: mpsc::Sender<Command>,
    status_rx: watch::Receiver<Status>,
    client_id: u64,
}

impl YClient {
    /// Connects to a y-websocket URL (`ws://host:port/room?token=…`) with a
    /// fresh document and a random client id, and starts the handshake.
    /// Returns once the upgrade succeeded; use [`YClient::wait_synced`] to
    /// wait for the server's SyncStep2.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with_doc(url, Doc::new()).await
    }

    /// Like [`YClient::connect`], over an existing document (its client id
    /// is the awareness id; pre-existing content is offered in the handshake).
    pub async fn connect_with_doc(url: &str, doc: Doc) -> Result<Self, ClientError> {
        // No message size cap: browsers have none, and a large document's
        // SyncStep2 is one message (Node's `ws` stops at 100 MiB).
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(None)
            .max_frame_size(None);
        let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (socket, _response) = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    waited: CONNECT_TIMEOUT,
                    what: "websocket upgrade",
                })
            }
            Ok(Err(error)) => return Err(connect_error(error)),
            Ok(Ok(connected)) => connected,
        };
        let protocol = ClientProtocol::new(doc);
        let client_id = protocol.client_id();
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (status_tx, status_rx) = watch::channel(Status::default());
        let task = ClientTask {
            socket: Some(socket),
            protocol,
            command_rx,
            status_tx,
            waiters: Vec::new(),
            close: None,
        };
        tokio::spawn(task.run());
        Ok(Self {
            command_tx,
            status_rx,
            client_id,
        })
    }

    /// This client's Yjs client id (also its awareness id).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Whether a SyncStep2 from the server has been applied.
    pub fn is_synced(&self) -> bool {
        self.status_rx.borrow().synced
    }

    /// Waits until the server's SyncStep2 has been applied.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut status_rx = self.status_rx.clone();
        let waited = tokio::time::timeout(
            timeout,
            status_rx.wait_for(|s| s.synced || s.close.is_some()),
        )
        .await
        .map(|status| status.map(|status| status.synced));
        match waited {
            Err(_) => Err(ClientError::Timeout {
                waited: timeout,
                what: "SyncStep2",
            }),
            Ok(Ok(true)) => Ok(()),
            Ok(_) => Err(self.closed_error()),
        }
    }

    /// Runs `edit` in one transaction on the local document and sends its
    /// update as one `SyncMessage::Update` frame (nothing is sent if the
    /// transaction changed nothing). Returns the closure's result once the
    /// frame is written. Fails with [`ClientError::Closed`] when the
    /// connection is gone (the edit is still applied locally).
    pub async fn edit<R, F>(&self, edit: F) -> Result<R, ClientError>
    where
        F: for<'doc> FnOnce(&mut TransactionMut<'doc>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let edit: EditFn = Box::new(move |txn| {
            let _ = result_tx.send(edit(txn));
        });
        let (sent_tx, sent_rx) = oneshot::channel();
        self.command(Command::Edit {
            edit,
            sent: sent_tx,
        })
        .await?;
        sent_rx.await.map_err(|_| self.closed_error())??;
        result_rx.await.map_err(|_| self.closed_error())
    }

    /// Appends `chunk` to the root text `name`.
    pub async fn push_text(&self, name: &str, chunk: &str) -> Result<(), ClientError> {
        let (name, chunk) = (name.to_owned(), chunk.to_owned());
        self.edit(move |txn| {
            let text = txn.get_or_insert_text(name.as_str());
            text.push(txn, &chunk);
        })
        .await
    }

    /// Sets `key` of the root map `name` to a string value.
    pub async fn map_set(&self, name: &str, key: &str, value: &str) -> Result<(), ClientError> {
        let (name, key, value) = (name.to_owned(), key.to_owned(), value.to_owned());
        self.edit(move |txn| {
            let map = txn.get_or_insert_map(name.as_str());
            map.insert(txn, key, value);
        })
        .await
    }

    /// Runs `read` on the local document. Works after the connection closed.
    pub async fn read<R, F>(&self, read: F) -> Result<R, ClientError>
    where
        F: FnOnce(&Doc) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel();
        let read: ReadFn = Box::new(move |doc| {
            let _ = result_tx.send(read(doc));
        });
        self.command(Command::Read(read)).await?;
        result_rx.await.map_err(|_| self.closed_error())
    }

    /// The content of the root text `name` (empty if it does not exist).
    pub async fn text(&self, name: &str) -> Result<String, ClientError> {
        let name = name.to_owned();
        self.read(move |doc| text_of(doc, &name)).await
    }

    /// The root map `name` as JSON (`{}` if it does not exist).
    pub async fn map_json(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let name = name.to_owned();
        self.read(move |doc| map_json_of(doc, &name)).await
    }

    /// Waits until `predicate` holds on the document. It is checked now and
    /// after every applied server message, on the client's task (keep it
    /// cheap). Fails on timeout or when the connection closes first.
    pub async fn wait_until<F>(&self, timeout: Duration, predicate: F) -> Result<(), ClientError>
    where
        F: FnMut(&Doc) -> bool + Send + 'static,
    {
        self.wait(
            timeout,
            Predicate::Doc(Box::new(predicate)),
            "document predicate",
        )
        .await
    }

    /// Waits until the root text `name` equals `expected`.
    pub async fn wait_for_text(
        &self,
        name: &str,
        expected: &str,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let (name, expected) = (name.to_owned(), expected.to_owned());
        self.wait_until(timeout, move |doc| text_of(doc, &name) == expected)
            .await
    }

    /// Waits until `predicate` holds on the awareness states (client id →
    /// state, ours included, removed states absent).
    pub async fn wait_awareness<F>(
        &self,
        timeout: Duration,
        predicate: F,
    ) -> Result<(), ClientError>
    where
        F: FnMut(&BTreeMap<u64, serde_json::Value>) -> bool + Send + 'static,
    {
        self.wait(
            timeout,
            Predicate::Awareness(Box::new(predicate)),
            "awareness predicate",
        )
        .await
    }

    /// Sets our awareness state and sends it; it is re-sent every
    /// [`AWARENESS_RENEWAL`] and removed by [`YClient::close`].
    pub async fn set_awareness<S: serde::Serialize>(&self, state: &S) -> Result<(), ClientError> {
        let json = serde_json::to_string(state)?;
        let (sent_tx, sent_rx) = oneshot::channel();
        self.command(Command::SetAwareness {
            json,
            sent: sent_tx,
        })
        .await?;
        sent_rx.await.map_err(|_| self.closed_error())?
    }

    /// Every awareness state we know (ours included), by client id.
    pub async fn awareness_states(&self) -> Result<BTreeMap<u64, serde_json::Value>, ClientError> {
        let (states_tx, states_rx) = oneshot::channel();
        self.command(Command::AwarenessStates(states_tx)).await?;
        states_rx.await.map_err(|_| self.closed_error())
    }

    /// Sends raw bytes as one binary frame, bypassing y-sync (for bad-input tests).
    pub async fn send_binary(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        self.send_raw(WsMessage::Binary(frame.into())).await
    }

    /// Sends one text frame (side protocols such as `__YPS:` or `y-pk-batch#`).
    pub async fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.send_raw(WsMessage::Text(text.into())).await
    }

    /// Counters of what this client received so far.
    pub fn stats(&self) -> ClientStats {
        self.status_rx.borrow().stats.clone()
    }

    /// How the connection ended, if it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.status_rx.borrow().close.clone()
    }

    /// Waits until the server sent an auth permission-denied message (a
    /// refused write) and returns its reason.
    pub async fn wait_denied(&self, timeout: Duration) -> Result<String, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(reason) = self.stats().auth_denied {
                return Ok(reason);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    waited: timeout,
                    what: "permission-denied message",
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the connection ends (server close frame, or socket end).
    pub async fn wait_closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        let mut status_rx = self.status_rx.clone();
        let waited = tokio::time::timeout(timeout, status_rx.wait_for(|s| s.close.is_some()))
            .await
            .map(|status| status.map(|status| status.close.clone()));
        match waited {
            Ok(Ok(close)) => Ok(close.unwrap_or_else(task_gone)),
            Ok(Err(_)) => Ok(self.close_info().unwrap_or_else(task_gone)),
            Err(_) => Err(ClientError::Timeout {
                waited: timeout,
                what: "connection close",
            }),
        }
    }

    /// Leaves like the npm provider: announces our awareness removal, sends
    /// close 1000, and waits up to `timeout` for the server's close frame,
    /// which is returned.
    pub async fn close(self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        if self.close_info().is_none() {
            // The task may already be gone; wait_closed reports that.
            let _ = self.command_tx.send(Command::Close).await;
        }
        self.wait_closed(timeout).await
    }

    async fn wait(
        &self,
        timeout: Duration,
        predicate: Predicate,
        what: &'static str,
    ) -> Result<(), ClientError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.command(Command::Wait(Waiter {
            predicate,
            done: done_tx,
        }))
        .await?;
        match tokio::time::timeout(timeout, done_rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                waited: timeout,
                what,
            }),
        }
    }

    async fn send_raw(&self, message: WsMessage) -> Result<(), ClientError> {
        let (sent_tx, sent_rx) = oneshot::channel();
        self.command(Command::SendRaw {
            message,
            sent: sent_tx,
        })
        .await?;
        sent_rx.await.map_err(|_| self.closed_error())?
    }

    async fn command(&self, command: Command) -> Result<(), ClientError> {
        self.command_tx
            .send(command)
            .await
            .map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.close_info().unwrap_or_else(task_gone))
    }
}

fn task_gone() -> CloseInfo {
    CloseInfo {
        code: ABNORMAL_CLOSURE,
        reason: "client task stopped".into(),
    }
}

fn connect_error(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => ClientError::Rejected {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned(),
        },
        other => ClientError::Connect(Box::new(other)),
    }
}

/// The root text `name` of `doc`.
pub fn text_of(doc: &Doc, name: &str) -> String {
    let txn = doc.transact();
    txn.get_text(name)
        .map(|text| text.get_string(&txn))
        .unwrap_or_default()
}

fn map_json_of(doc: &Doc, name: &str) -> serde_json::Value {
    let txn = doc.transact();
    let Some(map) = txn.get_map(name) else {
        return serde_json::Value::Object(Default::default());
    };
    let mut json = String::new();
    yrs::types::ToJson::to_json(&map, &txn).to_json(&mut json);
    serde_json::from_str(&json).unwrap_or(serde_json::Value::Null)
}

/// The owning task: the only code that touches the socket and the document.
struct ClientTask {
    /// `None` once the socket ended; reads keep working after that.
    socket: Option<Socket>,
    protocol: ClientProtocol,
    command_rx: mpsc::Receiver<Command>,
    status_tx: watch::Sender<Status>,
    waiters: Vec<Waiter>,
    /// Set when the socket ended; also published in `Status`.
    close: Option<CloseInfo>,
}

impl ClientTask {
    async fn run(mut self) {
        for frame in self.protocol.opening_frames() {
            if self.send(WsMessage::Binary(frame.into())).await.is_err() {
                break;
            }
        }
        let mut renewal = tokio::time::interval(AWARENESS_RENEWAL);
        renewal.reset();
        loop {
            tokio::select! {
                command = self.command_rx.recv() => match command {
                    Some(command) => self.handle_command(command).await,
                    None => break,
                },
                // `next` on a WebSocketStream is cancel safe: a frame is
                // returned whole or stays buffered.
                frame = next_frame(&mut self.socket), if self.socket.is_some() => {
                    self.handle_socket_item(frame).await;
                }
                _ = renewal.tick(), if self.socket.is_some() => {
                    if let Some(frame) = self.protocol.renew_local_state() {
                        let _ = self.send(WsMessage::Binary(frame.into())).await;
                    }
                }
            }
        }
    }

    async fn handle_socket_item(&mut self, item: Option<Result<WsMessage, tungstenite::Error>>) {
        match item {
            Some(Ok(WsMessage::Binary(frame))) => {
                let outcome = self.protocol.handle_frame(&frame);
                for reply in outcome.replies {
                    if self.send(WsMessage::Binary(reply.into())).await.is_err() {
                        break;
                    }
                }
                if outcome.changed {
                    self.check_waiters();
                }
            }
            Some(Ok(WsMessage::Text(_))) => self.protocol.text_frame(),
            Some(Ok(WsMessage::Close(frame))) => {
                // tungstenite answers the close; the stream then ends.
                self.record_close(match frame {
                    Some(frame) => CloseInfo {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    },
                    None => CloseInfo {
                        code: NO_STATUS_RECEIVED,
                        reason: String::new(),
                    },
                });
            }
            Some(Ok(_)) => {} // ping / pong, answered by tungstenite
            Some(Err(error)) => self.socket_ended(error.to_string()),
            None => self.socket_ended("connection ended without a close frame".into()),
        }
        self.publish();
    }

    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Edit { edit, sent } => {
                let ((), frame) = self.protocol.edit(edit);
                let result = match frame {
                    Some(frame) => self.send(WsMessage::Binary(frame.into())).await,
                    None => Ok(()),
                };
                let _ = sent.send(result);
                self.check_waiters();
            }
            Command::Read(read) => read(self.protocol.doc()),
            Command::Wait(mut waiter) => {
                if waiter_satisfied(&mut waiter, &self.protocol) {
                    let _ = waiter.done.send(());
                } else if self.close.is_none() {
                    self.waiters.push(waiter);
                }
            }
            Command::SetAwareness { json, sent } => {
                let frame = self.protocol.set_local_state(&json);
                let _ = sent.send(self.send(WsMessage::Binary(frame.into())).await);
                self.check_waiters();
            }
            Command::AwarenessStates(states) => {
                let _ = states.send(self.protocol.awareness_states());
            }
            Command::SendRaw { message, sent } => {
                let _ = sent.send(self.send(message).await);
            }
            Command::Close => self.start_close().await,
        }
        self.publish();
    }

    async fn start_close(&mut self) {
        if let Some(frame) = self.protocol.leave() {
            let _ = self.send(WsMessage::Binary(frame.into())).await;
        }
        if let Some(socket) = self.socket.as_mut() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if let Err(error) = socket.close(Some(frame)).await {
                self.socket_ended(error.to_string());
            }
        }
    }

    /// Writes one frame; on failure the socket is gone.
    async fn send(&mut self, message: WsMessage) -> Result<(), ClientError> {
        let Some(socket) = self.socket.as_mut() else {
            return Err(ClientError::Closed(
                self.close.clone().unwrap_or_else(task_gone),
            ));
        };
        if let Some(close) = &self.close {
            return Err(ClientError::Closed(close.clone()));
        }
        match socket.send(message).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.socket_ended(error.to_string());
                self.publish();
                Err(ClientError::Closed(
                    self.close.clone().unwrap_or_else(task_gone),
                ))
            }
        }
    }

    fn record_close(&mut self, info: CloseInfo) {
        if self.close.is_none() {
            tracing::debug!(code = info.code, reason = %info.reason, "connection closed");
            self.close = Some(info);
        }
        // Nothing can change the document any more: fail pending waits.
        self.waiters.clear();
    }

    fn socket_ended(&mut self, reason: String) {
        self.socket = None;
        self.record_close(CloseInfo {
            code: ABNORMAL_CLOSURE,
            reason,
        });
    }

    fn check_waiters(&mut self) {
        for mut waiter in std::mem::take(&mut self.waiters) {
            if waiter.done.is_closed() {
                continue; // the caller timed out
            }
            if waiter_satisfied(&mut waiter, &self.protocol) {
                let _ = waiter.done.send(());
            } else {
                self.waiters.push(waiter);
            }
        }
    }

    fn publish(&self) {
        self.status_tx.send_if_modified(|status| {
            let next = Status {
                synced: self.protocol.is_synced(),
                close: self.close.clone(),
                stats: self.protocol.stats().clone(),
            };
            let changed = status.synced != next.synced
                || status.close != next.close
                || status.stats != next.stats;
            *status = next;
            changed
        });
    }
}

fn waiter_satisfied(waiter: &mut Waiter, protocol: &ClientProtocol) -> bool {
    match &mut waiter.predicate {
        Predicate::Doc(predicate) => predicate(protocol.doc()),
        Predicate::Awareness(predicate) => predicate(&protocol.awareness_states()),
    }
}

async fn next_frame(socket: &mut Option<Socket>) -> Option<Result<WsMessage, tungstenite::Error>> {
    match socket.as_mut() {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}
