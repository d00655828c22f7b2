//! The extension point of `/metrics`: [`MetricsSource`], for metrics the
//! fleet does not know (a sink's, a source's, an application's), and
//! [`write_metric`] for the common one-sample family. Every source writes
//! through the `prometheus-client` encoder, so names, label escaping and
//! the text format (Prometheus 0.0.4) are the crate's, the same as for the
//! fleet's own metrics.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` `/metrics` is served with: the Prometheus text
/// format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Metrics from outside the fleet, served on `/metrics` after the fleet's
/// own, in the order the sources were added
/// ([`AdminBuilder::metrics_source`](super::AdminBuilder::metrics_source)).
///
/// [`encode`](Self::encode) runs on every scrape, on the admin server's
/// task: it should read atomics or a snapshot, not wait for a lock held
/// for long or do I/O. It writes its families through `prometheus-client`'s
/// [`DescriptorEncoder`] (re-exported here), as a `prometheus-client`
/// [`Collector`] does: [`write_metric`] for a family of one sample, the
/// encoder itself for labels or histograms. Each family must have a name
/// no other source (nor the fleet, `wsfleet_*` without a further prefix of
/// its own) uses: give them a prefix of your own (`wsfleet_sink_`,
/// `myapp_`).
///
/// A closure `Fn(&mut DescriptorEncoder) -> fmt::Result` is a source too.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use wsfleet::admin::{DescriptorEncoder, MetricKind, MetricsSource, render, write_metric};
///
/// struct Orders(AtomicU64);
///
/// impl MetricsSource for Orders {
///     fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
///         let n = self.0.load(Ordering::Relaxed);
///         // A counter's `_total` is the format's: given or not, it is written once.
///         write_metric(encoder, "myapp_orders", MetricKind::Counter, "Orders placed.", n)
///     }
/// }
///
/// let orders = Arc::new(Orders(AtomicU64::new(3)));
/// let text = render(&[orders.clone()]).unwrap();
/// let help = "# HELP myapp_orders_total Orders placed.\n";
/// let kind = "# TYPE myapp_orders_total counter\n";
/// assert_eq!(text, format!("{help}{kind}myapp_orders_total 3\n"));
/// // Served with the fleet's metrics:
/// # async fn serve(fleet: &wsfleet::fleet::Fleet, orders: Arc<Orders>) -> std::io::Result<()> {
/// let admin = wsfleet::admin::AdminServer::builder(fleet.monitor())
///     .metrics_source(orders)
///     .bind("127.0.0.1:9100")
///     .await?;
/// println!("metrics on http://{}/metrics", admin.local_addr());
/// # Ok(()) }
/// ```
pub trait MetricsSource: Send + Sync + 'static {
    /// Writes this source's metric families through `encoder`.
    ///
    /// # Errors
    /// The encoder's error, passed on: the scrape then fails (500) rather
    /// than serve half a family.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

impl<F> MetricsSource for F
where
    F: Fn(&mut DescriptorEncoder<'_>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        self(encoder)
    }
}

/// The type of a one-sample family written by [`write_metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (or resets to zero when the process restarts); its
    /// samples are named `..._total`.
    Counter,
    /// A value now, up or down.
    Gauge,
}

impl MetricKind {
    /// `"counter"` or `"gauge"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes a family with one unlabelled sample: its `# HELP` and `# TYPE`
/// lines and `name value`. `help` may hold any text (the encoder escapes
/// it). A counter's `name` may end in `_total` or not: the format adds the
/// suffix, so it is taken off here first.
///
/// `name` must match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
///
/// # Errors
/// The encoder's.
pub fn write_metric<V>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    kind: MetricKind,
    help: &str,
    value: V,
) -> fmt::Result
where
    V: EncodeCounterValue + EncodeGaugeValue,
{
    match kind {
        MetricKind::Counter => {
            let name = counter_base(name);
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)
        }
        MetricKind::Gauge => {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(family)
        }
    }
}

/// A counter family's name without the `_total` the encoder appends.
pub(super) fn counter_base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// What `sources` write, in order, as `/metrics` would serve it without
/// the fleet's families: for testing a source.
///
/// # Errors
/// The first error a source returns.
pub fn render(sources: &[Arc<dyn MetricsSource>]) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    for source in sources {
        registry.register_collector(Box::new(SourceCollector(source.clone())));
    }
    encode(&registry)
}

/// The registry's families in the Prometheus text format (0.0.4).
pub(super) fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(8 << 10);
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// A [`MetricsSource`] as the registry takes it.
pub(super) struct SourceCollector(pub(super) Arc<dyn MetricsSource>);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_help_type_and_one_sample() {
        let sources: Vec<Arc<dyn MetricsSource>> =
            vec![Arc::new(|e: &mut DescriptorEncoder<'_>| -> fmt::Result {
                write_metric(e, "x_in_flight", MetricKind::Gauge, "Held now.", 7_u64)?;
                write_metric(e, "x_seconds_total", MetricKind::Counter, "Time.", 1.5)?;
                write_metric(e, "x_things", MetricKind::Counter, "Things.", 2_u64)
            })];
        assert_eq!(
            render(&sources).unwrap(),
            "# HELP x_in_flight Held now.\n# TYPE x_in_flight gauge\nx_in_flight 7\n\
             # HELP x_seconds_total Time.\n# TYPE x_seconds_total counter\nx_seconds_total 1.5\n\
             # HELP x_things_total Things.\n# TYPE x_things_total counter\nx_things_total 2\n"
        );
    }

    #[test]
    fn help_text_cannot_break_the_exposition() {
        let sources: Vec<Arc<dyn MetricsSource>> =
            vec![Arc::new(|e: &mut DescriptorEncoder<'_>| {
                write_metric(
                    e,
                    "x",
                    MetricKind::Gauge,
                    "two\nlines and a \\ backslash",
                    0_u64,
                )
            })];
        assert_eq!(
            render(&sources).unwrap(),
            "# HELP x two\\nlines and a \\\\ backslash\n# TYPE x gauge\nx 0\n"
        );
    }

    #[test]
    fn sources_render_in_order_and_an_error_fails_the_scrape() {
        let sources: Vec<Arc<dyn MetricsSource>> = vec![
            Arc::new(|e: &mut DescriptorEncoder<'_>| {
                write_metric(e, "a", MetricKind::Counter, "A.", 1_u64)
            }),
            Arc::new(|e: &mut DescriptorEncoder<'_>| {
                write_metric(e, "b", MetricKind::Gauge, "B.", 2_u64)
            }),
        ];
        let text = render(&sources).unwrap();
        assert!(text.find("a_total 1").unwrap() < text.find("\nb 2").unwrap());
        let failing: Arc<dyn MetricsSource> =
            Arc::new(|_: &mut DescriptorEncoder<'_>| Err(fmt::Error));
        assert!(render(&[sources[0].clone(), failing]).is_err());
    }
}
