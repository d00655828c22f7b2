//! The gate a connection's task passes before it writes a message taken
//! from its inbox, under [`FleetBuilder::send_rate`](super::FleetBuilder::send_rate)
//! and [`FleetBuilder::pool_send_rate`](super::FleetBuilder::pool_send_rate).
//!
//! A message refused for lack of a token goes back to the front of the
//! inbox (so it waits there: bounded by the inbox's capacity, forwarded on
//! rotation, handed back as undelivered at the end, as any queued message)
//! and the task stops taking until the token is due; it keeps reading and
//! answering pings meanwhile. Boxed, and only when a rate is set: a
//! connection without one carries a pointer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use super::Shared;
use super::counters::Counters;
use super::send_rate::Bucket;

/// One connection's rate state.
pub(super) struct SendGate {
    /// Its own bucket ([`FleetBuilder::send_rate`](super::FleetBuilder::send_rate)).
    own: Option<Bucket>,
    /// Since when the message at the inbox's front has waited for a token.
    waiting_since: Option<Instant>,
    /// Due when the refused message may be tried again; `None`: not waiting.
    wake: Option<Pin<Box<Sleep>>>,
}

/// Whether the message just taken may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Go,
    /// Put it back at the inbox's front; the gate wakes the task when due.
    Wait,
}

impl SendGate {
    /// `None` without a per-connection or fleet-wide send rate.
    pub(super) fn new(shared: &Shared) -> Option<Box<Self>> {
        let own = shared.settings.send_rate.as_ref().map(Bucket::new);
        (own.is_some() || shared.send_pool.is_some()).then(|| {
            Box::new(Self {
                own,
                waiting_since: None,
                wake: None,
            })
        })
    }

    /// Whether the task must not take from its inbox now (a token is due
    /// later).
    pub(super) fn blocked(gate: &Option<Box<Self>>) -> bool {
        gate.as_ref().is_some_and(|g| g.wake.is_some())
    }

    /// A message was taken: takes a token from the connection's bucket and
    /// the fleet's (both, or neither), or arms the wake for the later of
    /// the two and says to wait.
    pub(super) fn admit(gate: &mut Option<Box<Self>>, shared: &Shared, now: Instant) -> Admit {
        let Some(g) = gate else {
            return Admit::Go;
        };
        // The connection's own token first, without taking it: the fleet's
        // is taken only when this one can go now.
        let own_at = g.own.as_ref().map_or(now, |b| b.ready_at(now));
        let refused_until = if own_at > now {
            Some(own_at)
        } else {
            match shared.send_pool.as_ref().map(|p| p.try_take(now)) {
                Some(Err(at)) => Some(at),
                Some(Ok(())) | None => None,
            }
        };
        match refused_until {
            Some(until) => {
                if g.waiting_since.is_none() {
                    g.waiting_since = Some(now);
                    shared
                        .counters
                        .send_rate_waits
                        .fetch_add(1, Ordering::Relaxed);
                }
                match &mut g.wake {
                    Some(sleep) => sleep.as_mut().reset(until),
                    None => g.wake = Some(Box::pin(tokio::time::sleep_until(until))),
                }
                Admit::Wait
            }
            None => {
                if let Some(own) = &mut g.own {
                    // Ready (checked above): cannot fail.
                    let _ = own.try_take(now);
                }
                g.wake = None;
                if let Some(since) = g.waiting_since.take() {
                    add_wait(&shared.counters, now - since);
                }
                Admit::Go
            }
        }
    }

    /// Ready when a refused message may be tried again; pending otherwise.
    pub(super) fn poll_wake(gate: &mut Option<Box<Self>>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(g) = gate else {
            return Poll::Pending;
        };
        let Some(sleep) = &mut g.wake else {
            return Poll::Pending;
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                g.wake = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// A message that went without asking (an application heartbeat, due
    /// at its time) counts against both rates.
    pub(super) fn charge(gate: &mut Option<Box<Self>>, shared: &Shared, now: Instant) {
        if let Some(g) = gate {
            if let Some(own) = &mut g.own {
                own.charge(now);
            }
            if let Some(pool) = &shared.send_pool {
                pool.charge(now);
            }
        }
    }

    /// The connection ends: a wait still open counts up to now.
    pub(super) fn finish(gate: &mut Option<Box<Self>>, counters: &Counters) {
        if let Some(since) = gate.as_mut().and_then(|g| g.waiting_since.take()) {
            add_wait(counters, since.elapsed());
        }
    }
}

fn add_wait(counters: &Counters, waited: std::time::Duration) {
    let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
    counters.send_rate_wait_us.fetch_add(us, Ordering::Relaxed);
}
