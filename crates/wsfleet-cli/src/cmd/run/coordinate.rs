//! `--coordinate`: the fleet's slots shared with other processes through
//! NATS leases (`wsfleet_bus::coordinate`), started once the fleet is
//! built (coordinated: no slot dials until its lease is taken).

use std::time::Duration;

use anyhow::Context as _;
use wsfleet::fleet::FleetControl;
use wsfleet_bus::coordinate::{CoordinateConfig, Coordinator, LeaseTiming};

use super::config::Plan;

/// The connect rate of a fleet that sets none (the library's default).
const DEFAULT_CONNECT_RATE: f64 = 200.0;

/// Starts the coordinator the plan asks for, if any.
///
/// # Errors
/// Naming the URL: NATS unreachable, or its bucket unusable (another
/// `--lease`).
pub(crate) async fn start(
    plan: &Plan,
    control: &FleetControl,
) -> anyhow::Result<Option<Coordinator>> {
    let Some(url) = plan.coordinate.clone() else {
        return Ok(None);
    };
    let timing = LeaseTiming::new(plan.lease)
        .with_context(|| format!("--lease {:?}: at least 500ms", plan.lease))?;
    let config = CoordinateConfig {
        url: url.clone(),
        timing,
        take_rate: plan.connect_rate.unwrap_or(DEFAULT_CONNECT_RATE),
    };
    let coordinator = Coordinator::start(config, control.clone())
        .await
        .with_context(|| format!("--coordinate {url}"))?;
    Ok(Some(coordinator))
}

/// Gives every held slot back (graceful closes, then the keys deleted),
/// within the close deadline and a grace.
pub(crate) async fn leave(coordinator: Coordinator, plan: &Plan) {
    let within = plan
        .connection_config()
        .map(|c| c.deadlines.close)
        .unwrap_or(Duration::from_secs(5))
        + Duration::from_secs(2);
    coordinator.shutdown(within).await;
}
