//! Abuse limits at the edge: connection attempts per client address per
//! second and open sockets per address (refused with HTTP 429 before the
//! upgrade), and messages per second per session (closed with 1008).
//! Every refusal is counted ([`Refusals`]) and logged by the caller.
//!
//! Per-address limits see the TCP peer: behind a load balancer every client
//! shares its address, so they are off by default and meant for gateways
//! that clients reach directly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Default for [`LimitsConfig::max_messages_per_second`].
pub(crate) const DEFAULT_MAX_MESSAGES_PER_SECOND: u32 = 500;
/// Default for [`LimitsConfig::message_burst`].
pub(crate) const DEFAULT_MESSAGE_BURST: u32 = 5000;
/// Addresses tracked before idle ones are swept out…
const SWEEP_AT: usize = 10_000;
/// …at most this often (a sweep walks every address under the lock).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The limits; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Connection attempts per client address per second (a second's worth
    /// may come at once).
    pub max_connects_per_ip: u32,
    /// Open sockets per client address.
    pub max_sockets_per_ip: u32,
    /// Messages per second one session may send on average…
    pub max_messages_per_second: u32,
    /// …and at once (a reconnecting client's sync, a pasted document).
    pub message_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connects_per_ip: 0,
            max_sockets_per_ip: 0,
            max_messages_per_second: DEFAULT_MAX_MESSAGES_PER_SECOND,
            message_burst: DEFAULT_MESSAGE_BURST,
        }
    }
}

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Connection attempts over `max_connects_per_ip`.
    pub connect_rate: AtomicU64,
    /// Sockets over `max_sockets_per_ip`.
    pub sockets: AtomicU64,
    /// Sessions closed for their message rate.
    pub message_rate: AtomicU64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// Too many attempts from the address in the last second.
    #[error("too many connection attempts from this address; retry later")]
    ConnectRate,
    /// Too many sockets open from the address.
    #[error("too many open connections from this address")]
    Sockets,
}

/// A token bucket: `rate` per second, holding at most `burst`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether it has refilled completely by `now` (nothing to remember).
    fn is_full(&self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * f64::from(rate) >= f64::from(burst)
    }
}

#[derive(Debug)]
struct Address {
    attempts: Bucket,
    sockets: u32,
}

/// Per-address state, and when idle addresses were last swept out.
#[derive(Debug)]
struct Addresses {
    by_ip: HashMap<IpAddr, Address>,
    swept: Instant,
}

/// The key an address is limited under: IPv4 addresses alone, IPv6 by
/// their /64 (one host usually holds a whole /64).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
}

/// The gateway's limits and what they refused. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct Limits {
    config: LimitsConfig,
    addresses: Mutex<Addresses>,
    /// Counted refusals.
    pub refused: Refusals,
}

/// An admitted socket; its address's count goes down when it is dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Set when the socket was counted against its address.
    counted: Option<(Arc<Limits>, IpAddr)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some((limits, ip)) = self.counted.take() else {
            return;
        };
        let mut addresses = limits.addresses();
        if let Some(address) = addresses.by_ip.get_mut(&ip) {
            address.sockets = address.sockets.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits with `config`.
    pub(crate) fn new(config: LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            addresses: Mutex::new(Addresses {
                by_ip: HashMap::new(),
                swept: Instant::now(),
            }),
            refused: Refusals::default(),
        })
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, Addresses> {
        // Counters only; a panic elsewhere cannot leave them torn.
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one connection attempt from `ip`, or says why not (counted).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        let ip = limit_key(ip);
        let LimitsConfig {
            max_connects_per_ip: rate,
            max_sockets_per_ip: max_sockets,
            ..
        } = self.config;
        if rate == 0 && max_sockets == 0 {
            return Ok(Admitted { counted: None });
        }
        let mut addresses = self.addresses();
        if addresses.by_ip.len() >= SWEEP_AT
            && now.saturating_duration_since(addresses.swept) >= SWEEP_EVERY
        {
            addresses.swept = now;
            addresses
                .by_ip
                .retain(|_, a| a.sockets > 0 || !a.attempts.is_full(rate, rate, now));
        }
        let address = addresses.by_ip.entry(ip).or_insert_with(|| Address {
            attempts: Bucket::full(rate),
            sockets: 0,
        });
        if rate > 0 && !address.attempts.take(rate, rate, now) {
            self.refused.connect_rate.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::ConnectRate);
        }
        if max_sockets == 0 {
            return Ok(Admitted { counted: None });
        }
        if address.sockets >= max_sockets {
            self.refused.sockets.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Sockets);
        }
        address.sockets += 1;
        Ok(Admitted {
            counted: Some((self.clone(), ip)),
        })
    }

    /// A session's message-rate bucket, or `None` when the limit is off.
    pub(crate) fn message_bucket(&self) -> Option<MessageRate> {
        (self.config.max_messages_per_second > 0).then(|| MessageRate {
            bucket: Bucket::full(self.config.message_burst.max(1)),
            rate: self.config.max_messages_per_second,
            burst: self.config.message_burst.max(1),
        })
    }

    /// Counts a session closed for its message rate; returns the total.
    pub(crate) fn count_message_rate(&self) -> u64 {
        self.refused.message_rate.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How long a refused client should wait (`Retry-After`).
    pub(crate) fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// One session's message budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageRate {
    bucket: Bucket,
    rate: u32,
    burst: u32,
}

impl MessageRate {
    /// Spends one message; `false` when the session is over its rate.
    pub(crate) fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        self.bucket.take(self.rate, self.burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connect_attempts_refill_at_their_rate() {
        let limits = Limits::new(LimitsConfig {
            max_connects_per_ip: 3,
            ..LimitsConfig::default()
        });
        let start = Instant::now();
        let admitted: Vec<_> = (0..3)
            .map(|_| limits.admit_at(ip(1), start).unwrap())
            .collect();
        assert_eq!(
            limits.admit_at(ip(1), start).unwrap_err(),
            Refused::ConnectRate
        );
        // Another address has its own budget.
        assert!(limits.admit_at(ip(2), start).is_ok());
        let later = start + Duration::from_millis(340);
        assert!(
            limits.admit_at(ip(1), later).is_ok(),
            "one refilled after 1/3 s"
        );
        assert_eq!(
            limits.admit_at(ip(1), later).unwrap_err(),
            Refused::ConnectRate
        );
        assert_eq!(limits.refused.connect_rate.load(Ordering::Relaxed), 2);
        drop(admitted);
    }

    #[test]
    fn ipv6_addresses_share_their_64_prefix() {
        let limits = Limits::new(LimitsConfig {
            max_sockets_per_ip: 1,
            ..LimitsConfig::default()
        });
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = limits.admit(a).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Sockets);
        assert!(limits.admit(other).is_ok());
        // IPv4-mapped addresses count as their IPv4 address.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _v4 = limits.admit(v4).unwrap();
        assert_eq!(limits.admit(mapped).unwrap_err(), Refused::Sockets);
    }

    #[test]
    fn sockets_per_address_are_given_back_on_drop() {
        let limits = Limits::new(LimitsConfig {
            max_sockets_per_ip: 2,
            ..LimitsConfig::default()
        });
        let first = limits.admit(ip(1)).unwrap();
        let _second = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refused::Sockets);
        drop(first);
        let _third = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refused::Sockets);
        assert_eq!(limits.refused.sockets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_session_gets_its_burst_then_its_rate() {
        let limits = Limits::new(LimitsConfig {
            max_messages_per_second: 10,
            message_burst: 5,
            ..LimitsConfig::default()
        });
        let mut rate = limits.message_bucket().unwrap();
        let start = Instant::now();
        assert!((0..5).all(|_| rate.allow_at(start)));
        assert!(!rate.allow_at(start));
        let later = start + Duration::from_millis(100);
        assert!(rate.allow_at(later));
        assert!(!rate.allow_at(later));
        let off = Limits::new(LimitsConfig {
            max_messages_per_second: 0,
            ..LimitsConfig::default()
        });
        assert!(off.message_bucket().is_none());
    }
}
