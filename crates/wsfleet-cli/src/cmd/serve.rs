//! `wsfleet serve`: an echo server (the same one `run` embeds for its demo)
//! or, with `--chaos MODE`, a hostile one, until SIGINT/SIGTERM.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings, EchoServer};

use super::{Signals, usage_error};
use crate::cli::ServeArgs;

/// Time given to the echo server's close handshakes (1001) on shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves until a signal; prints `listening on ws://ADDR/` once bound.
///
/// # Errors
/// If the address cannot be bound or stdout is gone.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    match args.chaos {
        None => {
            let server = EchoServer::bind(args.listen, ConnectionConfig::default())
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(&server.url())?;
            tracing::info!(addr = %server.local_addr(), "echo server started");
            let signal = signals.recv().await;
            tracing::info!(
                signal,
                "stopping the echo server: closing connections (1001)"
            );
            server.shutdown(CLOSE_GRACE).await;
        }
        Some(mode) => {
            let settings = chaos_settings(&args, mode)?;
            let server = ChaosServer::bind_with(args.listen, mode, settings)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(&server.url())?;
            tracing::warn!(
                addr = %server.local_addr(),
                mode = mode.name(),
                "chaos server started: every connection misbehaves ({})",
                mode.describe()
            );
            let signal = signals.recv().await;
            tracing::info!(signal, "stopping the chaos server");
            drop(server);
        }
    }
    Ok(())
}

/// The settings of `--chaos MODE`: the defaults with the flags given.
///
/// # Errors
/// A [`UsageError`](super::UsageError) naming the flag when a flag does not
/// apply to `mode` (a mistake, not a no-op) or a value is out of range.
fn chaos_settings(args: &ServeArgs, mode: ChaosMode) -> anyhow::Result<ChaosSettings> {
    let given = [
        (
            "message-size",
            args.message_size.is_some(),
            ChaosMode::Stream,
        ),
        ("interval", args.interval.is_some(), ChaosMode::Stream),
        ("pin-frame", args.pin_frame.is_some(), ChaosMode::Pin),
        ("pin-prefix", args.pin_prefix.is_some(), ChaosMode::Pin),
        ("trickle", args.trickle.is_some(), ChaosMode::Pin),
    ];
    if let Some((flag, _, for_mode)) = given.iter().find(|(_, set, m)| *set && *m != mode) {
        return usage_error(format!(
            "--{flag} applies to --chaos {for_mode} only, not --chaos {mode}"
        ));
    }
    let mut settings = ChaosSettings::default();
    if let Some(size) = args.message_size {
        settings = settings.with_message_size(size);
    }
    if let Some(interval) = args.interval {
        settings = settings.with_interval(interval);
    }
    if let Some(size) = args.pin_frame {
        settings = settings.with_pin_frame(size);
    }
    if let Some(size) = args.pin_prefix {
        settings = settings.with_pin_prefix(size);
    }
    if let Some(trickle) = args.trickle {
        settings = settings.with_trickle(trickle);
    }
    // Checked here, not left to bind_with, so a bad value is a usage error
    // that names its flag (the field name with dashes).
    if let Err(e) = settings.validate() {
        return usage_error(format!("invalid --{}: {e}", e.field.replace('_', "-")));
    }
    Ok(settings)
}

/// The first stdout line, which scripts and tests read: `listening on URL`.
fn announce(url: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {url}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn settings(flags: &[&str]) -> anyhow::Result<ChaosSettings> {
        let cli = Cli::try_parse_from(["wsfleet", "serve"].iter().chain(flags)).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let mode = args.chaos.expect("--chaos");
        chaos_settings(&args, mode)
    }

    fn usage_text(result: anyhow::Result<ChaosSettings>) -> String {
        let e = result.expect_err("a usage error");
        assert!(e.is::<super::super::UsageError>(), "{e}");
        e.to_string()
    }

    #[test]
    fn flags_set_the_settings_and_the_rest_stay_default() {
        let s = settings(&["--chaos", "stream", "--message-size", "64KiB"]).unwrap();
        assert_eq!(s, ChaosSettings::default().with_message_size(64 << 10));
        let s = settings(&[
            "--chaos",
            "pin",
            "--pin-prefix",
            "1MiB",
            "--trickle",
            "100ms",
        ])
        .unwrap();
        assert_eq!(
            s,
            ChaosSettings::default()
                .with_pin_prefix(1 << 20)
                .with_trickle(Duration::from_millis(100))
        );
    }

    #[test]
    fn a_bad_value_names_its_flag_and_field() {
        let text = usage_text(settings(&[
            "--chaos",
            "pin",
            "--pin-prefix",
            "20MiB",
            "--pin-frame",
            "16MiB",
        ]));
        assert!(
            text.contains("--pin-prefix") && text.contains("pin_prefix"),
            "{text}"
        );
        let text = usage_text(settings(&["--chaos", "stream", "--message-size", "4"]));
        assert!(text.contains("--message-size"), "{text}");
    }

    #[test]
    fn a_flag_for_another_mode_is_refused() {
        let text = usage_text(settings(&["--chaos", "stream", "--trickle", "1s"]));
        assert!(
            text.contains("--trickle applies to --chaos pin only"),
            "{text}"
        );
        let text = usage_text(settings(&["--chaos", "junk", "--interval", "1s"]));
        assert!(text.contains("--interval"), "{text}");
    }
}
