//! What a cluster run came to: [`Report`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::observe::Delivery;

/// The outcome of a [`crate::Cluster`] run: what was produced, what the processors completed,
/// and the properties a consumer must keep.
///
/// - **missing**: records produced and never completed by any processor;
/// - **duplicated**: records completed more than once (at-least-once delivery allows them
///   after a crash, a pause or lease-store faults; never after graceful handoffs alone);
/// - **out of order**: partition keys whose records were first completed in another order than
///   they were produced (resharding included: children start after their parents);
/// - **checkpoint regressions**: checkpoints the lease table accepted that moved a lease
///   backwards.
///
/// The seed and the schedule of actions say how to replay the run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Report {
    /// The seed the run was drawn from.
    pub seed: u64,
    /// What happened, when (virtual time since the start).
    pub schedule: Vec<(Duration, String)>,
    /// Records produced.
    pub produced: usize,
    /// Records completed, re-deliveries included.
    pub deliveries: usize,
    /// Produced records no processor completed (their data).
    pub missing: Vec<Bytes>,
    /// Records completed more than once: their data and how many times.
    pub duplicated: Vec<(Bytes, usize)>,
    /// For each partition key whose first completions were out of production order: the key
    /// and the first record out of place.
    pub out_of_order: Vec<(String, Bytes)>,
    /// Checkpoints that moved a lease backwards.
    pub checkpoint_regressions: Vec<String>,
    /// Checkpoints the lease table accepted.
    pub checkpoints: usize,
    /// Records completed by each worker (re-deliveries included).
    pub per_worker: std::collections::BTreeMap<String, usize>,
}

impl Report {
    /// Builds the report of a run that produced `produced` (key and data, in production order
    /// per key) and delivered `deliveries`.
    pub(crate) fn new(
        seed: u64,
        schedule: Vec<(Duration, String)>,
        produced: &[(String, Bytes)],
        deliveries: &[Delivery],
        checkpoints: usize,
        checkpoint_regressions: Vec<String>,
    ) -> Self {
        let mut times: HashMap<&Bytes, usize> = HashMap::new();
        for d in deliveries {
            *times.entry(&d.data).or_default() += 1;
        }
        let missing = produced
            .iter()
            .filter(|(_, data)| !times.contains_key(data))
            .map(|(_, data)| data.clone())
            .collect();
        let mut duplicated: Vec<(Bytes, usize)> = times
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(data, n)| ((*data).clone(), *n))
            .collect();
        duplicated.sort();
        // First completions per key, in completion order, against production order.
        let mut first: HashMap<&str, Vec<&Bytes>> = HashMap::new();
        let mut seen: HashSet<&Bytes> = HashSet::new();
        for d in deliveries {
            if seen.insert(&d.data) {
                first
                    .entry(d.partition_key.as_str())
                    .or_default()
                    .push(&d.data);
            }
        }
        let mut expected: HashMap<&str, Vec<&Bytes>> = HashMap::new();
        for (key, data) in produced {
            expected.entry(key.as_str()).or_default().push(data);
        }
        let mut out_of_order = Vec::new();
        for (key, want) in &expected {
            let got: Vec<&Bytes> = first
                .get(key)
                .map(|got| got.iter().copied().filter(|d| want.contains(d)).collect())
                .unwrap_or_default();
            // Missing records are reported as missing: compare the order of what came.
            let want: Vec<&Bytes> = want.iter().copied().filter(|d| got.contains(d)).collect();
            if let Some((bad, _)) = got.iter().zip(&want).find(|(g, w)| g != w) {
                out_of_order.push(((*key).to_owned(), (*bad).clone()));
            }
        }
        out_of_order.sort();
        let mut per_worker = std::collections::BTreeMap::new();
        for d in deliveries {
            *per_worker.entry(d.worker.clone()).or_default() += 1;
        }
        Self {
            per_worker,
            seed,
            schedule,
            produced: produced.len(),
            deliveries: deliveries.len(),
            missing,
            duplicated,
            out_of_order,
            checkpoint_regressions,
            checkpoints,
        }
    }

    /// Whether every produced record was completed.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// Whether every key's records were first completed in production order.
    pub fn is_ordered(&self) -> bool {
        self.out_of_order.is_empty()
    }

    /// Whether no record was completed twice.
    pub fn has_no_duplicates(&self) -> bool {
        self.duplicated.is_empty()
    }

    /// Panics, printing the report (seed and schedule included), unless every record was
    /// completed, in order per key, and no checkpoint moved backwards. Duplicates are allowed:
    /// Kinesis consumers deliver at least once.
    pub fn assert_complete_and_ordered(&self) {
        if !(self.is_complete() && self.is_ordered() && self.checkpoint_regressions.is_empty()) {
            panic!("the run broke the consumer's guarantees:\n{self}");
        }
    }

    /// [`Report::assert_complete_and_ordered`], and no record completed twice (what graceful
    /// handoffs alone must give).
    pub fn assert_exactly_once(&self) {
        self.assert_complete_and_ordered();
        if !self.has_no_duplicates() {
            panic!("records were completed more than once:\n{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} produced, {} deliveries, {} missing, {} duplicated, {} keys out of \
             order, {} checkpoints ({} moved backwards)",
            self.seed,
            self.produced,
            self.deliveries,
            self.missing.len(),
            self.duplicated.len(),
            self.out_of_order.len(),
            self.checkpoints,
            self.checkpoint_regressions.len()
        )?;
        writeln!(f, "  completed per worker: {:?}", self.per_worker)?;
        let show = |data: &Bytes| String::from_utf8_lossy(data).into_owned();
        if !self.missing.is_empty() {
            let some: Vec<String> = self.missing.iter().take(5).map(show).collect();
            writeln!(f, "  missing, e.g. {some:?}")?;
        }
        for (key, bad) in self.out_of_order.iter().take(5) {
            writeln!(f, "  {key}: {} came before an earlier record", show(bad))?;
        }
        for regression in self.checkpoint_regressions.iter().take(5) {
            writeln!(f, "  {regression}")?;
        }
        if !self.duplicated.is_empty() {
            let some: Vec<String> = self
                .duplicated
                .iter()
                .take(5)
                .map(|(d, n)| format!("{} x{n}", show(d)))
                .collect();
            writeln!(f, "  duplicated, e.g. {some:?}")?;
        }
        writeln!(f, "  schedule:")?;
        for (at, what) in &self.schedule {
            writeln!(f, "    {:>9.3}s {what}", at.as_secs_f64())?;
        }
        write!(f, "  replay with the same seed ({})", self.seed)
    }
}

#[cfg(test)]
mod tests {
    use kcl_core::record::{ExtendedSequenceNumber, SequenceNumber};
    use tokio::time::Instant;

    use super::*;

    fn delivery(key: &str, data: &str) -> Delivery {
        Delivery {
            at: Instant::now(),
            worker: "w".into(),
            incarnation: 0,
            shard_id: "s".into(),
            position: ExtendedSequenceNumber::Sequence {
                sequence: SequenceNumber::from_u128(1),
                sub_sequence: 0,
            },
            partition_key: key.into(),
            data: Bytes::from(data.to_owned()),
        }
    }

    #[tokio::test]
    async fn finds_missing_duplicated_and_out_of_order_records() {
        let produced: Vec<(String, Bytes)> = ["a:1", "a:2", "a:3", "b:1"]
            .iter()
            .map(|d| (d[..1].to_owned(), Bytes::from(d.to_string())))
            .collect();
        let deliveries = [
            delivery("a", "a:2"),
            delivery("a", "a:1"),
            delivery("a", "a:2"),
            delivery("b", "b:1"),
        ];
        let report = Report::new(7, Vec::new(), &produced, &deliveries, 0, Vec::new());
        assert_eq!(report.missing, vec![Bytes::from("a:3")]);
        assert_eq!(report.duplicated, vec![(Bytes::from("a:2"), 2)]);
        assert_eq!(
            report.out_of_order,
            vec![("a".to_owned(), Bytes::from("a:2"))]
        );
        assert!(!report.is_complete() && !report.is_ordered());
        assert!(report.to_string().contains("seed 7"));
        let clean = Report::new(
            7,
            Vec::new(),
            &produced[3..],
            &deliveries[3..],
            0,
            Vec::new(),
        );
        clean.assert_exactly_once();
    }
}
