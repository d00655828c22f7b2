//! The command line: subcommands, flags and their help, parsed with clap.
//!
//! Values are checked here (sizes, durations, URLs, headers), so a bad one is
//! a usage error (exit status 2) that names it, before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::units;

/// Keeps fleets of persistent WebSocket client connections alive, and
/// serves WebSocket peers to test them against.
///
/// Logs go to stderr; set RUST_LOG to filter them (default
/// "warn,wsfleet=info").
#[derive(Debug, Parser)]
#[command(name = "wsfleet", version, propagate_version = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a fleet of connections with live status.
    ///
    /// Without --url, starts an embedded echo server on 127.0.0.1 and a demo
    /// fleet against it. Each connection sends a short text message every
    /// --interval and counts what comes back; a connection that fails is
    /// reconnected after 1 s. Status goes to stderr: one line refreshed in
    /// place on a terminal, a log line every 5 s otherwise. Stops on
    /// SIGINT/SIGTERM (closing every connection with 1001) or after
    /// --duration, then prints `sent=N received=N connections=N` on stdout.
    Run(RunArgs),
    /// Open one connection and bridge it to stdin/stdout.
    ///
    /// Each stdin line (without its line ending) is sent as one message:
    /// text, or binary with --binary. Each received message is printed as one
    /// stdout line: text as it is, binary as lowercase hex (no base64). On
    /// EOF on stdin, messages still arriving are printed until the connection
    /// has been quiet for --linger, then it closes with 1000 and exits 0
    /// after the close handshake. Exits 1 if the connection fails.
    Connect(ConnectArgs),
    /// Run a WebSocket echo server until SIGINT/SIGTERM.
    ///
    /// Every message comes back as it came (text as text, binary as binary).
    /// Prints `listening on ws://ADDR/` on stdout once it accepts.
    Serve(ServeArgs),
}

/// Flags of `wsfleet run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Upstream URL (ws:// or wss://); repeat for several, connections are
    /// spread over them round robin. Without it, an embedded echo server on
    /// 127.0.0.1 is used.
    #[arg(long = "url", value_name = "URL", value_parser = parse_url)]
    pub(crate) urls: Vec<String>,
    /// Number of connections to keep open.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub(crate) connections: u32,
    /// Stop after this long (e.g. 30s, 55m, 2h); without it, run until
    /// SIGINT/SIGTERM.
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// How often each connection sends a message (e.g. 500ms, 1s, 1m).
    #[arg(
        long,
        value_name = "DUR",
        default_value = "1s",
        value_parser = units::parse_period
    )]
    pub(crate) interval: Duration,
    /// Largest message and frame accepted from the peer (e.g. 64KiB, 5MiB);
    /// a bigger one closes the connection with 1009.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_usize)]
    pub(crate) max_message: Option<usize>,
}

/// Flags of `wsfleet connect`.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The server: a ws:// or wss:// URL, such as ws://127.0.0.1:9001/.
    #[arg(value_name = "URL", value_parser = parse_url)]
    pub(crate) url: String,
    /// Subprotocol to offer (Sec-WebSocket-Protocol); repeat for several, in
    /// order of preference.
    #[arg(long = "protocol", value_name = "P")]
    pub(crate) protocols: Vec<String>,
    /// Extra request header, as 'Name: value'; repeat for several.
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// PEM file with CA certificates to trust for wss://, in addition to the
    /// built-in (webpki) roots; repeat for several.
    #[arg(long = "ca", value_name = "FILE")]
    pub(crate) ca_files: Vec<PathBuf>,
    /// Do not verify the server's TLS certificate. DANGEROUS: anyone on the
    /// path can read and change the traffic. For throwaway test servers only.
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Send each stdin line as a binary message (its raw bytes) instead of
    /// text. Received binary messages are printed as hex either way.
    #[arg(long)]
    pub(crate) binary: bool,
    /// Largest message, in either direction (e.g. 64KiB, 5MiB); a longer
    /// stdin line is an error, a bigger received message closes with 1009.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_usize)]
    pub(crate) max_message: Option<usize>,
    /// After EOF on stdin, keep printing received messages until none has
    /// arrived for this long (at most 5 s in all), then close. 0 closes at
    /// once.
    #[arg(
        long,
        value_name = "DUR",
        default_value = "500ms",
        value_parser = units::parse_duration
    )]
    pub(crate) linger: Duration,
}

/// Flags of `wsfleet serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub(crate) listen: SocketAddr,
}

/// Checks a `ws://` / `wss://` URL the way connecting will read it.
fn parse_url(url: &str) -> Result<String, String> {
    wsfleet::connect::Target::parse(url)
        .map(|_| url.to_owned())
        .map_err(|e| e.to_string())
}

/// Reads `Name: value` into its two halves (both trimmed).
fn parse_header(header: &str) -> Result<(String, String), String> {
    let Some((name, value)) = header.split_once(':') else {
        return Err(format!("expected 'Name: value', got {header:?}"));
    };
    let name = name.trim();
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token) {
        return Err(format!("invalid header name {name:?}"));
    }
    let value = value.trim();
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(format!("invalid header value {value:?}"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Authorization: Bearer x:y"),
            Ok(("Authorization".to_owned(), "Bearer x:y".to_owned()))
        );
        assert_eq!(
            parse_header("X-Empty:"),
            Ok(("X-Empty".to_owned(), String::new()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert!(parse_header("X: a\r\nInjected: 1").is_err());
    }

    #[test]
    fn urls() {
        assert!(parse_url("ws://127.0.0.1:9001/").is_ok());
        let e = parse_url("http://127.0.0.1/").unwrap_err();
        assert!(e.contains("invalid url"), "{e}");
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["wsfleet", "run"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.connections, 100);
        assert_eq!(run.interval, Duration::from_secs(1));
        assert_eq!(run.duration, None);
        assert!(run.urls.is_empty());

        let cli = Cli::try_parse_from(["wsfleet", "serve"]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.listen, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["wsfleet", "run", "--duration", "5x"][..],
            &["wsfleet", "run", "--interval", "0s"],
            &["wsfleet", "run", "--connections", "0"],
            &["wsfleet", "run", "--url", "http://x/"],
            &["wsfleet", "connect", "ws://127.0.0.1/", "--header", "nope"],
            &[
                "wsfleet",
                "connect",
                "ws://127.0.0.1/",
                "--max-message",
                "5XB",
            ],
            &["wsfleet", "serve", "--listen", "localhost"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }
}
