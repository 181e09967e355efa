//! Counting the capacity units and requests a lease table consumes.

use std::sync::Mutex;

use aws_sdk_dynamodb::types::ConsumedCapacity;

/// Capacity consumed by one [`DynamoLeaseTable`](crate::DynamoLeaseTable) since it was built (or
/// since the last [`reset_capacity`](crate::DynamoLeaseTable::reset_capacity)), as DynamoDB
/// reported it with `ReturnConsumedCapacity=TOTAL`.
///
/// Capacity units are what DynamoDB bills: for on-demand tables one read request unit per 4 KB
/// strongly consistent read, one write request unit per 1 KB written. A conditional write whose
/// condition fails is billed as a write too, but DynamoDB does not report its capacity in the error,
/// so those are counted in [`conditional_check_failures`](Self::conditional_check_failures) and not
/// in [`write_units`](Self::write_units).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ConsumedCapacityTotals {
    /// Read capacity units reported for `GetItem` and `Scan`.
    pub read_units: f64,
    /// Write capacity units reported for `PutItem`, `UpdateItem` and `DeleteItem`.
    pub write_units: f64,
    /// Successful `GetItem` requests.
    pub get_requests: u64,
    /// Successful `Scan` requests (one per page).
    pub scan_requests: u64,
    /// Successful `PutItem` requests (lease creation).
    pub put_requests: u64,
    /// Successful `UpdateItem` requests.
    pub update_requests: u64,
    /// Successful `DeleteItem` requests.
    pub delete_requests: u64,
    /// Conditional writes refused because the condition failed (billed, capacity not reported).
    pub conditional_check_failures: u64,
    /// Attempts refused by throttling.
    pub throttled_attempts: u64,
    /// Attempts retried (after throttling, a server error or a lost read).
    pub retries: u64,
}

impl ConsumedCapacityTotals {
    /// Successful write requests of any kind.
    pub fn write_requests(&self) -> u64 {
        self.put_requests + self.update_requests + self.delete_requests
    }

    /// Successful read requests of any kind.
    pub fn read_requests(&self) -> u64 {
        self.get_requests + self.scan_requests
    }
}

/// Which request a reported capacity belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Request {
    Get,
    Scan,
    Put,
    Update,
    Delete,
}

/// Shared counters behind a table handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    totals: Mutex<ConsumedCapacityTotals>,
}

impl Counters {
    fn with(&self, f: impl FnOnce(&mut ConsumedCapacityTotals)) {
        let mut totals = self
            .totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut totals);
    }

    pub(crate) fn record(&self, request: Request, consumed: Option<&ConsumedCapacity>) {
        let units = consumed.and_then(|c| c.capacity_units()).unwrap_or(0.0);
        self.with(|t| match request {
            Request::Get => {
                t.get_requests += 1;
                t.read_units += units;
            }
            Request::Scan => {
                t.scan_requests += 1;
                t.read_units += units;
            }
            Request::Put => {
                t.put_requests += 1;
                t.write_units += units;
            }
            Request::Update => {
                t.update_requests += 1;
                t.write_units += units;
            }
            Request::Delete => {
                t.delete_requests += 1;
                t.write_units += units;
            }
        });
    }

    pub(crate) fn condition_failed(&self) {
        self.with(|t| t.conditional_check_failures += 1);
    }

    pub(crate) fn throttled(&self) {
        self.with(|t| t.throttled_attempts += 1);
    }

    pub(crate) fn retried(&self) {
        self.with(|t| t.retries += 1);
    }

    pub(crate) fn snapshot(&self) -> ConsumedCapacityTotals {
        let mut copy = ConsumedCapacityTotals::default();
        self.with(|t| copy = *t);
        copy
    }

    pub(crate) fn reset(&self) -> ConsumedCapacityTotals {
        let mut copy = ConsumedCapacityTotals::default();
        self.with(|t| copy = std::mem::take(t));
        copy
    }
}
