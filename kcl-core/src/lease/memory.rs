//! An in-memory [`LeaseTable`]: a map behind a mutex. For tests, simulations and single-process
//! demos; it forgets everything when dropped.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate, WORKER_KEY_PREFIX,
};

/// A lease table held in memory, shared by cloning an `Arc` of it.
#[derive(Debug, Default)]
pub struct InMemoryLeaseTable {
    leases: Mutex<BTreeMap<String, Lease>>,
}

impl InMemoryLeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Lease>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-operation; every operation here
        // leaves the map consistent, so keep going.
        let mut guard = match self.leases.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }
}

#[async_trait]
impl LeaseTable for InMemoryLeaseTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        Ok(self.with(|map| {
            if map.contains_key(&lease.key) {
                false
            } else {
                map.insert(lease.key.clone(), lease.clone());
                true
            }
        }))
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.with(|map| map.values().cloned().collect()))
    }

    async fn list_workers(&self, _consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.with(|map| {
            map.range::<str, _>((Bound::Included(WORKER_KEY_PREFIX), Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(WORKER_KEY_PREFIX))
                .map(|(_, row)| row.clone())
                .collect()
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.with(|map| map.get(key).cloned()))
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.with(|map| {
            let lease = map
                .get_mut(key)
                .ok_or_else(|| LeaseError::NotFound(key.to_owned()))?;
            if !expect.matches(lease) {
                return Err(LeaseError::ConditionFailed {
                    key: key.to_owned(),
                    current: Some(Box::new(lease.clone())),
                });
            }
            update.apply(lease);
            Ok(lease.clone())
        })
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.with(|map| {
            let lease = map
                .get(key)
                .ok_or_else(|| LeaseError::NotFound(key.to_owned()))?;
            if !expect.matches(lease) {
                return Err(LeaseError::ConditionFailed {
                    key: key.to_owned(),
                    current: Some(Box::new(lease.clone())),
                });
            }
            map.remove(key);
            Ok(())
        })
    }
}
