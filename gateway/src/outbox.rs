//! A client session's outbound queue: frames from the room plus, at most
//! once, the reason to close.
//!
//! The upstream actor pushes, never waits: a full queue means the client is
//! too slow and the push reports it. The session task drains everything
//! queued in one go. The queue allocates nothing until the first frame and
//! gives its memory back when a burst is over, so an idle socket costs only
//! this struct — it exists instead of a `tokio::sync::mpsc` channel, whose
//! first block of 32 slots is allocated up front for every socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::upstream::{CloseReason, ToClient};

/// A drained buffer larger than this is freed rather than reused, so a
/// burst does not pin memory on an idle socket.
const KEEP_CAPACITY: usize = 16;

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<ToClient>,
    close: Option<CloseReason>,
}

/// The shared queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

/// The queue was full; the session should be closed as too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Outbox {
    /// An empty outbox holding at most `capacity` frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                notify: Notify::new(),
                capacity,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A queue of frames cannot be left torn by a panic elsewhere.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame; `Err(Full)` when the client is too far behind.
    pub fn push(&self, frame: ToClient) -> Result<(), Full> {
        {
            let mut state = self.state();
            if state.close.is_some() {
                return Ok(());
            }
            if state.frames.len() >= self.inner.capacity {
                return Err(Full);
            }
            state.frames.push_back(frame);
        }
        self.inner.notify.notify_one();
        Ok(())
    }

    /// Asks the session to close after the frames already queued. The first
    /// reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.state().close.get_or_insert(reason);
        self.inner.notify.notify_one();
    }

    /// Waits until something is queued, then swaps the queued frames into
    /// `into` (which must be empty; its buffer becomes the queue's) and
    /// returns the close reason, if any. Cancel safe: nothing is taken
    /// until the wait is over.
    pub async fn drain(&self, into: &mut VecDeque<ToClient>) -> Option<CloseReason> {
        debug_assert!(into.is_empty());
        if into.capacity() > KEEP_CAPACITY {
            *into = VecDeque::new();
        }
        loop {
            let notified = self.inner.notify.notified();
            {
                let mut state = self.state();
                if !state.frames.is_empty() || state.close.is_some() {
                    std::mem::swap(&mut state.frames, into);
                    return state.close.take();
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(n: u8) -> ToClient {
        ToClient {
            payload: Bytes::from(vec![n]),
            text: false,
        }
    }

    #[tokio::test]
    async fn frames_then_close_in_order_and_full_is_reported() {
        let outbox = Outbox::new(2);
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(2)).unwrap();
        assert_eq!(outbox.push(frame(3)), Err(Full));
        outbox.close(CloseReason::new(1008, "slow"));
        outbox.close(CloseReason::new(1000, "later reasons lose"));
        let mut frames = VecDeque::new();
        let close = outbox.drain(&mut frames).await;
        let payloads: Vec<u8> = frames.iter().map(|f| f.payload[0]).collect();
        assert_eq!(payloads, vec![1, 2]);
        assert_eq!(close, Some(CloseReason::new(1008, "slow")));
    }

    #[tokio::test]
    async fn drain_waits_for_a_push_from_another_task() {
        let outbox = Outbox::new(8);
        let pusher = outbox.clone();
        let waiter = tokio::spawn(async move {
            let mut frames = VecDeque::new();
            outbox.drain(&mut frames).await;
            frames.len()
        });
        tokio::task::yield_now().await;
        pusher.push(frame(7)).unwrap();
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
