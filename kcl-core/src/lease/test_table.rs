//! Unit-test helper: an in-memory table whose writes can be made to fail or to take a while.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Consistency, Expectation, InMemoryLeaseTable, Lease, LeaseError, LeaseTable, LeaseUpdate,
};

/// An [`InMemoryLeaseTable`] whose updates fail with `Unavailable` while `failing` is set, and
/// reach the table only after `delay` (a paused client, a slow network).
#[derive(Debug, Default)]
pub(crate) struct FaultyTable {
    pub(crate) inner: InMemoryLeaseTable,
    pub(crate) failing: AtomicBool,
    pub(crate) delay: Mutex<Duration>,
}

impl FaultyTable {
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
}

#[async_trait]
impl LeaseTable for FaultyTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.inner.create_if_absent(lease).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list().await
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list_workers(consistency).await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.inner.get(key).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(LeaseError::Unavailable("injected".into()));
        }
        self.inner.update(key, expect, update).await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.inner.delete(key, expect).await
    }
}
