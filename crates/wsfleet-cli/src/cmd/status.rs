//! `wsfleet status --coordinate nats://HOST:PORT/FLEET`: the whole
//! coordinated fleet as its lease bucket holds it, across processes.

use crate::cli::StatusArgs;

/// Prints the fleet's members, the slots each holds and the free slots.
///
/// # Errors
/// When NATS cannot be reached, or no process coordinates that fleet.
pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let status = wsfleet_bus::coordinate::fleet_status(&args.coordinate, args.timeout).await?;
    print!("{status}");
    Ok(())
}
