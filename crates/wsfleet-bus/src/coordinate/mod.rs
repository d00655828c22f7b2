//! Shard failover through NATS JetStream key-value leases: several
//! processes share one fleet of slots, each running a fair share, and the
//! survivors take over the slots of one that died. No consensus of ours:
//! the leases are keys of a JetStream KV bucket, their TTL is the bucket's
//! `max_age`, and their fences are NATS's revisions (compare-and-set on
//! every write).
//!
//! # Design
//!
//! - **The bucket.** `wsfleet_<FLEET>` (from `nats://HOST:PORT/FLEET`),
//!   history 1, `max_age` = the lease time `T`. Every write of a key
//!   restarts its life: a key not written for `T` expires and is gone.
//!   Every process of the fleet must use the same `T` (a bucket that exists
//!   with another `max_age` is refused, naming both).
//! - **Slot keys.** `slot.<i>` for each slot `i` of the fleet; the value
//!   names the holder (`host-pid-random`, this process's instance id).
//!   - *Take*: `create` — succeeds only if the key does not exist
//!     (NATS's compare-and-set on revision 0), so at most one process takes
//!     a free slot. The slot then dials (paced by the fleet's connect rate).
//!   - *Renew*: `update(key, value, last_revision)` every `R = T/3`. A
//!     refused update (wrong last revision: the key expired and someone
//!     else took it, or it was deleted) means the lease is lost: the slot's
//!     connection is aborted at once ([`FleetControl::revoke`]). An update
//!     that times out or fails in transport is retried at the next tick.
//!   - *Release*: the slot's connection closes gracefully (1001) while the
//!     key is still renewed; once the connection is gone, the key is
//!     deleted with a revision check (`delete_expect_revision`). No other
//!     process can take the slot before its old connection has closed.
//! - **Member keys.** `member.<instance>`, renewed the same way, valued
//!   `slots=N`: live processes are the member keys present. A process that
//!   dies stops renewing, and its keys (member and slots) expire after `T`.
//! - **Fair share.** Each process scans the bucket's keys every `R` (±20 %
//!   jitter) and aims for `ceil(slots / live processes)` slots. Below it,
//!   it takes free slots in random order, paced at the fleet's connect rate
//!   with jitter; above it (a process came back), it releases the surplus
//!   gracefully — only once two scans agree on the member count, so a late
//!   renewal does not make the fleet shed and retake slots. Shares round
//!   up, so they cover every slot; a process that comes back takes its
//!   share from the surplus the others release, and nobody releases more
//!   than that surplus. A released slot is not retaken by the same process
//!   for `T`. A new process waits `R` after registering before it takes
//!   anything, so processes that start together see each other first.
//! - **Shutdown.** Every held slot is released as above (graceful close,
//!   then delete), then the member key is deleted: the others take the
//!   slots at once instead of after `T`.
//!
//! # The fencing bound
//!
//! With `T` the lease, `R = T/3`, `M = T/10`, the fence `F = T − R − M`
//! (≈ 0.57 T) and the tick `t = T/20` (10 ms to 250 ms), see
//! [`LeaseTiming`]:
//!
//! 1. Let `s` be when the holder **sent** its last successful write of a
//!    slot's key (create or renewal), by its own monotonic clock. The
//!    server stamps the write on receipt, at or after `s`, so the key
//!    cannot expire, and no other process can `create` it, before `s + T`
//!    (measured by the server's clock).
//! 2. The holder checks its leases every tick and aborts the connection of
//!    any lease with no successful write sent after `s` once `s + F` has
//!    passed (by its clock): the connection is gone by `s + F + t + a`,
//!    where `a` is the time to abort a task and close its socket (local,
//!    microseconds).
//! 3. So two processes never serve one slot at the same time as long as
//!    `t + a + ε·T < R + M` (≈ 0.43 T), where `ε` is the relative
//!    difference between the rates of the holder's monotonic clock and the
//!    server's clock over `T`. It relies on clocks *advancing at the same
//!    rate* (within `ε`), not on synchronised clocks; it also assumes the
//!    NATS server's clock does not jump forward by more than the slack
//!    (JetStream ages messages by the server's wall clock).
//!
//! A holder that is healthy renews every `R`, so its lease is fenced only
//! when NATS has not answered for `F − R` ≈ 0.23 T (e.g. 470 ms for a 2 s
//! lease, 2.3 s for 10 s): a NATS outage longer than that drops every slot
//! (fail-safe: no slot is served without a lease).
//!
//! Not covered by the bound:
//!
//! - A process that is *paused* (SIGSTOP, a frozen VM, a swap storm)
//!   cannot run its fence: its sockets stay open in the kernel, so the
//!   upstream may see the slot's old connection (idle: nobody reads or
//!   writes it) beside the new holder's until the process resumes and
//!   aborts it at its first tick. Leases fence what a *running* process
//!   does; an upstream that must never see two connections of one slot
//!   needs a token it checks (the key's revision would do).
//! - A rotation in progress (its old connection closes gracefully within
//!   the close deadline).
//! - A `create` that timed out on our side but succeeded on the server:
//!   the key then stays unserved until it expires (at most `T` without a
//!   holder, never two).
//!
//! # Cost
//!
//! One key per slot, each renewed every `R`: the fleet writes
//! `slots / R` times a second to NATS (45/s for 30 slots and a 2 s lease;
//! 30,000/s for 100,000 slots and a 10 s lease, which a single NATS server
//! may not sustain: not measured yet), and each process lists the
//! bucket's keys every `R` (an ordered consumer over `slots + members`
//! keys). Leases per group of slots would cut both; not done.
//!
//! # Failover time
//!
//! A process killed at `k` last renewed after `k − R`; its keys expire by
//! `k + T` (plus the server's expiry timer), the survivors see them free
//! at their next scan (≤ `R` later, ±20 %) and take them paced at the
//! connect rate: every slot is served again within about
//! `T + 1.2 R + slots / connect rate + handshake`.
//!
//! [`FleetControl::revoke`]: wsfleet::fleet::FleetControl::revoke

mod driver;
mod lease;
mod pace;
mod share;
mod status;

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use wsfleet::fleet::FleetControl;

pub use lease::{LeaseTiming, MIN_LEASE};
pub use status::{FleetStatus, Member, fleet_status};

use crate::BusUrl;

/// `nats://HOST:PORT/FLEET`: where the leases are, and the fleet's name
/// (the bucket is `wsfleet_FLEET`).
///
/// ```
/// use wsfleet_bus::coordinate::CoordinateUrl;
/// let u: CoordinateUrl = "nats://127.0.0.1:4222/feeds".parse().unwrap();
/// assert_eq!(u.server(), "nats://127.0.0.1:4222");
/// assert_eq!(u.bucket(), "wsfleet_feeds");
/// assert!("nats://127.0.0.1:4222/a.b".parse::<CoordinateUrl>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinateUrl {
    url: BusUrl,
}

/// The longest fleet name (the bucket name stays short).
pub const MAX_FLEET_NAME: usize = 64;

impl std::str::FromStr for CoordinateUrl {
    type Err = CoordinateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url: BusUrl = s
            .parse()
            .map_err(|e: crate::BusUrlError| CoordinateError::Url {
                value: e.value,
                problem: e.problem,
            })?;
        let name = url.subject();
        let valid = !name.is_empty()
            && name.len() <= MAX_FLEET_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(CoordinateError::Url {
                value: url.to_string(),
                problem: "the fleet name (the path) must be 1 to 64 of A-Z a-z 0-9 _ -; \
                          write nats://HOST:PORT/FLEET",
            });
        }
        Ok(Self { url })
    }
}

impl CoordinateUrl {
    /// `nats://[USER[:PASSWORD]@]HOST[:PORT]`.
    pub fn server(&self) -> &str {
        self.url.server()
    }

    /// The fleet's name.
    pub fn fleet(&self) -> &str {
        self.url.subject()
    }

    /// The KV bucket of its leases: `wsfleet_FLEET`.
    pub fn bucket(&self) -> String {
        format!("wsfleet_{}", self.fleet())
    }
}

impl fmt::Display for CoordinateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.url.fmt(f)
    }
}

/// Why coordination could not start (or a status could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordinateError {
    /// The address is not `nats://HOST:PORT/FLEET`.
    Url {
        /// The address as given (password redacted).
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The NATS server cannot be reached.
    Connect {
        /// The server (password redacted).
        server: String,
        /// The client's error.
        error: String,
    },
    /// The bucket cannot be created or read, or disagrees with us.
    Bucket {
        /// The bucket's name.
        bucket: String,
        /// What went wrong.
        problem: String,
    },
    /// The fleet cannot be coordinated (not built `coordinated`).
    Fleet(&'static str),
}

impl fmt::Display for CoordinateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url { value, problem } => write!(f, "bad --coordinate {value:?}: {problem}"),
            Self::Connect { server, error } => write!(f, "cannot reach NATS at {server}: {error}"),
            Self::Bucket { bucket, problem } => write!(f, "lease bucket {bucket}: {problem}"),
            Self::Fleet(problem) => f.write_str(problem),
        }
    }
}

impl std::error::Error for CoordinateError {}

/// How a process joins a coordinated fleet.
#[derive(Debug, Clone)]
pub struct CoordinateConfig {
    /// Where the leases are.
    pub url: CoordinateUrl,
    /// The lease time and what follows from it.
    pub timing: LeaseTiming,
    /// Takes per second at most (the fleet's connect rate), jittered.
    pub take_rate: f64,
}

/// What a coordinator sees, as of its last scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorState {
    /// Slots this process holds (leases, including those being released).
    pub held: usize,
    /// Live processes at the last scan (this one included).
    pub members: usize,
    /// This process's fair share at the last scan.
    pub share: usize,
    /// Leases lost (renewal refused or fenced) since the start.
    pub lost: u64,
}

/// A running coordinator: holds this process's share of the fleet's slots
/// in a background task until [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Coordinator {
    instance: String,
    stop: Option<oneshot::Sender<Duration>>,
    state: watch::Receiver<CoordinatorState>,
    task: JoinHandle<()>,
}

impl Coordinator {
    /// Connects, creates (or checks) the bucket, registers this process and
    /// starts taking its share of `control`'s slots.
    ///
    /// # Errors
    /// [`CoordinateError::Fleet`] if the fleet is not coordinated;
    /// [`CoordinateError::Connect`] / [`CoordinateError::Bucket`] naming
    /// the server or bucket.
    pub async fn start(
        config: CoordinateConfig,
        control: FleetControl,
    ) -> Result<Self, CoordinateError> {
        if !control.is_coordinated() {
            return Err(CoordinateError::Fleet(
                "the fleet must be built coordinated (FleetBuilder::coordinated)",
            ));
        }
        let slots = control.monitor().connections();
        let kv = open_bucket(&config.url, Some(config.timing)).await?;
        let instance = instance_id();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (state_tx, state) = watch::channel(CoordinatorState::default());
        let driver = driver::Driver::new(
            kv,
            control,
            config.timing,
            slots,
            instance.clone(),
            config.take_rate,
            state_tx,
        );
        let task = tokio::spawn(driver.run(stop_rx));
        tracing::info!(
            fleet = config.url.fleet(),
            %instance,
            slots,
            lease = ?config.timing.ttl(),
            fence = ?config.timing.fence(),
            "coordinating through NATS leases"
        );
        Ok(Self {
            instance,
            stop: Some(stop_tx),
            state,
            task,
        })
    }

    /// This process's instance id (the value of its keys).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What it sees now.
    pub fn state(&self) -> CoordinatorState {
        self.state.borrow().clone()
    }

    /// Releases every held slot (each connection closes gracefully, then
    /// its key is deleted, so the others take it at once) and leaves the
    /// fleet; gives up after `within` (keys left expire after the lease).
    pub async fn shutdown(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(within);
        }
        let grace = within + Duration::from_secs(1);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!("coordinator did not leave in {grace:?}; its keys expire by themselves");
            self.task.abort();
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects and opens the fleet's bucket: created with `timing`'s TTL if
/// given and missing, checked against it if present; only opened (and
/// required to exist) without `timing`.
async fn open_bucket(
    url: &CoordinateUrl,
    timing: Option<LeaseTiming>,
) -> Result<kv::Store, CoordinateError> {
    let client = crate::sink::connect_client(url.server(), "wsfleet-coordinate", 256)
        .await
        .map_err(|e| CoordinateError::Connect {
            server: crate::redact_url(url.server()),
            error: e.to_string(),
        })?;
    let js = jetstream::new(client);
    let bucket = url.bucket();
    let problem = |problem: String| CoordinateError::Bucket {
        bucket: bucket.clone(),
        problem,
    };
    let Some(timing) = timing else {
        return js.get_key_value(&bucket).await.map_err(|e| {
            problem(format!(
                "{e}; no process coordinates fleet {:?} on this server",
                url.fleet()
            ))
        });
    };
    let config = kv::Config {
        bucket: bucket.clone(),
        description: format!("wsfleet leases of fleet {}", url.fleet()),
        history: 1,
        max_age: timing.ttl(),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let store = match js.create_key_value(config).await {
        Ok(store) => store,
        // It exists (maybe with another TTL): open it and compare.
        Err(created) => js
            .get_key_value(&bucket)
            .await
            .map_err(|e| problem(format!("cannot create it ({created}) nor open it ({e})")))?,
    };
    let status = store
        .status()
        .await
        .map_err(|e| problem(format!("cannot read its status: {e}")))?;
    let max_age = status.max_age();
    if max_age != timing.ttl() {
        return Err(problem(format!(
            "it exists with a lease of {max_age:?}, this process asks for {:?}: every process \
             of a fleet must use the same --lease",
            timing.ttl()
        )));
    }
    Ok(store)
}

/// `host-pid-random`: unique per process start, valid in a key.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .trim()
        .chars()
        .take(32)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut buf = [0u8; 4];
    let _ = getrandom::fill(&mut buf);
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        u32::from_be_bytes(buf)
    )
}
