//! Outbound rate limits: [`SendRate`], and the sans-I/O token bucket
//! ([`Bucket`]) each connection (or the whole fleet) passes before it writes
//! an application message.
//!
//! The bucket is a GCRA (generic cell rate algorithm): one instant, the
//! theoretical arrival time of the next message, instead of a token count
//! refilled by a clock. A message may go when that instant, less the burst
//! tolerance, has come; going pushes it one interval (`1 / rate`) further.
//! Exact with any rate (no rounding of fractional tokens), and nothing to
//! refill: the caller gives the instant.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use wsfleet_proto::ConfigError;

/// The slowest rate accepted: one message a day. Slower is a typo.
const MIN_PER_SECOND: f64 = 1.0 / 86_400.0;
/// The fastest rate accepted: a million messages a second (the interval
/// stays at least a microsecond).
const MAX_PER_SECOND: f64 = 1_000_000.0;
/// The largest burst accepted.
const MAX_BURST: u32 = 1_000_000;
/// How much longer than `1 / rate` the fleet spaces messages: 5 %, so at
/// 5 a second the sixth message goes 1.05 s after the first, and arrival
/// jitter up to 50 ms (a loaded host, a network) cannot land it within the
/// upstream's second. Without
/// it, messages written exactly 200 ms apart arrived as close as 999.7 ms
/// for six on loopback, and a strict upstream closed the connection.
const HEADROOM: f64 = 1.05;

/// How fast a connection (or a whole fleet) may send application messages:
/// `rate` a second, evenly spaced, with `burst` allowed at once after a
/// quiet spell.
///
/// Default burst: **1**, so messages are spaced `1 / rate` apart (5 %
/// more: headroom for arrival jitter) and no window of one second ever
/// holds more than `rate` of them. That is what an upstream that closes a connection sending
/// "more than N messages a second" (exchanges close with 1008) needs:
/// `SendRate::per_second(N)`. A larger burst lets that many go at once
/// after a quiet spell, but a window may then hold up to `burst - 1 + rate`
/// messages: for an upstream counting N in any second, keep
/// `rate + burst - 1 <= N`.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::fleet::SendRate;
/// let five_a_second = SendRate::per_second(5.0);
/// let five_a_minute = SendRate::per(5.0, Duration::from_secs(60));
/// let bursty = SendRate::per_second(3.0).burst(3); // at most 5 in any second
/// assert_eq!(bursty.to_string(), "3/s,burst=3");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendRate {
    per_second: f64,
    burst: u32,
}

impl SendRate {
    /// `n` messages a second (fractions allowed: `0.5` is one every 2 s),
    /// burst 1. Checked when the fleet spawns: above zero, at most 10^6,
    /// at least one a day.
    pub fn per_second(n: f64) -> Self {
        Self {
            per_second: n,
            burst: 1,
        }
    }

    /// `n` messages per `period` (`300` per minute is 5 a second), burst 1.
    pub fn per(n: f64, period: Duration) -> Self {
        Self::per_second(n / period.as_secs_f64())
    }

    /// How many messages may go at once after a quiet spell (default 1;
    /// at least 1). See the type's documentation for what it does to the
    /// count in a window.
    pub fn burst(mut self, n: u32) -> Self {
        self.burst = n;
        self
    }

    /// Messages a second.
    pub fn rate_per_second(&self) -> f64 {
        self.per_second
    }

    /// The burst (see [`burst`](Self::burst)).
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// Checks the rate and the burst; `field` names the setting in the error.
    pub(crate) fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        let bad = |problem| {
            Err(ConfigError {
                field,
                value: self.to_string(),
                problem,
            })
        };
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return bad("the rate must be above zero");
        }
        if self.per_second < MIN_PER_SECOND {
            return bad("the rate must be at least one message a day");
        }
        if self.per_second > MAX_PER_SECOND {
            return bad("the rate must be at most 1,000,000 messages a second");
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return bad("the burst must be 1 to 1,000,000");
        }
        Ok(())
    }

    /// Time between two messages at the steady rate, headroom included.
    fn interval(&self) -> Duration {
        // Validated: between 1 µs and about one day. Whole nanoseconds,
        // rounded, so 5 a second is 210 ms and not a hair under.
        Duration::from_nanos((HEADROOM / self.per_second * 1e9).round() as u64)
    }
}

impl fmt::Display for SendRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_second)?;
        if self.burst != 1 {
            write!(f, ",burst={}", self.burst)?;
        }
        Ok(())
    }
}

/// A GCRA token bucket at a validated [`SendRate`].
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    /// `1 / rate`.
    interval: Duration,
    /// `(burst - 1) * interval`: how far ahead of the steady rate it may run.
    tolerance: Duration,
    /// When the next message would go at the steady rate; `None`: never
    /// sent (a full burst).
    next: Option<Instant>,
}

impl Bucket {
    /// A full bucket. `rate` must be validated.
    pub(crate) fn new(rate: &SendRate) -> Self {
        let interval = rate.interval();
        Self {
            interval,
            tolerance: interval.saturating_mul(rate.burst.saturating_sub(1)),
            next: None,
        }
    }

    /// When a message may go: `now` when it may go now, else later.
    pub(crate) fn ready_at(&self, now: Instant) -> Instant {
        match self.next {
            None => now,
            Some(next) => next
                .checked_sub(self.tolerance)
                .map_or(now, |at| at.max(now)),
        }
    }

    /// Takes a token if one is there; else says when one will be.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Instant> {
        let at = self.ready_at(now);
        if at > now {
            return Err(at);
        }
        self.take(now);
        Ok(())
    }

    /// Takes a token (call when [`ready_at`](Self::ready_at) is `now`).
    fn take(&mut self, now: Instant) {
        let base = self.next.map_or(now, |n| n.max(now));
        self.next = Some(base + self.interval);
    }

    /// Counts a message that goes whether or not there is a token (an
    /// application heartbeat, due at its time): the next messages wait for
    /// it. The debt is bounded: at most one interval beyond an empty bucket.
    pub(crate) fn charge(&mut self, now: Instant) {
        self.take(now);
        let most = now + self.tolerance + self.interval;
        if self.next.is_some_and(|n| n > most) {
            self.next = Some(most);
        }
    }
}

/// The fleet-wide bucket of [`FleetBuilder::pool_send_rate`](super::FleetBuilder::pool_send_rate),
/// shared by every connection of the fleet.
#[derive(Debug)]
pub(crate) struct PoolBucket(Mutex<Bucket>);

impl PoolBucket {
    pub(crate) fn new(rate: &SendRate) -> Self {
        Self(Mutex::new(Bucket::new(rate)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a token if one is there; else says when one will be (another
    /// connection may take it first: the caller asks again then).
    pub(crate) fn try_take(&self, now: Instant) -> Result<(), Instant> {
        self.lock().try_take(now)
    }

    /// See [`Bucket::charge`].
    pub(crate) fn charge(&self, now: Instant) {
        self.lock().charge(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` intervals at `per_second`, headroom included.
    fn every(per_second: f64, n: u32) -> Duration {
        SendRate::per_second(per_second).interval() * n
    }

    #[test]
    fn the_default_burst_spaces_messages_by_the_interval() {
        let mut b = Bucket::new(&SendRate::per_second(5.0));
        let t0 = Instant::now();
        assert_eq!(b.try_take(t0), Ok(()));
        let gap = every(5.0, 1);
        assert_eq!(gap, ms(210));
        assert_eq!(b.try_take(t0), Err(t0 + gap));
        assert_eq!(b.try_take(t0 + ms(199)), Err(t0 + gap));
        assert_eq!(b.try_take(t0 + gap), Ok(()));
        assert_eq!(b.try_take(t0 + ms(300)), Err(t0 + gap * 2));
    }

    #[test]
    fn no_second_holds_more_than_the_rate_with_burst_one() {
        // Taking as fast as allowed for 10 s: any window of one second
        // (half-open) holds at most 5.
        let mut b = Bucket::new(&SendRate::per_second(5.0));
        let t0 = Instant::now();
        let mut now = t0;
        let mut sent = Vec::new();
        while now < t0 + Duration::from_secs(10) {
            match b.try_take(now) {
                Ok(()) => sent.push(now),
                Err(at) => now = at,
            }
        }
        assert_eq!(sent.len(), 48, "10 s at 5/s less the headroom");
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|t| **t < *at + ms(1000))
                .count();
            assert!(in_window <= 5, "{in_window} in the second from message {i}");
        }
    }

    #[test]
    fn a_burst_goes_at_once_after_a_quiet_spell_then_the_rate() {
        let mut b = Bucket::new(&SendRate::per_second(10.0).burst(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.try_take(t0), Ok(()));
        }
        assert_eq!(b.try_take(t0), Err(t0 + every(10.0, 1)));
        assert_eq!(b.try_take(t0 + every(10.0, 1)), Ok(()));
        // Quiet for a second: the whole burst again, not ten.
        let later = t0 + ms(1200);
        for _ in 0..3 {
            assert_eq!(b.try_take(later), Ok(()));
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn fractional_and_per_minute_rates() {
        let mut half = Bucket::new(&SendRate::per_second(0.5));
        let t0 = Instant::now();
        assert_eq!(half.try_take(t0), Ok(()));
        assert_eq!(half.try_take(t0), Err(t0 + ms(2100)));
        let mut per_minute = Bucket::new(&SendRate::per(300.0, Duration::from_secs(60)));
        assert_eq!(per_minute.try_take(t0), Ok(()));
        assert_eq!(per_minute.try_take(t0), Err(t0 + ms(210)));
    }

    #[test]
    fn a_charge_delays_the_next_message_with_bounded_debt() {
        let mut b = Bucket::new(&SendRate::per_second(10.0));
        let t0 = Instant::now();
        b.charge(t0);
        assert_eq!(b.ready_at(t0), t0 + ms(105));
        // Many charges at once (a heartbeat storm) owe at most one interval
        // beyond the empty bucket.
        for _ in 0..100 {
            b.charge(t0);
        }
        assert_eq!(b.ready_at(t0), t0 + ms(105));
    }

    #[test]
    fn the_pool_bucket_is_shared() {
        let pool = PoolBucket::new(&SendRate::per_second(2.0).burst(2));
        let t0 = Instant::now();
        assert_eq!(pool.try_take(t0), Ok(()));
        assert_eq!(pool.try_take(t0), Ok(()));
        assert_eq!(pool.try_take(t0), Err(t0 + ms(525)));
    }

    #[test]
    fn validation_names_the_field_and_the_value() {
        for (rate, problem) in [
            (SendRate::per_second(0.0), "above zero"),
            (SendRate::per_second(-1.0), "above zero"),
            (SendRate::per_second(f64::NAN), "above zero"),
            (SendRate::per_second(f64::INFINITY), "above zero"),
            (SendRate::per(1.0, Duration::ZERO), "above zero"),
            (SendRate::per_second(1e-9), "one message a day"),
            (SendRate::per_second(1e7), "1,000,000"),
            (SendRate::per_second(5.0).burst(0), "burst"),
        ] {
            let err = rate.validate("send_rate").unwrap_err();
            assert_eq!(err.field, "send_rate");
            assert_eq!(err.value, rate.to_string());
            assert!(err.problem.contains(problem), "{rate}: {}", err.problem);
        }
        assert!(SendRate::per_second(5.0).validate("send_rate").is_ok());
        assert_eq!(SendRate::per_second(0.5).to_string(), "0.5/s");
    }
}
