//! Leader election: a lease on the `{cluster}-leader` KV bucket.
//!
//! Owns the `leader` key. A candidate acquires it with `create` (which
//! succeeds only when the key is absent, deleted, or expired by the bucket's
//! `max_age` = the lease), renews it every lease/3 with a compare-and-set
//! `update`, and stops leading as soon as a renewal is refused or no renewal
//! succeeded for a whole lease. Standbys watch the key and retry `create`
//! every 250 ms only once the holder's renewals stop. On
//! graceful shutdown the leader deletes the key, but only if it still holds
//! it, so a standby takes over at once.
//!
//! It only says who leads; what a leader does is [`crate::leader`]'s. It
//! must not touch the slot map: two leaders for a moment (a renewal lost in
//! flight) are made harmless by the slot map's own compare-and-set.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, LEADER_KEY};
use crate::next_of;

/// How often a standby tries to take the lease once the holder's renewals
/// stopped (or while it cannot watch them).
pub const STANDBY_RETRY: Duration = Duration::from_millis(250);

/// Retry delay after a renewal failed for a reason other than losing the key.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// Campaigns for leadership as `candidate` until `shutdown`, publishing
/// whether this process leads on `leading`.
///
/// `leading` turns false before any renewal could have lapsed: the lease is
/// counted from when the last successful renewal was *sent*, which is never
/// later than the server's own timestamp on it.
pub async fn campaign(
    cluster: Cluster,
    candidate: String,
    lease: Duration,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let store = loop {
        match cluster.leader_store(lease).await {
            Ok(store) => break store,
            Err(err) => debug!(error = %err, "leader bucket not available yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sleep(STANDBY_RETRY) => {}
        }
    };
    // The bucket's own max_age is what expires the key; a bucket made by
    // another deployment with a different lease wins over our setting.
    let stored = store.stream.cached_info().config.max_age;
    let lease = if stored.is_zero() { lease } else { stored };
    let value = Bytes::from(candidate.clone());
    loop {
        let (mut revision, mut sent) = tokio::select! {
            () = shutdown.cancelled() => return,
            acquired = acquire(&store, &value, lease) => acquired,
        };
        if sent.elapsed() >= lease / 3 {
            // A slow create (queued through a NATS outage, typically) may
            // have landed only now: the key is fresh on the server but our
            // send-time bound says the lease is nearly gone. One renewal
            // gives a bound we can lead on, instead of stepping down at once
            // and leaving a key nobody can take for a whole lease.
            let confirm_sent = Instant::now();
            let confirm = store.update(LEADER_KEY, value.clone(), revision);
            match tokio::time::timeout(lease, confirm).await {
                Ok(Ok(confirmed)) => (revision, sent) = (confirmed, confirm_sent),
                Ok(Err(err)) => {
                    debug!(error = %err, "slow lease acquisition not confirmed");
                    continue;
                }
                Err(_) => {
                    debug!("slow lease acquisition not confirmed in time");
                    continue;
                }
            }
        }
        info!(coordinator = %candidate, "acquired the leader lease");
        leading.send_replace(true);
        crate::telemetry::set_leading(true);
        let outcome = hold(&store, &value, lease, revision, sent, &shutdown).await;
        leading.send_replace(false);
        crate::telemetry::set_leading(false);
        match outcome {
            Held::Shutdown(revision) => {
                release(&store, revision, &candidate).await;
                return;
            }
            Held::Lost(reason) => warn!(coordinator = %candidate, reason, "lost leadership"),
        }
    }
}

/// Retries `create` until it succeeds; returns the revision and when the
/// winning request was sent.
///
/// A standby that tried every [`STANDBY_RETRY`] while a healthy leader held
/// the key cost both it and nats-server a refused write four times a
/// second for nothing. So it watches the key instead: while the holder's
/// renewals (every lease/3) keep arriving, the key cannot expire and the
/// standby stays quiet; it goes back to trying every [`STANDBY_RETRY`] once
/// no renewal was seen for half a lease (the key then expires within
/// another half), and at once when the key is deleted. Without a watch
/// (NATS trouble) it simply keeps trying.
async fn acquire(store: &kv::Store, value: &Bytes, lease: Duration) -> (u64, Instant) {
    let mut watch: Option<kv::Watch> = None;
    let mut quiet_until = Instant::now();
    loop {
        // Only a refusal proves JetStream answers; while it does not, a
        // watch request would just hold up the next try.
        let mut answered = false;
        if Instant::now() >= quiet_until {
            let sent = Instant::now();
            match store.create(LEADER_KEY, value.clone()).await {
                Ok(revision) => return (revision, sent),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => answered = true,
                Err(err) => debug!(error = %err, "leader lease create failed"),
            }
        }
        if watch.is_none() && answered {
            match tokio::time::timeout(STANDBY_RETRY, store.watch(LEADER_KEY)).await {
                Ok(Ok(started)) => watch = Some(started),
                Ok(Err(err)) => debug!(error = %err, "cannot watch the leader lease; polling it"),
                Err(_) => debug!("watching the leader lease timed out; polling it"),
            }
        }
        let next_try = quiet_until.max(Instant::now() + STANDBY_RETRY);
        let event = tokio::select! {
            () = sleep_until(next_try) => continue,
            event = next_of(&mut watch) => event,
        };
        match event {
            Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                quiet_until = Instant::now() + lease / 2;
            }
            // Deleted or purged: the holder let go; take it now.
            Some(Ok(_)) => quiet_until = Instant::now(),
            Some(Err(err)) => {
                debug!(error = %err, "leader lease watch failed; polling it");
                watch = None;
                quiet_until = Instant::now();
            }
            None => {
                watch = None;
                quiet_until = Instant::now();
            }
        }
    }
}

enum Held {
    /// Shutdown while still holding the key at this revision.
    Shutdown(u64),
    /// Leadership is gone.
    Lost(&'static str),
}

/// Renews the lease until it is lost or shutdown.
async fn hold(
    store: &kv::Store,
    value: &Bytes,
    lease: Duration,
    mut revision: u64,
    sent: Instant,
    shutdown: &CancellationToken,
) -> Held {
    let renew_every = lease / 3;
    let mut valid_until = sent + lease;
    let mut next_renewal = sent + renew_every;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Held::Shutdown(revision),
            () = sleep_until(valid_until) => return Held::Lost("no renewal succeeded within the lease"),
            () = sleep_until(next_renewal) => {}
        }
        let sent = Instant::now();
        let result = tokio::select! {
            () = shutdown.cancelled() => return Held::Shutdown(revision),
            () = sleep_until(valid_until) => return Held::Lost("no renewal succeeded within the lease"),
            result = store.update(LEADER_KEY, value.clone(), revision) => result,
        };
        match result {
            Ok(new_revision) => {
                revision = new_revision;
                valid_until = sent + lease;
                next_renewal = sent + renew_every;
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Perhaps our own earlier renewal landed but its ack was
                // lost: the key still names us at a newer revision. Only
                // this process writes its own id, so adopting it is safe.
                let entry = tokio::select! {
                    () = sleep_until(valid_until) => return Held::Lost("no renewal succeeded within the lease"),
                    entry = store.entry(LEADER_KEY) => entry,
                };
                match entry {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put && entry.value == *value =>
                    {
                        debug!(revision = entry.revision, "adopting our own lease renewal");
                        revision = entry.revision;
                        next_renewal = Instant::now();
                    }
                    Ok(_) => return Held::Lost("another coordinator holds the lease"),
                    Err(err) => {
                        debug!(error = %err, "cannot read the lease after a refused renewal");
                        next_renewal = Instant::now() + RENEW_RETRY;
                    }
                }
            }
            Err(err) => {
                debug!(error = %err, "lease renewal failed; retrying");
                next_renewal = Instant::now() + RENEW_RETRY;
            }
        }
    }
}

/// Deletes the key if it is still ours, so a standby need not wait for it
/// to expire.
async fn release(store: &kv::Store, revision: u64, candidate: &str) {
    let delete = store.delete_expect_revision(LEADER_KEY, Some(revision));
    match tokio::time::timeout(Duration::from_secs(2), delete).await {
        Ok(Ok(())) => info!(coordinator = %candidate, "released the leader lease"),
        Ok(Err(err)) => {
            debug!(coordinator = %candidate, error = %err, "leader lease not released (no longer ours?)")
        }
        Err(_) => debug!(coordinator = %candidate, "leader lease release timed out"),
    }
}
