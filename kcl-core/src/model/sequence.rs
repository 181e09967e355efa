//! Sequence numbers in the real service's format: one strictly increasing counter per stream.
//!
//! A number is 56 decimal digits: `4959`, 13 digits of the stream's creation time in
//! milliseconds (so a re-created stream does not reuse numbers), then the counter as 39
//! zero-padded digits (a `u128` always fits). Every record, every shard start and every shard end
//! takes the next counter value, so numbers increase within a shard, and a child's numbers are
//! above its parents' (the parent is closed, taking its ending number, before the child exists).

use crate::backend::BackendError;
use crate::record::SequenceNumber;

/// Allocates the sequence numbers of one stream.
#[derive(Debug)]
pub(crate) struct SequenceAllocator {
    prefix: String,
    last: u128,
}

impl SequenceAllocator {
    /// A fresh allocator for a stream created `created_millis` after the UNIX epoch.
    pub(crate) fn new(created_millis: u128) -> Self {
        Self {
            prefix: format!("4959{:013}", created_millis % 10_000_000_000_000),
            last: 0,
        }
    }

    /// Takes the next number.
    pub(crate) fn next(&mut self) -> Result<SequenceNumber, BackendError> {
        self.last = self
            .last
            .checked_add(1)
            .ok_or_else(|| BackendError::LimitExceeded("sequence numbers exhausted".into()))?;
        self.render(self.last)
    }

    /// The largest number handed out so far.
    pub(crate) fn last(&self) -> Result<SequenceNumber, BackendError> {
        self.render(self.last)
    }

    fn render(&self, counter: u128) -> Result<SequenceNumber, BackendError> {
        SequenceNumber::new(format!("{}{counter:039}", self.prefix)).map_err(|e| {
            BackendError::Other(format!("model built a bad sequence number: {e}").into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_look_real_and_increase() {
        let mut alloc = SequenceAllocator::new(1_700_000_000_000);
        let a = alloc.next().unwrap();
        let b = alloc.next().unwrap();
        assert_eq!(a.as_str().len(), 56);
        assert!(a.as_str().starts_with("4959"));
        assert!(a < b);
        assert_eq!(alloc.last().unwrap(), b);
    }
}
