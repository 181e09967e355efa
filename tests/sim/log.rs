//! Everything a simulation run records, in one ordered log, for the invariant checks.
//!
//! Every entry carries a sequence number from one counter, so events at the same virtual instant
//! (a handoff and the successor's start happen "at once" under the paused clock) still have an
//! order.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::record::ExtendedSequenceNumber;
use tokio::time::Instant;

/// A position in the run: virtual time since the start and a global order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// Global order of log entries.
    pub seq: u64,
    /// Virtual time since the start of the run.
    pub at: Duration,
}

/// A record the producer wrote.
#[derive(Clone, Debug)]
pub struct Produced {
    /// Partition key.
    pub key: String,
    /// Payload: `"<key>:<n>"` with `n` counting per key.
    pub payload: Bytes,
}

/// One delivery of one user record to a processor.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// When `process_records` was entered.
    pub entered: Stamp,
    /// When the processor recorded the batch (after waiting out a pause).
    pub delivered: Stamp,
    /// The processor session.
    pub session: usize,
    /// The record's position.
    pub position: ExtendedSequenceNumber,
    /// Partition key.
    pub key: String,
    /// Payload.
    pub payload: Bytes,
}

/// How a processor session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `shutdown_requested` (graceful shutdown or handoff).
    Shutdown,
    /// `shard_ended`.
    ShardEnded,
    /// `lease_lost`.
    LeaseLost,
    /// The worker was killed (its task aborted) while the session ran.
    Killed,
}

/// The life of one processor (one shard on one worker incarnation).
#[derive(Clone, Debug)]
pub struct Session {
    /// Worker incarnation.
    pub incarnation: u32,
    /// Worker id.
    pub worker: String,
    /// Shard.
    pub shard: String,
    /// `initialize`.
    pub started: Stamp,
    /// The checkpoint it resumed from.
    pub resumed_from: ExtendedSequenceNumber,
    /// How and when it ended, if it did.
    pub ended: Option<(Stamp, End)>,
}

/// Something ungraceful that happened to a worker incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncidentKind {
    /// Task aborted.
    Killed,
    /// Frozen (its I/O and processing stopped) between `start` and `end`.
    Paused,
    /// An injected lease-store fault.
    StoreFault(String),
}

/// An incident.
#[derive(Clone, Debug)]
pub struct Incident {
    /// Worker incarnation.
    pub incarnation: u32,
    /// What.
    pub kind: IncidentKind,
    /// Start.
    pub start: Stamp,
    /// End (equal to the start for instantaneous ones).
    pub end: Stamp,
}

/// A checkpoint the lease store accepted.
#[derive(Clone, Debug)]
pub struct AcceptedCheckpoint {
    /// When.
    pub at: Stamp,
    /// Writer incarnation.
    pub incarnation: u32,
    /// Lease (shard).
    pub shard: String,
    /// Position written.
    pub position: ExtendedSequenceNumber,
}

/// The log itself.
#[derive(Debug, Default)]
pub struct Entries {
    /// Records produced, in order.
    pub produced: Vec<Produced>,
    /// Deliveries, in order.
    pub deliveries: Vec<Delivery>,
    /// Processor sessions, by id.
    pub sessions: Vec<Session>,
    /// Ungraceful incidents.
    pub incidents: Vec<Incident>,
    /// Checkpoints accepted by the store.
    pub checkpoints: Vec<AcceptedCheckpoint>,
    /// Violations noticed while running (the store-side checks).
    pub violations: Vec<String>,
    /// What the schedule did, for the failure report.
    pub trace: Vec<String>,
}

/// The shared, ordered log of a run.
#[derive(Debug)]
pub struct Log {
    /// Also trace every lease-table change and processor session (`KCL_SIM_VERBOSE=1`).
    pub verbose: bool,
    start: Instant,
    seq: Mutex<u64>,
    /// Lease-store calls so far (a livelock watchdog: virtual time stands still while a task
    /// keeps finding work at the same instant, so a time bound cannot catch it).
    calls: std::sync::atomic::AtomicU64,
    entries: Mutex<Entries>,
}

impl Default for Log {
    fn default() -> Self {
        Self::new()
    }
}

impl Log {
    /// A log whose virtual time starts now.
    pub fn new() -> Self {
        Self {
            verbose: std::env::var_os("KCL_SIM_VERBOSE").is_some(),
            start: Instant::now(),
            seq: Mutex::new(0),
            calls: std::sync::atomic::AtomicU64::new(0),
            entries: Mutex::new(Entries::default()),
        }
    }

    /// A stamp for now.
    pub fn stamp(&self) -> Stamp {
        let mut seq = self.seq.lock().unwrap();
        *seq += 1;
        Stamp {
            seq: *seq,
            at: self.start.elapsed(),
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Runs `f` on the entries.
    pub fn with<R>(&self, f: impl FnOnce(&mut Entries) -> R) -> R {
        f(&mut self.entries.lock().unwrap())
    }

    /// Adds a line to the trace.
    pub fn trace(&self, line: impl Into<String>) {
        let at = self.elapsed();
        let line = line.into();
        self.with(|e| e.trace.push(format!("{:>9.3}s {line}", at.as_secs_f64())));
    }

    /// Counts a lease-store call; panics (killing the calling worker task) past `limit`, after
    /// recording the livelock as a violation.
    pub fn count_call(&self, limit: u64) {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n == limit {
            let at = self.elapsed();
            self.with(|e| {
                e.violations.push(format!(
                    "livelock: {limit} lease-store calls by {at:?} of virtual time"
                ))
            });
        }
        if n >= limit {
            panic!("simulation livelock: {n} lease-store calls");
        }
    }

    /// Adds a line to the trace in verbose mode.
    pub fn detail(&self, line: impl FnOnce() -> String) {
        if self.verbose {
            self.trace(format!("  | {}", line()));
        }
    }

    /// Ends the open sessions of a killed incarnation.
    pub fn end_sessions_of(&self, incarnation: u32, end: End) {
        let at = self.stamp();
        self.with(|e| {
            for s in e
                .sessions
                .iter_mut()
                .filter(|s| s.incarnation == incarnation && s.ended.is_none())
            {
                s.ended = Some((at, end));
            }
        });
    }
}
