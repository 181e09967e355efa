//! Counting the capacity units and requests a lease table consumes, and DynamoDB's item-size
//! rules that bill them.

use std::sync::Mutex;

use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity};
use kcl_core::lease::{Lease, LeaseError};

use crate::item::{Item, lease_to_item};

/// The size DynamoDB bills for an item, by its documented rules: for every attribute, the
/// UTF-8 length of its name plus the size of its value (strings: UTF-8 length; numbers: one byte
/// per two significant digits, plus one; binary: its length; sets and lists: their elements,
/// plus 3 bytes for lists and maps; booleans and nulls: one byte).
///
/// A write costs one write request unit per started KB of the larger of the item before and
/// after; a strongly consistent read one read unit per started 4 KB (a `Scan` or `Query` page
/// sums its items first), an eventually consistent one half that.
pub fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// [`item_size`] of the item this crate writes for `lease` (a shard lease or a heartbeat row).
pub fn lease_item_size(lease: &Lease) -> Result<usize, LeaseError> {
    let item: Item = lease_to_item(lease)?;
    Ok(item_size(&item))
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 0,
    }
}

fn number_size(n: &str) -> usize {
    let negative = usize::from(n.starts_with('-'));
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1);
    significant.div_ceil(2) + 1 + negative
}

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
    /// Successful `Scan` requests of the lease table (one per page and segment).
    pub scan_requests: u64,
    /// Successful `Scan` requests of the workers table (the heartbeat rows).
    pub workers_scan_requests: u64,
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
        self.get_requests + self.scan_requests + self.workers_scan_requests
    }
}

/// Which request a reported capacity belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Request {
    Get,
    Scan,
    WorkersScan,
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
            Request::WorkersScan => {
                t.workers_scan_requests += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use kcl_core::record::ExtendedSequenceNumber;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        assert_eq!(number_size("0"), 2);
        assert_eq!(number_size("7"), 2);
        assert_eq!(number_size("12"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("1000"), 2, "trailing zeros are trimmed");
        assert_eq!(number_size("-15"), 3);
        let item = std::collections::HashMap::from([
            ("leaseKey".to_owned(), AttributeValue::S("shardId-1".into())),
            ("leaseCounter".to_owned(), AttributeValue::N("42".into())),
        ]);
        assert_eq!(item_size(&item), 8 + 9 + 12 + 2);
        // A heartbeat row: key, owner, counter, checkpoint and its sub-sequence, owner switches.
        let mut row = Lease::worker_heartbeat("w1");
        row.counter = 1;
        let size = lease_item_size(&row).unwrap();
        let expected = (8 + "kcl-rs/worker/w1".len())
            + (10 + 2)
            + (12 + 2)
            + (10 + "SHARD_END".len())
            + (27 + 2)
            + (28 + 2);
        assert_eq!(size, expected);
        let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
        assert!(lease_item_size(&lease).unwrap() < 1024);
    }
}
