//! The command line: subcommands, flags and their help, parsed with clap.
//!
//! Values are checked here (sizes, durations, URLs, headers), so a bad one is
//! a usage error (exit status 2) that names it, before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wsfleet::fleet::SlowConsumer;
use wsfleet::serve::ChaosMode;

use crate::units;

/// Keeps fleets of persistent WebSocket client connections alive, and
/// serves WebSocket peers to test them against.
///
/// Logs go to stderr; set RUST_LOG to filter them (default
/// "warn,wsfleet=info"). Usage and configuration errors exit with status 2,
/// other failures with 1.
#[derive(Debug, Parser)]
#[command(name = "wsfleet", version, propagate_version = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log line format on stderr: `text` for people, `json` (one object a
    /// line) for log collectors. Allowed before or after the subcommand.
    #[arg(
        long,
        value_name = "FORMAT",
        global = true,
        default_value = "text",
        display_order = 1000
    )]
    pub(crate) log_format: LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
// Built once per process: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Keep a fleet of connections ready, with live status.
    ///
    /// Settings come from flags and an optional TOML file (--config); flags
    /// win. Each slot keeps one connection; a dropped one is logged with its
    /// reason and reconnected with backoff. Without any URL, starts an
    /// embedded echo server on 127.0.0.1 and a demo fleet of 100 connections
    /// that each send a message every --interval. Status goes to stderr: one
    /// line refreshed in place on a terminal (ready/target, reconnects,
    /// msgs/s, buffered bytes, RSS), a log line every 5 s otherwise. Stops on
    /// SIGINT/SIGTERM (closing every connection with 1001; a second signal
    /// stops at once) or after --duration, then prints `sent=N received=N
    /// connections=N reconnects=N undelivered=N` on stdout and exits 0.
    Run(RunArgs),
    /// Open one connection and bridge it to stdin/stdout.
    ///
    /// Each stdin line (without its line ending) is sent as one message:
    /// text, or binary with --binary. Each received message is printed as one
    /// stdout line: text with its control characters escaped (see --raw),
    /// binary as lowercase hex (no base64). On
    /// EOF on stdin (after --linger, if set), it closes with 1000, still
    /// prints what the peer sent before answering the close, and exits 0
    /// after the close handshake. Exits 1 if the connection fails (a failed
    /// handshake names the phase, the status and the reason).
    Connect(ConnectArgs),
    /// Run a WebSocket echo server, or a hostile one (--chaos), until
    /// SIGINT/SIGTERM.
    ///
    /// Every message comes back as it came (text as text, binary as binary);
    /// with --chaos MODE, every connection gets that misbehaviour instead.
    /// The stream and pin modes take sizes and pauses (Chaos settings
    /// below), e.g. `--chaos stream --message-size 4MiB --interval 200ms`
    /// or `--chaos pin --pin-frame 16MiB --pin-prefix 12MiB --trickle 5s`.
    /// Prints `listening on ws://ADDR/` on stdout once it accepts.
    Serve(ServeArgs),
    /// Watch a running fleet live: totals, budget and one row per connection.
    ///
    /// Reads the admin endpoint of `wsfleet run --admin ADDR` (GET
    /// /connections and /metrics) every --interval and shows it full screen.
    /// Rows sort by buffered bytes (b), reconnects (r), age (a) or traffic
    /// (t); press the same key again to reverse. s cycles the state filter,
    /// arrows or j/k select a row (its last error shows at the bottom), q or
    /// Esc quits. While the endpoint cannot be reached, top says so and
    /// keeps retrying.
    Top(TopArgs),
    /// Show a coordinated fleet (`run --coordinate`) across its processes,
    /// as its NATS lease bucket holds it: each member with the slots it
    /// holds, and the free slots. Prints once and exits.
    Status(StatusArgs),
}

/// Flags of `wsfleet status`.
#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    /// The fleet, as given to `run --coordinate`: nats://HOST:PORT/FLEET.
    #[arg(long, value_name = "URL", value_parser = parse_coordinate_url)]
    pub(crate) coordinate: wsfleet_bus::coordinate::CoordinateUrl,
    /// Give up after this long without an answer.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_lifetime)]
    pub(crate) timeout: Duration,
}

/// Flags of `wsfleet run`. Each can also be set in the --config file, as a
/// key named like the flag without its dashes; a flag on the command line
/// wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct RunArgs {
    /// TOML file with any of the settings below, one key per flag (`url =
    /// ["wss://…"]`, `connections = 1000`, `max-lifetime = "55m"`); flags
    /// given on the command line override it. An unknown key is an error.
    /// examples/wsfleet.toml documents every key.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Upstream URL (ws:// or wss://); repeat for several, slots are spread
    /// over them round robin. With no URL (here or in --config), an embedded
    /// echo server on 127.0.0.1 and a demo fleet that talks to it.
    #[arg(long = "url", value_name = "URL", value_parser = parse_url)]
    pub(crate) urls: Vec<String>,
    /// Connections to keep ready, counted over all shards [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) connections: Option<u32>,
    /// Run only shard I of N: slots I, I+N, I+2N, … of --connections, so
    /// that N processes (a StatefulSet, systemd template units: see deploy/)
    /// share one fleet without talking to each other [default: 0/1].
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub(crate) shard: Option<Shard>,
    /// Share the fleet's slots with the other processes started with the
    /// same nats://HOST:PORT/FLEET, through JetStream key-value leases: each
    /// runs a fair share, and when one dies the others take its slots within
    /// about --lease plus the ramp. Every process gives the same
    /// --connections and --lease. Not with --shard.
    #[arg(long, value_name = "URL", value_parser = parse_coordinate_url)]
    pub(crate) coordinate: Option<wsfleet_bus::coordinate::CoordinateUrl>,
    /// With --coordinate: how long a slot's lease lives without renewal
    /// (renewed every third of it; a slot stops being served after about
    /// 0.57 of it without a renewal) [default: 10s; at least 500ms].
    #[arg(long, value_name = "DUR", value_parser = parse_lease)]
    pub(crate) lease: Option<Duration>,
    /// Replace each connection after this long, ± 10 % (e.g. 55m, 12h): the
    /// new one is opened before the old one is closed. At least 100ms
    /// [default: never].
    #[arg(long, value_name = "DUR", value_parser = parse_lifetime)]
    pub(crate) max_lifetime: Option<Duration>,
    /// Replace a connection that received no data message for this long
    /// (e.g. 30s): pings and pongs do not count, so a feed that stopped
    /// while its server still answers pings is noticed. Ends as `stale`,
    /// closed with 1001. At least 100ms [default: off].
    #[arg(long, value_name = "DUR", value_parser = parse_lifetime)]
    pub(crate) stale_after: Option<Duration>,
    /// Largest message and frame accepted from the peer (e.g. 64KiB, 5MiB);
    /// a bigger one closes that connection with 1009 [default: 64MiB, frames
    /// 16MiB].
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_usize)]
    pub(crate) max_message: Option<usize>,
    /// Bytes all connections' buffers may hold together (e.g. 512MiB); a
    /// connection that would pass it is dropped with 1009, not the process
    /// [default: half the cgroup memory limit, else half the RAM, less 16KiB
    /// per connection, from 16MiB to 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_usize)]
    pub(crate) memory_budget: Option<usize>,
    /// New connections per second, over the whole process: how fast the
    /// fleet ramps up and reconnects (e.g. 50, 0.5) [default: 200].
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub(crate) connect_rate: Option<f64>,
    /// Source addresses to connect from, spread over the slots (slot i uses
    /// address i % n, the same across reconnects): an address, a range
    /// (127.0.0.2-127.0.0.9), a CIDR block (10.1.0.0/24, without its network
    /// and broadcast addresses) or a comma-separated list of them; repeat
    /// for more, at most 65536 in all. Each source address has about 28,000
    /// ports per destination: past that many connections to one host:port,
    /// add addresses (every one must be this host's) [default: the
    /// system's choice].
    #[arg(long = "local-address", value_name = "LIST", value_parser = parse_local_address)]
    pub(crate) local_addresses: Vec<String>,
    /// Most application messages each connection sends: COUNT/UNIT with s,
    /// m or h (e.g. 5/s, 300/m, 0.5/s), optionally ",burst=N" (default
    /// burst 1: evenly spaced, never more than COUNT in any UNIT). Messages
    /// over it wait in the connection's queue, never dropped [default: no
    /// limit].
    #[arg(long, value_name = "RATE", value_parser = units::parse_send_rate)]
    pub(crate) send_rate: Option<wsfleet::fleet::SendRate>,
    /// Most application messages the whole fleet sends, all connections
    /// together; same form as --send-rate [default: no limit].
    #[arg(long, value_name = "RATE", value_parser = units::parse_send_rate)]
    pub(crate) pool_send_rate: Option<wsfleet::fleet::SendRate>,
    /// Text message sent on every new connection right after the handshake,
    /// before it counts as ready (subscribe, auth); repeat for several, sent
    /// in order.
    #[arg(long = "send-on-connect", value_name = "TEXT")]
    pub(crate) send_on_connect: Vec<String>,
    /// Serve GET /metrics (Prometheus), /connections (JSON) and /healthz on
    /// this address, e.g. 127.0.0.1:9100 (what `wsfleet top` reads by
    /// default). Keep it on loopback unless you mean to expose it [default:
    /// off].
    #[arg(long, value_name = "ADDR")]
    pub(crate) admin: Option<SocketAddr>,
    /// Serve the control API on --admin too (POST /control/...: send,
    /// scale, pause, resume, drop, rotate, reload; see docs/admin.md). It
    /// needs --admin-token-file, or --admin-trusted.
    #[arg(long)]
    pub(crate) admin_control: bool,
    /// File holding the bearer token the control API requires
    /// (`Authorization: Bearer TOKEN`; surrounding whitespace ignored).
    /// Turns the control API on.
    #[arg(long, value_name = "FILE")]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Serve the control API without a token: whoever reaches --admin may
    /// change the fleet (a listener on loopback of a trusted host, or behind
    /// an authenticating proxy). Turns the control API on.
    #[arg(long)]
    pub(crate) admin_trusted: bool,
    /// /healthz answers 200 while at least this share of the target is
    /// ready, 503 otherwise (0.0 to 1.0) [default: 0.9].
    #[arg(long, value_name = "F", value_parser = parse_share)]
    pub(crate) healthy_share: Option<f64>,
    /// Write each received message to stdout: `jsonl` (one JSON object a
    /// line: conn, slot, ts in Unix ms, kind "text" or "binary", payload;
    /// binary payloads base64), `text` (`c12 s3 text PAYLOAD` or `c12 s3
    /// binary HEX`, control characters in PAYLOAD escaped as `connect`
    /// does: \n, \r, \xNN, \u{NN}) or `none` [default: none].
    #[arg(long, value_name = "FORMAT")]
    pub(crate) output: Option<OutputFormat>,
    /// When the output falls behind: `backpressure` (stop reading the
    /// sockets until it catches up; nothing is lost), `drop-newest` (drop
    /// what does not fit, counted in wsfleet_events_dropped_total) or
    /// `disconnect:DUR` (after waiting DUR, drop the message and close the
    /// connection; it reconnects) [default: backpressure].
    #[arg(long, value_name = "POLICY", value_parser = parse_slow_consumer)]
    pub(crate) slow_consumer: Option<SlowConsumer>,
    /// With --output text: print text payloads exactly as they arrive,
    /// control characters and all (a message may then span lines).
    #[arg(long)]
    pub(crate) raw: bool,
    /// Stop after this long (e.g. 30s, 55m, 2h) [default: run until
    /// SIGINT/SIGTERM].
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Demo fleet only (no URL): how often each ready connection sends a
    /// message to the echo server (e.g. 500ms, 1s) [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = units::parse_period)]
    pub(crate) interval: Option<Duration>,
    /// Subprotocol to offer (Sec-WebSocket-Protocol); repeat for several, in
    /// order of preference.
    #[arg(long = "protocol", value_name = "P")]
    pub(crate) protocols: Vec<String>,
    /// Extra request header, as 'Name: value' (e.g. an Authorization
    /// header); repeat for several.
    #[arg(long = "header", value_name = "'K: V'", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) credentials: crate::credentials::CredentialArgs,
    /// PEM file with CA certificates to trust for wss://, in addition to the
    /// built-in (webpki) roots; repeat for several.
    #[arg(long = "ca", value_name = "FILE")]
    pub(crate) ca_files: Vec<PathBuf>,
    /// Do not verify servers' TLS certificates. DANGEROUS: anyone on the
    /// path can read and change the traffic. For throwaway test servers only.
    #[arg(long)]
    pub(crate) insecure: bool,
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// Send a ping after a connection has received nothing for this long; 0
    /// turns pings off (a dead peer is then never noticed) [default: 20s].
    #[arg(long, value_name = "DUR", value_parser = units::parse_duration)]
    pub(crate) ping_interval: Option<Duration>,
    /// Drop a connection (reconnecting it) when nothing arrives this long
    /// after a ping [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = units::parse_period)]
    pub(crate) pong_timeout: Option<Duration>,
    /// Drop a connection (close 1008, then reconnect) whose server sends
    /// more than N pings within a second: a ping flood would otherwise eat
    /// the CPU every connection shares. 0 turns the limit off [default:
    /// 100].
    #[arg(long, value_name = "N")]
    pub(crate) peer_ping_limit: Option<u32>,
    /// Drop a connection (close 1008, then reconnect) whose server, in the
    /// middle of a message, sends less than --message-min-rate over this
    /// much time spent waiting for it: a server trickling into a huge frame
    /// would otherwise pin its memory forever [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = units::parse_period)]
    pub(crate) message_deadline: Option<Duration>,
    /// Bytes per second a message under way must bring, averaged over each
    /// --message-deadline of waiting [default: 4KiB].
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    pub(crate) message_min_rate: Option<u64>,
    /// Publish every received message to NATS, nats://HOST:PORT/SUBJECT
    /// (tls:// for TLS). The subject may hold {slot}, {conn} and {host}
    /// (e.g. feeds.{slot}). By default to JetStream, each message held
    /// until stored (acknowledged); when NATS is slow or down the fleet
    /// stops reading instead of growing. Besides --output, not instead.
    #[arg(long, value_name = "URL", value_parser = parse_bus_url)]
    pub(crate) sink: Option<wsfleet_bus::BusUrl>,
    /// JetStream stream of --sink, created if missing (subjects: the sink's
    /// subject with * for each placeholder) [default: WSFLEET].
    #[arg(long, value_name = "NAME")]
    pub(crate) sink_stream: Option<String>,
    /// --sink-stream must exist already: do not create it.
    #[arg(long)]
    pub(crate) sink_existing_stream: bool,
    /// --sink publishes with core NATS: at most once, no acknowledgement, no
    /// retry (lost if NATS is down or nobody listens).
    #[arg(long)]
    pub(crate) sink_core: bool,
    /// Send what arrives on NATS, nats://HOST:PORT/SUBJECT, through the
    /// fleet: headers Wsfleet-Conn, Wsfleet-Slot or Wsfleet-Target (any,
    /// all) choose the connection, Wsfleet-Kind (text, binary) the kind. By
    /// default a durable JetStream consumer; a message is acknowledged once
    /// the fleet took it, and one that cannot be delivered is answered with
    /// the reason.
    #[arg(long, value_name = "URL", value_parser = parse_bus_url)]
    pub(crate) source: Option<wsfleet_bus::BusUrl>,
    /// JetStream stream of --source, created if missing [default:
    /// WSFLEET_OUT].
    #[arg(long, value_name = "NAME")]
    pub(crate) source_stream: Option<String>,
    /// Durable JetStream consumer of --source [default: wsfleet]. Fleets
    /// with the same name share the messages; a fleet (a shard) listening
    /// on its own subject needs its own name.
    #[arg(long, value_name = "NAME")]
    pub(crate) source_durable: Option<String>,
    /// --source subscribes with core NATS: at most once, nothing kept while
    /// the fleet is not running.
    #[arg(long)]
    pub(crate) source_core: bool,
    /// Subject where undeliverable --source messages are answered when they
    /// have no reply subject (Wsfleet-Reply header, or a core request's)
    /// [default: none: logged as errors].
    #[arg(long, value_name = "SUBJECT")]
    pub(crate) source_dead_letter: Option<String>,
}

/// Reads `nats://HOST:PORT/SUBJECT`.
pub(crate) fn parse_coordinate_url(
    url: &str,
) -> Result<wsfleet_bus::coordinate::CoordinateUrl, String> {
    url.parse()
        .map_err(|e: wsfleet_bus::coordinate::CoordinateError| e.to_string())
}

/// `--lease`, `lease`: a duration of at least 500ms.
pub(crate) fn parse_lease(s: &str) -> Result<Duration, String> {
    let d = units::parse_duration(s).map_err(|e| e.to_string())?;
    if d < wsfleet_bus::coordinate::MIN_LEASE {
        return Err(format!("invalid lease {s:?}: at least 500ms"));
    }
    Ok(d)
}

pub(crate) fn parse_bus_url(url: &str) -> Result<wsfleet_bus::BusUrl, String> {
    url.parse()
        .map_err(|e: wsfleet_bus::BusUrlError| e.to_string())
}

/// TLS identity, Origin, compression, proxy and redirect flags, shared by
/// `run` and `connect`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TransportArgs {
    /// Trust the operating system's certificate store (honours
    /// SSL_CERT_FILE and SSL_CERT_DIR) instead of the built-in webpki
    /// roots; --ca files are trusted as well.
    #[arg(long)]
    pub(crate) native_roots: bool,
    /// PEM file with a client certificate (then any intermediates) for
    /// servers that require mutual TLS; needs --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// PEM file with the private key of --client-cert (PKCS#8, PKCS#1 or
    /// SEC1).
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
    /// Origin header to send, for servers that check it (e.g.
    /// https://example.com) [default: none].
    #[arg(long, value_name = "ORIGIN")]
    pub(crate) origin: Option<String>,
    /// Follow up to N redirect answers to the handshake (301, 302, 303,
    /// 307, 308), all hops within one attempt's deadlines. Never from wss://
    /// to ws://; on another origin no --header and no --protocol is sent
    /// (see --redirect-forward) and TLS is the default one (see
    /// --redirect-keep-tls) [default: 0: a redirect is an error naming its
    /// Location].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=20))]
    pub(crate) max_redirects: Option<u8>,
    /// Still send this header after a redirect left the configured origin
    /// (Sec-WebSocket-Protocol: the --protocol offers); repeatable.
    #[arg(long, value_name = "NAME")]
    pub(crate) redirect_forward: Vec<String>,
    /// Use --ca, --client-cert and --insecure on hops that left the
    /// configured origin too.
    #[arg(long)]
    pub(crate) redirect_keep_tls: bool,
    /// Offer permessage-deflate (RFC 7692) with the library defaults: no
    /// context takeover (contexts freed between messages), messages under
    /// 256 bytes sent as they are. See docs/deflate.md for the memory cost.
    #[arg(long)]
    pub(crate) deflate: bool,
    /// Connect through this proxy: http://[user:pass@]host:port (HTTP
    /// CONNECT) or socks5://… / socks5h://… (SOCKS5; socks5h resolves names
    /// at the proxy); user and password percent-encoded as in any URL
    /// [default: from HTTPS_PROXY, http_proxy, ALL_PROXY and NO_PROXY, as
    /// curl reads them].
    #[arg(long, value_name = "URL", value_parser = ProxyParser, conflicts_with = "no_proxy")]
    pub(crate) proxy: Option<String>,
    /// Connect directly, ignoring the *_PROXY environment variables.
    #[arg(long)]
    pub(crate) no_proxy: bool,
}

/// `--proxy URL`: checks a proxy URL the way the connection will read it.
/// Not a plain `fn(&str) -> Result`: clap would quote the refused value, and
/// with it the proxy password; [`wsfleet::connect::Proxy::parse`]'s message
/// names the URL with its user and password hidden.
#[derive(Debug, Clone, Copy)]
struct ProxyParser;

impl clap::builder::TypedValueParser for ProxyParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let invalid = |problem: String| {
            let name = arg.map_or_else(|| "--proxy".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value for {name}: {problem}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid("not UTF-8".to_owned()))?;
        wsfleet::connect::Proxy::parse(text)
            .map(|_| text.to_owned())
            .map_err(|e| invalid(e.to_string()))
    }
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
    #[command(flatten)]
    pub(crate) transport: TransportArgs,
    /// Send each stdin line as a binary message (its raw bytes) instead of
    /// text. Received binary messages are printed as hex either way.
    #[arg(long)]
    pub(crate) binary: bool,
    /// Print received text messages exactly as they arrive. By default each
    /// is one line with its control characters escaped, so a peer cannot
    /// drive the terminal: newline \n, carriage return \r, other C0 controls
    /// and DEL \xNN (ESC is \x1b), C1 controls \u{NN}; tab and backslash
    /// stay as they are.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Largest message, in either direction (e.g. 64KiB, 5MiB); a longer
    /// stdin line is an error, a bigger received message closes with 1009.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size_usize)]
    pub(crate) max_message: Option<usize>,
    /// After EOF on stdin, wait until no message has arrived for this long
    /// (at most 5 s in all) before closing, printing what arrives. Only for
    /// servers that answer late: messages the peer sends before answering
    /// the close are printed anyway, so the default 0 closes at once.
    #[arg(
        long,
        value_name = "DUR",
        default_value = "0s",
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
    /// Misbehave on purpose, to test a client against a hostile peer: every
    /// connection gets MODE instead of an echo (each mode says what a sound
    /// client does about it).
    #[arg(long, value_name = "MODE", value_parser = ChaosModeParser)]
    pub(crate) chaos: Option<ChaosMode>,
    /// --chaos stream: size of each message, its 8-byte sequence number
    /// included (e.g. 64KiB, 4MiB); at least 8 bytes, at most 1GiB
    /// [default: 4MiB].
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = units::parse_size_usize,
        requires = "chaos",
        help_heading = "Chaos settings"
    )]
    pub(crate) message_size: Option<usize>,
    /// --chaos stream: pause after each message (e.g. 200ms, 1s); 0 sends as
    /// fast as the socket takes them; at most 300s [default: 0].
    #[arg(
        long,
        value_name = "DUR",
        value_parser = units::parse_duration,
        requires = "chaos",
        help_heading = "Chaos settings"
    )]
    pub(crate) interval: Option<Duration>,
    /// --chaos pin: payload length the one frame declares (e.g. 1MiB,
    /// 16MiB); above --pin-prefix [default: 16MiB].
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = units::parse_size_usize,
        requires = "chaos",
        help_heading = "Chaos settings"
    )]
    pub(crate) pin_frame: Option<usize>,
    /// --chaos pin: payload bytes sent at once after the header; below
    /// --pin-frame, at most 1GiB [default: 12MiB].
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = units::parse_size_usize,
        requires = "chaos",
        help_heading = "Chaos settings"
    )]
    pub(crate) pin_prefix: Option<usize>,
    /// --chaos pin: pause between the single bytes that follow the prefix
    /// (e.g. 100ms, 5s); above 0, at most 300s [default: 5s].
    #[arg(
        long,
        value_name = "DUR",
        value_parser = units::parse_period,
        requires = "chaos",
        help_heading = "Chaos settings"
    )]
    pub(crate) trickle: Option<Duration>,
}

/// Flags of `wsfleet top`.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Admin endpoint of the fleet to watch, as HOST:PORT (the --admin of
    /// `wsfleet run`); an `http://` prefix is accepted.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:9100",
        value_parser = crate::top::parse_admin_addr
    )]
    pub(crate) admin: String,
    /// How often to fetch and redraw (e.g. 500ms, 1s, 5s).
    #[arg(
        long,
        value_name = "DUR",
        default_value = "1s",
        value_parser = units::parse_period
    )]
    pub(crate) interval: Duration,
    /// Show only this pool's connections at first (`p` cycles the pools).
    #[arg(long, value_name = "NAME")]
    pub(crate) pool: Option<String>,
}

/// Checks a `ws://` / `wss://` URL the way connecting will read it.
pub(crate) fn parse_url(url: &str) -> Result<String, String> {
    wsfleet::connect::Target::parse(url)
        .map(|_| url.to_owned())
        .map_err(|e| e.to_string())
}

/// Reads `Name: value` into its two halves (both trimmed).
pub(crate) fn parse_header(header: &str) -> Result<(String, String), String> {
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

/// Where received messages go (`run --output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OutputFormat {
    /// One JSON object a line.
    Jsonl,
    /// One line a message: connection, slot, kind, payload.
    Text,
    /// Nothing (the default).
    #[default]
    None,
}

/// How log lines look (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub(crate) enum LogFormat {
    /// For people: time, level, target, message and fields.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// This process's share of the slots: `index` of `count` (`--shard I/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    /// I, from 0.
    pub(crate) index: u32,
    /// N, at least 1.
    pub(crate) count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

/// Reads `I/N` with `I < N`.
pub(crate) fn parse_shard(shard: &str) -> Result<Shard, String> {
    let bad = |why: &str| format!("invalid shard {shard:?}: {why}");
    let Some((index, count)) = shard.trim().split_once('/') else {
        return Err(bad("expected I/N, such as 0/4"));
    };
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| bad("expected I/N with whole numbers, such as 0/4"))
    };
    let (index, count) = (number(index)?, number(count)?);
    if count == 0 {
        return Err(bad("N must be at least 1"));
    }
    if index >= count {
        return Err(bad("I counts from 0 and must be below N"));
    }
    Ok(Shard { index, count })
}

/// A `0.0..=1.0` share.
pub(crate) fn parse_share(share: &str) -> Result<f64, String> {
    match share.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "invalid share {share:?}: expected a number from 0.0 to 1.0"
        )),
    }
}

/// `--slow-consumer`: `backpressure`, `drop-newest` or `disconnect:DUR`.
pub(crate) fn parse_slow_consumer(policy: &str) -> Result<SlowConsumer, String> {
    match policy.trim() {
        "backpressure" => Ok(SlowConsumer::Backpressure),
        "drop-newest" => Ok(SlowConsumer::DropNewest),
        other => match other.strip_prefix("disconnect:") {
            Some(patience) => units::parse_period(patience)
                .map(SlowConsumer::Disconnect)
                .map_err(|e| format!("invalid --slow-consumer {policy:?}: {e}")),
            None => Err(format!(
                "invalid --slow-consumer {policy:?}: expected backpressure, drop-newest or disconnect:DUR"
            )),
        },
    }
}

/// One `--local-address` value, checked (kept as given: all of them are
/// read together, so duplicates across values count once).
pub(crate) fn parse_local_address(spec: &str) -> Result<String, String> {
    wsfleet::connect::LocalAddresses::parse([spec])
        .map(|_| spec.to_owned())
        .map_err(|e| e.to_string())
}

/// A rate above zero, per second.
pub(crate) fn parse_rate(rate: &str) -> Result<f64, String> {
    match rate.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f.is_finite() => Ok(f),
        _ => Err(format!(
            "invalid rate {rate:?}: expected a number of connections per second above 0"
        )),
    }
}

/// A connection lifetime: a duration of at least 100ms.
pub(crate) fn parse_lifetime(lifetime: &str) -> Result<Duration, String> {
    let duration = units::parse_duration(lifetime).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(100) {
        return Err(format!(
            "invalid lifetime {lifetime:?}: must be at least 100ms"
        ));
    }
    Ok(duration)
}

/// `--chaos MODE`: parses a [`ChaosMode`] and lists every mode, with what
/// it does, in `--help` (from [`ChaosMode::ALL`] and its descriptions).
#[derive(Debug, Clone, Copy)]
struct ChaosModeParser;

impl clap::builder::TypedValueParser for ChaosModeParser {
    type Value = ChaosMode;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<ChaosMode, clap::Error> {
        let text = value.to_string_lossy();
        text.parse::<ChaosMode>().map_err(|problem| {
            let name = arg.map_or_else(|| "--chaos".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value for {name}: {problem}\n"),
            )
            .with_cmd(cmd)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(ChaosMode::ALL.into_iter().map(|mode| {
            clap::builder::PossibleValue::new(mode.name()).help(mode.describe())
        })))
    }
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
        // Unset flags stay unset, so a --config file can fill them in.
        assert_eq!(run.connections, None);
        assert_eq!(run.interval, None);
        assert_eq!(run.duration, None);
        assert_eq!(run.output, None);
        assert!(run.urls.is_empty());
        assert_eq!(cli.log_format, LogFormat::Text);

        let cli = Cli::try_parse_from(["wsfleet", "serve"]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(serve.chaos, None);
    }

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "wsfleet",
            "run",
            "--url",
            "ws://127.0.0.1:1/a",
            "--url",
            "ws://127.0.0.1:2/b",
            "--shard",
            "1/2",
            "--max-lifetime",
            "55m",
            "--memory-budget",
            "512MiB",
            "--connect-rate",
            "0.5",
            "--healthy-share",
            "1",
            "--output",
            "jsonl",
            "--send-on-connect",
            "a",
            "--send-on-connect",
            "b",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.urls.len(), 2);
        assert_eq!(run.shard, Some(Shard { index: 1, count: 2 }));
        assert_eq!(run.max_lifetime, Some(Duration::from_secs(55 * 60)));
        assert_eq!(run.memory_budget, Some(512 << 20));
        assert_eq!(run.connect_rate, Some(0.5));
        assert_eq!(run.healthy_share, Some(1.0));
        assert_eq!(run.output, Some(OutputFormat::Jsonl));
        assert_eq!(run.send_on_connect, ["a", "b"]);
    }

    #[test]
    fn slow_consumer_policies_parse() {
        assert_eq!(
            parse_slow_consumer("backpressure"),
            Ok(SlowConsumer::Backpressure)
        );
        assert_eq!(
            parse_slow_consumer("drop-newest"),
            Ok(SlowConsumer::DropNewest)
        );
        assert_eq!(
            parse_slow_consumer("disconnect:30s"),
            Ok(SlowConsumer::Disconnect(Duration::from_secs(30)))
        );
        for bad in ["drop", "disconnect:", "disconnect:0s", "disconnect"] {
            let e = parse_slow_consumer(bad).unwrap_err();
            assert!(e.contains("--slow-consumer"), "{bad}: {e}");
        }
    }

    #[test]
    fn chaos_modes_parse_and_are_listed() {
        let cli = Cli::try_parse_from(["wsfleet", "serve", "--chaos", "lying-length"]).unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.chaos, Some(ChaosMode::LyingLength));
        let e = Cli::try_parse_from(["wsfleet", "serve", "--chaos", "nope"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("lying-length"), "{e}");
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        for mode in ChaosMode::ALL {
            assert!(help.contains(mode.name()), "{mode} missing in {help}");
            assert!(help.contains(mode.describe()), "{mode} missing in {help}");
        }
    }

    #[test]
    fn chaos_settings_parse_as_sizes_and_durations() {
        let cli = Cli::try_parse_from([
            "wsfleet",
            "serve",
            "--chaos",
            "stream",
            "--message-size",
            "64KiB",
            "--interval",
            "200ms",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.chaos, Some(ChaosMode::Stream));
        assert_eq!(serve.message_size, Some(64 << 10));
        assert_eq!(serve.interval, Some(Duration::from_millis(200)));
        let cli = Cli::try_parse_from([
            "wsfleet",
            "serve",
            "--chaos",
            "pin",
            "--pin-frame",
            "16MiB",
            "--pin-prefix",
            "12MiB",
            "--trickle",
            "5s",
        ])
        .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.chaos, Some(ChaosMode::Pin));
        assert_eq!(serve.pin_frame, Some(16 << 20));
        assert_eq!(serve.pin_prefix, Some(12 << 20));
        assert_eq!(serve.trickle, Some(Duration::from_secs(5)));
        for bad in [
            &["wsfleet", "serve", "--chaos", "pin", "--trickle", "0"][..],
            &["wsfleet", "serve", "--chaos", "pin", "--pin-frame", "5XB"],
            // Without --chaos there is nothing to set.
            &["wsfleet", "serve", "--message-size", "1MiB"],
        ] {
            let e = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn shards_shares_rates() {
        assert_eq!(parse_shard("0/1"), Ok(Shard { index: 0, count: 1 }));
        assert_eq!(parse_shard(" 3 / 4 "), Ok(Shard { index: 3, count: 4 }));
        for bad in ["4/4", "1/0", "1", "a/2", "-1/2", "1/2/3"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_share("0.9"), Ok(0.9));
        assert!(parse_share("1.1").is_err());
        assert!(parse_share("NaN").is_err());
        assert_eq!(parse_rate("50"), Ok(50.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_lifetime("50ms").is_err());
        assert_eq!(parse_lifetime("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["wsfleet", "run", "--duration", "5x"][..],
            &["wsfleet", "run", "--interval", "0s"],
            &["wsfleet", "run", "--connections", "0"],
            &["wsfleet", "run", "--url", "http://x/"],
            &["wsfleet", "run", "--shard", "2/2"],
            &["wsfleet", "run", "--healthy-share", "2"],
            &["wsfleet", "run", "--connect-rate", "0"],
            &["wsfleet", "run", "--memory-budget", "1.5GiB"],
            &["wsfleet", "run", "--output", "xml"],
            &["wsfleet", "run", "--log-format", "xml"],
            &["wsfleet", "serve", "--chaos", "nice"],
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
