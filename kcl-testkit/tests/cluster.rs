//! The harness on its own scenarios: each action, each store, the report catching what goes
//! wrong, and replay from the seed.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kcl_core::checkpoint::Checkpointer;
use kcl_core::processor::{
    BoxError, FailurePolicy, ProcessRecordsInput, RecordProcessor, ShardInfo,
};
use kcl_core::retry::RetryBackoff;
use kcl_testkit::{Cluster, Fault, FaultWindow, Store};

/// A processor that does nothing but succeed.
struct Fine;

impl RecordProcessor for Fine {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

fn ok(_: &ShardInfo) -> Fine {
    Fine
}

#[tokio::test(start_paused = true)]
async fn a_worker_killed_during_a_split_loses_nothing() {
    let mut cluster = Cluster::builder(ok).workers(3).seed(1).start().await;
    cluster.produce(400).await;
    cluster.run_for(Duration::from_secs(3)).await;
    assert!(cluster.split(0).is_some());
    cluster.kill(1).await;
    cluster.produce(400).await;
    cluster.run_for(Duration::from_secs(20)).await;
    assert!(cluster.merge(0).is_some());
    cluster.produce(200).await;
    let report = cluster.finish().await;
    report.assert_complete_and_ordered();
    assert_eq!(report.produced, 1000);
    assert!(report.checkpoints > 0);
}

#[tokio::test(start_paused = true)]
async fn graceful_stops_and_joins_deliver_every_record_exactly_once() {
    let mut cluster = Cluster::builder(ok)
        .workers(2)
        .shards(4)
        .seed(2)
        .start()
        .await;
    cluster.produce(300).await;
    cluster.run_for(Duration::from_secs(5)).await;
    let joined = cluster.join().await;
    cluster.produce(300).await;
    cluster.run_for(Duration::from_secs(10)).await;
    cluster.stop(0).await;
    cluster.produce(300).await;
    cluster.run_for(Duration::from_secs(10)).await;
    cluster.restart(0).await;
    cluster.stop(joined).await;
    cluster.produce(100).await;
    let report = cluster.finish().await;
    report.assert_exactly_once();
}

#[tokio::test(start_paused = true)]
async fn a_paused_worker_comes_back_as_a_zombie_and_nothing_is_lost() {
    let mut cluster = Cluster::builder(ok).workers(2).seed(3).start().await;
    cluster.produce(200).await;
    cluster.run_for(Duration::from_secs(3)).await;
    cluster.pause(0);
    cluster.produce(200).await;
    // Longer than the failover time: the other takes over meanwhile.
    cluster.run_for(Duration::from_secs(30)).await;
    cluster.resume(0);
    cluster.produce(200).await;
    let report = cluster.finish().await;
    report.assert_complete_and_ordered();
}

#[tokio::test(start_paused = true)]
async fn lease_store_faults_and_throttled_reads_are_survived() {
    let mut cluster = Cluster::builder(ok).workers(3).seed(4).start().await;
    cluster.produce(200).await;
    for i in 0..3 {
        cluster.store_faults(i, FaultWindow::now_for(Duration::from_secs(30), 0.3));
    }
    cluster.throttle_reads(1, FaultWindow::now_for(Duration::from_secs(30), 0.5));
    cluster.store_faults(
        2,
        FaultWindow::now_for(Duration::from_secs(30), 0.5).only(Fault::ReplyLost),
    );
    cluster.produce(400).await;
    cluster.run_for(Duration::from_secs(40)).await;
    cluster.produce(200).await;
    let report = cluster.finish().await;
    report.assert_complete_and_ordered();
}

#[tokio::test(start_paused = true)]
async fn sqlite_leases_work_the_same() {
    let mut cluster = Cluster::builder(ok)
        .workers(2)
        .store(Store::Sqlite)
        .seed(5)
        .start()
        .await;
    cluster.produce(300).await;
    cluster.kill(0).await;
    cluster.produce(300).await;
    let report = cluster.finish().await;
    report.assert_complete_and_ordered();
}

/// Fails forever on the record `key-0:00000003`.
struct Poisoned;

impl RecordProcessor for Poisoned {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        if input.records.iter().any(|r| r.data() == "key-0:00000003") {
            return Err("poison".into());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_report_catches_records_never_processed() {
    let mut cluster = Cluster::builder(|_: &ShardInfo| Poisoned)
        .keys(1)
        .shards(1)
        .seed(6)
        .configure(|b| {
            b.failure_policy(FailurePolicy::StopShard {
                max_attempts: 2,
                backoff: RetryBackoff::new(Duration::from_millis(10), Duration::from_millis(10)),
            })
        })
        .start()
        .await;
    cluster.produce(10).await;
    let report = cluster.finish_within(Duration::from_secs(60)).await;
    assert!(!report.is_complete(), "{report}");
    assert!(
        report.missing.iter().any(|d| d == "key-0:00000003"),
        "{report}"
    );
    let shown = report.to_string();
    assert!(
        shown.contains("seed 6") && shown.contains("missing"),
        "{shown}"
    );
}

/// Records whether any batch arrived out of order on one shard's processor.
struct Watch(
    Arc<AtomicBool>,
    Option<kcl_core::record::ExtendedSequenceNumber>,
);

impl RecordProcessor for Watch {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        for record in input.records {
            if self
                .1
                .as_ref()
                .is_some_and(|last| record.position() <= *last)
            {
                self.0.store(true, Ordering::SeqCst);
            }
            self.1 = Some(record.position());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_replays_the_same_run() {
    async fn run(seed: u64) -> (usize, usize, Vec<String>) {
        let backwards = Arc::new(AtomicBool::new(false));
        let b = backwards.clone();
        let mut cluster = Cluster::builder(move |_: &ShardInfo| Watch(b.clone(), None))
            .workers(3)
            .seed(seed)
            .start()
            .await;
        cluster.produce(300).await;
        cluster.kill(2).await;
        cluster.split(1);
        cluster.produce(300).await;
        let report = cluster.finish().await;
        report.assert_complete_and_ordered();
        assert!(
            !backwards.load(Ordering::SeqCst),
            "a processor saw its shard go backwards"
        );
        let schedule = report
            .schedule
            .iter()
            .map(|(at, w)| format!("{at:?} {w}"))
            .collect();
        (report.deliveries, report.checkpoints, schedule)
    }
    let first = run(11).await;
    assert_eq!(run(11).await, first, "replay");
}
