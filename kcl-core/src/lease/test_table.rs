//! Unit-test helper: an in-memory table whose writes can be made to fail or to take a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Consistency, Expectation, InMemoryLeaseTable, Lease, LeaseError, LeaseTable, LeaseUpdate,
};

/// Makes the error every call of a [`FaultyTable`] fails with.
type ErrorMaker = Arc<dyn Fn() -> LeaseError + Send + Sync>;

/// An [`InMemoryLeaseTable`] whose updates fail with `Unavailable` while `failing` is set, and
/// reach the table only after `delay` (a paused client, a slow network); with
/// [`FaultyTable::fail_with`], every call fails with the given error.
#[derive(Default)]
pub(crate) struct FaultyTable {
    pub(crate) inner: InMemoryLeaseTable,
    pub(crate) failing: AtomicBool,
    pub(crate) delay: Mutex<Duration>,
    all_fail: Mutex<Option<ErrorMaker>>,
}

impl std::fmt::Debug for FaultyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTable").finish_non_exhaustive()
    }
}

impl FaultyTable {
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Every call fails with `make()` until [`Self::heal`].
    pub(crate) fn fail_with(&self, make: impl Fn() -> LeaseError + Send + Sync + 'static) {
        *self.all_fail.lock().unwrap() = Some(Arc::new(make));
    }

    /// Calls work again.
    pub(crate) fn heal(&self) {
        *self.all_fail.lock().unwrap() = None;
    }

    fn check(&self) -> Result<(), LeaseError> {
        match self.all_fail.lock().unwrap().as_ref() {
            Some(make) => Err(make()),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl LeaseTable for FaultyTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.check()?;
        self.inner.create_if_absent(lease).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.check()?;
        self.inner.list().await
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list_workers(consistency).await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.check()?;
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
        self.check()?;
        if self.failing.load(Ordering::SeqCst) {
            return Err(LeaseError::Unavailable("injected".into()));
        }
        self.inner.update(key, expect, update).await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.check()?;
        self.inner.delete(key, expect).await
    }
}
