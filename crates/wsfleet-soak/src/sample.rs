//! The process, sampled: RSS, heap, descriptors, tokio tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::fleet::FleetMonitor;
use wsfleet_testkit::measure;

/// One reading of the process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at: Instant,
    pub(crate) rss: u64,
    pub(crate) heap: usize,
    pub(crate) fds: usize,
    pub(crate) tasks: usize,
    pub(crate) budget_used: usize,
    pub(crate) ready: usize,
    pub(crate) rotations: u64,
}

impl Sample {
    /// Now, with the fleet's figures if there is one.
    pub(crate) fn now(fleet: Option<&FleetMonitor>) -> Self {
        let (budget_used, ready, rotations) = match fleet {
            Some(m) => {
                let s = m.stats();
                (s.budget_used, s.ready, s.totals.rotations)
            }
            None => (0, 0, 0),
        };
        Self {
            at: Instant::now(),
            rss: measure::rss_bytes().unwrap_or(0),
            heap: measure::live_heap_bytes(),
            fds: measure::open_fds().unwrap_or(0),
            tasks: measure::tokio_alive_tasks().unwrap_or(0),
            budget_used,
            ready,
            rotations,
        }
    }
}

/// Samples every `every` into a shared list until dropped.
pub(crate) struct Sampler {
    pub(crate) samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling; `fleet` adds its budget, readiness and rotations.
    pub(crate) fn start(fleet: FleetMonitor, every: Duration) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let list = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // The monitor's stats walk every connection: cheap enough at
                // a few readings per second.
                let sample = Sample::now(Some(&fleet));
                list.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
            }
        });
        Self { samples, task }
    }

    /// Stops sampling (the task is awaited, so it no longer counts as alive)
    /// and returns what it saw.
    pub(crate) async fn stop(self) -> Vec<Sample> {
        self.task.abort();
        let _ = self.task.await;
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.clone()
    }
}

/// Waits (up to `limit`) until `done` holds for a fresh reading; the last
/// reading either way.
pub(crate) async fn settle(limit: Duration, done: impl Fn(&Sample) -> bool) -> Sample {
    let until = Instant::now() + limit;
    loop {
        let s = Sample::now(None);
        if done(&s) || Instant::now() >= until {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 5 s) until open files and tasks are back to `before`'s
/// counts, after a phase's fleet and servers are gone; the last reading.
pub(crate) async fn back_to(before: &Sample) -> Sample {
    settle(Duration::from_secs(5), |s| {
        s.fds <= before.fds && s.tasks <= before.tasks
    })
    .await
}

/// The median of `values` (0 for none).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
