//! The fleets' own families on `/metrics`, encoded by `prometheus-client`
//! at scrape time from each fleet's snapshot (its atomics, read then; no
//! metric mirrors a counter on the hot path).
//!
//! Every per-fleet family carries a `pool` label. The memory budget's
//! families (`wsfleet_budget_*`) describe a budget, not a pool: pools that
//! share one budget show it once, unlabelled, as a single fleet always
//! did; only when the pools charge different budgets does each budget's
//! sample carry `pool`, the names of the pools charging it joined by `,`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::exposition::counter_base;
use crate::fleet::{ConnState, FleetStats, HANDSHAKE_BUCKETS_MS, Histogram, RTT_BUCKETS_US};

/// Reads the fleets at each scrape.
pub(super) struct FleetCollector(pub(super) super::pools::Pools);

impl fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FleetCollector")
            .field(&self.0.monitors().len())
            .finish()
    }
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // Pools charging the same budget share its group.
        let mut budgets: Vec<&crate::fleet::FleetBudget> = Vec::new();
        let monitors = self.0.monitors();
        let pools: Vec<Pool<'_>> = monitors
            .iter()
            .map(|m| {
                let budget = match budgets.iter().position(|b| std::ptr::eq(*b, m.budget())) {
                    Some(i) => i,
                    None => {
                        budgets.push(m.budget());
                        budgets.len() - 1
                    }
                };
                Pool {
                    name: m.name(),
                    stats: m.stats(),
                    budget,
                }
            })
            .collect();
        encode(&mut encoder, &pools)
    }
}

/// One pool's snapshot, as the families read it.
pub(super) struct Pool<'a> {
    pub(super) name: &'a str,
    pub(super) stats: FleetStats,
    /// Its budget's group: pools with the same number charge one budget.
    pub(super) budget: usize,
}

/// A family of one sample per pool.
fn per_pool<V, F>(
    encoder: &mut DescriptorEncoder<'_>,
    pools: &[Pool<'_>],
    (name, kind, help): (&str, MetricType, &str),
    value: F,
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
    F: Fn(&FleetStats) -> V,
{
    let name = if kind == MetricType::Counter {
        counter_base(name)
    } else {
        name
    };
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for pool in pools {
        let labels = [("pool", pool.name)];
        let sample = family.encode_family(&labels)?;
        let v = value(&pool.stats);
        if kind == MetricType::Counter {
            ConstCounter::new(v).encode(sample)?;
        } else {
            ConstGauge::new(v).encode(sample)?;
        }
    }
    Ok(())
}

/// A family of one sample per budget (see the module docs).
fn per_budget<V, F>(
    encoder: &mut DescriptorEncoder<'_>,
    pools: &[Pool<'_>],
    (name, kind, help): (&str, MetricType, &str),
    value: F,
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
    F: Fn(&FleetStats) -> V,
{
    let name = if kind == MetricType::Counter {
        counter_base(name)
    } else {
        name
    };
    let groups = pools.iter().map(|p| p.budget).max().map_or(0, |m| m + 1);
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for group in 0..groups {
        let members: Vec<&Pool<'_>> = pools.iter().filter(|p| p.budget == group).collect();
        let Some(first) = members.first() else {
            continue;
        };
        let v = value(&first.stats);
        let joined: String;
        let labels: Vec<(&str, &str)> = if groups == 1 {
            Vec::new()
        } else {
            joined = members.iter().map(|p| p.name).collect::<Vec<_>>().join(",");
            vec![("pool", joined.as_str())]
        };
        let sample = family.encode_family(&labels)?;
        if kind == MetricType::Counter {
            ConstCounter::new(v).encode(sample)?;
        } else {
            ConstGauge::new(v).encode(sample)?;
        }
    }
    Ok(())
}

/// A histogram family of one histogram per pool; `counts` are per bucket
/// (not cumulative), the last past every bound.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    pools: &[Pool<'_>],
    (name, help): (&str, &str),
    bounds: &[f64],
    read: impl Fn(&FleetStats) -> (Vec<u64>, f64),
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for pool in pools {
        let (counts, sum) = read(&pool.stats);
        let buckets: Vec<(f64, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (bounds.get(i).copied().unwrap_or(f64::INFINITY), *n))
            .collect();
        let count = counts.iter().sum();
        let labels = [("pool", pool.name)];
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

const GAUGE: MetricType = MetricType::Gauge;
const COUNTER: MetricType = MetricType::Counter;

/// Writes every fleet family, one sample (or histogram) per pool.
pub(super) fn encode(encoder: &mut DescriptorEncoder<'_>, pools: &[Pool<'_>]) -> fmt::Result {
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_connections_target",
            GAUGE,
            "Connections the fleet keeps (slots).",
        ),
        |s| s.target,
    )?;
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_connections_ready",
            GAUGE,
            "Connections ready (handshake and on-connect hook done), paused ones included.",
        ),
        |s| s.ready,
    )?;
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_pool_paused",
            GAUGE,
            "1 while the pool is paused as a whole, else 0.",
        ),
        |s| u64::from(s.paused),
    )?;
    let mut family =
        encoder.encode_descriptor("wsfleet_connections", "Connections by state.", None, GAUGE)?;
    for pool in pools {
        for state in [
            ConnState::Connecting,
            ConnState::Ready,
            ConnState::Paused,
            ConnState::Draining,
            ConnState::Backoff,
            ConnState::Closed,
        ] {
            let n = pool
                .stats
                .connections
                .iter()
                .filter(|c| c.state == state)
                .count();
            let labels = [("pool", pool.name), ("state", state.as_str())];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
    }
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_reconnects_total",
            COUNTER,
            "Reconnect attempts, all slots.",
        ),
        |s| s.reconnects,
    )?;
    let mut family = encoder.encode_descriptor(
        "wsfleet_disconnects",
        "Ended connections and failed attempts, by reason.",
        None,
        COUNTER,
    )?;
    for pool in pools {
        for (reason, n) in &pool.stats.totals.disconnects {
            let labels = [("pool", pool.name), ("reason", *reason)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
    }
    type Read = fn(&FleetStats) -> u64;
    let counters: [(&str, &str, Read); 10] = [
        ("wsfleet_bytes_in_total", "Bytes read from sockets.", |s| {
            s.totals.bytes_in
        }),
        (
            "wsfleet_bytes_out_total",
            "Bytes written to sockets.",
            |s| s.totals.bytes_out,
        ),
        ("wsfleet_messages_in_total", "Messages received.", |s| {
            s.totals.msgs_in
        }),
        ("wsfleet_messages_out_total", "Messages sent.", |s| {
            s.totals.msgs_out
        }),
        (
            "wsfleet_rotations_total",
            "Connections replaced after their lifetime (make before break).",
            |s| s.totals.rotations,
        ),
        (
            "wsfleet_sequence_gaps_total",
            "Gaps in streams' sequence numbers.",
            |s| s.totals.sequence_gaps,
        ),
        (
            "wsfleet_sequence_missed_total",
            "Sequence numbers the gaps missed.",
            |s| s.totals.sequence_missed,
        ),
        (
            "wsfleet_duplicates_dropped_total",
            "Messages dropped as duplicates of a sequence number delivered already.",
            |s| s.totals.duplicates_dropped,
        ),
        (
            "wsfleet_late_messages_total",
            "Messages delivered after a higher sequence number of their stream.",
            |s| s.totals.late_messages,
        ),
        (
            "wsfleet_subscription_renewals_total",
            "Subscriptions renewed (stale stream, or a gap under the renew policy).",
            |s| s.totals.renewals,
        ),
    ];
    for (name, help, read) in counters {
        per_pool(encoder, pools, (name, COUNTER, help), read)?;
    }
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_send_rate_waits_total",
            COUNTER,
            "Messages that waited in their inbox for the send rate (per connection or pool).",
        ),
        |s| s.totals.send_rate_waits,
    )?;
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_send_rate_wait_seconds_total",
            COUNTER,
            "Time messages waited for the send rate, summed over messages.",
        ),
        |s| s.totals.send_rate_wait.as_secs_f64(),
    )?;
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_events_dropped_total",
            COUNTER,
            "Received messages dropped by the slow-consumer policy (0 under backpressure).",
        ),
        |s| s.events_dropped,
    )?;
    per_pool(
        encoder,
        pools,
        (
            "wsfleet_buffered_bytes",
            GAUGE,
            "Bytes held by the pool's connections now (buffers and received messages not yet dropped).",
        ),
        |s| {
            s.connections
                .iter()
                .map(|c| c.buffered_bytes)
                .sum::<usize>()
        },
    )?;
    per_budget(
        encoder,
        pools,
        (
            "wsfleet_budget_pauses_total",
            COUNTER,
            "Times a connection stopped reading until the memory budget had room.",
        ),
        |s| s.budget_pauses,
    )?;
    per_budget(
        encoder,
        pools,
        (
            "wsfleet_budget_paused_seconds_total",
            COUNTER,
            "Time connections spent paused for memory, summed over connections.",
        ),
        |s| s.budget_paused.as_secs_f64(),
    )?;
    per_budget(
        encoder,
        pools,
        (
            "wsfleet_budget_evictions_total",
            COUNTER,
            "Connections closed (1009) so that others could have the memory they held.",
        ),
        |s| s.budget_evictions,
    )?;
    type Size = fn(&FleetStats) -> usize;
    let budget_gauges: [(&str, &str, Size); 4] = [
        (
            "wsfleet_budget_handed_bytes",
            "Memory budget held by received messages the application has not dropped yet.",
            |s| s.budget_handed,
        ),
        (
            "wsfleet_budget_used_bytes",
            "Memory budget reserved now.",
            |s| s.budget_used,
        ),
        (
            "wsfleet_budget_peak_bytes",
            "Most memory budget ever reserved.",
            |s| s.budget_peak,
        ),
        ("wsfleet_budget_max_bytes", "The memory budget.", |s| {
            s.budget_max
        }),
    ];
    for (name, help, read) in budget_gauges {
        per_budget(encoder, pools, (name, GAUGE, help), read)?;
    }
    let handshake_bounds: Vec<f64> = HANDSHAKE_BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    histogram(
        encoder,
        pools,
        (
            "wsfleet_handshake_seconds",
            "Time from dialling to ready (DNS, TCP, TLS, handshake, hook).",
        ),
        &handshake_bounds,
        |s| {
            (
                s.totals.handshake_buckets.clone(),
                s.totals.handshake_sum.as_secs_f64(),
            )
        },
    )?;
    let rtt_bounds: Vec<f64> = RTT_BUCKETS_US.iter().map(|us| *us as f64 / 1e6).collect();
    let rtt = |h: &Histogram| (h.counts.clone(), h.sum.as_secs_f64());
    histogram(
        encoder,
        pools,
        (
            "wsfleet_ping_rtt_seconds",
            "Round trips of keepalive pings answered by a pong, all connections.",
        ),
        &rtt_bounds,
        |s| rtt(&s.totals.ping_rtt),
    )?;
    histogram(
        encoder,
        pools,
        (
            "wsfleet_heartbeat_rtt_seconds",
            "Round trips of application heartbeats answered, all connections.",
        ),
        &rtt_bounds,
        |s| rtt(&s.totals.heartbeat_rtt),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::fleet::Totals;

    /// Fixed snapshots, as a collector.
    #[derive(Debug)]
    struct Fixed(Vec<(String, FleetStats, usize)>);

    impl Collector for Fixed {
        fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
            let pools: Vec<Pool<'_>> = self
                .0
                .iter()
                .map(|(name, stats, budget)| Pool {
                    name,
                    stats: stats.clone(),
                    budget: *budget,
                })
                .collect();
            encode(&mut encoder, &pools)
        }
    }

    fn stats(target: usize, ready: usize, budget_used: usize) -> FleetStats {
        FleetStats {
            paused: false,
            target,
            ready,
            reconnects: 2,
            budget_used,
            budget_peak: budget_used,
            budget_max: 1 << 20,
            budget_handed: 0,
            budget_pauses: 0,
            budget_paused: Duration::from_millis(1500),
            budget_evictions: 0,
            events_dropped: 0,
            totals: Totals {
                handshake_buckets: vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                handshake_sum: Duration::from_millis(40),
                ping_rtt: Histogram {
                    counts: vec![0; RTT_BUCKETS_US.len() + 1],
                    sum: Duration::ZERO,
                },
                heartbeat_rtt: Histogram {
                    counts: vec![0; RTT_BUCKETS_US.len() + 1],
                    sum: Duration::ZERO,
                },
                disconnects: vec![("pong_timeout", 3)],
                ..Totals::default()
            },
            connections: Vec::new(),
        }
    }

    fn render(pools: Vec<(String, FleetStats, usize)>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(pools)));
        super::super::exposition::encode(&registry).unwrap()
    }

    #[test]
    fn every_family_carries_the_pool_and_histograms_keep_their_buckets() {
        let text = render(vec![
            ("a".into(), stats(5, 4, 100), 0),
            ("b".into(), stats(3, 3, 100), 0),
        ]);
        for line in [
            "# TYPE wsfleet_connections_ready gauge\n",
            "wsfleet_connections_ready{pool=\"a\"} 4\n",
            "wsfleet_connections_ready{pool=\"b\"} 3\n",
            "wsfleet_connections_target{pool=\"a\"} 5\n",
            "wsfleet_connections{pool=\"b\",state=\"ready\"} 0\n",
            "# TYPE wsfleet_reconnects_total counter\n",
            "wsfleet_reconnects_total{pool=\"a\"} 2\n",
            "wsfleet_disconnects_total{pool=\"b\",reason=\"pong_timeout\"} 3\n",
            "wsfleet_pool_paused{pool=\"a\"} 0\n",
            // One budget shared by both pools: shown once, unlabelled.
            "\nwsfleet_budget_used_bytes 100\n",
            "\nwsfleet_budget_paused_seconds_total 1.5\n",
            "# TYPE wsfleet_handshake_seconds histogram\n",
            "wsfleet_handshake_seconds_bucket{pool=\"a\",le=\"0.005\"} 1\n",
            "wsfleet_handshake_seconds_bucket{pool=\"a\",le=\"0.01\"} 3\n",
            "wsfleet_handshake_seconds_bucket{pool=\"a\",le=\"10\"} 3\n",
            "wsfleet_handshake_seconds_bucket{pool=\"a\",le=\"+Inf\"} 4\n",
            "wsfleet_handshake_seconds_count{pool=\"a\"} 4\n",
            "wsfleet_handshake_seconds_sum{pool=\"a\"} 0.04\n",
            "wsfleet_ping_rtt_seconds_bucket{pool=\"b\",le=\"0.0005\"} 0\n",
            "wsfleet_ping_rtt_seconds_bucket{pool=\"b\",le=\"2.5\"} 0\n",
            "wsfleet_heartbeat_rtt_seconds_bucket{pool=\"b\",le=\"+Inf\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("\nwsfleet_budget_used_bytes ").count(), 1);
        // Each family declared once, every sample after its declaration.
        assert_eq!(text.matches("# TYPE wsfleet_connections_ready ").count(), 1);
        assert_eq!(
            text.matches("wsfleet_handshake_seconds_bucket{pool=\"b\"")
                .count(),
            HANDSHAKE_BUCKETS_MS.len() + 1
        );
    }

    #[test]
    fn pools_with_budgets_of_their_own_label_each_budget() {
        let text = render(vec![
            ("a".into(), stats(1, 1, 10), 0),
            ("b".into(), stats(1, 1, 20), 1),
            ("c".into(), stats(1, 1, 20), 1),
        ]);
        assert!(
            text.contains("wsfleet_budget_used_bytes{pool=\"a\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("wsfleet_budget_used_bytes{pool=\"b,c\"} 20\n"),
            "{text}"
        );
    }

    /// Pool names are checked when a fleet is built, but the exposition
    /// must not depend on it: the crate escapes label values.
    #[test]
    fn a_pool_name_with_quotes_backslashes_and_a_newline_is_escaped() {
        let text = render(vec![("a\"b\\c\nd".into(), stats(1, 1, 0), 0)]);
        assert!(
            text.contains("wsfleet_connections_ready{pool=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
        // Still one line per sample: the newline did not split a line.
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("wsfleet_"),
                "{line:?}"
            );
        }
    }
}
