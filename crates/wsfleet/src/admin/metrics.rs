//! Prometheus text exposition (format 0.0.4) of a fleet snapshot.

use std::fmt::Write;

use super::exposition::{MetricKind, write_family as metric};
use crate::fleet::{ConnState, FleetStats, HANDSHAKE_BUCKETS_MS, RTT_BUCKETS_US};

/// Renders every fleet metric.
pub(super) fn render(s: &FleetStats) -> String {
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "wsfleet_connections_target",
        MetricKind::Gauge,
        "Connections the fleet keeps (slots).",
    );
    let _ = writeln!(out, "wsfleet_connections_target {}", s.target);
    metric(
        &mut out,
        "wsfleet_connections_ready",
        MetricKind::Gauge,
        "Connections ready (handshake and on-connect hook done), paused ones included.",
    );
    let _ = writeln!(out, "wsfleet_connections_ready {}", s.ready);
    metric(
        &mut out,
        "wsfleet_connections",
        MetricKind::Gauge,
        "Connections by state.",
    );
    for state in [
        ConnState::Connecting,
        ConnState::Ready,
        ConnState::Paused,
        ConnState::Draining,
        ConnState::Backoff,
        ConnState::Closed,
    ] {
        let n = s.connections.iter().filter(|c| c.state == state).count();
        let _ = writeln!(
            out,
            "wsfleet_connections{{state=\"{}\"}} {n}",
            state.as_str()
        );
    }
    metric(
        &mut out,
        "wsfleet_reconnects_total",
        MetricKind::Counter,
        "Reconnect attempts, all slots.",
    );
    let _ = writeln!(out, "wsfleet_reconnects_total {}", s.reconnects);
    metric(
        &mut out,
        "wsfleet_disconnects_total",
        MetricKind::Counter,
        "Ended connections and failed attempts, by reason.",
    );
    for (reason, n) in &s.totals.disconnects {
        let _ = writeln!(out, "wsfleet_disconnects_total{{reason=\"{reason}\"}} {n}");
    }
    for (name, help, value) in [
        (
            "wsfleet_bytes_in_total",
            "Bytes read from sockets.",
            s.totals.bytes_in,
        ),
        (
            "wsfleet_bytes_out_total",
            "Bytes written to sockets.",
            s.totals.bytes_out,
        ),
        (
            "wsfleet_messages_in_total",
            "Messages received.",
            s.totals.msgs_in,
        ),
        (
            "wsfleet_messages_out_total",
            "Messages sent.",
            s.totals.msgs_out,
        ),
        (
            "wsfleet_rotations_total",
            "Connections replaced after their lifetime (make before break).",
            s.totals.rotations,
        ),
        (
            "wsfleet_sequence_gaps_total",
            "Gaps in streams' sequence numbers.",
            s.totals.sequence_gaps,
        ),
        (
            "wsfleet_sequence_missed_total",
            "Sequence numbers the gaps missed.",
            s.totals.sequence_missed,
        ),
        (
            "wsfleet_duplicates_dropped_total",
            "Messages dropped as duplicates of a sequence number delivered already.",
            s.totals.duplicates_dropped,
        ),
        (
            "wsfleet_late_messages_total",
            "Messages delivered after a higher sequence number of their stream.",
            s.totals.late_messages,
        ),
        (
            "wsfleet_subscription_renewals_total",
            "Subscriptions renewed (stale stream, or a gap under the renew policy).",
            s.totals.renewals,
        ),
    ] {
        metric(&mut out, name, MetricKind::Counter, help);
        let _ = writeln!(out, "{name} {value}");
    }
    metric(
        &mut out,
        "wsfleet_budget_pauses_total",
        MetricKind::Counter,
        "Times a connection stopped reading until the memory budget had room.",
    );
    let _ = writeln!(out, "wsfleet_budget_pauses_total {}", s.budget_pauses);
    metric(
        &mut out,
        "wsfleet_budget_paused_seconds_total",
        MetricKind::Counter,
        "Time connections spent paused for memory, summed over connections.",
    );
    let _ = writeln!(
        out,
        "wsfleet_budget_paused_seconds_total {:.3}",
        s.budget_paused.as_secs_f64()
    );
    metric(
        &mut out,
        "wsfleet_budget_evictions_total",
        MetricKind::Counter,
        "Connections closed (1009) so that others could have the memory they held.",
    );
    let _ = writeln!(out, "wsfleet_budget_evictions_total {}", s.budget_evictions);
    metric(
        &mut out,
        "wsfleet_events_dropped_total",
        MetricKind::Counter,
        "Received messages dropped by the slow-consumer policy (0 under backpressure).",
    );
    let _ = writeln!(out, "wsfleet_events_dropped_total {}", s.events_dropped);
    metric(
        &mut out,
        "wsfleet_send_rate_waits_total",
        MetricKind::Counter,
        "Messages that waited in their inbox for the send rate (per connection or pool).",
    );
    let _ = writeln!(
        out,
        "wsfleet_send_rate_waits_total {}",
        s.totals.send_rate_waits
    );
    metric(
        &mut out,
        "wsfleet_send_rate_wait_seconds_total",
        MetricKind::Counter,
        "Time messages waited for the send rate, summed over messages.",
    );
    let _ = writeln!(
        out,
        "wsfleet_send_rate_wait_seconds_total {:.3}",
        s.totals.send_rate_wait.as_secs_f64()
    );
    let buffered: usize = s.connections.iter().map(|c| c.buffered_bytes).sum();
    for (name, help, value) in [
        (
            "wsfleet_buffered_bytes",
            "Bytes held by all connections now (buffers and received messages not yet dropped).",
            buffered,
        ),
        (
            "wsfleet_budget_handed_bytes",
            "Memory budget held by received messages the application has not dropped yet.",
            s.budget_handed,
        ),
        (
            "wsfleet_budget_used_bytes",
            "Memory budget reserved now.",
            s.budget_used,
        ),
        (
            "wsfleet_budget_peak_bytes",
            "Most memory budget ever reserved.",
            s.budget_peak,
        ),
        (
            "wsfleet_budget_max_bytes",
            "The memory budget.",
            s.budget_max,
        ),
    ] {
        metric(&mut out, name, MetricKind::Gauge, help);
        let _ = writeln!(out, "{name} {value}");
    }
    metric(
        &mut out,
        "wsfleet_handshake_seconds",
        MetricKind::Histogram,
        "Time from dialling to ready (DNS, TCP, TLS, handshake, hook).",
    );
    let mut cumulative = 0;
    for (i, n) in s.totals.handshake_buckets.iter().enumerate() {
        cumulative += n;
        match HANDSHAKE_BUCKETS_MS.get(i) {
            Some(ms) => {
                let _ = writeln!(
                    out,
                    "wsfleet_handshake_seconds_bucket{{le=\"{}\"}} {cumulative}",
                    *ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "wsfleet_handshake_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "wsfleet_handshake_seconds_sum {}",
        s.totals.handshake_sum.as_secs_f64()
    );
    let _ = writeln!(out, "wsfleet_handshake_seconds_count {cumulative}");
    for (name, help, h) in [
        (
            "wsfleet_ping_rtt_seconds",
            "Round trips of keepalive pings answered by a pong, all connections.",
            &s.totals.ping_rtt,
        ),
        (
            "wsfleet_heartbeat_rtt_seconds",
            "Round trips of application heartbeats answered, all connections.",
            &s.totals.heartbeat_rtt,
        ),
    ] {
        metric(&mut out, name, MetricKind::Histogram, help);
        rtt_histogram(&mut out, name, h);
    }
    out
}

/// A round-trip histogram's exposition lines (cumulative buckets, sum, count).
fn rtt_histogram(out: &mut String, name: &str, h: &crate::fleet::Histogram) {
    let mut cumulative = 0;
    for (i, n) in h.counts.iter().enumerate() {
        cumulative += n;
        let le = RTT_BUCKETS_US
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |us| (*us as f64 / 1e6).to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", h.sum.as_secs_f64());
    let _ = writeln!(out, "{name}_count {cumulative}");
}
