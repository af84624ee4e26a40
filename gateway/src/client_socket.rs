//! A client socket's write side, shared by its session task and its room's
//! upstream actor.
//!
//! Frames from the room are written straight into the socket by the
//! upstream actor that receives them — one non-blocking `write` per client,
//! no task wake-up, and the WebSocket frame encoded once per broadcast
//! however many clients get it. Only when the kernel's send buffer is full
//! does a frame wait in the socket's queue; then the session task, woken
//! once, writes the queue out as the socket drains. A client whose queue
//! reaches `capacity` frames, or `max_bytes` of frames other than a sync
//! answer, is too slow and is closed (1008) rather than slowing the room.
//! A sync answer (SyncStep2: the document, possibly large) may wait on
//! top of that budget, but only one: a client that asks again while its
//! previous answer is still queued is not reading, and is closed — so a
//! socket that never reads costs one document plus `max_bytes`, never
//! requests × document. The queue allocates nothing while the socket keeps up,
//! so an idle socket costs only this struct.
//!
//! The session task's WebSocket (tungstenite, for reading and for control
//! frames: pong, ping, close) writes through the same queue via
//! [`ClientIo`], so every byte leaves in order and frames never interleave.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use partyline_proto::ysync::{message_kind, SyncKind};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::messages::CloseReason;

/// A drained queue larger than this is freed rather than kept, so a burst
/// does not pin memory on an idle socket.
const KEEP_CAPACITY: usize = 16;
/// Queued frames handed to one vectored write.
const WRITE_BATCH: usize = 64;

/// One encoded server-to-client WebSocket frame (unmasked, so the same
/// bytes go to every client).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    bytes: Bytes,
    /// A SyncStep2: the answer to a client's SyncStep1.
    answer: bool,
}

impl Frame {
    /// Encodes one binary (y-sync) or text (side protocol) message as a
    /// single final frame. A text payload that is not UTF-8 gives `None`:
    /// it came from a client's text frame, and a frame the client would
    /// misread is worse than none.
    pub(crate) fn encode(payload: &[u8], text: bool) -> Option<Self> {
        if text && std::str::from_utf8(payload).is_err() {
            return None;
        }
        let opcode = if text { Data::Text } else { Data::Binary };
        let header = FrameHeader {
            opcode: OpCode::Data(opcode),
            ..FrameHeader::default()
        };
        let length = payload.len() as u64;
        let mut buffer = Vec::with_capacity(header.len(length) + payload.len());
        // Writing into a Vec cannot fail.
        header
            .format(length, &mut buffer)
            .expect("frame header into a Vec");
        buffer.extend_from_slice(payload);
        Some(Self {
            bytes: Bytes::from(buffer),
            answer: !text && message_kind(payload) == Some(SyncKind::SyncStep2),
        })
    }
}

/// One queued chunk of bytes.
#[derive(Debug)]
struct Queued {
    bytes: Bytes,
    /// A sync answer: not counted in `State::bytes`.
    answer: bool,
}

/// The socket's queue was full: the client is too slow and should be
/// closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug, Default)]
struct State {
    /// Bytes the kernel did not take yet, in order; the first may be
    /// partly written (`offset`).
    queue: VecDeque<Queued>,
    offset: usize,
    /// Bytes queued in frames other than sync answers.
    bytes: usize,
    /// Sync answers queued (0 or 1).
    answers: usize,
    /// Set once: the session should close after what is queued.
    close: Option<CloseReason>,
    /// A write failed: the client is gone, nothing more is written.
    failed: bool,
    /// Queued bytes the kernel took so far (progress while draining).
    drained: u64,
}

/// The write side of one client socket; share it with `Arc`.
#[derive(Debug)]
pub(crate) struct ClientSocket {
    stream: OwnedWriteHalf,
    state: Mutex<State>,
    /// Wakes the session task: frames are queued or a close was asked for.
    wake: Notify,
    capacity: usize,
    max_bytes: usize,
}

impl ClientSocket {
    /// A socket that queues at most `capacity` frames behind the kernel
    /// (and no byte limit until [`Self::max_bytes`]).
    pub(crate) fn new(stream: OwnedWriteHalf, capacity: usize) -> Self {
        Self {
            stream,
            state: Mutex::default(),
            wake: Notify::new(),
            capacity,
            max_bytes: usize::MAX,
        }
    }

    /// Also queues at most `max_bytes` of frames other than one sync answer.
    pub(crate) fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A queue of bytes cannot be left torn by a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one frame now if the kernel takes it, else queues it for the
    /// session task. `Err(Full)` when the client is too far behind.
    pub(crate) fn send(&self, frame: &Frame) -> Result<(), Full> {
        let mut state = self.state();
        if state.close.is_some() || state.failed {
            return Ok(());
        }
        if !state.queue.is_empty() {
            let over = if frame.answer {
                state.answers > 0
            } else {
                state.bytes + frame.bytes.len() > self.max_bytes
            };
            if over || state.queue.len() >= self.capacity {
                return Err(Full);
            }
            state.push(frame.bytes.clone(), frame.answer);
            return Ok(());
        }
        self.write_now(&mut state, &frame.bytes, frame.answer);
        Ok(())
    }

    /// Writes `bytes` with an empty queue, queueing what the kernel does
    /// not take and waking the session task for it. The lock is held so no
    /// other writer can slip in between.
    fn write_now(&self, state: &mut State, bytes: &Bytes, answer: bool) {
        let mut written = 0;
        while written < bytes.len() {
            match self.stream.try_write(&bytes[written..]) {
                Ok(n) => written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    state.push(bytes.clone(), answer);
                    state.offset = written;
                    self.wake.notify_one();
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    state.failed = true;
                    self.wake.notify_one();
                    return;
                }
            }
        }
    }

    /// Asks the session to close after the frames already queued. The
    /// first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.state().close.get_or_insert(reason);
        self.wake.notify_one();
    }

    /// Waits until frames are queued, a close was asked for or a write
    /// failed. Cancel safe.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }

    /// The close reason asked for, taken once.
    pub(crate) fn take_close(&self) -> Option<CloseReason> {
        self.state().close.take()
    }

    /// Writes the queue out, waiting for the socket to drain as needed.
    /// `Err` when the client is gone.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// [`Self::flush`], giving up (`TimedOut`) only when the client takes
    /// none of the queued bytes for `stall`: a slow link downloading a large
    /// document keeps going as long as it makes progress.
    pub(crate) async fn flush_while_progressing(
        &self,
        stall: std::time::Duration,
    ) -> io::Result<()> {
        loop {
            let before = self.state().drained;
            match tokio::time::timeout(stall, self.flush()).await {
                Ok(result) => return result,
                Err(_) if self.state().drained != before => {}
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            {
                let mut state = self.state();
                if state.failed {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                if state.queue.is_empty() {
                    if state.queue.capacity() > KEEP_CAPACITY {
                        state.queue = VecDeque::new();
                    }
                    return Poll::Ready(Ok(()));
                }
                match self.write_queued(&mut state) {
                    Ok(()) => continue,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => {
                        state.failed = true;
                        state.queue.clear();
                        state.bytes = 0;
                        state.answers = 0;
                        return Poll::Ready(Err(error));
                    }
                }
            }
            // Lock released: the upstream keeps queueing while we wait.
            if self.stream.as_ref().poll_write_ready(cx)?.is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// One vectored write of the queue's head; drops what the kernel took.
    fn write_queued(&self, state: &mut State) -> io::Result<()> {
        let written = {
            let mut slices = Vec::with_capacity(state.queue.len().min(WRITE_BATCH));
            for (i, queued) in state.queue.iter().take(WRITE_BATCH).enumerate() {
                let start = if i == 0 { state.offset } else { 0 };
                slices.push(IoSlice::new(&queued.bytes[start..]));
            }
            self.stream.try_write_vectored(&slices)?
        };
        state.drained += written as u64;
        let mut left = written;
        while let Some(front) = state.queue.front() {
            let remaining = front.bytes.len() - state.offset;
            if left < remaining {
                state.offset += left;
                break;
            }
            left -= remaining;
            state.offset = 0;
            state.pop();
        }
        Ok(())
    }

    /// Control frames from the session's WebSocket: queued behind whatever
    /// is waiting, never refused (they are few and small).
    fn write_control(&self, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        if state.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let bytes = Bytes::copy_from_slice(bytes);
        if state.queue.is_empty() {
            self.write_now(&mut state, &bytes, false);
        } else {
            state.push(bytes, false);
        }
        Ok(())
    }
}

impl State {
    fn push(&mut self, bytes: Bytes, answer: bool) {
        if answer {
            self.answers += 1;
        } else {
            self.bytes += bytes.len();
        }
        self.queue.push_back(Queued { bytes, answer });
    }

    fn pop(&mut self) {
        if let Some(queued) = self.queue.pop_front() {
            if queued.answer {
                self.answers -= 1;
            } else {
                self.bytes -= queued.bytes.len();
            }
        }
    }
}

/// The byte stream under the session's WebSocket: reads from the socket,
/// writes through the shared [`ClientSocket`].
#[derive(Debug)]
pub(crate) struct ClientIo {
    read: OwnedReadHalf,
    socket: Arc<ClientSocket>,
}

impl ClientIo {
    /// Joins the read half and the shared write side.
    pub(crate) fn new(read: OwnedReadHalf, socket: Arc<ClientSocket>) -> Self {
        Self { read, socket }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.socket.write_control(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected loopback pair: the server side split, the client whole.
    async fn pair(capacity: usize) -> (Arc<ClientSocket>, OwnedReadHalf, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (read, write) = accepted.unwrap().0.into_split();
        (
            Arc::new(ClientSocket::new(write, capacity)),
            read,
            client.unwrap(),
        )
    }

    /// The first frame in `bytes`: its header, payload, and what follows.
    fn next_frame(bytes: &[u8]) -> (FrameHeader, &[u8], &[u8]) {
        let mut cursor = Cursor::new(bytes);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        let end = start + length as usize;
        (header, &bytes[start..end], &bytes[end..])
    }

    fn parse(bytes: &[u8]) -> (FrameHeader, &[u8]) {
        let (header, payload, rest) = next_frame(bytes);
        assert!(rest.is_empty(), "length field");
        (header, payload)
    }

    #[test]
    fn frames_are_encoded_as_tungstenite_reads_them() {
        // Every length encoding: 7-bit, 16-bit and 64-bit.
        for length in [0, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..length).map(|i| i as u8).collect();
            let frame = Frame::encode(&payload, false).unwrap();
            let (header, body) = parse(&frame.bytes);
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert!(header.mask.is_none(), "server frames are not masked");
            assert_eq!(body, &payload[..]);
        }
        let text = Frame::encode(b"__YPS:{}", true).unwrap();
        assert_eq!(parse(&text.bytes).0.opcode, OpCode::Data(Data::Text));
        assert!(Frame::encode(&[0xff, 0xfe], true).is_none(), "not UTF-8");
    }

    /// Sends frames until the kernel stops taking them, so the next
    /// frame queues.
    fn fill_the_kernel(socket: &ClientSocket) {
        let filler = Frame::encode(&vec![0; 64 * 1024], false).unwrap();
        for _ in 0..1_000 {
            socket.send(&filler).unwrap();
            if !socket.state().queue.is_empty() {
                return;
            }
        }
        panic!("the kernel took 64 MB from a client that never reads");
    }

    #[tokio::test]
    async fn queued_bytes_are_bounded_and_one_sync_answer_may_wait_on_top() {
        let (socket, _read, _client) = pair(100_000).await;
        let socket = Arc::new(Arc::into_inner(socket).unwrap().max_bytes(1024 * 1024));
        fill_the_kernel(&socket);
        // A document of 4 MiB (over the byte budget) still queues: it is
        // the answer the client asked for.
        let mut step2 = vec![0, 1];
        step2.resize(4 * 1024 * 1024, 7);
        let answer = Frame::encode(&step2, false).unwrap();
        socket.send(&answer).unwrap();
        // Asking again before reading it: refused.
        assert_eq!(socket.send(&answer), Err(Full));
        // Other frames fill the budget, then are refused.
        let mut small = vec![0, 2];
        small.resize(1000, 1);
        let update = Frame::encode(&small, false).unwrap();
        let mut queued = 0;
        while socket.send(&update).is_ok() {
            queued += 1;
            assert!(queued < 10_000, "the byte budget never bit");
        }
        let state = socket.state();
        assert!(state.bytes <= 1024 * 1024 && state.bytes > 1024 * 1024 - 1010);
        assert_eq!(state.answers, 1);
    }

    #[tokio::test]
    async fn a_stalled_client_fills_the_queue_and_gets_every_byte_in_order_once_it_reads() {
        const CAPACITY: usize = 4;
        let (socket, _read, mut client) = pair(CAPACITY).await;
        // Frames of 256 KiB, each filled with its sequence number, until
        // the kernel's buffers and then the queue are full.
        let mut sent = 0u8;
        loop {
            let frame = Frame::encode(&vec![sent; 256 * 1024], false).unwrap();
            match socket.send(&frame) {
                Ok(()) => sent += 1,
                Err(Full) => break,
            }
            assert!(sent < 200, "a client that never reads must fill the queue");
        }
        assert_eq!(socket.state().queue.len(), CAPACITY);
        // A control frame queues behind the data, never refused.
        socket.write_control(b"control").unwrap();

        let flusher = {
            let socket = socket.clone();
            tokio::spawn(async move { socket.flush().await })
        };
        let mut received = Vec::new();
        let expected = sent as usize * (256 * 1024 + 10) + b"control".len();
        while received.len() < expected {
            let mut chunk = vec![0; 64 * 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "socket closed early");
            received.extend_from_slice(&chunk[..n]);
        }
        flusher.await.unwrap().unwrap();
        let mut rest = &received[..];
        for n in 0..sent {
            let (header, body, next) = next_frame(rest);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert_eq!(body.len(), 256 * 1024);
            assert!(
                body.iter().all(|&b| b == n),
                "frame {n} out of order or torn"
            );
            rest = next;
        }
        assert_eq!(rest, b"control");
        assert!(socket.state().queue.is_empty());
    }

    #[tokio::test]
    async fn a_slow_reader_is_flushed_as_long_as_it_makes_progress() {
        const FRAMES: usize = 64;
        let (socket, _read, mut client) = pair(FRAMES).await;
        let frame = Frame::encode(&vec![7; 256 * 1024], false).unwrap();
        for _ in 0..FRAMES {
            socket.send(&frame).unwrap();
        }
        // 16 MiB at about 5 MiB/s, far more than the kernel's buffers hold:
        // the flush takes longer than the 1 s stall limit, never stalling.
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut chunk = vec![0; 128 * 1024];
            while total < FRAMES * (256 * 1024 + 10) {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                total += client.read(&mut chunk).await.unwrap();
            }
            client
        });
        let stall = std::time::Duration::from_secs(1);
        let started = std::time::Instant::now();
        socket.flush_while_progressing(stall).await.unwrap();
        assert!(
            started.elapsed() > stall,
            "the flush outlasted the stall limit"
        );
        let client = reader.await.unwrap();
        // A reader that stops: the flush gives up after the stall limit.
        for _ in 0..FRAMES {
            socket.send(&frame).unwrap();
        }
        let error = socket.flush_while_progressing(stall).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn close_wakes_the_session_and_the_first_reason_wins() {
        let (socket, _read, _client) = pair(8).await;
        socket.close(CloseReason::new(1008, "slow"));
        socket.close(CloseReason::new(1000, "later reasons lose"));
        tokio::time::timeout(std::time::Duration::from_secs(1), socket.woken())
            .await
            .expect("woken by close");
        assert_eq!(socket.take_close(), Some(CloseReason::new(1008, "slow")));
        // Frames after a close are dropped, not refused.
        let frame = Frame::encode(b"late", false).unwrap();
        assert_eq!(socket.send(&frame), Ok(()));
    }

    #[tokio::test]
    async fn a_vanished_client_fails_the_flush() {
        let (socket, _read, client) = pair(8).await;
        drop(client);
        let frame = Frame::encode(&vec![1; 64 * 1024], false).unwrap();
        // The first writes may still land in the kernel; a reset peer fails
        // one soon after.
        let failed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let _ = socket.send(&frame);
                if socket.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(failed.is_ok(), "writes to a closed peer must fail");
    }
}
