//! The state callback of a room: after logged changes the room's state is
//! POSTed to the configured callback once the room was quiet for
//! `debounce_wait` (never later than `debounce_max_wait` after the first
//! unsent change), one callback at a time, on a task of its own (with its
//! retries); at unload the changes not sent yet go out, bounded by the
//! callback timeout. Ephemeral rooms and nodes without a callback URL
//! call back nothing.

use partyline_proto::Epoch;
use partyline_proto::RoomName;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::hooks::{Debounce, Hooks, StateVersion};
use crate::protocol::SyncRoom;
use crate::render::Renders;

/// Unsent changes and the callback in flight.
pub(super) struct StateCallback {
    /// `None`: this room calls back nothing. Boxed: every live room holds
    /// this struct, and the settings are large.
    target: Option<Box<Target>>,
    /// Changes not sent yet, and when to send them.
    due: Option<Debounce>,
    /// The callback in flight (retries included).
    task: Option<JoinHandle<()>>,
}

/// Where the state goes, and how its JSON is rendered: at most
/// `max_render_bytes` of formatting, among the node's `renders`.
#[derive(Clone)]
struct Target {
    hooks: Hooks,
    max_render_bytes: u64,
    renders: Renders,
}

impl StateCallback {
    /// The callback of a room; `hooks` without a callback URL, or an
    /// ephemeral room (`stores: false`), call back nothing.
    pub(super) fn new(
        hooks: Option<&Hooks>,
        stores: bool,
        max_render_bytes: u64,
        renders: &Renders,
    ) -> Self {
        Self {
            target: hooks
                .filter(|hooks| hooks.has_callback() && stores)
                .map(|hooks| {
                    Box::new(Target {
                        hooks: hooks.clone(),
                        max_render_bytes,
                        renders: renders.clone(),
                    })
                }),
            due: None,
            task: None,
        }
    }

    /// A change was logged at `now`: starts (or extends) the debounce.
    pub(super) fn note_change(&mut self, now: Instant) {
        if self.target.is_none() {
            return;
        }
        match &mut self.due {
            Some(debounce) => debounce.touch(now),
            None => self.due = Some(Debounce::new(now)),
        }
    }

    /// When the next callback starts; `None` with nothing to send or one
    /// in flight (the next waits for it).
    pub(super) fn due_at(&self) -> Option<Instant> {
        match (&self.due, &self.target, &self.task) {
            (Some(debounce), Some(target), None) => Some(debounce.due(target.hooks.config())),
            _ => None,
        }
    }

    /// Waits for the callback in flight to end, or forever when none is.
    /// Cancel safe: the task goes on, and is waited for again.
    pub(super) async fn wait(&mut self) {
        let _ = super::actor::wait_for(&mut self.task).await;
        self.task = None;
    }

    /// Sends the room's state on its own task (retries included); changes
    /// after this point wait for the next one.
    pub(super) fn start(&mut self, room: &RoomName, sync: &SyncRoom, epoch: Epoch) {
        let Some(target) = self.target.as_deref().cloned() else {
            return;
        };
        self.due = None;
        let state = sync.encode_state();
        let room = room.clone();
        let version = StateVersion {
            epoch: epoch.get(),
            taken: std::time::SystemTime::now(),
        };
        self.task = Some(tokio::spawn(async move {
            let (state, json) = if target.hooks.sends_json() {
                let Some(rendered) = data(&target, &room, state).await else {
                    return;
                };
                rendered
            } else {
                (state, serde_json::Value::Null)
            };
            match (target.hooks)
                .send_state(room.as_str(), &state, json, version)
                .await
            {
                Ok(()) => tracing::debug!(room = %room, bytes = state.len(), "state callback sent"),
                Err(error) => {
                    tracing::error!(room = %room, %error, "state callback failed after its retries; the next change sends the state again")
                }
            }
        }));
    }

    /// Starts the callback when it is due at `now`: a busy room whose
    /// inputs never leave the select idle still gets it.
    pub(super) fn start_if_due(&mut self, room: &RoomName, sync: &SyncRoom, epoch: Epoch) {
        if self.due_at().is_some_and(|due| Instant::now() >= due) {
            self.start(room, sync, epoch);
        }
    }

    /// Before the room leaves memory: waits for a callback in flight (its
    /// state is older), then sends unsent changes, each bounded by the
    /// callback timeout.
    pub(super) async fn finish(&mut self, room: &RoomName, sync: &SyncRoom, epoch: Epoch) {
        let Some(limit) = self
            .target
            .as_ref()
            .map(|target| target.hooks.config().callback_timeout)
        else {
            return;
        };
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(room = %room, "a state callback is still running at unload; it goes on in the background");
            }
        }
        if self.due.is_none() {
            return;
        }
        self.start(room, sync, epoch);
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!(room = %room, "last state callback still running at unload; it goes on in the background");
            }
        }
    }
}

/// The JSON callback's `data`, rendered among the node's renders (off the
/// room's task); `null`, logged, when the render is refused (the state
/// itself still goes out); `None` if the render panicked.
async fn data(
    target: &Target,
    room: &RoomName,
    state: Vec<u8>,
) -> Option<(Vec<u8>, serde_json::Value)> {
    let max_render_bytes = target.max_render_bytes;
    let rendered = (target.renders)
        .run(move || {
            let plain = crate::render::JsonFormat::Plain;
            let json = crate::render::render_state(&state, plain, max_render_bytes);
            (state, json)
        })
        .await;
    match rendered {
        Ok((state, Ok(json))) => Some((state, json)),
        Ok((state, Err(error))) => {
            tracing::warn!(room = %room, %error, "state callback sends data: null");
            Some((state, serde_json::Value::Null))
        }
        Err(error) => {
            tracing::error!(room = %room, %error, "state callback not sent: its render failed; the next change sends the state again");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hooks::HooksConfig;

    const WAIT: Duration = Duration::from_secs(2);
    const MAX_WAIT: Duration = Duration::from_secs(10);

    fn hooks(callback: bool) -> Hooks {
        Hooks::new(HooksConfig {
            callback_url: callback.then(|| "http://127.0.0.1:9/state".to_owned()),
            debounce_wait: WAIT,
            debounce_max_wait: MAX_WAIT,
            ..HooksConfig::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn due_once_quiet_but_never_past_the_max_wait() {
        let hooks = hooks(true);
        let mut callback = StateCallback::new(Some(&hooks), true, u64::MAX, &Renders::new(1));
        assert_eq!(callback.due_at(), None, "nothing changed");
        let first = Instant::now();
        callback.note_change(first);
        assert_eq!(callback.due_at(), Some(first + WAIT));
        // A change every second keeps the room busy: it is sent at the max.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            callback.note_change(Instant::now());
            let due = callback.due_at().unwrap();
            assert_eq!(due, (Instant::now() + WAIT).min(first + MAX_WAIT));
        }
        assert_eq!(callback.due_at(), Some(first + MAX_WAIT));
    }

    #[tokio::test(start_paused = true)]
    async fn one_callback_at_a_time_and_later_changes_wait_for_the_next() {
        let hooks = hooks(true);
        let mut callback = StateCallback::new(Some(&hooks), true, u64::MAX, &Renders::new(1));
        callback.note_change(Instant::now());
        // Stands for a callback in flight.
        let (release, running) = tokio::sync::oneshot::channel::<()>();
        callback.due = None;
        callback.task = Some(tokio::spawn(async move {
            let _ = running.await;
        }));
        callback.note_change(Instant::now());
        assert_eq!(callback.due_at(), None, "due while one is in flight");
        let changed = Instant::now();
        tokio::time::advance(MAX_WAIT * 2).await;
        assert_eq!(callback.due_at(), None, "still in flight");
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), callback.wait())
            .await
            .unwrap();
        assert_eq!(
            callback.due_at(),
            Some(changed + WAIT),
            "the change made meanwhile goes next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_callback_url_or_an_ephemeral_room_calls_back_nothing() {
        for (hooks, stores) in [(hooks(false), true), (hooks(true), false)] {
            let mut callback = StateCallback::new(Some(&hooks), stores, u64::MAX, &Renders::new(1));
            callback.note_change(Instant::now());
            assert_eq!(callback.due_at(), None);
        }
        let mut callback = StateCallback::new(None, true, u64::MAX, &Renders::new(1));
        callback.note_change(Instant::now());
        assert_eq!(callback.due_at(), None);
    }
}
