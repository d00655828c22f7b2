//! `--sink` and `--source`: the NATS connections of a run, made before the
//! admin endpoint binds so that its `/metrics` serves their counters
//! (`wsfleet_sink_*`, `wsfleet_source_*`) beside the fleet's.

use std::sync::Arc;

use anyhow::Context as _;
use wsfleet::admin::{ControlPools, MetricsSource};
use wsfleet::fleet::{FleetMonitor, SlowConsumer};
use wsfleet_bus::{NatsSink, NatsSource, Source as _};

use super::config::Plan;

/// The sink and the source the plan asks for, connected.
#[derive(Debug)]
pub(crate) struct Bus {
    /// `--sink`: received messages to NATS.
    pub(crate) sink: Option<NatsSink>,
    /// `--source`: outbound messages from NATS.
    pub(crate) source: Option<NatsSource>,
}

impl Bus {
    /// Connects the sink (slot URLs read from `monitor`) and the source, as
    /// far as the plan has them, logging each.
    ///
    /// # Errors
    /// Naming the flag and URL: the server cannot be reached, or the stream
    /// or consumer cannot be set up.
    pub(crate) async fn connect(plan: &Plan, monitor: &FleetMonitor) -> anyhow::Result<Self> {
        let sink = match plan.sink.clone() {
            Some(config) => {
                let url = config.url.to_string();
                let sink = NatsSink::connect(config, monitor)
                    .await
                    .with_context(|| format!("--sink {url}"))?;
                tracing::info!(sink = %url, instance = sink.instance(), "publishing received messages to NATS");
                if plan.slow_consumer != SlowConsumer::Backpressure {
                    // The fleet, not the sink, drops then: the sink's "nothing
                    // lost" holds from the events on, not from the socket.
                    tracing::warn!(
                        policy = ?plan.slow_consumer,
                        "--sink with a --slow-consumer other than backpressure: messages the \
                         fleet drops while NATS is slow or down never reach the sink"
                    );
                }
                Some(sink)
            }
            None => None,
        };
        let source = match plan.source.clone() {
            Some(config) => {
                let url = config.url.to_string();
                let source = NatsSource::connect(config)
                    .await
                    .with_context(|| format!("--source {url}"))?;
                tracing::info!(source = %url, "sending messages from NATS through the fleet");
                Some(source)
            }
            None => None,
        };
        Ok(Self { sink, source })
    }

    /// The sink's and the source's counters for `/metrics`: handles that
    /// stay live after the sink and source move into their tasks.
    pub(crate) fn metrics_sources(&self) -> Vec<Arc<dyn MetricsSource>> {
        let mut sources: Vec<Arc<dyn MetricsSource>> = Vec::new();
        if let Some(sink) = &self.sink {
            sources.push(Arc::new(sink.metrics_handle()));
        }
        if let Some(source) = &self.source {
            sources.push(Arc::new(source.metrics_handle()));
        }
        sources
    }
}

/// `--source`: each message from NATS through pool `pool`, settled with
/// NATS (acknowledged once taken, answered when undeliverable). Returns
/// when the source ends.
pub(crate) async fn from_source(pools: &ControlPools, pool: &str, mut source: NatsSource) {
    while let Some(inbound) = source.next().await {
        // A reload may replace the pool: looked up for each message. With
        // the pool removed, the next one serves (a reload always keeps one).
        let Some(fleet) = pools.get(pool).or_else(|| {
            let first = pools.names().into_iter().next()?;
            pools.get(&first)
        }) else {
            tracing::warn!("--source: no pool runs; stopping the source");
            break;
        };
        wsfleet_bus::deliver(&fleet, &fleet.monitor(), inbound).await;
    }
    tracing::warn!("--source ended: no more messages from NATS");
}
