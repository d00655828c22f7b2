//! `wsfleet run`: a fleet of connections (the library's [`Fleet`]) with
//! live status, until a signal or `--duration`.
//!
//! The pieces: [`config`] settles flags over the `--config` file, and
//! [`budget`] derives the memory budget from the machine if neither sets
//! it; the fleet's events are drained without pause by [`output`] (received
//! messages to stdout per `--output`); [`status`] shows the live status;
//! [`bus`] connects `--sink` and `--source`; `--admin` serves the
//! library's [`AdminServer`], with the bus's counters on `/metrics`. With
//! no URL, an embedded [`EchoServer`] and a demo sender make a fleet that
//! talks.

mod budget;
mod bus;
mod config;
mod coordinate;
mod output;
mod pools;
mod status;

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use wsfleet::admin::{AdminServer, ControlAuth, ControlPools};
use wsfleet::fleet::{
    Events, Fleet, FleetBudget, FleetBuilder, GapPolicy, Heartbeat, Placement, Streams,
    Subscription,
};
use wsfleet::serve::EchoServer;
use wsfleet::{ConnectionConfig, Message};

use self::bus::{Bus, from_source};
use self::config::{AdminControl, OnGap, Plan};
use self::pools::Pools;
use self::status::Status;
use super::{Signals, UsageError};
use crate::cli::RunArgs;

/// How often the demo sender wakes up to send what is due.
const DEMO_TICK: Duration = Duration::from_millis(10);
/// Events queued between the pools and the output (the library's default
/// for one fleet): what they hold stays charged to the memory budget.
const EVENT_CAPACITY: usize = 1024;

/// Runs the fleet until a signal or `--duration`, shuts it down with close
/// handshakes, then prints the summary line on stdout.
///
/// # Errors
/// A [`UsageError`] for bad settings (config file, limits, TLS files);
/// otherwise if the embedded server or the admin endpoint cannot listen, or
/// a second signal cut the shutdown short.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut plan = Plan::resolve(args.clone())?;
    // Before the budget is derived: a reload compares the file as written.
    let process = plan.process_part();
    let mut sizing = plan.clone();
    sizing.connections = plan.pool_plans().iter().map(|(_, p)| p.connections).sum();
    let budget_bytes = budget::Budget::choose(&sizing).log();
    plan.memory_budget = Some(budget_bytes);
    let mut signals = Signals::install()?;
    let mut hangups = Hangups::install()?;
    let auth = match &plan.admin_control {
        Some(AdminControl::TokenFile(path)) => Some(ControlAuth::Token(read_token(path)?)),
        Some(AdminControl::Trusted) => Some(ControlAuth::Trusted),
        None => None,
    };

    // Kept alive until the fleet has closed its connections.
    let server = if plan.runs_default_pool() && plan.urls.is_empty() {
        let server = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .context("cannot start the embedded echo server")?;
        tracing::info!(url = %server.url(), "no --url: demo fleet against an embedded echo server");
        Some(server)
    } else {
        None
    };

    let (events_tx, events) = Events::channel(EVENT_CAPACITY);
    let pools = Pools::start(
        &plan,
        process,
        args,
        Arc::new(FleetBudget::new(budget_bytes)),
        events_tx,
        server.as_ref().map(EchoServer::url),
    )?;
    let (primary, primary_control) = pools.primary().context("no pool to run")?;
    let monitor = primary_control.monitor();
    let control_pools = pools.control();
    let _trimmer = crate::memory::spawn_trimmer(monitor.clone());
    tracing::info!(
        pools = %control_pools.names().join(","),
        connections = pools.snapshot().target,
        shard = %format_args!("{}/{}", plan.shard.index, plan.shard.count),
        "fleet started"
    );
    let coordinator = coordinate::start(&plan, &primary_control).await?;
    // Before the admin endpoint: its /metrics serves the bus's counters.
    let bus = Bus::connect(&plan, &monitor).await?;
    let pools = Arc::new(tokio::sync::Mutex::new(pools));
    let admin = match plan.admin {
        Some(addr) => {
            // Every pool, as a reload leaves them.
            let mut admin =
                AdminServer::builder_for(control_pools.clone()).healthy_share(plan.healthy_share);
            for source in bus.metrics_sources() {
                admin = admin.metrics_source(source);
            }
            if let Some(auth) = auth {
                let reloading = pools.clone();
                admin = admin
                    .control(control_pools.clone(), auth)
                    .reload(Arc::new(move || {
                        let pools = reloading.clone();
                        Box::pin(async move { pools.lock().await.reload().await })
                    }));
            }
            let admin = admin
                .bind(addr)
                .await
                .with_context(|| format!("cannot serve the admin endpoint on {addr}"))?;
            tracing::info!(
                control = plan.admin_control.is_some(),
                "admin endpoint on http://{}/ (/metrics /connections /healthz{})",
                admin.local_addr(),
                if plan.admin_control.is_some() {
                    " /control/"
                } else {
                    ""
                }
            );
            Some(admin)
        }
        None => None,
    };
    let Bus { sink, source } = bus;

    let finish = CancellationToken::new();
    let stdout_gone = CancellationToken::new();
    let hurry = CancellationToken::new();
    let mut consumer = output::spawn(
        events,
        plan.output,
        sink,
        finish.clone(),
        hurry.clone(),
        stdout_gone.clone(),
    );

    let mut status = Status::new(std::io::stderr().is_terminal());
    let reason = {
        let sender = async {
            match source {
                Some(source) => from_source(&control_pools, &primary, source).await,
                None if server.is_some() => {
                    demo_sender(&control_pools, &primary, plan.interval).await;
                }
                None => {}
            }
            std::future::pending::<()>().await;
        };
        tokio::pin!(sender);
        let mut ticker = tokio::time::interval_at(Instant::now() + status.every, status.every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline = async {
            match plan.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                signal = signals.recv() => break signal,
                () = &mut deadline => break "--duration elapsed",
                () = stdout_gone.cancelled() => break "stdout closed",
                () = &mut sender => {}
                () = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if let Err(why) = pools.lock().await.reload().await {
                        tracing::warn!(%why, "reload refused");
                    }
                }
                _ = ticker.tick() => {
                    let mut pools = pools.lock().await;
                    pools.collect_closed();
                    status.show(&pools.snapshot());
                }
            }
        }
    };

    let at_stop = pools.lock().await.snapshot();
    status.finish(&at_stop);
    tracing::info!(
        reason,
        "stopping: closing {} connections (1001)",
        at_stop.ready
    );
    if let Some(coordinator) = coordinator {
        // Its slots close gracefully and their keys go, so the other
        // processes take them at once.
        coordinate::leave(coordinator, &plan).await;
    }
    let mut pools = pools.lock().await;
    let (done, mut cut_short) = tokio::select! {
        done = pools.shutdown() => (done, None),
        signal = signals.recv() => {
            tracing::warn!(signal, "second signal: stopping without waiting for close handshakes");
            (pools.snapshot(), Some(signal))
        }
    };
    finish.cancel();
    if cut_short.is_some() {
        hurry.cancel();
    }
    // The consumer takes what is left (the sink: up to its grace), unless
    // another signal says not to wait.
    let tally = loop {
        tokio::select! {
            tally = &mut consumer => break tally.unwrap_or_default(),
            signal = signals.recv(), if !hurry.is_cancelled() => {
                tracing::warn!(signal, "another signal: not waiting for the sink or stdout");
                hurry.cancel();
                cut_short.get_or_insert(signal);
            }
        }
    };
    drop(admin);
    drop(server);

    let mut summary = format!(
        "sent={} received={} connections={} reconnects={} undelivered={}",
        done.sent, done.received, at_stop.ready, done.reconnects, tally.undelivered
    );
    if let Some(m) = tally.sink {
        summary.push_str(&format!(
            " sink_published={} sink_acked={} sink_retried={} sink_unacked={} sink_not_published={}",
            m.published, m.acked, m.retried, m.in_flight, tally.not_published
        ));
    }
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{summary}").and_then(|()| stdout.flush()) {
        Ok(()) => {}
        // Whoever read stdout left; the summary goes to the log instead.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => tracing::info!("{summary}"),
        Err(e) => return Err(e).context("cannot write to stdout"),
    }
    if let Some(signal) = cut_short {
        anyhow::bail!(
            "stopped by a second {signal} before every connection had closed and the sink had its acknowledgements"
        );
    }
    Ok(())
}

/// Reads the control API's bearer token: the file's text, trimmed.
///
/// # Errors
/// A [`UsageError`] naming the file: unreadable, or empty.
fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<[u8]>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read --admin-token-file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(UsageError(format!("--admin-token-file {} is empty", path.display())).into());
    }
    Ok(Arc::from(token.as_bytes()))
}

/// SIGHUP: reload the configuration.
struct Hangups {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Hangups {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.hangup.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

/// The fleet the plan asks for, against `urls` (at least one).
fn builder(plan: &Plan, urls: &[String], connection: ConnectionConfig) -> FleetBuilder {
    let mut builder = Fleet::builder(urls[0].clone());
    for url in &urls[1..] {
        builder = builder.url(url.clone());
    }
    builder = builder
        .connections(plan.connections as usize)
        .shard(plan.shard.index as usize, plan.shard.count as usize)
        .connection_config(connection)
        .slow_consumer(plan.slow_consumer);
    if plan.coordinate.is_some() {
        builder = builder.coordinated();
    }
    if let Some(lifetime) = plan.max_lifetime {
        builder = builder.max_lifetime(lifetime);
    }
    if let Some(after) = plan.stale_after {
        builder = builder.stale_after(after);
    }
    if let Some(budget) = plan.memory_budget {
        builder = builder.memory_budget(budget);
    }
    if let Some(rate) = plan.connect_rate {
        builder = builder.connect_rate(rate);
    }
    if let Some(rate) = plan.send_rate {
        builder = builder.send_rate(rate);
    }
    if let Some(rate) = plan.pool_send_rate {
        builder = builder.pool_send_rate(rate);
    }
    // `send-on-connect` is a subscription of every connection without an
    // end message; payloads are shared by every connection, not copied.
    for (i, text) in plan.send_on_connect.iter().enumerate() {
        builder = builder.subscribe(Subscription::new(
            format!("send-on-connect #{}", i + 1),
            Message::text(text.clone()),
        ));
    }
    for sub in &plan.subscriptions {
        let mut messages = sub.send.iter().map(|t| Message::text(t.clone()));
        let Some(first) = messages.next() else {
            continue; // refused by Plan::check
        };
        let mut subscription =
            messages.fold(Subscription::new(sub.key.clone(), first), |s, m| s.then(m));
        if let Some(end) = &sub.end {
            subscription = subscription.end(Message::text(end.clone()));
        }
        if let Some(per_connection) = sub.per_connection {
            subscription = subscription.placement(Placement::Spread { per_connection });
        }
        builder = builder.subscribe(subscription);
    }
    if let Some(h) = &plan.heartbeat {
        let mut heartbeat = Heartbeat::new(Message::text(h.send.clone()), h.interval)
            .deliver_answers(h.deliver_answers);
        if let Some(timeout) = h.timeout {
            heartbeat = heartbeat.timeout(timeout);
        }
        if let Some(prefix) = &h.answer_prefix {
            heartbeat = heartbeat.answer_prefix(prefix.clone().into_bytes());
        }
        if let (Some(pointer), Some(value)) = (&h.answer_pointer, &h.answer_value) {
            heartbeat = heartbeat.answer_field(pointer.clone(), value.clone());
        }
        builder = builder.heartbeat(heartbeat);
    }
    if let Some(s) = &plan.streams {
        let mut streams = Streams::new(s.key.clone()).on_gap(match s.on_gap {
            OnGap::Report => GapPolicy::Report,
            OnGap::Renew => GapPolicy::Renew,
            OnGap::Reconnect => GapPolicy::Reconnect,
        });
        if let Some(seq) = &s.sequence {
            streams = streams.sequence(seq.clone());
        }
        if let Some(after) = s.stale_after {
            streams = streams.stale_after(after);
        }
        if let Some(overlap) = s.max_overlap {
            streams = streams.max_overlap(overlap);
        }
        builder = builder.streams(streams);
    }
    builder
}

/// The demo's traffic: each ready connection of pool `pool` gets one
/// message every `interval`, spread evenly over it, through `send` (round
/// robin). Never returns.
async fn demo_sender(pools: &ControlPools, pool: &str, interval: Duration) {
    let mut ticker = tokio::time::interval(DEMO_TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let share = DEMO_TICK.as_secs_f64() / interval.as_secs_f64();
    let mut owed = 0.0_f64;
    let mut ready = 0;
    let mut seq = 0u64;
    for tick in 0u64.. {
        ticker.tick().await;
        // A reload may replace the pool: looked up each tick.
        let Some(fleet) = pools.get(pool) else {
            continue;
        };
        // Counting ready connections visits every slot: not every tick.
        if tick % 10 == 0 {
            ready = fleet.monitor().ready();
        }
        #[allow(clippy::cast_precision_loss)]
        let due = ready as f64 * share;
        owed += due;
        while owed >= 1.0 {
            owed -= 1.0;
            seq += 1;
            if fleet
                .send(Message::text(format!("wsfleet demo #{seq}")))
                .await
                .is_err()
            {
                // Nothing ready right now: what is owed is dropped.
                owed = 0.0;
            }
        }
    }
}
