//! What a ready connection does besides its traffic, when configured: the
//! stale-connection watch ([`FleetBuilder::stale_after`](super::FleetBuilder::stale_after)),
//! the application heartbeat ([`Heartbeat`](super::Heartbeat)) and the
//! per-stream staleness check ([`Streams::stale_after`](super::Streams::stale_after)).
//! Boxed and polled by hand, so the task of a connection without them
//! carries one pointer and one small branch.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};
use wsfleet_proto::Message;

use super::budget::ConnBudget;
use super::counters::Counters;
use super::heartbeat::{Due, Heartbeat, HeartbeatWatch};
use super::inbox::Inbox;
use super::intake;
use super::stale::StaleWatch;
use super::stats::ConnRecord;
use super::{Shared, SlotShared};

/// What is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extra {
    /// No data message for this long: the connection is stale.
    Stale(Duration),
    Heartbeat(Due),
    /// Time to look for stale streams.
    StreamsCheck,
}

/// A connection's heartbeat and staleness check.
pub(super) struct Extras {
    /// The connection's budget: while it is paused for memory, silence
    /// proves nothing.
    budget: Option<Arc<ConnBudget>>,
    stale: Option<StaleWatch>,
    heartbeat: Option<(Arc<Heartbeat>, HeartbeatWatch)>,
    streams: Option<StreamsWatch>,
}

impl Extras {
    /// `None` when neither is configured.
    pub(super) fn new(shared: &Shared, budget: Option<Arc<ConnBudget>>) -> Option<Box<Self>> {
        let now = Instant::now();
        let heartbeat = shared.settings.heartbeat.clone().map(|h| {
            let watch = HeartbeatWatch::new(&h, now);
            (h, watch)
        });
        let streams = StreamsWatch::new(shared, now);
        let stale = StaleWatch::new(shared.settings.stale_after);
        (stale.is_some() || heartbeat.is_some() || streams.is_some()).then(|| {
            Box::new(Self {
                budget,
                stale,
                heartbeat,
                streams,
            })
        })
    }

    /// What is due; pending forever without extras.
    pub(super) fn poll(extras: &mut Option<Box<Self>>, cx: &mut Context<'_>) -> Poll<Extra> {
        let Some(x) = extras else {
            return Poll::Pending;
        };
        let Self {
            budget,
            stale,
            heartbeat,
            streams,
        } = &mut **x;
        // Not reading (paused for memory): silence and a missing answer
        // prove nothing.
        let paused = || budget.as_ref().is_some_and(|b| b.is_paused());
        if let Some(stale) = stale {
            if let Poll::Ready(after) = stale.poll_stale(cx, paused) {
                return Poll::Ready(Extra::Stale(after));
            }
        }
        if let Some((_, watch)) = heartbeat {
            if let Poll::Ready(due) = watch.poll_wake(cx, paused) {
                return Poll::Ready(Extra::Heartbeat(due));
            }
        }
        if let Some(streams) = streams {
            if streams.ticker.poll_tick(cx).is_ready() {
                return Poll::Ready(Extra::StreamsCheck);
            }
        }
        Poll::Pending
    }

    /// A data message arrived (after its delivery: time waiting for the
    /// consumer is ours, not the upstream's silence).
    pub(super) fn on_data(&mut self) {
        if let Some(stale) = &mut self.stale {
            stale.on_data();
        }
    }

    /// The heartbeat to send (a shared payload, not a copy), if any.
    pub(super) fn heartbeat_message(&self) -> Option<Message> {
        self.heartbeat.as_ref().map(|(h, _)| h.message().clone())
    }

    /// The heartbeat was queued now.
    pub(super) fn heartbeat_sent(&mut self) {
        if let Some((_, watch)) = &mut self.heartbeat {
            watch.sent(Instant::now());
        }
    }

    /// Whether `message` is a heartbeat answer to consume (not deliver);
    /// an answer's round trip is recorded either way.
    pub(super) fn is_heartbeat_answer(
        &mut self,
        message: &Message,
        record: &ConnRecord,
        counters: &Counters,
    ) -> bool {
        let Some((heartbeat, watch)) = &mut self.heartbeat else {
            return false;
        };
        if !heartbeat.is_answer(message.payload()) {
            return false;
        }
        if let Some(rtt) = watch.answered(Instant::now()) {
            record.heartbeat_rtt(rtt, counters);
        }
        !heartbeat.delivers_answers()
    }

    /// Renews the subscriptions of `slot` whose streams are stale.
    pub(super) fn renew_stale(&mut self, shared: &Shared, slot: &SlotShared, inbox: &Inbox) {
        if let Some(streams) = &mut self.streams {
            streams.renew_stale(shared, slot, inbox);
        }
    }
}

/// The per-stream staleness check of one connection: every quarter of the
/// threshold, the streams of the subscriptions its slot carries that had no
/// message delivered for the threshold — since the connection started or
/// the stream's last renewal — are renewed.
struct StreamsWatch {
    after: Duration,
    started: Instant,
    ticker: Interval,
    /// When each stream was last renewed on this connection.
    renewed: HashMap<Arc<str>, Instant>,
}

impl StreamsWatch {
    /// `None` without a per-stream threshold.
    fn new(shared: &Shared, now: Instant) -> Option<Self> {
        let after = shared
            .settings
            .streams
            .as_ref()
            .and_then(|s| s.stream_stale_after())?;
        let every = (after / 4).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval_at(now + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Some(Self {
            after,
            started: now,
            ticker,
            renewed: HashMap::new(),
        })
    }

    fn renew_stale(&mut self, shared: &Shared, slot: &SlotShared, inbox: &Inbox) {
        let Some(cell) = slot.streams.as_deref() else {
            return;
        };
        let keys: Vec<Arc<str>> = shared
            .subscriptions()
            .carried(slot.index())
            .iter()
            .map(|s| s.shared_key().clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let now = Instant::now();
        let started = self.started;
        let renewed = &self.renewed;
        let stale = cell.tracker().stale(
            &keys,
            |k| renewed.get(k).copied().unwrap_or(started).max(started),
            now,
            self.after,
        );
        for key in stale {
            intake::renew(shared, slot, inbox, &key, "stale stream");
            self.renewed.insert(key, now);
        }
    }
}
