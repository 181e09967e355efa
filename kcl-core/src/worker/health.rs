//! Whether a worker is healthy: [`Health`], for readiness and liveness probes, and the shared
//! lifecycle state behind [`super::WorkerHandle::health`] and [`super::WorkerHandle::wait`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::WorkerError;
use crate::sync::Signal;

/// How a worker is doing. See [`super::WorkerHandle::health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Not running yet, or running but not ready: no lease scan has found the stream's leases yet, or a
    /// shard it holds has not yet delivered its first batch or reported being caught up.
    Starting,
    /// Processing: every held shard delivers (or is idle and caught up), heartbeats succeed.
    Ready,
    /// Running, but something needs attention (see [`Health::reasons`]): heartbeats failing,
    /// lease-table errors, shard sync failing, or shards stopped by the failure policy.
    Degraded,
    /// Shutting down.
    Stopping,
    /// Stopped after a shutdown.
    Stopped,
    /// Stopped by an error; [`super::WorkerHandle::wait`] returns it.
    Failed,
}

/// A worker's health: a status and, unless ready, why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The status.
    pub status: HealthStatus,
    /// What keeps the worker from being ready (empty when ready).
    pub reasons: Vec<String>,
}

impl Health {
    /// Whether the worker is ready (for a readiness probe).
    pub fn is_ready(&self) -> bool {
        self.status == HealthStatus::Ready
    }
}

/// Where `run` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    NotStarted,
    Running,
    Stopping,
    Done,
}

/// State shared by the worker's tasks and handles.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub(crate) phase: Arc<Signal<Phase>>,
    outcome: Mutex<Option<Result<(), WorkerError>>>,
    /// A lease scan found the stream's leases.
    pub(crate) scanned: AtomicBool,
    /// Ready once: later hiccups make it degraded, never starting again.
    pub(crate) ready_once: AtomicBool,
    /// The last heartbeat (renewal) failed.
    pub(crate) heartbeat_failing: AtomicBool,
    /// The last shard sync failed.
    pub(crate) sync_failing: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: Signal::new(Phase::NotStarted),
            outcome: Mutex::new(None),
            scanned: AtomicBool::new(false),
            ready_once: AtomicBool::new(false),
            heartbeat_failing: AtomicBool::new(false),
            sync_failing: AtomicBool::new(false),
        }
    }
}

impl Lifecycle {
    pub(crate) fn flag(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::SeqCst);
    }

    pub(crate) fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::SeqCst)
    }

    /// Records how `run` ended and wakes every [`Lifecycle::wait`].
    pub(crate) fn finish(&self, outcome: Result<(), WorkerError>) {
        {
            let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(outcome);
        }
        self.phase.set(Phase::Done);
    }

    pub(crate) fn outcome(&self) -> Option<Result<(), WorkerError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until `run` ended; returns how.
    pub(crate) async fn wait(&self) -> Result<(), WorkerError> {
        let mut watch = self.phase.watch();
        loop {
            if watch.get_and_update() == Phase::Done
                && let Some(outcome) = self.outcome()
            {
                return outcome;
            }
            watch.changed().await;
        }
    }
}
