//! Pokes: asking another worker to read the lease table now.
//!
//! At rest a worker reads only the heartbeat rows. When a change concerns another worker (a
//! lease assigned to it, a handoff requested from it, a heads-up that one is coming), the worker
//! making the change *pokes* it: it increments the poke count of that worker's heartbeat row
//! ([`LeaseUpdate::poke`]), which the worker sees at its next read of the heartbeat rows and
//! answers with a read of the whole table. A poke is a hint, never needed for safety: a lost one
//! only delays a reaction (until the worker's next write fails its condition, the sync leader's
//! audit, or the handoff timeout).
//!
//! A worker that changed something concerning itself (it created leases in its own name, a shard
//! of its ended) pokes itself: a local flag, no write.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use tracing::debug;

use super::{Expectation, LeaseError, LeaseTable, LeaseUpdate, WORKER_KEY_PREFIX};

/// How many pokes are in flight at once.
const CONCURRENCY: usize = 16;

/// Sends pokes for one worker. Shared by its coordinator and its held leases.
#[derive(Debug)]
pub(crate) struct Poker {
    table: Arc<dyn LeaseTable>,
    worker_id: String,
    local: AtomicBool,
    sent: AtomicU64,
}

impl Poker {
    pub(crate) fn new(table: Arc<dyn LeaseTable>, worker_id: &str) -> Arc<Self> {
        Arc::new(Self {
            table,
            worker_id: worker_id.to_owned(),
            local: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        })
    }

    /// Pokes `worker` (this worker itself: the local flag). Failures are logged and dropped.
    pub(crate) async fn poke(&self, worker: &str) {
        if worker == self.worker_id {
            self.poke_self();
            return;
        }
        let key = format!("{WORKER_KEY_PREFIX}{worker}");
        // Two attempts: a poke applied twice is harmless, one lost only delays a reaction.
        for attempt in 0..2 {
            match self
                .table
                .update(&key, &Expectation::default(), &LeaseUpdate::poke())
                .await
            {
                Ok(_) => {
                    self.sent.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(LeaseError::NotFound(_)) => return,
                Err(error) if error.is_retryable() && attempt == 0 => {
                    debug!(worker, %error, "poke failed; once more");
                }
                Err(error) => {
                    debug!(worker, %error, "poke failed; the worker will notice later");
                    return;
                }
            }
        }
    }

    /// Pokes every worker of `workers` once, a few at a time.
    pub(crate) async fn poke_all(&self, workers: BTreeSet<String>) {
        futures::stream::iter(workers)
            .for_each_concurrent(CONCURRENCY, |worker| async move {
                self.poke(&worker).await;
            })
            .await;
    }

    /// Notes that this worker should read the table at its next scan.
    pub(crate) fn poke_self(&self) {
        self.local.store(true, Ordering::SeqCst);
    }

    /// Whether this worker poked itself since the last call.
    pub(crate) fn take_local(&self) -> bool {
        self.local.swap(false, Ordering::SeqCst)
    }

    /// Pokes sent to other workers so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}
