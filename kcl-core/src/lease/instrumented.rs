//! The worker's view of its lease table: every call counted and timed, and the table's health
//! (recent errors, permanent failures) kept for the worker's health and its give-up rule.
//!
//! The worker wraps the table it was given in an [`Instrumented`] table, so the stores stay
//! plain adapters and every store is measured the same way. A call failing with
//! [`LeaseError::Misconfigured`] (missing table, wrong schema, missing permission, unwritable
//! file) is permanent: when an operation has failed that way, with no success of it since, for
//! longer than the worker's `permanent_error_timeout`, the worker stops with
//! [`crate::worker::WorkerError::LeaseTable`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use tokio::time::Instant;

use super::{Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate};
use crate::metrics::{Scope, names};

/// The operations of [`LeaseTable`].
const OPERATIONS: [&str; 6] = ["create", "list", "get", "update", "delete", "list_workers"];

#[derive(Clone, Copy)]
enum Op {
    Create = 0,
    List = 1,
    Get = 2,
    Update = 3,
    Delete = 4,
    ListWorkers = 5,
}

#[derive(Debug)]
struct OpMetrics {
    calls: Counter,
    condition_failures: Counter,
    errors: Counter,
    duration: Histogram,
}

/// What the table's recent calls say about it.
#[derive(Debug, Default)]
struct TableHealth {
    /// When a call last failed (condition failures excluded).
    last_error: Option<Instant>,
    /// Per operation: since when it has failed permanently without a success since, and the
    /// first such error.
    permanent: [Option<(Instant, Arc<LeaseError>)>; 6],
}

/// A [`LeaseTable`] that counts, times and watches the calls to another. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct Instrumented {
    inner: Arc<dyn LeaseTable>,
    ops: Vec<OpMetrics>,
    health: Mutex<TableHealth>,
}

impl Instrumented {
    pub(crate) fn new(inner: Arc<dyn LeaseTable>, scope: &Scope) -> Self {
        let ops = OPERATIONS
            .iter()
            .map(|op| OpMetrics {
                calls: scope.labelled_counter(names::LEASE_TABLE_CALLS, "operation", op),
                condition_failures: scope.labelled_counter(
                    names::LEASE_TABLE_CONDITION_FAILURES,
                    "operation",
                    op,
                ),
                errors: scope.labelled_counter(names::LEASE_TABLE_ERRORS, "operation", op),
                duration: scope.labelled_histogram(names::LEASE_TABLE_DURATION, "operation", op),
            })
            .collect();
        Self {
            inner,
            ops,
            health: Mutex::new(TableHealth::default()),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, TableHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call failed (condition failures excluded) within `window`.
    pub(crate) fn failed_within(&self, window: Duration) -> bool {
        self.health()
            .last_error
            .is_some_and(|at| at.elapsed() <= window)
    }

    /// The first permanent error of an operation that has failed permanently, without a success
    /// since, for longer than `timeout`.
    pub(crate) fn permanent_failure(&self, timeout: Duration) -> Option<Arc<LeaseError>> {
        self.health()
            .permanent
            .iter()
            .flatten()
            .find(|(since, _)| since.elapsed() >= timeout)
            .map(|(_, error)| error.clone())
    }

    /// Records the outcome of one call.
    fn record<T>(
        &self,
        op: Op,
        started: Instant,
        result: Result<T, LeaseError>,
    ) -> Result<T, LeaseError> {
        let metrics = &self.ops[op as usize];
        metrics.calls.increment(1);
        metrics.duration.record(started.elapsed().as_secs_f64());
        match result {
            Ok(value) => {
                self.health().permanent[op as usize] = None;
                Ok(value)
            }
            Err(error) => {
                match &error {
                    LeaseError::ConditionFailed { .. } | LeaseError::NotFound(_) => {
                        // The table answered: the operation works.
                        metrics.condition_failures.increment(1);
                        self.health().permanent[op as usize] = None;
                        return Err(error);
                    }
                    LeaseError::Misconfigured(_) => {
                        metrics.errors.increment(1);
                        let mut health = self.health();
                        health.last_error = Some(Instant::now());
                        let slot = &mut health.permanent[op as usize];
                        if slot.is_none() {
                            let copy = LeaseError::Misconfigured(error.to_string());
                            *slot = Some((Instant::now(), Arc::new(copy)));
                        }
                    }
                    _ => {
                        metrics.errors.increment(1);
                        self.health().last_error = Some(Instant::now());
                    }
                }
                Err(error)
            }
        }
    }
}

#[async_trait]
impl LeaseTable for Instrumented {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let started = Instant::now();
        let result = self.inner.create_if_absent(lease).await;
        self.record(Op::Create, started, result)
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let started = Instant::now();
        let result = self.inner.list().await;
        self.record(Op::List, started, result)
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        let started = Instant::now();
        let result = self.inner.list_workers(consistency).await;
        self.record(Op::ListWorkers, started, result)
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let started = Instant::now();
        let result = self.inner.get(key).await;
        self.record(Op::Get, started, result)
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let started = Instant::now();
        let result = self.inner.update(key, expect, update).await;
        self.record(Op::Update, started, result)
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        let started = Instant::now();
        let result = self.inner.delete(key, expect).await;
        self.record(Op::Delete, started, result)
    }

    fn application(&self) -> Option<&str> {
        self.inner.application()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::InMemoryLeaseTable;
    use crate::lease::test_table::FaultyTable;
    use crate::metrics::MetricsLevel;
    use crate::record::ExtendedSequenceNumber;

    fn scope() -> Scope {
        Scope::new(MetricsLevel::Off, "s", "w")
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_counts_only_once_it_lasted_and_a_success_clears_it() {
        let faulty = Arc::new(FaultyTable::default());
        let table = Instrumented::new(faulty.clone(), &scope());
        faulty.fail_with(|| LeaseError::Misconfigured("table t is missing".into()));
        assert!(table.list().await.is_err());
        assert!(table.failed_within(Duration::from_secs(1)));
        assert!(table.permanent_failure(Duration::from_secs(5)).is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(table.list().await.is_err());
        let error = table.permanent_failure(Duration::from_secs(5)).unwrap();
        assert!(error.to_string().contains("table t is missing"), "{error}");
        // The store works again: the failure is forgotten.
        faulty.heal();
        assert!(table.list().await.is_ok());
        assert!(table.permanent_failure(Duration::ZERO).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn condition_failures_are_answers_not_errors() {
        let table = Instrumented::new(Arc::new(InMemoryLeaseTable::new()), &scope());
        let lease = Lease::new("shardId-0", ExtendedSequenceNumber::TrimHorizon);
        assert!(table.create_if_absent(&lease).await.unwrap());
        let mut stale = lease.clone();
        stale.counter = 7;
        let err = table
            .update(&lease.key, &stale.expectation(), &LeaseUpdate::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LeaseError::ConditionFailed { .. }));
        assert!(!table.failed_within(Duration::from_secs(3600)));
    }
}
