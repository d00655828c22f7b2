//! The pools of `wsfleet run`, each a [`Fleet`] of its own on one memory
//! budget, one event stream and one id space, and the reload that applies
//! a changed configuration to them without a restart.
//!
//! A reload compares each pool's settings with the running ones and
//! changes only what differs: a pool whose settings are the same is not
//! touched (its connections keep their ids); one whose connection count
//! alone changed is scaled; one whose connection settings changed (URLs,
//! headers, TLS, limits, lifetime, subscriptions…) is replaced
//! make-before-break: the new fleet dials at its connect rate while the
//! old one serves, and the old one closes (1001) once the new one is ready
//! (or after a bound). A file that does not parse or validate, a process
//! setting that changed (it needs a restart) or a pool that cannot start
//! is refused whole: the running pools are as they were.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use wsfleet::admin::ControlPools;
use wsfleet::fleet::{ConnIds, EventSender, Fleet, FleetBudget, FleetControl, FleetMonitor};

use super::config::{Plan, ProcessPart};
use super::status::Snapshot;
use crate::cli::RunArgs;

/// Beyond its ramp (connections ÷ connect rate), how long a replacement
/// pool may take to be ready before the old one closes anyway.
const REPLACE_GRACE: Duration = Duration::from_secs(30);
/// The connect rate when a plan does not set one (the library's default).
const DEFAULT_CONNECT_RATE: f64 = 200.0;

/// One running pool: its settings and its fleet.
struct Pool {
    plan: Plan,
    fleet: Fleet,
}

/// What a reload does to one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Same,
    Scale { from: u32, to: u32 },
    Replace,
    Add,
    Remove,
}

/// Every pool of the process and what they share.
pub(crate) struct Pools {
    pools: BTreeMap<String, Pool>,
    /// The control API's view, kept in step.
    control: ControlPools,
    budget: Arc<FleetBudget>,
    events: EventSender,
    ids: ConnIds,
    /// The demo's embedded echo server, for the default pool without URLs.
    demo_url: Option<String>,
    /// Old fleets closing after a replacement or removal.
    closing: Vec<JoinHandle<Snapshot>>,
    /// Totals of fleets that have ended (kept in the summary).
    ended: Snapshot,
    /// What the running process was started with, for reloads.
    args: RunArgs,
    process: ProcessPart,
    /// Shut down: reloads are refused.
    stopping: bool,
}

impl Pools {
    /// Starts every pool of `plan`.
    ///
    /// # Errors
    /// A pool whose settings the fleet refuses (named).
    pub(crate) fn start(
        plan: &Plan,
        process: ProcessPart,
        args: RunArgs,
        budget: Arc<FleetBudget>,
        events: EventSender,
        demo_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut pools = Self {
            pools: BTreeMap::new(),
            control: ControlPools::new(),
            budget,
            events,
            ids: ConnIds::new(),
            demo_url,
            closing: Vec::new(),
            ended: Snapshot::default(),
            args,
            process,
            stopping: false,
        };
        for (name, pool_plan) in plan.pool_plans() {
            let fleet = pools.spawn(&name, &pool_plan)?;
            pools.control.insert(name.clone(), fleet.control());
            pools.pools.insert(
                name,
                Pool {
                    plan: pool_plan,
                    fleet,
                },
            );
        }
        Ok(pools)
    }

    /// The control API's view of the pools.
    pub(crate) fn control(&self) -> ControlPools {
        self.control.clone()
    }

    /// The first pool (the default one if it runs): where `--source` and the
    /// demo send, and whose slots the sink's `{host}` names.
    pub(crate) fn primary(&self) -> Option<(String, FleetControl)> {
        self.pools
            .iter()
            .find(|(name, _)| *name == super::config::DEFAULT_POOL)
            .or_else(|| self.pools.iter().next())
            .map(|(name, pool)| (name.clone(), pool.fleet.control()))
    }

    /// The numbers of every pool together (and of the fleets that ended).
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.pools
            .values()
            .map(|p| Snapshot::of(&p.fleet.monitor().stats()))
            .fold(self.ended, Snapshot::add)
    }

    /// The fleet `plan` describes, named `name`, on the shared budget,
    /// events and ids.
    fn spawn(&self, name: &str, plan: &Plan) -> anyhow::Result<Fleet> {
        let urls = if plan.urls.is_empty() {
            self.demo_url.iter().cloned().collect()
        } else {
            plan.urls.clone()
        };
        anyhow::ensure!(!urls.is_empty(), "pool {name}: no URL");
        let connection = plan.connection_config()?;
        super::builder(plan, &urls, connection)
            .name(name)
            .shared_budget(self.budget.clone())
            .events_to(self.events.clone())
            .conn_ids(self.ids.clone())
            .spawn()
            .map_err(|e| super::UsageError(format!("pool {name}: invalid settings: {e}")).into())
    }

    /// Re-reads the configuration (the same flags, the file again) and
    /// applies the difference. `Ok` with what changed; `Err` with why
    /// nothing did.
    pub(crate) async fn reload(&mut self) -> Result<String, String> {
        if self.stopping {
            return Err("the process is stopping".into());
        }
        let plan = Plan::resolve(self.args.clone()).map_err(|e| e.0)?;
        self.apply(&plan).await
    }

    /// Applies `plan` to the running pools (see the module docs).
    async fn apply(&mut self, plan: &Plan) -> Result<String, String> {
        if plan.process_part() != self.process {
            return Err(
                "process settings changed (admin, output, sink, source, shard, memory budget, \
                 …): they apply at a restart; nothing changed"
                    .into(),
            );
        }
        let wanted: BTreeMap<String, Plan> = plan.pool_plans().into_iter().collect();
        let mut changes: BTreeMap<String, Change> = BTreeMap::new();
        for (name, pool) in &self.pools {
            let change = match wanted.get(name) {
                None => Change::Remove,
                Some(new) if *new == pool.plan => Change::Same,
                Some(new)
                    if Plan {
                        connections: pool.plan.connections,
                        ..new.clone()
                    } == pool.plan =>
                {
                    Change::Scale {
                        from: pool.plan.connections,
                        to: new.connections,
                    }
                }
                Some(_) => Change::Replace,
            };
            changes.insert(name.clone(), change);
        }
        for name in wanted.keys() {
            changes.entry(name.clone()).or_insert(Change::Add);
        }
        // A coordinated fleet's slots are driven by its leases, which belong
        // to the running fleet: a new one would hold nothing.
        if plan.coordinate.is_some() && changes.values().any(|c| *c != Change::Same) {
            return Err(format!(
                "{}: with --coordinate, connection settings apply at a restart; nothing changed",
                summary(&changes)
            ));
        }

        // First what can fail: new fleets, then scaling (undone if a later
        // one fails). Nothing is retired before all of it succeeded.
        let mut fresh: Vec<(String, Fleet)> = Vec::new();
        for (name, change) in &changes {
            if matches!(change, Change::Replace | Change::Add) {
                match self.spawn(name, &wanted[name]) {
                    Ok(fleet) => fresh.push((name.clone(), fleet)),
                    Err(e) => {
                        for (_, fleet) in fresh {
                            fleet.shutdown().await;
                        }
                        return Err(format!("{e:#}; nothing changed"));
                    }
                }
            }
        }
        let mut scaled: Vec<(String, u32)> = Vec::new();
        for (name, change) in &changes {
            if let Change::Scale { from, to } = change {
                let control = self.pools[name].fleet.control();
                if let Err(e) = control.set_connections(*to as usize).await {
                    for (done, before) in scaled {
                        let _ = self.pools[&done]
                            .fleet
                            .control()
                            .set_connections(before as usize)
                            .await;
                    }
                    for (_, fleet) in fresh {
                        fleet.shutdown().await;
                    }
                    return Err(format!("pool {name}: {e}; nothing changed"));
                }
                scaled.push((name.clone(), *from));
            }
        }

        // Commit.
        for (name, _) in &scaled {
            if let (Some(pool), Some(new)) = (self.pools.get_mut(name), wanted.get(name)) {
                pool.plan = new.clone();
            }
        }
        for (name, fleet) in fresh {
            self.control.insert(name.clone(), fleet.control());
            let pool = Pool {
                plan: wanted[&name].clone(),
                fleet,
            };
            if let Some(old) = self.pools.insert(name.clone(), pool) {
                let new = self.pools[&name].fleet.monitor();
                self.retire(&name, old, Some(new));
            }
        }
        for (name, change) in &changes {
            if *change == Change::Remove {
                self.control.remove(name);
                if let Some(old) = self.pools.remove(name) {
                    self.retire(name, old, None);
                }
            }
        }
        let summary = summary(&changes);
        tracing::info!(%summary, "configuration reloaded");
        Ok(summary)
    }

    /// Closes `old` in the background: once `successor` is ready (at most
    /// its ramp plus a grace), or at once for a removed pool.
    fn retire(&mut self, name: &str, old: Pool, successor: Option<FleetMonitor>) {
        let name = name.to_owned();
        let rate = old.plan.connect_rate.unwrap_or(DEFAULT_CONNECT_RATE);
        self.closing.retain(|t| !t.is_finished());
        self.closing.push(tokio::spawn(async move {
            if let Some(new) = successor {
                let ramp = Duration::from_secs_f64(new.target() as f64 / rate);
                let until = Instant::now() + ramp + REPLACE_GRACE;
                while new.ready() < new.target() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tracing::info!(pool = %name, ready = new.ready(), "replacement ready: closing the old connections");
            }
            let monitor = old.fleet.monitor();
            old.fleet.shutdown().await;
            let last = Snapshot::of(&monitor.stats());
            // The budget is shared: only the old fleet's traffic counts here.
            Snapshot {
                target: 0,
                ready: 0,
                paused: 0,
                budget_used: 0,
                budget_max: 0,
                budget_handed: 0,
                ..last
            }
        }));
    }

    /// Shuts every pool down (close handshakes), and the fleets still
    /// closing; returns the totals of every fleet that ran.
    /// A reload after this is refused.
    pub(crate) async fn shutdown(&mut self) -> Snapshot {
        self.stopping = true;
        let mut total = self.ended;
        for (name, pool) in std::mem::take(&mut self.pools) {
            self.control.remove(&name);
            let monitor = pool.fleet.monitor();
            pool.fleet.shutdown().await;
            // Counted after the close: what was in flight is in.
            total = total.add(Snapshot::of(&monitor.stats()));
        }
        for closing in std::mem::take(&mut self.closing) {
            if let Ok(s) = closing.await {
                total = total.add(s);
            }
        }
        self.ended = total;
        total
    }

    /// Takes in the totals of the old fleets that have finished closing.
    pub(crate) fn collect_closed(&mut self) {
        let (done, open): (Vec<_>, Vec<_>) =
            self.closing.drain(..).partition(JoinHandle::is_finished);
        self.closing = open;
        for handle in done {
            if let Some(Ok(s)) = futures_now(handle) {
                self.ended = self.ended.add(s);
            }
        }
    }
}

/// The output of a finished task, without waiting.
fn futures_now<T>(handle: JoinHandle<T>) -> Option<Result<T, tokio::task::JoinError>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut handle = handle;
    match std::pin::Pin::new(&mut handle).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// `a unchanged; b scaled 10 -> 20; c replaced` from the changes.
fn summary(changes: &BTreeMap<String, Change>) -> String {
    let parts: Vec<String> = changes
        .iter()
        .map(|(name, change)| match change {
            Change::Same => format!("{name} unchanged"),
            Change::Scale { from, to } => format!("{name} scaled {from} -> {to}"),
            Change::Replace => format!("{name} replaced"),
            Change::Add => format!("{name} added"),
            Change::Remove => format!("{name} removed"),
        })
        .collect();
    parts.join("; ")
}
