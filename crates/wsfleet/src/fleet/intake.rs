//! What a connection task does with a received data message: with
//! [`Streams`](super::Streams) configured, attribute it to its stream, note
//! the stream's liveness, check its sequence number in the slot's tracker
//! (dropping duplicates, holding a successor's messages that run ahead,
//! reporting gaps), then deliver it and whatever it released. Also the
//! renewal of a subscription (end, then start) on the connection.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use wsfleet_proto::Message;

use super::inbox::Inbox;
use super::reason::DisconnectReason;
use super::stats::ConnRecord;
use super::streams::{Gap, GapCause, GapPolicy};
use super::{ConnId, EventKind, Shared, SlotShared};

/// What the connection must do after a message was taken in.
#[derive(Debug, Default)]
pub(super) struct Intake {
    /// The slow-consumer policy gave up on this connection.
    pub(super) gave_up: bool,
    /// An in-stream gap under [`GapPolicy::Reconnect`]: close for it
    /// (boxed: rare, and this value passes through every connection's task).
    pub(super) reconnect: Option<Box<DisconnectReason>>,
}

/// Takes in one received message of connection `conn` of `slot`.
pub(super) async fn take(
    shared: &Shared,
    slot: &SlotShared,
    record: &ConnRecord,
    conn: ConnId,
    inbox: &Inbox,
    message: Message,
) -> Intake {
    let mut intake = Intake::default();
    let located = shared
        .settings
        .streams
        .as_ref()
        .and_then(|s| Some((s, s.locate(message.payload())?)));
    let (Some((streams, located)), Some(cell)) = (located, slot.streams.as_deref()) else {
        intake.gave_up = !shared.deliver(record, conn, slot.id, message).await;
        return intake;
    };
    let Some(seq) = located.seq else {
        cell.tracker().note(&located.key, Instant::now());
        intake.gave_up = !shared.deliver(record, conn, slot.id, message).await;
        return intake;
    };
    // While this connection waits for the consumer, the slot's other one
    // (during a rotation) waits here: the tracker's order is the event order.
    let _order = cell.delivery.lock().await;
    let now = Instant::now();
    let (expired, verdict, message) = {
        let mut tracker = cell.tracker();
        let expired = tracker.expire(now, streams.overlap());
        let (verdict, message) = tracker.observe(conn, &located.key, seq, message, now);
        // Liveness is what reaches the consumer: a stream whose owner went
        // silent while a successor's messages wait is stale.
        if message.is_some() || !verdict.before.is_empty() || !verdict.released.is_empty() {
            tracker.note(&located.key, now);
        }
        (expired, verdict, message)
    };
    if verdict.first_untracked {
        tracing::warn!(
            slot = %slot.id,
            limit = super::streams::MAX_STREAMS_PER_SLOT,
            "too many streams on one slot: messages of new streams are delivered unchecked"
        );
    }
    let counters = &shared.counters;
    if verdict.duplicate {
        counters.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    if verdict.late {
        counters.late.fetch_add(1, Ordering::Relaxed);
    }
    let (expired_gaps, expired_released) = expired;
    for gap in expired_gaps.into_iter().chain(verdict.gaps) {
        let own = gap.cause == GapCause::InStream;
        let (key, missed) = (gap.stream.clone(), gap.missed.clone());
        report_gap(shared, slot, conn, gap).await;
        if own {
            match streams.gap_policy() {
                GapPolicy::Report => {}
                GapPolicy::Renew => renew(shared, slot, inbox, &key, "sequence gap"),
                GapPolicy::Reconnect => {
                    intake.reconnect = Some(Box::new(DisconnectReason::SequenceGap {
                        stream: key,
                        first: *missed.start(),
                        last: *missed.end(),
                    }));
                }
            }
        }
    }
    for (from, m) in expired_released.into_iter().chain(verdict.before) {
        intake.gave_up |= !shared.deliver(record, from, slot.id, m).await;
    }
    if let Some(message) = message {
        intake.gave_up |= !shared.deliver(record, conn, slot.id, message).await;
    }
    for (from, m) in verdict.released {
        intake.gave_up |= !shared.deliver(record, from, slot.id, m).await;
    }
    intake
}

/// Connection `conn` of `slot` has ended: what a successor held behind
/// its streams is delivered now, holes reported.
pub(super) async fn ended(shared: &Shared, slot: &SlotShared, record: &ConnRecord, conn: ConnId) {
    let Some(cell) = slot.streams.as_deref() else {
        return;
    };
    let _order = cell.delivery.lock().await;
    let (gaps, released) = cell.tracker().ended(conn);
    for gap in gaps {
        report_gap(shared, slot, conn, gap).await;
    }
    for (from, m) in released {
        shared.deliver(record, from, slot.id, m).await;
    }
}

/// Counts, logs and emits a gap.
async fn report_gap(shared: &Shared, slot: &SlotShared, conn: ConnId, gap: Gap) {
    let missed = gap.missed.end() - gap.missed.start() + 1;
    shared.counters.gaps.fetch_add(1, Ordering::Relaxed);
    shared.counters.missed.fetch_add(missed, Ordering::Relaxed);
    tracing::warn!(
        %conn,
        stream = %gap.stream,
        first = gap.missed.start(),
        last = gap.missed.end(),
        missed,
        cause = %gap.cause,
        "sequence gap"
    );
    shared.emit(conn, slot.id, EventKind::Gap(gap)).await;
}

/// Renews the subscription `key` on the connection whose inbox is `inbox`,
/// if its slot carries it: its end message (if any), then its start
/// messages, queued ahead of nothing else (in order with what the fleet
/// sends it). Counted and logged with `why`.
pub(super) fn renew(shared: &Shared, slot: &SlotShared, inbox: &Inbox, key: &str, why: &str) {
    let Some(sub) = shared.subscriptions().carried_key(slot.index(), key) else {
        return;
    };
    for m in sub.end_message().into_iter().chain(sub.start_messages()) {
        // Bounded: one subscription's messages per renewal, and renewals
        // per stream are paced by the staleness threshold or the gaps.
        let _ = inbox.force_send(m.clone());
    }
    shared.counters.renewals.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(subscription = key, why, "renewing a subscription");
}
