//! The extension point of `/metrics`: [`MetricsSource`], for metrics the
//! fleet does not know (a sink's, a source's, an application's), and the
//! helpers that write Prometheus text (format 0.0.4) the way the fleet's
//! own metrics are written.

use std::fmt::{self, Write as _};

/// Metrics from outside the fleet, appended to `/metrics` after the fleet's
/// own, in the order the sources were added
/// ([`AdminBuilder::metrics_source`](super::AdminBuilder::metrics_source)).
///
/// [`render`](Self::render) runs on every scrape, on the admin server's
/// task: it should read atomics or a snapshot, not wait for a lock held
/// for long or do I/O. Each metric family it writes must have a name no
/// other source (nor the fleet, `wsfleet_*` without a further prefix of
/// its own) uses: give them a prefix of your own (`wsfleet_sink_`,
/// `myapp_`).
///
/// A closure `Fn(&mut String)` is a source too.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use wsfleet::admin::{MetricKind, MetricsSource, write_metric};
///
/// struct Orders(AtomicU64);
///
/// impl MetricsSource for Orders {
///     fn render(&self, out: &mut String) {
///         let n = self.0.load(Ordering::Relaxed);
///         write_metric(out, "myapp_orders_total", MetricKind::Counter, "Orders placed.", n);
///     }
/// }
///
/// let orders = Arc::new(Orders(AtomicU64::new(3)));
/// let mut out = String::new();
/// orders.render(&mut out);
/// let help = "# HELP myapp_orders_total Orders placed.\n";
/// let kind = "# TYPE myapp_orders_total counter\n";
/// assert_eq!(out, format!("{help}{kind}myapp_orders_total 3\n"));
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
    /// Appends this source's metric families (`# HELP`, `# TYPE` and
    /// samples, each line ending in `\n`) to `out`.
    fn render(&self, out: &mut String);
}

impl<F> MetricsSource for F
where
    F: Fn(&mut String) + Send + Sync + 'static,
{
    fn render(&self, out: &mut String) {
        self(out);
    }
}

/// The type of a metric family, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricKind {
    /// Only goes up (or resets to zero when the process restarts); name it
    /// `..._total`.
    Counter,
    /// A value now, up or down.
    Gauge,
    /// Cumulative buckets with `_bucket{le=..}`, `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    /// `"counter"`, `"gauge"` or `"histogram"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes the `# HELP` and `# TYPE` lines of the family `name`; its samples
/// follow. A backslash or line break in `help` is escaped, as the format
/// asks, so any text makes one valid line.
///
/// `name` is written as given: it must match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn write_family(out: &mut String, name: &str, kind: MetricKind, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\n# TYPE {name} {kind}");
}

/// Writes a family with one unlabelled sample: its `# HELP` and `# TYPE`
/// lines (see [`write_family`]) and `name value`.
pub fn write_metric(
    out: &mut String,
    name: &str,
    kind: MetricKind,
    help: &str,
    value: impl fmt::Display,
) {
    write_family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_metric_is_help_type_and_one_sample() {
        let mut out = String::new();
        write_metric(&mut out, "x_in_flight", MetricKind::Gauge, "Held now.", 7);
        write_metric(
            &mut out,
            "x_seconds_total",
            MetricKind::Counter,
            "Time.",
            1.5,
        );
        assert_eq!(
            out,
            "# HELP x_in_flight Held now.\n# TYPE x_in_flight gauge\nx_in_flight 7\n\
             # HELP x_seconds_total Time.\n# TYPE x_seconds_total counter\nx_seconds_total 1.5\n"
        );
    }

    #[test]
    fn help_text_cannot_break_the_exposition() {
        let mut out = String::new();
        write_family(
            &mut out,
            "x",
            MetricKind::Histogram,
            "two\nlines and a \\ backslash",
        );
        assert_eq!(
            out,
            "# HELP x two\\nlines and a \\\\ backslash\n# TYPE x histogram\n"
        );
    }

    #[test]
    fn closures_are_sources() {
        let source: Arc<dyn MetricsSource> =
            Arc::new(|out: &mut String| out.push_str("y_total 1\n"));
        let mut out = String::from("before\n");
        source.render(&mut out);
        assert_eq!(out, "before\ny_total 1\n");
    }
}
