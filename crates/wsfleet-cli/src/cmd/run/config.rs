//! `wsfleet run`'s settings: the flags over the `--config` file over the
//! defaults, checked once into a [`Plan`].
//!
//! The file is TOML with one key per flag, named like the flag without its
//! dashes (`max-lifetime = "55m"`); a repeatable flag is an array (`url =
//! ["wss://a/", "wss://b/"]`). Sizes and durations are strings as on the
//! command line, or plain numbers (bytes, seconds). A flag given on the
//! command line replaces the file's value (for a repeatable flag, the whole
//! array). An unknown key, a bad value or a TOML syntax error is a usage
//! error naming the file, the line and the key. `examples/wsfleet.toml` (at
//! the repository root) documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use wsfleet::connect::LocalAddresses;
use wsfleet::fleet::SlowConsumer;
use wsfleet::{ConnectionConfig, Keepalive, Progress};
use wsfleet_bus::{
    BusUrl, Delivery, SinkConfig, SourceConfig, SourceMode, StreamPolicy, SubjectTemplate,
};

use super::output::Output;
use crate::cli::{self, OutputFormat, RunArgs, Shard};
use crate::cmd::{Transport, UsageError};
use crate::credentials::{self, CredentialSpec, FileCredentials};
use crate::units;
use wsfleet_bus::coordinate::CoordinateUrl;

/// Connections when neither a flag nor the file says.
pub(crate) const DEFAULT_CONNECTIONS: u32 = 100;
/// `--lease` when not given.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// `/healthz` threshold when neither a flag nor the file says.
pub(crate) const DEFAULT_HEALTHY_SHARE: f64 = 0.9;
/// Demo send period when neither a flag nor the file says.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Everything `run` does, settled: flags, then the file, then defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Upstream URLs; empty means the demo (embedded echo server).
    pub(crate) urls: Vec<String>,
    /// Connections of the whole fleet (all shards).
    pub(crate) connections: u32,
    /// This process's share.
    pub(crate) shard: Shard,
    /// `--coordinate`: share the slots with other processes through NATS
    /// leases, if set.
    pub(crate) coordinate: Option<CoordinateUrl>,
    /// `--lease`: the leases' time to live.
    pub(crate) lease: Duration,
    /// Rotation period, if any.
    pub(crate) max_lifetime: Option<Duration>,
    /// Replace connections without data for this long, if set.
    pub(crate) stale_after: Option<Duration>,
    /// Largest message accepted, if not the default.
    pub(crate) max_message: Option<usize>,
    /// Fleet memory budget, if not the default.
    pub(crate) memory_budget: Option<usize>,
    /// New connections per second, if not the default.
    pub(crate) connect_rate: Option<f64>,
    /// Source addresses to connect from (`--local-address`), if set.
    pub(crate) local_addresses: Option<Arc<LocalAddresses>>,
    /// Outbound rate of each connection, if limited.
    pub(crate) send_rate: Option<wsfleet::fleet::SendRate>,
    /// Outbound rate of the whole fleet, if limited.
    pub(crate) pool_send_rate: Option<wsfleet::fleet::SendRate>,
    /// Texts sent on each new connection.
    pub(crate) send_on_connect: Vec<String>,
    /// `[[subscription]]`: replayed on every connection carrying them.
    pub(crate) subscriptions: Vec<SubscriptionPlan>,
    /// `[streams]`: stream attribution and sequence checks, if set.
    pub(crate) streams: Option<StreamsPlan>,
    /// `[heartbeat]`: an application heartbeat, if set.
    pub(crate) heartbeat: Option<HeartbeatPlan>,
    /// Admin endpoint address, if any.
    pub(crate) admin: Option<SocketAddr>,
    /// The control API on the admin endpoint, and who may use it.
    pub(crate) admin_control: Option<AdminControl>,
    /// Ready share for a healthy `/healthz`.
    pub(crate) healthy_share: f64,
    /// Where received messages go, and how.
    pub(crate) output: Output,
    /// What happens when the output falls behind.
    pub(crate) slow_consumer: SlowConsumer,
    /// Stop after this long, if set.
    pub(crate) duration: Option<Duration>,
    /// Demo send period per connection.
    pub(crate) interval: Duration,
    /// Subprotocols to offer.
    pub(crate) protocols: Vec<String>,
    /// Extra request headers.
    pub(crate) headers: Vec<(String, String)>,
    /// Header and query values from commands or files, fetched at
    /// connection attempts (relative files read from the file's folder).
    pub(crate) credentials: Vec<CredentialSpec>,
    /// How long one credential fetch may take, if not the default.
    pub(crate) credential_timeout: Option<Duration>,
    /// How long a fetched credential is used, if not the default.
    pub(crate) credential_cache: Option<Duration>,
    /// TLS, Origin, compression, proxy and redirects (relative paths in the
    /// file are read from the file's folder).
    pub(crate) transport: Transport,
    /// Ping after this much quiet; `Some(ZERO)` turns pings off.
    pub(crate) ping_interval: Option<Duration>,
    /// Pong wait, if not the default.
    pub(crate) pong_timeout: Option<Duration>,
    /// Peer pings per second before the connection is dropped, if not the
    /// default; `Some(0)` turns the limit off.
    pub(crate) peer_ping_limit: Option<u32>,
    /// Progress window of a message under way, if not the default.
    pub(crate) message_deadline: Option<Duration>,
    /// Bytes per second a message under way must bring, if not the default.
    pub(crate) message_min_rate: Option<u64>,
    /// Where received messages are published (`--sink`, `[sink]`), if anywhere.
    pub(crate) sink: Option<SinkConfig>,
    /// Where outbound messages come from (`--source`, `[source]`), if anywhere.
    pub(crate) source: Option<SourceConfig>,
    /// `[pool.NAME]`: more pools, each a fleet of its own (their process
    /// settings unused).
    pub(crate) pools: Vec<(String, Plan)>,
}

/// Who may use the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AdminControl {
    /// Requests carry the bearer token this file holds.
    TokenFile(PathBuf),
    /// No token: the listener is trusted.
    Trusted,
}

/// The name of the pool the top-level settings (and the flags) describe.
pub(crate) const DEFAULT_POOL: &str = "default";

/// The keys of a process, not of a pool: refused in `[pool.NAME]`.
const PROCESS_KEYS: &[&str] = &[
    "shard",
    "coordinate",
    "lease",
    "memory-budget",
    "admin",
    "admin-control",
    "admin-token-file",
    "admin-trusted",
    "healthy-share",
    "output",
    "duration",
    "interval",
    "slow-consumer",
    "sink",
    "source",
    "pool",
];

impl Plan {
    /// Reads `--config` (if given) and lays the flags over it.
    ///
    /// # Errors
    /// A [`UsageError`] for an unreadable or bad file (naming file, line and
    /// key) or settings that do not fit together.
    pub(crate) fn resolve(args: RunArgs) -> Result<Self, UsageError> {
        let (mut file, folder) = match &args.config {
            Some(path) => (
                load(path)?,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let tables = file.pool.take().unwrap_or_default();
        let config = args.config.clone().unwrap_or_default();
        let mut plan = Self::from_parts(args, file, &folder)?;
        for (name, table) in tables {
            let at = |problem: String| {
                UsageError(format!("{}: [pool.{name}]: {problem}", config.display()))
            };
            check_pool_name(&name).map_err(at)?;
            if let Some(key) = table.process_keys().first() {
                return Err(at(format!(
                    "{key} is a setting of the process, not of a pool: set it at the top level"
                )));
            }
            if table.url.is_none() {
                return Err(at("a pool needs url".into()));
            }
            let mut pool =
                Self::from_parts(RunArgs::default(), table, &folder).map_err(|e| at(e.0))?;
            pool.shard = plan.shard;
            pool.check().map_err(|e| at(e.0))?;
            plan.pools.push((name, pool));
        }
        plan.check()?;
        Ok(plan)
    }

    /// Whether the top-level settings run a pool (`default`): with a URL,
    /// or with no `[pool.NAME]` (the demo without one).
    pub(crate) fn runs_default_pool(&self) -> bool {
        !self.urls.is_empty() || self.pools.is_empty()
    }

    /// Every pool to run: `default` (the top level, if it runs one) and the
    /// named ones, each as its pool settings only.
    pub(crate) fn pool_plans(&self) -> Vec<(String, Plan)> {
        let mut all = Vec::with_capacity(self.pools.len() + 1);
        if self.runs_default_pool() {
            all.push((DEFAULT_POOL.to_owned(), self.pool_part()));
        }
        all.extend(self.pools.iter().map(|(n, p)| (n.clone(), p.pool_part())));
        all
    }

    /// The settings of its pool alone: the process's reset to defaults, so
    /// two pools compare equal when their connections would be.
    pub(crate) fn pool_part(&self) -> Self {
        Self {
            admin: None,
            admin_control: None,
            healthy_share: DEFAULT_HEALTHY_SHARE,
            output: Output::default(),
            slow_consumer: SlowConsumer::default(),
            duration: None,
            interval: DEFAULT_INTERVAL,
            memory_budget: None,
            sink: None,
            source: None,
            pools: Vec::new(),
            ..self.clone()
        }
    }

    /// The settings of the process alone (its pools emptied): what a
    /// reload cannot change without a restart.
    pub(crate) fn process_part(&self) -> ProcessPart {
        ProcessPart {
            shard: self.shard,
            coordinate: self.coordinate.clone(),
            lease: self.lease,
            admin: self.admin,
            admin_control: self.admin_control.clone(),
            healthy_share: self.healthy_share,
            output: self.output,
            slow_consumer: self.slow_consumer,
            duration: self.duration,
            interval: self.interval,
            memory_budget: self.memory_budget,
            sink: self.sink.clone(),
            source: self.source.clone(),
        }
    }

    /// The flags laid over one file table, not yet checked.
    fn from_parts(args: RunArgs, file: FileConfig, folder: &Path) -> Result<Self, UsageError> {
        let folder = folder.to_path_buf();
        let t = args.transport;
        let list = |flag: Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() {
                file.unwrap_or_default()
            } else {
                flag
            }
        };
        let plan = Self {
            urls: list(args.urls, file.url.map(unwrap_all)),
            connections: args
                .connections
                .or(file.connections.map(|c| c.0))
                .unwrap_or(DEFAULT_CONNECTIONS),
            shard: args.shard.or(file.shard.map(|s| s.0)).unwrap_or_default(),
            coordinate: args.coordinate.or(file.coordinate.map(|c| c.0)),
            lease: args
                .lease
                .or(file.lease.map(|l| l.0))
                .unwrap_or(DEFAULT_LEASE),
            max_lifetime: args.max_lifetime.or(file.max_lifetime.map(|d| d.0)),
            stale_after: args.stale_after.or(file.stale_after.map(|d| d.0)),
            max_message: args.max_message.or(file.max_message.map(|s| s.0)),
            memory_budget: args.memory_budget.or(file.memory_budget.map(|s| s.0)),
            connect_rate: args.connect_rate.or(file.connect_rate.map(|r| r.0)),
            local_addresses: local_addresses(args.local_addresses, file.local_address)?,
            send_rate: args.send_rate.or(file.send_rate.map(|r| r.0)),
            pool_send_rate: args.pool_send_rate.or(file.pool_send_rate.map(|r| r.0)),
            send_on_connect: list(args.send_on_connect, file.send_on_connect),
            subscriptions: file
                .subscription
                .unwrap_or_default()
                .into_iter()
                .map(SubscriptionPlan::from)
                .collect(),
            streams: file.streams.map(StreamsPlan::from),
            heartbeat: file.heartbeat.map(HeartbeatPlan::from),
            admin: args.admin.or(file.admin),
            admin_control: admin_control(
                args.admin_control || file.admin_control.unwrap_or(false),
                args.admin_token_file
                    .or(file.admin_token_file.map(|p| folder.join(p))),
                args.admin_trusted || file.admin_trusted.unwrap_or(false),
            )?,
            healthy_share: args
                .healthy_share
                .or(file.healthy_share.map(|s| s.0))
                .unwrap_or(DEFAULT_HEALTHY_SHARE),
            output: Output {
                format: args.output.or(file.output).unwrap_or_default(),
                raw: args.raw,
            },
            duration: args.duration.or(file.duration.map(|d| d.0)),
            interval: args
                .interval
                .or(file.interval.map(|d| d.0))
                .unwrap_or(DEFAULT_INTERVAL),
            protocols: list(args.protocols, file.protocol),
            headers: if args.headers.is_empty() {
                file.header.map(unwrap_all).unwrap_or_default()
            } else {
                args.headers
            },
            credential_timeout: args
                .credentials
                .credential_timeout
                .or(file.credential_timeout.map(|d| d.0)),
            credential_cache: args
                .credentials
                .credential_cache
                .or(file.credential_cache.map(|d| d.0)),
            credentials: credentials::merge(
                args.credentials,
                FileCredentials {
                    header_command: file.header_command,
                    header_file: file.header_file,
                    query_command: file.query_command,
                    query_file: file.query_file,
                },
                &folder,
            ),
            transport: Transport {
                ca_files: if args.ca_files.is_empty() {
                    // Relative paths in the file are relative to the file.
                    file.ca
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| folder.join(p))
                        .collect()
                } else {
                    args.ca_files
                },
                insecure: args.insecure || file.insecure.unwrap_or(false),
                native_roots: t.native_roots || file.native_roots.unwrap_or(false),
                client_cert: t.client_cert.or(file.client_cert.map(|p| folder.join(p))),
                client_key: t.client_key.or(file.client_key.map(|p| folder.join(p))),
                origin: t.origin.or(file.origin),
                deflate: t.deflate || file.deflate.unwrap_or(false),
                proxy: t.proxy.or(file.proxy),
                no_proxy: t.no_proxy || file.no_proxy.unwrap_or(false),
                max_redirects: t.max_redirects.or(file.max_redirects).unwrap_or(0),
                redirect_forward: if t.redirect_forward.is_empty() {
                    file.redirect_forward.unwrap_or_default()
                } else {
                    t.redirect_forward
                },
                redirect_keep_tls: t.redirect_keep_tls || file.redirect_keep_tls.unwrap_or(false),
            },
            ping_interval: args.ping_interval.or(file.ping_interval.map(|d| d.0)),
            pong_timeout: args.pong_timeout.or(file.pong_timeout.map(|d| d.0)),
            peer_ping_limit: args.peer_ping_limit.or(file.peer_ping_limit),
            slow_consumer: args
                .slow_consumer
                .or(file.slow_consumer.map(|p| p.0))
                .unwrap_or_default(),
            message_deadline: args.message_deadline.or(file.message_deadline.map(|d| d.0)),
            message_min_rate: args
                .message_min_rate
                .or(file.message_min_rate.map(|s| s.0 as u64)),
            sink: sink_config(
                args.sink,
                args.sink_stream,
                args.sink_existing_stream,
                args.sink_core,
                file.sink,
            )?,
            source: source_config(
                args.source,
                args.source_stream,
                args.source_durable,
                args.source_core,
                args.source_dead_letter,
                file.source,
            )?,
            pools: Vec::new(),
        };
        Ok(plan)
    }

    /// Settings that are each fine but do not fit together.
    fn check(&self) -> Result<(), UsageError> {
        self.transport.check()?;
        if self.admin_control.is_some() && self.admin.is_none() {
            return Err(UsageError(
                "the control API (--admin-control, --admin-token-file, --admin-trusted) is served \
                 on --admin: give its address"
                    .into(),
            ));
        }
        credentials::check(&self.credentials)?;
        if self.output.raw && self.output.format != OutputFormat::Text {
            return Err(UsageError(
                "raw applies to --output text only (jsonl is escaped by JSON)".into(),
            ));
        }
        for sub in &self.subscriptions {
            if sub.send.is_empty() {
                return Err(UsageError(format!(
                    "subscription {:?}: send must hold at least one message",
                    sub.key
                )));
            }
            if sub.per_connection == Some(0) {
                return Err(UsageError(format!(
                    "subscription {:?}: per-connection must be at least 1",
                    sub.key
                )));
            }
        }
        if let Some(h) = &self.heartbeat {
            if h.answer_pointer.is_some() != h.answer_value.is_some() {
                return Err(UsageError(
                    "[heartbeat]: answer-pointer and answer-value go together".into(),
                ));
            }
            if h.answer_prefix.is_some() && h.answer_pointer.is_some() {
                return Err(UsageError(
                    "[heartbeat]: answer-prefix or answer-pointer, not both".into(),
                ));
            }
        }
        let Shard { index, count } = self.shard;
        if self.coordinate.is_some() {
            if count != 1 {
                return Err(UsageError(
                    "--coordinate or --shard, not both: coordinated processes share every slot"
                        .into(),
                ));
            }
            if !self.pools.is_empty() {
                return Err(UsageError(
                    "--coordinate runs one pool: [pool.NAME] tables are not coordinated".into(),
                ));
            }
        }
        if index >= self.connections {
            return Err(UsageError(format!(
                "shard {index}/{count} of {} connections would run none: \
                 --connections must be above the shard index",
                self.connections
            )));
        }
        Ok(())
    }

    /// The per-connection configuration: limits, keepalive, subprotocols,
    /// headers and TLS.
    ///
    /// # Errors
    /// A [`UsageError`] for limits out of range or an unusable CA file.
    pub(crate) fn connection_config(&self) -> anyhow::Result<ConnectionConfig> {
        let mut config = ConnectionConfig::default().limits(crate::cmd::limits(self.max_message)?);
        let mut keepalive = Keepalive::default();
        if let Some(interval) = self.ping_interval {
            keepalive = keepalive.with_interval((!interval.is_zero()).then_some(interval));
        }
        if let Some(timeout) = self.pong_timeout {
            keepalive = keepalive.with_pong_timeout(timeout);
        }
        if let Some(limit) = self.peer_ping_limit {
            keepalive = keepalive.with_peer_ping_limit((limit > 0).then_some(limit));
        }
        config = config.keepalive(keepalive);
        let mut progress = Progress::default();
        if let Some(window) = self.message_deadline {
            progress = progress.with_message(window);
        }
        if let Some(rate) = self.message_min_rate {
            progress = progress.with_min_rate(rate);
        }
        config = config.progress(progress);
        config.local_addresses = self.local_addresses.clone();
        for protocol in &self.protocols {
            config = config.protocol(protocol.clone());
        }
        for (name, value) in &self.headers {
            config = config.header(name.clone(), value.clone());
        }
        for spec in &self.credentials {
            config = config.credential(spec.build(self.credential_timeout, self.credential_cache));
        }
        self.transport.apply(config)
    }
}

/// The file's keys: one per flag of `wsfleet run`, named like it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    url: Option<Vec<WsUrl>>,
    connections: Option<Count>,
    shard: Option<ShardValue>,
    coordinate: Option<CoordinateValue>,
    lease: Option<LeaseValue>,
    max_lifetime: Option<Lifetime>,
    stale_after: Option<Lifetime>,
    max_message: Option<Size>,
    memory_budget: Option<Size>,
    connect_rate: Option<Rate>,
    local_address: Option<Vec<LocalAddressSpec>>,
    send_rate: Option<SendRateValue>,
    pool_send_rate: Option<SendRateValue>,
    send_on_connect: Option<Vec<String>>,
    admin: Option<SocketAddr>,
    admin_control: Option<bool>,
    admin_token_file: Option<PathBuf>,
    admin_trusted: Option<bool>,
    healthy_share: Option<Share>,
    output: Option<OutputFormat>,
    duration: Option<Dur>,
    interval: Option<Period>,
    protocol: Option<Vec<String>>,
    header: Option<Vec<Header>>,
    header_command: Option<Vec<credentials::HeaderCommand>>,
    header_file: Option<Vec<credentials::HeaderFile>>,
    query_command: Option<Vec<credentials::QueryCommand>>,
    query_file: Option<Vec<credentials::QueryFile>>,
    credential_timeout: Option<Period>,
    credential_cache: Option<Dur>,
    ca: Option<Vec<PathBuf>>,
    insecure: Option<bool>,
    native_roots: Option<bool>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    origin: Option<String>,
    max_redirects: Option<u8>,
    redirect_forward: Option<Vec<String>>,
    redirect_keep_tls: Option<bool>,
    deflate: Option<bool>,
    proxy: Option<String>,
    no_proxy: Option<bool>,
    ping_interval: Option<Dur>,
    pong_timeout: Option<Period>,
    peer_ping_limit: Option<u32>,
    message_deadline: Option<Period>,
    message_min_rate: Option<Size>,
    slow_consumer: Option<SlowPolicy>,
    sink: Option<SinkTable>,
    source: Option<SourceTable>,
    subscription: Option<Vec<SubscriptionTable>>,
    streams: Option<StreamsTable>,
    heartbeat: Option<HeartbeatTable>,
    /// `[pool.NAME]`: another pool, with the pool keys of the top level.
    pool: Option<std::collections::BTreeMap<String, FileConfig>>,
}

impl FileConfig {
    /// The process keys this table sets (refused in a pool's table).
    fn process_keys(&self) -> Vec<&'static str> {
        let set = [
            self.shard.is_some(),
            self.coordinate.is_some(),
            self.lease.is_some(),
            self.memory_budget.is_some(),
            self.admin.is_some(),
            self.admin_control.is_some(),
            self.admin_token_file.is_some(),
            self.admin_trusted.is_some(),
            self.healthy_share.is_some(),
            self.output.is_some(),
            self.duration.is_some(),
            self.interval.is_some(),
            self.slow_consumer.is_some(),
            self.sink.is_some(),
            self.source.is_some(),
            self.pool.is_some(),
        ];
        PROCESS_KEYS
            .iter()
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|(key, _)| *key)
            .collect()
    }
}

/// What a reload cannot change without a restart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessPart {
    shard: Shard,
    coordinate: Option<CoordinateUrl>,
    lease: Duration,
    admin: Option<SocketAddr>,
    admin_control: Option<AdminControl>,
    healthy_share: f64,
    output: Output,
    slow_consumer: SlowConsumer,
    duration: Option<Duration>,
    interval: Duration,
    memory_budget: Option<usize>,
    sink: Option<SinkConfig>,
    source: Option<SourceConfig>,
}

/// The source addresses the flags (or else the file) give, read together;
/// `None` for none.
fn local_addresses(
    flags: Vec<String>,
    file: Option<Vec<LocalAddressSpec>>,
) -> Result<Option<Arc<LocalAddresses>>, UsageError> {
    let (specs, key) = if flags.is_empty() {
        (unwrap_all(file.unwrap_or_default()), "local-address")
    } else {
        (flags, "--local-address")
    };
    if specs.is_empty() {
        return Ok(None);
    }
    // Each is valid alone (checked when read); together they may pass the bound.
    LocalAddresses::parse(&specs)
        .map(|a| Some(Arc::new(a)))
        .map_err(|e| UsageError(format!("{key}: {e}")))
}

/// A pool's name: what metrics labels and `/connections` carry.
fn check_pool_name(name: &str) -> Result<(), String> {
    if name == DEFAULT_POOL {
        return Err("the top-level settings are pool \"default\": name this one otherwise".into());
    }
    let fine = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if fine {
        Ok(())
    } else {
        Err("a pool name is 1 to 64 of A-Z a-z 0-9 - _ .".into())
    }
}

/// The control API settings, checked: on with a token file, or trusted.
fn admin_control(
    on: bool,
    token_file: Option<PathBuf>,
    trusted: bool,
) -> Result<Option<AdminControl>, UsageError> {
    match (on, token_file, trusted) {
        (_, Some(_), true) => Err(UsageError(
            "--admin-token-file or --admin-trusted, not both".into(),
        )),
        (_, Some(file), false) => Ok(Some(AdminControl::TokenFile(file))),
        (_, None, true) => Ok(Some(AdminControl::Trusted)),
        (true, None, false) => Err(UsageError(
            "the control API changes the fleet: give --admin-token-file FILE, or --admin-trusted \
             if everyone who reaches --admin may"
                .into(),
        )),
        (false, None, false) => Ok(None),
    }
}

/// `[heartbeat]`: an application heartbeat on every connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HeartbeatTable {
    send: String,
    interval: Period,
    timeout: Option<Period>,
    answer_prefix: Option<String>,
    answer_pointer: Option<String>,
    answer_value: Option<String>,
    deliver_answers: Option<bool>,
}

/// `[heartbeat]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeartbeatPlan {
    pub(crate) send: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) answer_prefix: Option<String>,
    pub(crate) answer_pointer: Option<String>,
    pub(crate) answer_value: Option<String>,
    pub(crate) deliver_answers: bool,
}

impl From<HeartbeatTable> for HeartbeatPlan {
    fn from(t: HeartbeatTable) -> Self {
        Self {
            send: t.send,
            interval: t.interval.0,
            timeout: t.timeout.map(|d| d.0),
            answer_prefix: t.answer_prefix,
            answer_pointer: t.answer_pointer,
            answer_value: t.answer_value,
            deliver_answers: t.deliver_answers.unwrap_or(false),
        }
    }
}

/// `[[subscription]]`: what a connection sends to start (and end) a stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SubscriptionTable {
    key: String,
    send: OneOrMany,
    end: Option<String>,
    per_connection: Option<usize>,
}

/// A text, or a list of texts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[streams]`: how messages are attributed to streams and checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StreamsTable {
    key: String,
    sequence: Option<String>,
    on_gap: Option<OnGap>,
    stale_after: Option<Lifetime>,
    max_overlap: Option<Period>,
}

/// `[streams] on-gap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnGap {
    Report,
    Renew,
    Reconnect,
}

/// One `[[subscription]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubscriptionPlan {
    pub(crate) key: String,
    pub(crate) send: Vec<String>,
    pub(crate) end: Option<String>,
    /// Spread over the connections, at most this many per connection;
    /// `None`: every connection carries it.
    pub(crate) per_connection: Option<usize>,
}

impl From<SubscriptionTable> for SubscriptionPlan {
    fn from(t: SubscriptionTable) -> Self {
        Self {
            key: t.key,
            send: match t.send {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            },
            end: t.end,
            per_connection: t.per_connection,
        }
    }
}

/// `[streams]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamsPlan {
    pub(crate) key: String,
    pub(crate) sequence: Option<String>,
    pub(crate) on_gap: OnGap,
    pub(crate) stale_after: Option<Duration>,
    pub(crate) max_overlap: Option<Duration>,
}

impl From<StreamsTable> for StreamsPlan {
    fn from(t: StreamsTable) -> Self {
        Self {
            key: t.key,
            sequence: t.sequence,
            on_gap: t.on_gap.unwrap_or(OnGap::Report),
            stale_after: t.stale_after.map(|d| d.0),
            max_overlap: t.max_overlap.map(|d| d.0),
        }
    }
}

/// `[sink]`: where received messages are published (`--sink`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SinkTable {
    url: Option<NatsUrl>,
    stream: Option<String>,
    create_stream: Option<bool>,
    core: Option<bool>,
    max_in_flight: Option<InFlight>,
    max_in_flight_bytes: Option<Size>,
    ack_timeout: Option<Period>,
    duplicate_window: Option<Period>,
}

/// `[source]`: where outbound messages come from (`--source`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SourceTable {
    url: Option<NatsUrl>,
    stream: Option<String>,
    durable: Option<String>,
    core: Option<bool>,
    dead_letter: Option<String>,
}

/// The sink the flags and `[sink]` ask for: flags win key by key.
fn sink_config(
    url: Option<BusUrl>,
    stream: Option<String>,
    existing: bool,
    core: bool,
    table: Option<SinkTable>,
) -> Result<Option<SinkConfig>, UsageError> {
    let table = table.unwrap_or_default();
    let Some(url) = url.or(table.url.map(|u| u.0)) else {
        if stream.is_some() || existing || core {
            return Err(UsageError(
                "--sink-stream, --sink-existing-stream and --sink-core need --sink URL (or [sink] url)".into(),
            ));
        }
        return Ok(None);
    };
    let mut config = SinkConfig::new(url);
    let core = core || table.core.unwrap_or(false);
    let stream = stream.or(table.stream).unwrap_or_else(|| "WSFLEET".into());
    let create = !existing && table.create_stream.unwrap_or(true);
    config.delivery = if core {
        Delivery::Core
    } else if create {
        Delivery::JetStream(StreamPolicy::CreateIfMissing(stream))
    } else {
        Delivery::JetStream(StreamPolicy::Existing(stream))
    };
    if let Some(n) = table.max_in_flight {
        config.max_in_flight = n.0;
    }
    if let Some(bytes) = table.max_in_flight_bytes {
        config.max_in_flight_bytes = bytes.0;
    }
    if let Some(timeout) = table.ack_timeout {
        config.ack_timeout = timeout.0;
    }
    if let Some(window) = table.duplicate_window {
        config.duplicate_window = window.0;
    }
    SubjectTemplate::parse(config.url.subject()).map_err(|e| UsageError(format!("--sink: {e}")))?;
    Ok(Some(config))
}

/// The source the flags and `[source]` ask for: flags win key by key.
fn source_config(
    url: Option<BusUrl>,
    stream: Option<String>,
    durable: Option<String>,
    core: bool,
    dead_letter: Option<String>,
    table: Option<SourceTable>,
) -> Result<Option<SourceConfig>, UsageError> {
    let table = table.unwrap_or_default();
    let Some(url) = url.or(table.url.map(|u| u.0)) else {
        if stream.is_some() || durable.is_some() || core || dead_letter.is_some() {
            return Err(UsageError(
                "--source-stream, --source-durable, --source-core and --source-dead-letter need --source URL (or [source] url)".into(),
            ));
        }
        return Ok(None);
    };
    if url.subject().contains(['{', '}']) {
        return Err(UsageError(format!(
            "--source: subject {:?} has a placeholder; a source listens on a plain subject (wildcards * and > are fine)",
            url.subject()
        )));
    }
    let mut config = SourceConfig::new(url);
    if core || table.core.unwrap_or(false) {
        if durable.is_some() || stream.is_some() {
            return Err(UsageError(
                "--source-durable and --source-stream are for JetStream; --source-core has no consumer or stream".into(),
            ));
        }
        config.mode = SourceMode::Core;
    } else {
        config.mode = SourceMode::JetStream {
            stream: stream
                .or(table.stream)
                .unwrap_or_else(|| "WSFLEET_OUT".into()),
            durable: durable
                .or(table.durable)
                .unwrap_or_else(|| "wsfleet".into()),
        };
    }
    config.dead_letter = dead_letter.or(table.dead_letter);
    Ok(Some(config))
}

fn unwrap_all<T, W: Into<T>>(values: Vec<W>) -> Vec<T> {
    values.into_iter().map(Into::into).collect()
}

/// Reads and parses the file.
fn load(path: &Path) -> Result<FileConfig, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| UsageError(describe(path, &text, &e)))
}

/// `FILE:LINE: KEY: what is wrong` from a TOML error and its span.
fn describe(path: &Path, text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    let message = match message.strip_prefix("unknown field ") {
        Some(rest) => format!("unknown key {rest}"),
        None => message.to_owned(),
    };
    let Some(span) = error.span() else {
        return format!("{}: {message}", path.display());
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    // The key this line sets, unless the message names it already.
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    match key {
        Some(key) if !message.contains(&format!("`{key}`")) => {
            format!("{}:{line_no}: {key}: {message}", path.display())
        }
        _ => format!("{}:{line_no}: {message}", path.display()),
    }
}

/// A value read from a string (as on the command line) or a plain number.
struct ParseVisitor<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
}

impl<T> Visitor<'_> for ParseVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// Declares a newtype read with a [`ParseVisitor`].
macro_rules! parsed {
    ($(#[$doc:meta])* $name:ident($ty:ty), $parse:expr, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ParseVisitor {
                    parse: $parse,
                    expecting: $expecting,
                })
                .map($name)
            }
        }
    };
}

parsed!(
    /// `url`: a ws:// or wss:// URL.
    WsUrl(String),
    cli::parse_url,
    "a ws:// or wss:// URL"
);
parsed!(
    /// `local-address`: an address, a range, a block or a list of them.
    LocalAddressSpec(String),
    cli::parse_local_address,
    "an address, a range A-B or a block A/N"
);
parsed!(
    /// `connections`: 1 to 1,000,000.
    Count(u32),
    |s| match s.trim().parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("invalid number of connections {s:?}: expected 1 to 1000000")),
    },
    "a number of connections"
);
parsed!(
    /// `coordinate`: `nats://HOST:PORT/FLEET`.
    CoordinateValue(CoordinateUrl),
    cli::parse_coordinate_url,
    "a NATS address and fleet name such as \"nats://127.0.0.1:4222/feeds\""
);
parsed!(
    /// `lease`: a duration of at least 500ms.
    LeaseValue(Duration),
    cli::parse_lease,
    "a duration such as \"10s\""
);
parsed!(
    /// `shard`: `"I/N"`.
    ShardValue(Shard),
    cli::parse_shard,
    "a shard as \"I/N\""
);
parsed!(
    /// `max-lifetime`, `stale-after`: a duration of at least 100ms.
    Lifetime(Duration),
    cli::parse_lifetime,
    "a duration such as \"55m\""
);
parsed!(
    /// A size: `"5MiB"` or a number of bytes.
    Size(usize),
    |s| units::parse_size_usize(s).map_err(|e| e.to_string()),
    "a size such as \"5MiB\" or a number of bytes"
);
parsed!(
    /// `connect-rate`: above zero.
    Rate(f64),
    cli::parse_rate,
    "a number of connections per second"
);
parsed!(
    /// `send-rate`, `pool-send-rate`: `"5/s"`, `"300/m"`, `"5/s,burst=10"`.
    SendRateValue(wsfleet::fleet::SendRate),
    |s| units::parse_send_rate(s).map_err(|e| e.to_string()),
    "a rate such as \"5/s\", \"300/m\" or \"5/s,burst=10\""
);
parsed!(
    /// `healthy-share`: 0.0 to 1.0.
    Share(f64),
    cli::parse_share,
    "a number from 0.0 to 1.0"
);
parsed!(
    /// A duration: `"30s"` or a number of seconds.
    Dur(Duration),
    |s| units::parse_duration(s).map_err(|e| e.to_string()),
    "a duration such as \"30s\" or a number of seconds"
);
parsed!(
    /// A duration above zero.
    Period(Duration),
    |s| units::parse_period(s).map_err(|e| e.to_string()),
    "a duration such as \"1s\""
);
parsed!(
    /// `slow-consumer`: `"backpressure"`, `"drop-newest"` or `"disconnect:30s"`.
    SlowPolicy(SlowConsumer),
    cli::parse_slow_consumer,
    "backpressure, drop-newest or disconnect:DUR"
);
parsed!(
    /// `[sink] max-in-flight`: 1 to 1,048,576 messages.
    InFlight(usize),
    |s| match s.trim().parse::<usize>() {
        Ok(n) if (1..=1 << 20).contains(&n) => Ok(n),
        _ => Err(format!("invalid max-in-flight {s:?}: expected 1 to 1048576 messages")),
    },
    "a number of messages"
);
parsed!(
    /// `[sink] url`, `[source] url`: `nats://HOST:PORT/SUBJECT`.
    NatsUrl(BusUrl),
    cli::parse_bus_url,
    "a NATS address such as \"nats://127.0.0.1:4222/feeds.{slot}\""
);
parsed!(
    /// `header`: `"Name: value"`.
    Header((String, String)),
    cli::parse_header,
    "a header as \"Name: value\""
);

impl From<LocalAddressSpec> for String {
    fn from(spec: LocalAddressSpec) -> Self {
        spec.0
    }
}

impl From<WsUrl> for String {
    fn from(url: WsUrl) -> Self {
        url.0
    }
}

impl From<Header> for (String, String) {
    fn from(header: Header) -> Self {
        header.0
    }
}

/// Every key the file may hold, as serde lists them (for the example-file
/// test).
#[cfg(test)]
fn known_keys() -> Vec<String> {
    keys_of::<FileConfig>()
}

/// The keys `T` (a table with `deny_unknown_fields`) accepts, from serde's
/// error for an unknown one.
#[cfg(test)]
fn keys_of<T: de::DeserializeOwned>() -> Vec<String> {
    let Err(error) = toml::from_str::<T>("no-such-key-at-all = 1") else {
        unreachable!("deny_unknown_fields refuses the key")
    };
    let message = error.message();
    let list = message
        .split_once("expected one of ")
        .map(|(_, list)| list)
        .unwrap_or_else(|| panic!("no key list in {message:?}"));
    list.split(", ")
        .map(|key| key.trim().trim_matches('`').to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};
    use wsfleet::connect::ProxySetting;
    use wsfleet::fleet::SendRate;

    /// The example file shipped at the repository root.
    const EXAMPLE: &str = include_str!("../../../../../examples/wsfleet.toml");

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut all = vec!["wsfleet", "run"];
        all.extend_from_slice(argv);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(args) => args,
            _ => panic!("not run"),
        }
    }

    /// Writes `text` to a fresh file and resolves `argv` with it.
    fn with_file(name: &str, text: &str, argv: &[&str]) -> Result<Plan, UsageError> {
        let dir =
            std::env::temp_dir().join(format!("wsfleet-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wsfleet.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let mut all = vec!["--config", path.as_str()];
        all.extend_from_slice(argv);
        let result = Plan::resolve(run_args(&all));
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    #[test]
    fn defaults_without_a_file() {
        let plan = Plan::resolve(run_args(&[])).unwrap();
        assert!(plan.urls.is_empty());
        assert_eq!(plan.connections, DEFAULT_CONNECTIONS);
        assert_eq!(plan.shard, Shard::default());
        assert_eq!(plan.healthy_share, DEFAULT_HEALTHY_SHARE);
        assert_eq!(plan.output, Output::default());
        assert_eq!(plan.interval, DEFAULT_INTERVAL);
        assert_eq!(plan.admin, None);
    }

    #[test]
    fn file_values_and_flags_over_them() {
        let text = r#"
url = ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"]
connections = 40
shard = "1/4"
max-lifetime = "55m"
stale-after = "30s"
max-message = "1MiB"
memory-budget = 1048576
connect-rate = 20
send-rate = "5/s"
pool-send-rate = "300/m,burst=3"
send-on-connect = ["hello"]
admin = "127.0.0.1:9100"
healthy-share = 0.5
output = "jsonl"
duration = 30
interval = "500ms"
protocol = ["v1"]
header = ["Authorization: Bearer x"]
ca = ["ca.pem"]
insecure = false
native-roots = true
client-cert = "client.pem"
client-key = "client.key"
origin = "https://example.com"
max-redirects = 3
deflate = true
proxy = "socks5h://u:p@127.0.0.1:1080"
ping-interval = "0s"
pong-timeout = "3s"
peer-ping-limit = 0
"#;
        let plan = with_file("values", text, &[]).unwrap();
        assert_eq!(plan.urls, ["ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b"]);
        assert_eq!(plan.connections, 40);
        assert_eq!(plan.shard, Shard { index: 1, count: 4 });
        assert_eq!(plan.max_lifetime, Some(Duration::from_secs(55 * 60)));
        assert_eq!(plan.stale_after, Some(Duration::from_secs(30)));
        assert_eq!(plan.max_message, Some(1 << 20));
        assert_eq!(plan.memory_budget, Some(1 << 20));
        assert_eq!(plan.connect_rate, Some(20.0));
        assert_eq!(plan.send_rate, Some(SendRate::per_second(5.0)));
        assert_eq!(
            plan.pool_send_rate,
            Some(SendRate::per(300.0, Duration::from_secs(60)).burst(3))
        );
        assert_eq!(plan.send_on_connect, ["hello"]);
        assert_eq!(plan.admin, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(plan.healthy_share, 0.5);
        assert_eq!(plan.output.format, OutputFormat::Jsonl);
        assert_eq!(plan.duration, Some(Duration::from_secs(30)));
        assert_eq!(plan.interval, Duration::from_millis(500));
        assert_eq!(plan.protocols, ["v1"]);
        assert_eq!(
            plan.headers,
            [("Authorization".to_owned(), "Bearer x".to_owned())]
        );
        let t = &plan.transport;
        assert!(t.ca_files[0].ends_with("ca.pem") && t.ca_files[0].is_absolute());
        assert!(t.native_roots);
        // Relative paths in the file are read from the file's folder.
        let cert = t.client_cert.as_ref().unwrap();
        assert!(cert.ends_with("client.pem") && cert.is_absolute());
        assert!(t.client_key.as_ref().unwrap().ends_with("client.key"));
        assert_eq!(t.origin.as_deref(), Some("https://example.com"));
        assert_eq!(t.max_redirects, 3);
        assert_eq!(plan.ping_interval, Some(Duration::ZERO));
        assert_eq!(plan.pong_timeout, Some(Duration::from_secs(3)));
        assert_eq!(plan.peer_ping_limit, Some(0));
        assert!(t.deflate && !t.no_proxy);
        assert_eq!(t.proxy.as_deref(), Some("socks5h://u:p@127.0.0.1:1080"));
        // Without the TLS files (which do not exist in the test's folder).
        let mut without_tls = plan.clone();
        without_tls.transport.ca_files.clear();
        without_tls.transport.native_roots = false;
        without_tls.transport.client_cert = None;
        without_tls.transport.client_key = None;
        let config = without_tls.connection_config().unwrap();
        assert!(config.deflate.is_some());
        assert!(matches!(config.proxy, ProxySetting::Use(_)));
        assert_eq!(config.origin.as_deref(), Some("https://example.com"));
        assert_eq!(config.max_redirects, 3);
        assert_eq!(config.keepalive.peer_ping_limit, None, "0 turns it off");
        // The missing client certificate is named.
        let e = plan.connection_config().unwrap_err().to_string();
        assert!(
            e.contains("cannot set up TLS") && e.contains("ca.pem"),
            "{e}"
        );

        let plan = with_file(
            "flags",
            text,
            &[
                "--connections",
                "8",
                "--url",
                "ws://127.0.0.1:9/c",
                "--output",
                "none",
                "--shard",
                "0/1",
            ],
        )
        .unwrap();
        assert_eq!(plan.connections, 8);
        assert_eq!(plan.urls, ["ws://127.0.0.1:9/c"]);
        assert_eq!(plan.output.format, OutputFormat::None);
        assert_eq!(plan.shard, Shard::default());
        // Untouched keys still come from the file.
        assert_eq!(plan.healthy_share, 0.5);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = with_file("unknown", "connections = 5\n\nconections = 5\n", &[]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("wsfleet.toml:3: unknown key `conections`"),
            "{e}"
        );
        assert!(
            e.contains("`connections`"),
            "the known keys are listed: {e}"
        );
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        for (text, line, needle) in [
            (
                "connections = 5\nmax-message = \"5XB\"\n",
                2,
                "max-message: invalid size \"5XB\": unknown unit",
            ),
            ("url = [\"http://x/\"]\n", 1, "url: invalid url"),
            ("\n\nconnections = 0\n", 3, "connections: invalid number"),
            ("shard = \"2/2\"\n", 1, "shard: invalid shard"),
            ("output = \"xml\"\n", 1, "output: unknown variant `xml`"),
            (
                "max-lifetime = \"1ms\"\n",
                1,
                "max-lifetime: invalid lifetime",
            ),
            (
                "local-address = [\"127.0.0.9-127.0.0.2\"]\n",
                1,
                "local-address: local address \"127.0.0.9-127.0.0.2\": the range ends",
            ),
            ("connections = [1]\n", 1, "connections: invalid type"),
            ("connections = \n", 1, ""),
        ] {
            let e = with_file("bad", text, &[]).unwrap_err().to_string();
            assert!(
                e.contains(&format!("wsfleet.toml:{line}: {needle}")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn coordinate_from_flags_or_file_and_never_with_a_shard() {
        let plan =
            Plan::resolve(run_args(&["--coordinate", "nats://127.0.0.1:4222/feeds"])).unwrap();
        assert_eq!(
            plan.coordinate.as_ref().map(|c| c.bucket()),
            Some("wsfleet_feeds".into())
        );
        assert_eq!(plan.lease, DEFAULT_LEASE);
        let plan = with_file(
            "coordinate",
            "coordinate = \"nats://h:4222/a\"\nlease = \"2s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            plan.coordinate.map(|c| c.fleet().to_owned()),
            Some("a".into())
        );
        assert_eq!(plan.lease, Duration::from_secs(2));
        let e = Plan::resolve(run_args(&[
            "--coordinate",
            "nats://h:4222/a",
            "--shard",
            "0/2",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--coordinate or --shard"), "{e}");
        let e = with_file("lease-short", "lease = \"100ms\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 500ms"), "{e}");
        let e = with_file(
            "pool-coordinate",
            "[pool.x]\nurl = [\"ws://h/\"]\ncoordinate = \"nats://h:1/a\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("setting of the process"), "{e}");
        assert!(Cli::try_parse_from(["wsfleet", "run", "--coordinate", "nats://h:1/a.b"]).is_err());
    }

    #[test]
    fn missing_file_and_empty_shard() {
        let e = Plan::resolve(run_args(&["--config", "/no/such/wsfleet.toml"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read config file /no/such/wsfleet.toml"),
            "{e}"
        );
        let e = Plan::resolve(run_args(&["--connections", "2", "--shard", "3/4"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("would run none"), "{e}");
    }

    #[test]
    fn subscriptions_streams_and_heartbeat_from_the_file() {
        let text = r#"
send-on-connect = ["login"]

[[subscription]]
key = "c1"
send = '{"op":"subscribe","channel":"c1"}'
end = '{"op":"unsubscribe","channel":"c1"}'
per-connection = 10

[[subscription]]
key = "c2"
send = ["first", "second"]

[streams]
key = "/channel"
sequence = "/seq"
on-gap = "renew"
stale-after = "30s"
max-overlap = "2s"

[heartbeat]
send = '{"op":"ping"}'
interval = "15s"
timeout = "5s"
answer-pointer = "/op"
answer-value = "pong"
"#;
        let plan = with_file("streams", text, &[]).unwrap();
        assert_eq!(plan.send_on_connect, ["login"]);
        assert_eq!(
            plan.subscriptions,
            [
                SubscriptionPlan {
                    key: "c1".into(),
                    send: vec![r#"{"op":"subscribe","channel":"c1"}"#.into()],
                    end: Some(r#"{"op":"unsubscribe","channel":"c1"}"#.into()),
                    per_connection: Some(10),
                },
                SubscriptionPlan {
                    key: "c2".into(),
                    send: vec!["first".into(), "second".into()],
                    end: None,
                    per_connection: None,
                },
            ]
        );
        assert_eq!(
            plan.streams,
            Some(StreamsPlan {
                key: "/channel".into(),
                sequence: Some("/seq".into()),
                on_gap: OnGap::Renew,
                stale_after: Some(Duration::from_secs(30)),
                max_overlap: Some(Duration::from_secs(2)),
            })
        );
        let heartbeat = plan.heartbeat.unwrap();
        assert_eq!(heartbeat.interval, Duration::from_secs(15));
        assert_eq!(heartbeat.answer_value.as_deref(), Some("pong"));
        assert!(!heartbeat.deliver_answers);

        for (name, bad, needle) in [
            (
                "nosend",
                "[[subscription]]\nkey = \"a\"\nsend = []\n",
                "send must hold",
            ),
            (
                "zero",
                "[[subscription]]\nkey = \"a\"\nsend = \"x\"\nper-connection = 0\n",
                "per-connection must be at least 1",
            ),
            (
                "half",
                "[heartbeat]\nsend = \"p\"\ninterval = \"1s\"\nanswer-pointer = \"/op\"\n",
                "go together",
            ),
            (
                "gap",
                "[streams]\nkey = \"/c\"\non-gap = \"panic\"\n",
                "on-gap",
            ),
        ] {
            let e = with_file(name, bad, &[]).unwrap_err().0;
            assert!(e.contains(needle), "{name}: {e}");
        }
    }

    #[test]
    fn the_readme_streams_config_is_valid() {
        const README: &str = include_str!("../../../../../README.md");
        let block = README
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in README.md");
        let plan = with_file("readme", block, &[]).unwrap_or_else(|e| panic!("{e:?}\n{block}"));
        assert_eq!(plan.subscriptions.len(), 1);
        assert!(plan.streams.is_some() && plan.heartbeat.is_some());
    }

    #[test]
    fn credentials_from_the_file_and_flags_over_them() {
        use wsfleet::connect::{CredentialSource, Placement};
        let text = r#"
header-command = ["Authorization: printf 'Bearer %s' x"]
header-file = ["X-Api-Key: key.txt"]
query-file = ["sig=/run/sig"]
credential-timeout = "2s"
credential-cache = 0
"#;
        let plan = with_file("credentials", text, &[]).unwrap();
        let sources: Vec<_> = plan.credentials.iter().map(|c| &c.source).collect();
        assert_eq!(
            sources[0],
            &CredentialSource::Command("printf 'Bearer %s' x".into())
        );
        // A relative file is read from the config file's folder.
        assert!(
            matches!(sources[1], CredentialSource::File(p) if p.is_absolute() && p.ends_with("key.txt")),
            "{sources:?}"
        );
        assert_eq!(sources[2], &CredentialSource::File("/run/sig".into()));
        assert_eq!(
            plan.credentials[2].placement,
            Placement::Query("sig".into())
        );
        assert_eq!(plan.credential_timeout, Some(Duration::from_secs(2)));
        assert_eq!(plan.credential_cache, Some(Duration::ZERO));
        let config = plan.connection_config().unwrap();
        assert_eq!(config.credentials.len(), 3);
        assert_eq!(
            config.credentials[0].fetch_timeout(),
            Duration::from_secs(2)
        );
        assert_eq!(config.credentials[0].cache_duration(), Duration::ZERO);

        // A flag replaces its own key's list, not the others.
        let plan = with_file(
            "credentials-flags",
            text,
            &["--header-command", "Authorization: echo flag"],
        )
        .unwrap();
        assert_eq!(plan.credentials.len(), 3);
        assert_eq!(
            plan.credentials[0].source,
            CredentialSource::Command("echo flag".into())
        );

        let e = with_file(
            "credentials-bad",
            "\nheader-command = [\"no separator\"]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("wsfleet.toml:2") && e.contains("expected 'NAME: COMMAND'"),
            "{e}"
        );
        let e = with_file(
            "credentials-twice",
            text,
            &["--header-file", "authorization: t"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two credentials"), "{e}");
    }

    #[test]
    fn the_example_credentials_parse_when_uncommented() {
        let keys = [
            "header-command",
            "header-file",
            "query-command",
            "query-file",
            "credential-timeout",
            "credential-cache",
        ];
        let text: String = EXAMPLE
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| keys.iter().any(|k| line.starts_with(&format!("{k} ="))))
            .map(|line| format!("{line}\n"))
            .collect();
        let config: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(config.header_command.map(|v| v.len()), Some(1), "{text}");
        assert!(config.query_file.is_some() && config.credential_cache.is_some());
    }

    #[test]
    fn the_example_file_is_valid_and_documents_every_key() {
        let config: FileConfig = toml::from_str(EXAMPLE).unwrap();
        // It runs the demo as it is: no URL.
        assert!(config.url.is_none());
        let keys = known_keys();
        assert!(keys.len() > 15, "{keys:?}");
        for key in keys {
            let documented = EXAMPLE.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{key} ="))
                    || line == format!("[{key}]")
                    || line == format!("[[{key}]]")
                    || line.starts_with(&format!("[{key}."))
            });
            assert!(documented, "key {key:?} is not in examples/wsfleet.toml");
        }
        // The keys of [sink] and [source], each after its table's header.
        for (table, keys) in [
            ("[sink]", keys_of::<SinkTable>()),
            ("[source]", keys_of::<SourceTable>()),
            ("[[subscription]]", keys_of::<SubscriptionTable>()),
            ("[streams]", keys_of::<StreamsTable>()),
            ("[heartbeat]", keys_of::<HeartbeatTable>()),
        ] {
            let section: String = EXAMPLE
                .split(table)
                .nth(1)
                .unwrap_or_else(|| panic!("{table} is not in examples/wsfleet.toml"))
                .to_owned();
            for key in keys {
                let documented = section.lines().any(|line| {
                    let line = line.trim_start_matches('#').trim_start();
                    line.starts_with(&format!("{key} ="))
                });
                assert!(
                    documented,
                    "{table} key {key:?} is not in examples/wsfleet.toml"
                );
            }
        }
        // Uncommented, the bus tables parse.
        let bus: String = EXAMPLE
            .lines()
            .skip_while(|l| !l.starts_with("# [sink]"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .filter(|l| {
                l.starts_with('[')
                    || l.split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: FileConfig = toml::from_str(&bus).unwrap_or_else(|e| panic!("{e}\n{bus}"));
        assert!(parsed.sink.is_some() && parsed.source.is_some());
    }

    #[test]
    fn pool_tables_are_pools_of_their_own() {
        let text = r#"
            connections = 3
            admin = "127.0.0.1:9100"
            admin-trusted = true
            [pool.market]
            url = ["ws://127.0.0.1:9001/m"]
            connections = 7
            header = ["X-Feed: market"]
            [pool.chat]
            url = ["ws://127.0.0.1:9002/c"]
        "#;
        let plan = with_file("pools", text, &[]).unwrap();
        // No top-level url: the named pools only.
        let pools = plan.pool_plans();
        let names: Vec<&str> = pools.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["chat", "market"]);
        let market = &pools[1].1;
        assert_eq!(market.connections, 7);
        assert_eq!(market.headers, [("X-Feed".into(), "market".into())]);
        assert_eq!(pools[0].1.connections, DEFAULT_CONNECTIONS);
        assert_eq!(plan.admin_control, Some(AdminControl::Trusted));
        // With a top-level url, the top level is pool "default" too.
        let plan = with_file("pools-default", text, &["--url", "ws://127.0.0.1:9003/"]).unwrap();
        let names: Vec<String> = plan.pool_plans().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["default", "chat", "market"]);
        // A pool's part ignores the process settings: equal pools compare equal.
        assert_eq!(plan.pool_part(), plan.pool_part().pool_part());
    }

    #[test]
    fn pool_tables_refuse_process_keys_bad_names_and_no_url() {
        let err = |name: &str, text: &str| with_file(name, text, &[]).unwrap_err().0;
        let e = err(
            "pool-admin",
            "[pool.a]\nurl = [\"ws://127.0.0.1:1/\"]\nadmin = \"127.0.0.1:9\"\n",
        );
        assert!(
            e.contains("[pool.a]") && e.contains("admin is a setting of the process"),
            "{e}"
        );
        let e = err("pool-nourl", "[pool.a]\nconnections = 3\n");
        assert!(e.contains("[pool.a]: a pool needs url"), "{e}");
        let e = err(
            "pool-default",
            "[pool.default]\nurl = [\"ws://127.0.0.1:1/\"]\n",
        );
        assert!(e.contains("pool \"default\""), "{e}");
        let e = err(
            "pool-name",
            "[pool.\"a b\"]\nurl = [\"ws://127.0.0.1:1/\"]\n",
        );
        assert!(e.contains("a pool name is"), "{e}");
        let e = err(
            "pool-nested",
            "[pool.a]\nurl = [\"ws://127.0.0.1:1/\"]\n[pool.a.pool.b]\nurl = [\"ws://127.0.0.1:2/\"]\n",
        );
        assert!(e.contains("pool is a setting of the process"), "{e}");
    }

    #[test]
    fn the_control_api_needs_a_token_or_trust_and_an_address() {
        let e = Plan::resolve(run_args(&["--admin-control"])).unwrap_err().0;
        assert!(e.contains("--admin-token-file"), "{e}");
        let e = Plan::resolve(run_args(&["--admin-trusted"])).unwrap_err().0;
        assert!(e.contains("--admin"), "{e}");
        let e = Plan::resolve(run_args(&[
            "--admin",
            "127.0.0.1:9",
            "--admin-trusted",
            "--admin-token-file",
            "t",
        ]))
        .unwrap_err()
        .0;
        assert!(e.contains("not both"), "{e}");
        let plan = Plan::resolve(run_args(&[
            "--admin",
            "127.0.0.1:9",
            "--admin-token-file",
            "t",
        ]))
        .unwrap();
        assert_eq!(
            plan.admin_control,
            Some(AdminControl::TokenFile("t".into()))
        );
    }

    #[test]
    fn sink_and_source_flags_over_the_tables() {
        let plan = Plan::resolve(run_args(&[
            "--sink",
            "nats://127.0.0.1:4222/feeds.{slot}",
            "--sink-stream",
            "FEEDS",
            "--source",
            "nats://127.0.0.1:4222/out",
            "--source-core",
        ]))
        .unwrap();
        let sink = plan.sink.expect("sink");
        assert_eq!(sink.url.subject(), "feeds.{slot}");
        assert_eq!(
            sink.delivery,
            Delivery::JetStream(StreamPolicy::CreateIfMissing("FEEDS".into()))
        );
        assert_eq!(plan.source.expect("source").mode, SourceMode::Core);
        let plan = Plan::resolve(run_args(&[
            "--source",
            "nats://127.0.0.1:4222/out.3",
            "--source-durable",
            "wsfleet-3",
        ]))
        .unwrap();
        assert_eq!(
            plan.source.expect("source").mode,
            SourceMode::JetStream {
                stream: "WSFLEET_OUT".into(),
                durable: "wsfleet-3".into()
            }
        );
        for (args, want) in [
            (&["--source-durable", "d"][..], "need --source"),
            (
                &[
                    "--source",
                    "nats://h:1/out",
                    "--source-core",
                    "--source-durable",
                    "d",
                ][..],
                "for JetStream",
            ),
            (&["--sink-core"][..], "need --sink"),
            (
                &["--sink", "nats://h:1/feeds.{nope}"][..],
                "unknown placeholder",
            ),
            (&["--source", "nats://h:1/out.{slot}"][..], "placeholder"),
            (&["--sink", "http://h/x"][..], "nats://"),
        ] {
            let e = match Cli::try_parse_from(["wsfleet", "run"].iter().chain(args)) {
                Err(e) => e.to_string(),
                Ok(cli) => match cli.command {
                    Command::Run(a) => Plan::resolve(a).unwrap_err().to_string(),
                    _ => unreachable!(),
                },
            };
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    fn ips(plan: &Plan) -> Vec<String> {
        let addrs = plan.local_addresses.as_ref().expect("local addresses");
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn local_addresses_from_flags_or_the_file() {
        let plan = Plan::resolve(run_args(&[])).unwrap();
        assert!(plan.local_addresses.is_none());
        assert!(plan.connection_config().unwrap().local_addresses.is_none());

        let plan = Plan::resolve(run_args(&[
            "--local-address",
            "127.0.0.2-127.0.0.4",
            "--local-address",
            "127.0.1.0/30, 127.0.0.3",
        ]))
        .unwrap();
        assert_eq!(
            ips(&plan),
            [
                "127.0.0.2",
                "127.0.0.3",
                "127.0.0.4",
                "127.0.1.1",
                "127.0.1.2"
            ]
        );
        // Every connection of the pool gets them, a reload compares them.
        let config = plan.connection_config().unwrap();
        assert_eq!(config.local_addresses, plan.local_addresses);
        assert_eq!(plan.pool_part().local_addresses, plan.local_addresses);

        let text = "local-address = [\"127.0.0.5\", \"::1\"]\n";
        let plan = with_file("local", text, &[]).unwrap();
        assert_eq!(ips(&plan), ["127.0.0.5", "::1"]);
        // The flags replace the file's list.
        let plan = with_file("local-flag", text, &["--local-address", "127.0.0.6"]).unwrap();
        assert_eq!(ips(&plan), ["127.0.0.6"]);
        // A pool has its own.
        let text = "[pool.p]\nurl = [\"ws://127.0.0.1:9/\"]\nlocal-address = [\"127.0.0.8\"]\n";
        let plan = with_file("local-pool", text, &[]).unwrap();
        assert_eq!(ips(&plan.pools[0].1), ["127.0.0.8"]);
    }

    #[test]
    fn bad_local_addresses_are_usage_errors_naming_the_value() {
        let Err(e) = Cli::try_parse_from(["wsfleet", "run", "--local-address", "localhost"]) else {
            panic!("--local-address localhost was taken");
        };
        let e = e.to_string();
        assert!(
            e.contains("localhost") && e.contains("not an IP address"),
            "{e}"
        );
        // Each value fits alone; together they pass the bound.
        let e = Plan::resolve(run_args(&[
            "--local-address",
            "fd00::-fd00::ffff",
            "--local-address",
            "127.0.0.2",
        ]))
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "--local-address: local address \"127.0.0.2\": more than 65536 local addresses in all"
        );
    }
}
