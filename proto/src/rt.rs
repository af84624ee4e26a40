//! How the gRPC link's HTTP/2 tasks are spawned, on both ends.
//!
//! tokio's multi-thread scheduler treats a task that is woken while it is
//! being polled as a yield: the task goes to the back of the run queue and
//! an idle worker thread is woken to steal it. hyper's body pipes — one per
//! gRPC stream and direction, moving our messages into h2 — wake
//! themselves on every message (reserving send capacity on an h2 stream
//! notifies the stream's own task at once), so every gateway ↔ room node
//! message woke a second thread: a futex wake and two context switches per
//! message on each side, measured as ~2 futex calls per update in every
//! process on the path. [`Executor`] spawns hyper's tasks inside
//! [`PollAgain`], which polls a future again at once when it woke itself
//! during its poll, so the scheduler never sees that wake. Wakes from other
//! tasks and threads go to tokio as before.
//!
//! [`accept`] is the accept step every server of Partyline shares (the
//! gateway's HTTP server, the room node's gRPC server); [`endpoint`] is how
//! a gateway (or a benchmark in its place) dials a room node.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Polls in a row one [`PollAgain::poll`] may make while the future keeps
/// waking itself, before it yields to the scheduler like any task (so a
/// future that always wakes itself cannot starve its worker).
const MAX_POLLS: usize = 8;

/// Pause after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The next connection on `listener`, with TCP_NODELAY set, or `None` once
/// `shutdown` fires. Without TCP_NODELAY a small frame waits behind the
/// peer's delayed ACK of the previous one: tens of milliseconds per hop.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A connection the peer reset before we took it is its
                // problem; running out of descriptors or memory is ours,
                // and lasts, so back off instead of spinning.
                Err(error) if is_per_connection(&error) => {
                    tracing::debug!(%error, "a connection went away before it was accepted");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return None,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        return Some((stream, peer));
    }
}

/// An `accept` error that concerns only the connection being accepted.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Spawns futures on the current tokio runtime inside [`PollAgain`]; give
/// it to tonic's `Endpoint::executor` and to hyper's HTTP/2 server builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        spawn(future);
    }
}

/// Spawns `future` on the current tokio runtime inside [`PollAgain`]: for
/// tasks that move gRPC messages (hyper's, and a server's connections).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(PollAgain::new(future))
}

/// A gRPC client endpoint to a room node at `url`, set up as every caller
/// of the link needs it: TCP_NODELAY (a small frame must not wait behind a
/// delayed ACK) and hyper's tasks spawned through [`Executor`].
pub fn endpoint(url: String) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url)?
        .tcp_nodelay(true)
        .executor(Executor))
}

/// A future that absorbs wakes it gets while it is being polled by polling
/// again right away (at most [`MAX_POLLS`] times per poll).
#[derive(Debug)]
pub struct PollAgain<F> {
    future: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

#[derive(Debug)]
struct Shared {
    /// `IDLE`, `POLLING`, or `WOKEN` (woken during the current poll).
    state: AtomicU8,
    /// The task's own waker, for wakes that come while it is not polled.
    outer: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            // The running poll will poll again.
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.outer.wake(),
        }
    }
}

impl<F: Future> PollAgain<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            outer: AtomicWaker::new(),
        });
        Self {
            future: Box::pin(future),
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl<F: Future> Future for PollAgain<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.shared.outer.register(cx.waker());
        let this = &mut *self;
        let mut inner = Context::from_waker(&this.waker);
        for _ in 0..MAX_POLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(output) = this.future.as_mut().poll(&mut inner) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(output);
            }
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken during the poll: go round again.
        }
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes the scheduler gets.
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A future that wakes itself `self_wakes` times while polled, then is ready.
    struct WakesItself {
        self_wakes: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.self_wakes == 0 {
                return Poll::Ready(self.polls);
            }
            self.self_wakes -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn poll_once<F: Future>(future: &mut PollAgain<F>, wakes: &Arc<CountWakes>) -> Poll<F::Output> {
        let waker = Waker::from(wakes.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_self_wake_is_polled_again_without_waking_the_task() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut future = PollAgain::new(WakesItself {
            self_wakes: 3,
            polls: 0,
        });
        assert_eq!(poll_once(&mut future, &wakes), Poll::Ready(4));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn endless_self_wakes_yield_to_the_scheduler() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut future = PollAgain::new(WakesItself {
            self_wakes: usize::MAX,
            polls: 0,
        });
        assert!(poll_once(&mut future, &wakes).is_pending());
        assert_eq!(future.future.polls, MAX_POLLS);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_out_of_resources_accept_errors_back_off() {
        use std::io::{Error, ErrorKind};
        assert!(is_per_connection(&Error::from(
            ErrorKind::ConnectionAborted
        )));
        assert!(is_per_connection(&Error::from(ErrorKind::ConnectionReset)));
        // EMFILE: out of file descriptors.
        assert!(!is_per_connection(&Error::from_raw_os_error(24)));
    }

    #[tokio::test]
    async fn a_wake_between_polls_reaches_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let task = tokio::spawn(PollAgain::new(rx));
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(task.await.unwrap().unwrap(), 7);
    }
}
