//! One bench connection: a task that connects, syncs, sends on a schedule
//! and timestamps every update it receives.
//!
//! A connection holds no replica of the room: it answers the handshake from
//! its own tiny sending document (see `sendlog`), decodes received updates
//! only far enough to name their items, and never applies them. That keeps a
//! connection at a few KiB, so thousands fit beside the server on one
//! machine.
//!
//! The task follows the run's [`Control`] on a `watch`: `Hold` (connected,
//! only receiving), `Send` (send at a rate until a deadline, then keep
//! receiving through the drain), `Stop` (close 1000 and end within
//! [`CLOSE_GRACE`]). Anything that ends the socket earlier is an unexpected
//! close; the task records it and ends — bench connections never reconnect.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use super::sendlog::{decode_inbound, empty_step2, Inbound, UpdateSource};
use super::RunState;

/// How long a stopping connection waits for the server's close frame.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer per connection: updates are small, connections many.
const READ_BUFFER_BYTES: usize = 4 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the run asks of every connection.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Stay connected and receive.
    Hold,
    /// Send at `rate` per second from `start` until `until`, in `phase`.
    Send {
        phase: usize,
        rate: f64,
        start: Instant,
        until: Instant,
        /// Connected clients per room, for the deliveries each send owes.
        members: Arc<[u64]>,
    },
    /// Close and end.
    Stop,
}

/// A connection's report to the run once its connect attempt is over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connected {
    pub index: usize,
    pub ok: bool,
}

/// The sending phase a connection is in.
struct ActivePhase {
    index: usize,
    until: Instant,
    /// Deliveries one update owes: the room's connected clients.
    owed: u64,
}

/// Runs connection `index` until the run stops it or the socket ends.
pub(crate) async fn run_connection(
    run: Arc<RunState>,
    index: usize,
    connect_permits: Arc<Semaphore>,
    control_rx: watch::Receiver<Control>,
    connected_tx: mpsc::Sender<Connected>,
) {
    let plan = &run.plan;
    let room = index / plan.clients;
    let url = plan.connection_url(index);
    let client_id = plan.client_id_base + index as u64;
    let source =
        (!plan.steps.is_empty()).then(|| UpdateSource::new(client_id, index, plan.payload_bytes));

    let socket = {
        let Ok(_permit) = connect_permits.acquire().await else {
            return; // the run is over
        };
        let started = Instant::now();
        let connecting = connect_and_sync(&url, &plan.headers, source.as_ref());
        match tokio::time::timeout(plan.connect_timeout, connecting).await {
            Ok(Ok(socket)) => {
                run.connect_time.record(started.elapsed());
                socket
            }
            Ok(Err(error)) => {
                run.errors
                    .connect_failure(format!("connect {url}: {error}"));
                let _ = connected_tx.send(Connected { index, ok: false }).await;
                return;
            }
            Err(_) => {
                run.errors.connect_failure(format!(
                    "connect {url}: no SyncStep2 within {:?}",
                    plan.connect_timeout
                ));
                let _ = connected_tx.send(Connected { index, ok: false }).await;
                return;
            }
        }
    };
    let _ = connected_tx.send(Connected { index, ok: true }).await;
    drop(connected_tx);

    let connection = Connection {
        peers_seen: vec![SeqWindow::default(); plan.clients],
        run: run.clone(),
        index,
        room,
        source,
        phase: None,
        ticker: None,
    };
    connection.run(socket, control_rx).await;
}

/// Upgrades and runs the handshake until the server's SyncStep2.
async fn connect_and_sync(
    url: &str,
    headers: &[(String, String)],
    source: Option<&UpdateSource>,
) -> Result<Socket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|error| error.to_string())?;
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::try_from(name.as_str())
            .map_err(|error| error.to_string())?;
        let value = tokio_tungstenite::tungstenite::http::HeaderValue::try_from(value.as_str())
            .map_err(|error| error.to_string())?;
        request.headers_mut().append(name, value);
    }
    // No message size cap, as in browsers: a large room's SyncStep2 is
    // one message.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None);
    let (mut socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|error| error.to_string())?;
    let step1 = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
    socket
        .send(WsMessage::Binary(step1.into()))
        .await
        .map_err(|error| error.to_string())?;
    loop {
        match socket.next().await {
            Some(Ok(WsMessage::Binary(frame))) => match decode_inbound(&frame) {
                Inbound::SyncStep1(state_vector) => {
                    let step2 =
                        source.map_or_else(empty_step2, |source| source.step2_for(&state_vector));
                    socket
                        .send(WsMessage::Binary(step2.into()))
                        .await
                        .map_err(|error| error.to_string())?;
                }
                Inbound::SyncStep2(_) => return Ok(socket),
                Inbound::Invalid(error) => return Err(format!("during handshake: {error}")),
                Inbound::Update(_) | Inbound::Other => {}
            },
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(match frame {
                    Some(frame) => format!(
                        "closed during handshake: {} {}",
                        u16::from(frame.code),
                        frame.reason
                    ),
                    None => "closed during handshake".into(),
                })
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("connection ended during handshake".into()),
        }
    }
}

struct Connection {
    run: Arc<RunState>,
    index: usize,
    room: usize,
    /// `None` in idle mode: nothing to send.
    source: Option<UpdateSource>,
    /// Per room member: which of its updates arrived, to tell duplicates
    /// from new (possibly out-of-order) deliveries.
    peers_seen: Vec<SeqWindow>,
    phase: Option<ActivePhase>,
    /// Send schedule of the current phase; `None` when not sending.
    ticker: Option<Interval>,
}

impl Connection {
    async fn run(mut self, mut socket: Socket, mut control_rx: watch::Receiver<Control>) {
        let initial = control_rx.borrow_and_update().clone();
        if !self.apply_control(initial) {
            return close(socket).await;
        }
        loop {
            tokio::select! {
                // All three branches are cancel safe: `changed` and
                // `Interval::tick` by tokio's contract, `next` because a
                // frame is returned whole or stays buffered.
                changed = control_rx.changed() => {
                    let control = match changed {
                        Ok(()) => control_rx.borrow_and_update().clone(),
                        Err(_) => Control::Stop, // the run is gone
                    };
                    if !self.apply_control(control) {
                        return close(socket).await;
                    }
                }
                scheduled = next_tick(&mut self.ticker) => {
                    if let Err(error) = self.send_next(&mut socket, scheduled.into_std()).await {
                        return self.closed_unexpectedly(format!("send failed: {error}"));
                    }
                }
                frame = socket.next() => {
                    let received = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Binary(frame))) => {
                            if let Err(error) = self.receive(&frame, received, &mut socket).await {
                                return self.closed_unexpectedly(format!("send failed: {error}"));
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            let reason = frame.map_or_else(
                                || "close frame without status".into(),
                                |frame| format!("closed by server: {} {}", u16::from(frame.code), frame.reason),
                            );
                            return self.closed_unexpectedly(reason);
                        }
                        Some(Ok(_)) => {} // text frames ignored, pings answered by tungstenite
                        Some(Err(error)) => return self.closed_unexpectedly(error.to_string()),
                        None => return self.closed_unexpectedly("connection ended".into()),
                    }
                }
            }
        }
    }

    /// Follows a control change; false when the connection should stop.
    fn apply_control(&mut self, control: Control) -> bool {
        match control {
            Control::Hold => true,
            Control::Stop => false,
            Control::Send {
                phase,
                rate,
                start,
                until,
                members,
            } => {
                self.phase = Some(ActivePhase {
                    index: phase,
                    until,
                    owed: members.get(self.room).copied().unwrap_or_default(),
                });
                if self.source.is_some() {
                    let period = Duration::from_secs_f64(1.0 / rate);
                    // Spread first sends over one period (golden-ratio
                    // sequence) so the rooms do not send in lockstep.
                    let offset = period.mul_f64((self.index as f64 * 0.618_033_988_75).fract());
                    let mut ticker = tokio::time::interval_at((start + offset).into(), period);
                    // Late ticks fire at once but keep their scheduled time,
                    // which is what latency is measured from: a bench that
                    // falls behind shows as latency, not as a lower rate.
                    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    self.ticker = Some(ticker);
                }
                true
            }
        }
    }

    async fn send_next(&mut self, socket: &mut Socket, scheduled: Instant) -> Result<(), String> {
        let (Some(phase), Some(source)) = (&self.phase, &mut self.source) else {
            self.ticker = None;
            return Ok(());
        };
        if scheduled >= phase.until {
            self.ticker = None;
            return Ok(());
        }
        let (seq, frame) = source.next_update();
        let sent_micros = micros_since(self.run.epoch, scheduled);
        self.run
            .send_log
            .record(self.index, seq, phase.index, sent_micros);
        let stats = &self.run.phases[phase.index];
        if let Err(error) = socket.send(WsMessage::Binary(frame.into())).await {
            stats.send_failures.fetch_add(1, Ordering::Relaxed);
            return Err(error.to_string());
        }
        stats.sent.fetch_add(1, Ordering::Relaxed);
        stats.expected.fetch_add(phase.owed, Ordering::Relaxed);
        stats.gaps.owe(self.room, phase.owed);
        Ok(())
    }

    async fn receive(
        &mut self,
        frame: &[u8],
        received: Instant,
        socket: &mut Socket,
    ) -> Result<(), String> {
        match decode_inbound(frame) {
            Inbound::Update(ranges) => self.record_frame(ranges, received, false),
            // A SyncStep2 after the handshake answers a server's re-sync (a
            // room re-opened on another node): it carries the whole document,
            // and whatever this client had not seen yet is delivered by it.
            Inbound::SyncStep2(ranges) => self.record_frame(ranges, received, true),
            Inbound::SyncStep1(state_vector) => {
                let step2 = self
                    .source
                    .as_ref()
                    .map_or_else(empty_step2, |source| source.step2_for(&state_vector));
                socket
                    .send(WsMessage::Binary(step2.into()))
                    .await
                    .map_err(|error| error.to_string())?;
            }
            Inbound::Invalid(error) => self.protocol_error(error),
            Inbound::Other => {}
        }
        Ok(())
    }

    /// Counts the items of one received frame and, if any was new, the
    /// frame as a delivery to the room (for its gaps).
    fn record_frame(&mut self, ranges: Vec<(u64, Range<u32>)>, received: Instant, resync: bool) {
        let received_micros = micros_since(self.run.epoch, received);
        let mut observed_in = None;
        for (client_id, clocks) in ranges {
            let phase = self.record_deliveries(client_id, clocks, received_micros, resync);
            if let Some(phase) = phase.filter(|phase| observed_in != Some(*phase)) {
                observed_in = Some(phase);
                self.run.phases[phase]
                    .gaps
                    .observe(self.room, received_micros);
            }
        }
    }

    /// Counts the items `clocks` of Yjs client `client_id` as delivered
    /// here; returns the phase of the last new delivery, if any was new.
    /// With `resync` (a SyncStep2's whole document) the items already seen
    /// are skipped quietly rather than counted as duplicates.
    fn record_deliveries(
        &mut self,
        client_id: u64,
        mut clocks: Range<u32>,
        received_micros: u64,
        resync: bool,
    ) -> Option<usize> {
        let run = &self.run;
        let plan = &run.plan;
        let Some(sender) = client_id
            .checked_sub(plan.client_id_base)
            .and_then(|offset| usize::try_from(offset).ok())
            .filter(|sender| *sender < plan.connections())
        else {
            // Another writer in the room (a browser watching the run):
            // not ours to measure.
            return None;
        };
        if sender / plan.clients != self.room {
            let other_room = sender / plan.clients;
            self.protocol_error(format!(
                "room {} received an update sent to room {other_room}",
                self.room
            ));
            return None;
        }
        let seen = &mut self.peers_seen[sender % plan.clients];
        if resync {
            clocks.start = clocks.start.max(seen.base());
        } else if clocks.len() > run.send_log_ring() {
            self.protocol_error(format!(
                "update of {} items from one bench client",
                clocks.len()
            ));
            return None;
        }
        let mut delivered_in = None;
        for seq in clocks {
            let Some(sent) = run.send_log.lookup(sender, seq) else {
                run.unmatched_deliveries.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let stats = &run.phases[sent.phase];
            match seen.receive(seq) {
                Receipt::Seen if resync => continue, // the whole document: expected
                Receipt::Seen => {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Receipt::New { out_of_order } => {
                    if out_of_order {
                        stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            delivered_in = Some(sent.phase);
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            stats.gaps.received(self.room, 1);
            let latency = received_micros.saturating_sub(sent.sent_micros);
            if sender == self.index {
                stats.echo.record_micros(latency);
            } else {
                stats.fanout.record_micros(latency);
            }
        }
        delivered_in
    }

    fn protocol_error(&self, error: String) {
        if let Some(phase) = &self.phase {
            self.run.phases[phase.index]
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        self.run
            .errors
            .protocol_error(format!("connection {}: {error}", self.index));
    }

    fn closed_unexpectedly(&self, reason: String) {
        if let Some(phase) = &self.phase {
            self.run.phases[phase.index]
                .unexpected_closes
                .fetch_add(1, Ordering::Relaxed);
        }
        self.run.errors.unexpected_close(format!(
            "connection {} (room {}): {reason}",
            self.index, self.room
        ));
    }
}

/// Which updates of one sender a connection has received: every sequence
/// number below `base`, and those of `base..base + 64` whose bit is set in
/// `above` (bit i is `base + i`; bit 0 is never set). Updates may arrive out
/// of order — after a failover the server re-sends what a client lacked
/// while newer updates already flow — and must still count once each. An
/// update more than 64 behind the newest one received counts as a duplicate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeqWindow {
    base: u32,
    above: u64,
}

/// What [`SeqWindow::receive`] made of a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// Not received before; `out_of_order` when a later one already was.
    New { out_of_order: bool },
    /// Received before (or too far behind to tell).
    Seen,
}

impl SeqWindow {
    /// The lowest sequence number not received yet.
    pub(super) fn base(&self) -> u32 {
        self.base
    }

    /// Records `seq` as received.
    pub(super) fn receive(&mut self, seq: u32) -> Receipt {
        let Some(mut offset) = seq.checked_sub(self.base) else {
            return Receipt::Seen;
        };
        if offset >= u64::BITS {
            // Slide the window so `seq` is its last slot; older gaps are
            // given up (they would count as duplicates).
            let slide = offset - (u64::BITS - 1);
            self.above = self.above.checked_shr(slide).unwrap_or(0);
            self.base += slide;
            offset = u64::BITS - 1;
        }
        let bit = 1u64 << offset;
        if self.above & bit != 0 {
            return Receipt::Seen;
        }
        let out_of_order = self.above >> offset != 0;
        self.above |= bit;
        let done = self.above.trailing_ones();
        self.above = self.above.checked_shr(done).unwrap_or(0);
        self.base += done;
        Receipt::New { out_of_order }
    }
}

/// Closes with 1000 and waits briefly for the server's answer.
async fn close(mut socket: Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bench done".into(),
    };
    if socket.close(Some(frame)).await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

async fn next_tick(ticker: &mut Option<Interval>) -> tokio::time::Instant {
    match ticker {
        Some(ticker) => ticker.tick().await,
        None => std::future::pending().await,
    }
}

fn micros_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_all(window: &mut SeqWindow, seqs: &[u32]) -> Vec<Receipt> {
        seqs.iter().map(|&seq| window.receive(seq)).collect()
    }

    const NEW: Receipt = Receipt::New {
        out_of_order: false,
    };
    const LATE: Receipt = Receipt::New { out_of_order: true };

    #[test]
    fn in_order_and_duplicates() {
        let mut window = SeqWindow::default();
        assert_eq!(receive_all(&mut window, &[0, 1, 2]), vec![NEW; 3]);
        assert_eq!(window.base(), 3);
        assert_eq!(window.receive(1), Receipt::Seen);
        assert_eq!(window.receive(2), Receipt::Seen);
        assert_eq!(window.receive(3), NEW);
    }

    #[test]
    fn late_updates_count_once() {
        let mut window = SeqWindow::default();
        // 0, then 2 and 3 before 1 (1 re-sent after a failover)
        assert_eq!(
            receive_all(&mut window, &[0, 2, 3, 2, 1, 1, 3, 4]),
            vec![
                NEW,
                NEW,
                NEW,
                Receipt::Seen,
                LATE,
                Receipt::Seen,
                Receipt::Seen,
                NEW
            ]
        );
        assert_eq!(window.base(), 5);
        assert_eq!(window, SeqWindow { base: 5, above: 0 });
    }

    #[test]
    fn window_slides_past_64() {
        let mut window = SeqWindow::default();
        assert_eq!(window.receive(0), NEW);
        assert_eq!(window.receive(64), NEW, "1..=63 still open");
        assert_eq!(window.base(), 1);
        assert_eq!(window.receive(63), LATE);
        assert_eq!(window.receive(200), NEW);
        assert_eq!(window.base(), 137, "200 is the window's last slot");
        assert_eq!(window.receive(5), Receipt::Seen, "too far behind");
        assert_eq!(window.receive(137), LATE);
        assert_eq!(window.base(), 138);
        let mut far = SeqWindow::default();
        assert_eq!(far.receive(u32::MAX - 1), NEW);
        assert_eq!(far.receive(u32::MAX - 1), Receipt::Seen);
    }
}
