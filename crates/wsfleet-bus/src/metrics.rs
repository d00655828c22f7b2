//! The counters of a [`NatsSink`](crate::NatsSink) and a
//! [`NatsSource`](crate::NatsSource) seen from outside: cheap read-only
//! handles that share them, and their families on the admin endpoint's
//! `/metrics`, written through its `prometheus-client` encoder (each handle
//! is a [`MetricsSource`]; the names are listed in the
//! [crate docs](crate#metrics)).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use wsfleet::admin::{DescriptorEncoder, MetricKind, MetricsSource, write_metric};

use crate::{SinkMetrics, SourceMetrics, sink, source};

/// A read-only view of a [`NatsSink`](crate::NatsSink)'s counters, from
/// [`NatsSink::metrics_handle`](crate::NatsSink::metrics_handle). Cloning
/// it is two reference counts; it stays valid after the sink is moved into
/// a task or dropped (the counters then stop changing).
///
/// ```no_run
/// # async fn demo(fleet: &wsfleet::fleet::Fleet, config: wsfleet_bus::SinkConfig) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// let sink = wsfleet_bus::NatsSink::connect(config, &fleet.monitor()).await?;
/// let admin = wsfleet::admin::AdminServer::builder(fleet.monitor())
///     .metrics_source(Arc::new(sink.metrics_handle()))
///     .bind("127.0.0.1:9100")
///     .await?;
/// // ... move `sink` into the task that consumes the fleet's events ...
/// # drop((sink, admin)); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SinkMetricsHandle {
    counters: Arc<sink::Counters>,
    window: Arc<sink::Window>,
}

impl SinkMetricsHandle {
    pub(crate) fn new(counters: Arc<sink::Counters>, window: Arc<sink::Window>) -> Self {
        Self { counters, window }
    }

    /// The counters now (the same as [`Sink::metrics`](crate::Sink::metrics)).
    pub fn snapshot(&self) -> SinkMetrics {
        SinkMetrics::read(&self.counters, &self.window)
    }
}

impl SinkMetrics {
    /// Reads the live counters and the window's occupancy.
    pub(crate) fn read(c: &sink::Counters, window: &sink::Window) -> Self {
        let (in_flight, in_flight_bytes) = window.held();
        Self {
            published: c.published.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            in_flight,
            in_flight_bytes,
            paused: Duration::from_nanos(c.paused_ns.load(Ordering::Relaxed)),
        }
    }

    /// Writes these counters through `encoder` (`wsfleet_sink_*`, listed in
    /// the [crate docs](crate#metrics)).
    ///
    /// # Errors
    /// The encoder's.
    pub fn encode(&self, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use MetricKind::{Counter, Gauge};
        for (name, help, value) in [
            (
                "wsfleet_sink_published_total",
                "Messages published to NATS (first attempts).",
                self.published,
            ),
            (
                "wsfleet_sink_acknowledged_total",
                "Messages JetStream acknowledged (delivered); 0 with core NATS.",
                self.acked,
            ),
            (
                "wsfleet_sink_duplicates_total",
                "Of the acknowledged: acknowledged as duplicates (a retry of a message \
                 that had been stored; stored once).",
                self.duplicates,
            ),
            (
                "wsfleet_sink_retried_total",
                "Re-publishes after a timeout or an error.",
                self.retried,
            ),
            (
                "wsfleet_sink_rejected_total",
                "Messages refused for good, each logged with its connection: larger \
                 than the server's max_payload, or (core NATS) not taken by the client.",
                self.rejected,
            ),
            (
                "wsfleet_sink_reordered_total",
                "Acks showing a message stored out of order with another of its \
                 connection (a consumer can restore the order by Wsfleet-Seq).",
                self.reordered,
            ),
        ] {
            write_metric(out, name, Counter, help, value)?;
        }
        write_metric(
            out,
            "wsfleet_sink_in_flight",
            Gauge,
            "Messages held now, awaiting their ack.",
            self.in_flight,
        )?;
        write_metric(
            out,
            "wsfleet_sink_in_flight_bytes",
            Gauge,
            "Payload bytes of the messages held now, awaiting their ack.",
            self.in_flight_bytes,
        )?;
        write_metric(
            out,
            "wsfleet_sink_paused_seconds_total",
            Counter,
            "Time publishing waited for room in the window (the fleet was paused \
             for the sink meanwhile).",
            self.paused.as_secs_f64(),
        )
    }
}

impl MetricsSource for SinkMetricsHandle {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.snapshot().encode(encoder)
    }
}

/// A read-only view of a [`NatsSource`](crate::NatsSource)'s counters, from
/// [`NatsSource::metrics_handle`](crate::NatsSource::metrics_handle).
/// Cloning it is one reference count; it stays valid after the source is
/// moved or dropped.
#[derive(Debug, Clone)]
pub struct SourceMetricsHandle {
    counters: Arc<source::Counters>,
}

impl SourceMetricsHandle {
    pub(crate) fn new(counters: Arc<source::Counters>) -> Self {
        Self { counters }
    }

    /// The counters now (the same as [`Source::metrics`](crate::Source::metrics)).
    pub fn snapshot(&self) -> SourceMetrics {
        SourceMetrics::read(&self.counters)
    }
}

impl SourceMetrics {
    /// Reads the live counters.
    pub(crate) fn read(c: &source::Counters) -> Self {
        Self {
            received: c.received.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            unanswered: c.unanswered.load(Ordering::Relaxed),
        }
    }

    /// Writes these counters through `encoder` (`wsfleet_source_*`, listed
    /// in the [crate docs](crate#metrics)).
    ///
    /// # Errors
    /// The encoder's.
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        for (name, help, value) in [
            (
                "wsfleet_source_received_total",
                "Outbound messages taken from NATS.",
                self.received,
            ),
            (
                "wsfleet_source_delivered_total",
                "Outbound messages handed to the fleet and acknowledged.",
                self.delivered,
            ),
            (
                "wsfleet_source_answered_total",
                "Outbound messages not delivered, answered with the reason.",
                self.answered,
            ),
            (
                "wsfleet_source_unanswered_total",
                "Outbound messages not delivered, with nowhere to answer (logged).",
                self.unanswered,
            ),
        ] {
            write_metric(encoder, name, MetricKind::Counter, help, value)?;
        }
        Ok(())
    }
}

impl MetricsSource for SourceMetricsHandle {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self.snapshot().encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Each family's (HELP count, TYPE, samples), checking that every line
    /// is a comment or a sample of a family declared before it.
    fn families(text: &str) -> HashMap<String, (usize, Vec<String>, Vec<String>)> {
        let mut families: HashMap<String, (usize, Vec<String>, Vec<String>)> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "empty help for {name}");
                families.entry(name.into()).or_default().0 += 1;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                families.entry(name.into()).or_default().1.push(kind.into());
            } else {
                let (name, value) = line.split_once(' ').expect("name value");
                assert!(value.parse::<f64>().is_ok(), "{line:?}: not a number");
                families
                    .get_mut(name)
                    .unwrap_or_else(|| panic!("sample {name} before its HELP/TYPE"))
                    .2
                    .push(value.into());
            }
        }
        families
    }

    #[test]
    fn a_sink_handle_renders_every_counter_once_with_its_value() {
        let counters = Arc::new(sink::Counters::default());
        let window = Arc::new(sink::Window::new(8, 1 << 20));
        let handle = SinkMetricsHandle::new(counters.clone(), window.clone());
        // The handle reads the live counters, not a copy made when taken.
        for (counter, n) in [
            (&counters.published, 12),
            (&counters.acked, 9),
            (&counters.duplicates, 2),
            (&counters.retried, 4),
            (&counters.rejected, 1),
            (&counters.reordered, 3),
            (&counters.paused_ns, 1_500_000_000),
        ] {
            counter.store(n, Ordering::Relaxed);
        }
        assert!(window.try_take(100) && window.try_take(50));

        let out = wsfleet::admin::render(&[Arc::new(handle.clone())]).expect("encodes");
        let families = families(&out);
        let expected = [
            ("wsfleet_sink_published_total", "counter", "12"),
            ("wsfleet_sink_acknowledged_total", "counter", "9"),
            ("wsfleet_sink_duplicates_total", "counter", "2"),
            ("wsfleet_sink_retried_total", "counter", "4"),
            ("wsfleet_sink_rejected_total", "counter", "1"),
            ("wsfleet_sink_reordered_total", "counter", "3"),
            ("wsfleet_sink_in_flight", "gauge", "2"),
            ("wsfleet_sink_in_flight_bytes", "gauge", "150"),
            ("wsfleet_sink_paused_seconds_total", "counter", "1.5"),
        ];
        assert_eq!(families.len(), expected.len(), "{out}");
        for (name, kind, value) in expected {
            let (helps, kinds, samples) = &families[name];
            assert_eq!(*helps, 1, "HELP of {name} in\n{out}");
            assert_eq!(kinds, &[kind], "TYPE of {name} in\n{out}");
            assert_eq!(samples, &[value], "{name} in\n{out}");
        }
        let snapshot = handle.clone().snapshot();
        assert_eq!((snapshot.acked, snapshot.in_flight), (9, 2));
    }

    #[test]
    fn a_source_handle_renders_every_counter_once_with_its_value() {
        let counters = Arc::new(source::Counters::default());
        let handle = SourceMetricsHandle::new(counters.clone());
        counters.received.store(7, Ordering::Relaxed);
        counters.delivered.store(5, Ordering::Relaxed);
        counters.answered.store(1, Ordering::Relaxed);
        counters.unanswered.store(1, Ordering::Relaxed);

        let out = wsfleet::admin::render(&[Arc::new(handle.clone())]).expect("encodes");
        let families = families(&out);
        let expected = [
            ("wsfleet_source_received_total", "7"),
            ("wsfleet_source_delivered_total", "5"),
            ("wsfleet_source_answered_total", "1"),
            ("wsfleet_source_unanswered_total", "1"),
        ];
        assert_eq!(families.len(), expected.len(), "{out}");
        for (name, value) in expected {
            let (helps, kinds, samples) = &families[name];
            assert_eq!(*helps, 1, "HELP of {name} in\n{out}");
            assert_eq!(kinds, &["counter"], "TYPE of {name} in\n{out}");
            assert_eq!(samples, &[value], "{name} in\n{out}");
        }
    }
}
