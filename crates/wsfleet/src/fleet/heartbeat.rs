//! Application heartbeats: many upstreams want a text message of their own
//! (`{"op":"ping"}`) at an interval and answer with theirs. The fleet sends
//! it on every connection, recognises the answer, measures the round trip
//! (a fleet-wide histogram, the last one per connection) and treats a
//! missing answer like a pong timeout. Transport pings prove only that the
//! socket lives; this proves the application behind it does.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, Sleep};
use wsfleet_proto::Message;

/// The shortest heartbeat interval accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Answers are small: a message longer than this is never parsed to look
/// for an answer field, so a feed's data costs nothing extra.
const MAX_ANSWER_LEN: usize = 512;

/// An application heartbeat: what to send, how often, and how to recognise
/// the answer.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::fleet::Heartbeat;
/// use wsfleet::Message;
/// let heartbeat = Heartbeat::new(Message::text(r#"{"op":"ping"}"#), Duration::from_secs(15))
///     .answer_field("/op", "pong")
///     .timeout(Duration::from_secs(5));
/// assert!(heartbeat.is_answer(br#"{"op":"pong","id":7}"#));
/// assert!(!heartbeat.is_answer(br#"{"op":"trade"}"#));
/// ```
#[derive(Debug, Clone)]
pub struct Heartbeat {
    message: Message,
    interval: Duration,
    timeout: Duration,
    answer: Option<Answer>,
    deliver_answers: bool,
}

/// How an answer is recognised.
#[derive(Debug, Clone)]
enum Answer {
    /// The payload starts with these bytes.
    Prefix(Bytes),
    /// The JSON value at `pointer` is the string `value`.
    Field { pointer: String, value: String },
}

impl Heartbeat {
    /// Sends `message` on every connection every `interval` (from the
    /// moment it is ready). Without an answer rule, nothing is measured or
    /// awaited.
    pub fn new(message: Message, interval: Duration) -> Self {
        Self {
            message,
            interval,
            timeout: interval,
            answer: None,
            deliver_answers: false,
        }
    }

    /// An answer is a message whose payload starts with `prefix`.
    pub fn answer_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.answer = Some(Answer::Prefix(prefix.into()));
        self
    }

    /// An answer is a JSON message whose value at `pointer` (RFC 6901) is
    /// the string `value`, e.g. `("/op", "pong")`. Only messages up to 512
    /// bytes are looked at.
    pub fn answer_field(mut self, pointer: impl Into<String>, value: impl Into<String>) -> Self {
        self.answer = Some(Answer::Field {
            pointer: pointer.into(),
            value: value.into(),
        });
        self
    }

    /// How long an answer may take before the connection is replaced
    /// (default: the interval).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Deliver answers as events too (default: they are consumed here).
    pub fn deliver_answers(mut self, deliver: bool) -> Self {
        self.deliver_answers = deliver;
        self
    }

    /// Whether `payload` is an answer.
    pub fn is_answer(&self, payload: &[u8]) -> bool {
        match &self.answer {
            None => false,
            Some(Answer::Prefix(p)) => payload.starts_with(p),
            Some(Answer::Field { pointer, value }) => {
                payload.len() <= MAX_ANSWER_LEN
                    && payload
                        .windows(value.len().max(1))
                        .any(|w| w == value.as_bytes())
                    && serde_json::from_slice::<serde_json::Value>(payload)
                        .ok()
                        .and_then(|v| v.pointer(pointer).cloned())
                        .is_some_and(|v| v.as_str() == Some(value))
            }
        }
    }

    pub(crate) fn message(&self) -> &Message {
        &self.message
    }

    pub(crate) fn delivers_answers(&self) -> bool {
        self.deliver_answers
    }

    /// The interval and timeout must be usable.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String, &'static str)> {
        if self.interval < MIN_INTERVAL {
            return Err((
                "heartbeat.interval",
                format!("{:?}", self.interval),
                "must be at least 50ms",
            ));
        }
        if self.timeout.is_zero() {
            return Err(("heartbeat.timeout", "0".into(), "must be above zero"));
        }
        if let Some(Answer::Field { pointer, .. }) = &self.answer {
            if !pointer.starts_with('/') {
                return Err((
                    "heartbeat.answer",
                    pointer.clone(),
                    "must be a JSON pointer starting with '/'",
                ));
            }
        }
        Ok(())
    }
}

/// What a connection's heartbeat timer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Send the heartbeat now.
    Send,
    /// The outstanding heartbeat went unanswered for this long.
    TimedOut(Duration),
}

/// One connection's heartbeat state.
pub(super) struct HeartbeatWatch {
    next: Instant,
    /// When the oldest unanswered heartbeat was sent.
    outstanding: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    interval: Duration,
    timeout: Duration,
    awaits_answers: bool,
}

impl HeartbeatWatch {
    /// The first heartbeat is due one interval after `now`.
    pub(super) fn new(heartbeat: &Heartbeat, now: Instant) -> Self {
        Self {
            next: now + heartbeat.interval,
            outstanding: None,
            timer: Box::pin(tokio::time::sleep_until(now + heartbeat.interval)),
            interval: heartbeat.interval,
            timeout: heartbeat.timeout,
            awaits_answers: heartbeat.answer.is_some(),
        }
    }

    /// The next deadline: a send, or the outstanding one's timeout.
    fn deadline(&self) -> Instant {
        match self.outstanding {
            Some(sent) if self.awaits_answers => self.next.min(sent + self.timeout),
            _ => self.next,
        }
    }

    /// What is due at `now`, if anything; `paused`: the connection is not
    /// reading, so a missing answer proves nothing (its wait starts again).
    pub(super) fn poll_due(&mut self, now: Instant, paused: bool) -> Option<Due> {
        if let Some(sent) = self.outstanding {
            if paused {
                self.outstanding = Some(now.max(sent));
            } else if self.awaits_answers && now >= sent + self.timeout {
                return Some(Due::TimedOut(now - sent));
            }
        }
        (now >= self.next).then_some(Due::Send)
    }

    /// The heartbeat was queued at `now`.
    pub(super) fn sent(&mut self, now: Instant) {
        self.next = now + self.interval;
        if self.awaits_answers && self.outstanding.is_none() {
            self.outstanding = Some(now);
        }
    }

    /// An answer arrived at `now`: the round trip of the oldest heartbeat
    /// outstanding, if one is.
    pub(super) fn answered(&mut self, now: Instant) -> Option<Duration> {
        let sent = self.outstanding.take()?;
        Some(now.saturating_duration_since(sent))
    }

    /// Polls for what is due: a send, or the outstanding heartbeat's
    /// timeout (`paused`: see [`poll_due`](Self::poll_due)). Registers the
    /// waker for the next deadline when nothing is.
    pub(super) fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        paused: impl Fn() -> bool,
    ) -> Poll<Due> {
        loop {
            let at = self.deadline();
            if self.timer.deadline() != at {
                self.timer.as_mut().reset(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(due) = self.poll_due(Instant::now(), paused()) {
                return Poll::Ready(due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb() -> Heartbeat {
        Heartbeat::new(Message::text("ping"), Duration::from_secs(10))
            .answer_prefix("pong")
            .timeout(Duration::from_secs(4))
    }

    #[test]
    fn answers_are_recognised_by_prefix_or_field() {
        let h = hb();
        assert!(h.is_answer(b"pong 1"));
        assert!(!h.is_answer(b"ping"));
        let f =
            Heartbeat::new(Message::text("{}"), Duration::from_secs(1)).answer_field("/op", "pong");
        assert!(f.is_answer(br#"{"op":"pong"}"#));
        assert!(!f.is_answer(br#"{"op":"pongs"}"#));
        assert!(!f.is_answer(br#"{"data":"pong"}"#));
        assert!(!f.is_answer(b"pong"));
        let long = format!(r#"{{"op":"pong","pad":"{}"}}"#, "x".repeat(600));
        assert!(
            !f.is_answer(long.as_bytes()),
            "long messages are not looked at"
        );
        let none = Heartbeat::new(Message::text("hi"), Duration::from_secs(1));
        assert!(!none.is_answer(b"hi"));
    }

    #[tokio::test]
    async fn a_heartbeat_is_sent_each_interval_and_answered_with_its_round_trip() {
        let t0 = Instant::now();
        let mut w = HeartbeatWatch::new(&hb(), t0);
        assert_eq!(w.poll_due(t0 + Duration::from_secs(9), false), None);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(w.poll_due(t1, false), Some(Due::Send));
        w.sent(t1);
        assert_eq!(w.deadline(), t1 + Duration::from_secs(4));
        assert_eq!(
            w.answered(t1 + Duration::from_millis(30)),
            Some(Duration::from_millis(30))
        );
        assert_eq!(
            w.answered(t1 + Duration::from_millis(40)),
            None,
            "answered once"
        );
        assert_eq!(w.deadline(), t1 + Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_missing_answer_times_out_unless_paused() {
        let t0 = Instant::now();
        let mut w = HeartbeatWatch::new(&hb(), t0);
        let t1 = t0 + Duration::from_secs(10);
        w.sent(t1);
        let late = t1 + Duration::from_secs(4);
        assert_eq!(
            w.poll_due(late, true),
            None,
            "paused: the wait starts again"
        );
        assert_eq!(
            w.poll_due(late + Duration::from_secs(4), false),
            Some(Due::TimedOut(Duration::from_secs(4)))
        );
    }

    #[tokio::test]
    async fn without_an_answer_rule_nothing_is_awaited() {
        let t0 = Instant::now();
        let h = Heartbeat::new(Message::text("hi"), Duration::from_secs(1));
        let mut w = HeartbeatWatch::new(&h, t0);
        w.sent(t0 + Duration::from_secs(1));
        assert_eq!(
            w.poll_due(t0 + Duration::from_secs(100), false),
            Some(Due::Send)
        );
        assert_eq!(w.answered(t0 + Duration::from_secs(2)), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let short = Heartbeat::new(Message::text("x"), Duration::from_millis(10));
        assert_eq!(short.validate().unwrap_err().0, "heartbeat.interval");
        let zero = hb().timeout(Duration::ZERO);
        assert_eq!(zero.validate().unwrap_err().0, "heartbeat.timeout");
        let pointer = hb().answer_field("op", "pong");
        assert_eq!(pointer.validate().unwrap_err().0, "heartbeat.answer");
        assert!(hb().validate().is_ok());
    }
}
