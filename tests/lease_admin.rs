//! Lease administration (`kcl_core::lease::admin`, what the `kcl` tool runs) against a real SQLite
//! lease file, the in-memory Kinesis model and real workers, under tokio's paused clock: describe
//! while workers run, a reset to a timestamp while they run (every record after it delivered
//! again, none before it), resharding (a parent re-opened, its children blocked), two resets
//! racing, cleanup, and bad input that must change nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::lease::admin::describe::{self, LeaseState};
use kcl_core::lease::admin::reset::{self, ApplyOptions, Reason, ResetRequest, ResetTarget};
use kcl_core::lease::admin::{AdminError, Liveness, cleanup, watch_workers};
use kcl_core::lease::{Lease, LeaseTable, LeaseUpdate};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::record::{ExtendedSequenceNumber, SequenceNumber};
use kcl_lease_sqlite::SqliteLeaseTable;
use support::{Faults, Recorder, RecordingProcessor, Running, produce, start_worker};

const STREAM: &str = "orders";
const LONG: Duration = Duration::from_secs(600);
/// Longer than the workers' renewal interval (failover / 2 = 5 s by default).
const WATCH: Duration = Duration::from_secs(6);

fn model(shards: u32) -> Arc<KinesisModel> {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, shards).unwrap();
    model
}

async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn LeaseTable> {
    Arc::new(
        SqliteLeaseTable::open(dir.path().join("leases.db"), "app")
            .await
            .unwrap(),
    )
}

fn start(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    r: &Arc<Recorder>,
) -> Running {
    let factory = RecordingProcessor::factory(name, r.clone(), Faults::default());
    start_worker(
        ("app", STREAM, name),
        model.clone(),
        table,
        factory,
        LONG,
        |b| b,
    )
}

/// Shard leases sorted by key, heartbeat rows left out.
async fn leases(table: &Arc<dyn LeaseTable>) -> Vec<Lease> {
    let mut rows: Vec<Lease> = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.heartbeat_of().is_none())
        .collect();
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    rows
}

/// Waits (virtual time) until every shard lease is held by one of the workers.
async fn wait_held(table: &Arc<dyn LeaseTable>, count: usize) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let rows = leases(table).await;
        if rows.len() == count
            && rows
                .iter()
                .all(|l| l.owner.is_some() && l.checkpoint_owner.is_none())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never all held: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn deliveries(recorder: &Recorder) -> HashMap<Bytes, usize> {
    let mut out = HashMap::new();
    for seen in recorder.seen() {
        *out.entry(seen.data).or_default() += 1;
    }
    out
}

#[tokio::test(start_paused = true)]
async fn describe_shows_leases_and_live_workers_while_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(4);
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    produce(&model, STREAM, 20, 400, 0);
    let w1 = start("w1", &model, &table, &recorder);
    let w2 = start("w2", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 400).await;
    wait_held(&table, 4).await;
    // The periodic checkpoint (every 10 s of the paused clock) commits what was processed.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let d = describe::describe(table.as_ref(), Some((model.as_ref(), STREAM)), WATCH)
        .await
        .unwrap();
    assert_eq!(d.leases.len(), 4);
    for row in &d.leases {
        assert_eq!(row.state, LeaseState::Open, "{row:?}");
        assert!(matches!(row.owner.as_deref(), Some("w1" | "w2")), "{row:?}");
        let lag = row.lag.as_ref().expect("lag with stream access");
        assert!(!lag.capped);
        // Everything produced was processed and checkpointed.
        assert!(
            matches!(row.checkpoint, ExtendedSequenceNumber::Sequence { .. }),
            "{row:?}"
        );
        assert_eq!(lag.records_behind, 0, "{row:?}");
    }
    let seen: Vec<(&str, Liveness, usize)> = d
        .workers
        .iter()
        .map(|w| (w.id.as_str(), w.liveness, w.leases_held))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|(_, l, _)| *l == Liveness::Alive),
        "{seen:?}"
    );
    assert_eq!(seen[0].2 + seen[1].2, 4);
    w1.stop().await;
    w2.stop().await;
    // Records produced with nobody consuming are counted behind.
    produce(&model, STREAM, 20, 100, 400);
    let d = describe::describe(table.as_ref(), Some((model.as_ref(), STREAM)), WATCH)
        .await
        .unwrap();
    let behind: u64 = d
        .leases
        .iter()
        .map(|l| l.lag.as_ref().unwrap().records_behind)
        .sum();
    assert_eq!(behind, 100);
    // A stopped worker's heartbeat row left behind (created now: running workers would count
    // a row they only just saw as a live worker's). Seen stale; cleanup finds that row and
    // nothing else (no finished lease), and removes it.
    table
        .create_if_absent(&Lease::worker_heartbeat("gone"))
        .await
        .unwrap();
    let view = watch_workers(table.as_ref(), WATCH).await.unwrap();
    assert!(!view.is_alive("gone"));
    assert_eq!(view.workers.len(), 1, "{view:?}");
    let plan = cleanup::plan(&view);
    assert_eq!(
        plan.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["kcl-rs/worker/gone"],
        "{view:?}"
    );
    let (deleted, kept) = cleanup::apply(table.as_ref(), &plan).await.unwrap();
    assert_eq!((deleted.len(), kept.len()), (1, 0));
    assert!(table.get("kcl-rs/worker/gone").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn reset_to_a_timestamp_while_workers_run_replays_exactly_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(2);
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    let before = produce(&model, STREAM, 10, 200, 0);
    // Arrival times: "before" records, then the target, then "after" records, a second apart
    // on the model's clock (tokio's paused clock).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = model.system_now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = produce(&model, STREAM, 10, 200, 200);
    let w1 = start("w1", &model, &table, &recorder);
    let w2 = start("w2", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 400).await;
    wait_held(&table, 2).await;
    let delivered = deliveries(&recorder);
    assert!(
        delivered.values().all(|n| *n == 1),
        "no duplicates before the reset"
    );

    let request = ResetRequest {
        target: ResetTarget::AtTimestamp(at),
        shards: vec![],
    };
    let plan = reset::plan(
        table.as_ref(),
        model.as_ref(),
        STREAM,
        request,
        WATCH,
        model.system_now(),
    )
    .await
    .unwrap();
    assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
    assert!(
        plan.changes
            .iter()
            .all(|c| c.handoff && c.reason == Reason::Target),
        "{:?}",
        plan.changes
    );
    let applied = reset::apply(table.as_ref(), &plan, &ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    assert!(
        applied.iter().all(|a| a.handed_over_by.is_some()),
        "{applied:?}"
    );

    // Every record after the timestamp is delivered again, none before it.
    recorder
        .wait_until(LONG, |r| {
            let d = deliveries(r);
            after.iter().all(|(_, data)| d.get(data) == Some(&2))
        })
        .await;
    // Let the workers run on a while: nothing more may come.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let delivered = deliveries(&recorder);
    for (_, data) in &before {
        assert_eq!(
            delivered.get(data),
            Some(&1),
            "{data:?} was before the timestamp"
        );
    }
    for (_, data) in &after {
        assert_eq!(
            delivered.get(data),
            Some(&2),
            "{data:?} was after the timestamp"
        );
    }
    // The leases are back with live workers, no marker left.
    for lease in leases(&table).await {
        assert!(
            matches!(lease.owner.as_deref(), Some("w1" | "w2")),
            "{lease:?}"
        );
        assert_eq!(lease.checkpoint_owner, None);
    }
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reset_before_a_split_reopens_the_parent_and_blocks_the_children() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(1);
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    let before = produce(&model, STREAM, 5, 50, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = model.system_now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let parent = model.open_shard_ids(STREAM).unwrap()[0].clone();
    let [low, high] = model
        .split_shard(STREAM, &parent, "170141183460469231731687303715884105728")
        .unwrap();
    let after = produce(&model, STREAM, 5, 50, 50);
    let w1 = start("w1", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 100).await;
    w1.stop().await;
    let rows = leases(&table).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().find(|l| l.key == parent).unwrap().is_finished());

    let request = ResetRequest {
        target: ResetTarget::AtTimestamp(at),
        shards: vec![],
    };
    let plan = reset::plan(
        table.as_ref(),
        model.as_ref(),
        STREAM,
        request,
        WATCH,
        model.system_now(),
    )
    .await
    .unwrap();
    let planned: Vec<(&str, Reason)> = plan
        .changes
        .iter()
        .map(|c| (c.key.as_str(), c.reason))
        .collect();
    assert_eq!(
        planned,
        [
            (parent.as_str(), Reason::Target),
            (low.as_str(), Reason::DescendantWaits),
            (high.as_str(), Reason::DescendantWaits)
        ]
    );
    assert!(plan.changes.iter().all(|c| !c.handoff), "no live workers");
    reset::apply(table.as_ref(), &plan, &ApplyOptions::default())
        .await
        .unwrap();
    let view = watch_workers(table.as_ref(), Duration::from_millis(1))
        .await
        .unwrap();
    let states: Vec<(String, LeaseState)> = describe::rows(&view)
        .into_iter()
        .map(|r| (r.key, r.state))
        .collect();
    assert_eq!(
        states,
        [
            (parent.clone(), LeaseState::Open),
            (low.clone(), LeaseState::BlockedOnParents),
            (high.clone(), LeaseState::BlockedOnParents)
        ]
    );
    // A worker started now replays the parent from the timestamp, then the children from their
    // start: the records after the timestamp again, parent first.
    let w2 = start("w2", &model, &table, &recorder);
    recorder
        .wait_until(LONG, |r| {
            let d = deliveries(r);
            after.iter().all(|(_, data)| d.get(data) == Some(&2))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let delivered = deliveries(&recorder);
    assert!(before.iter().all(|(_, d)| delivered.get(d) == Some(&1)));
    let parent_last = recorder
        .seen()
        .iter()
        .filter(|s| s.worker == "w2" && s.shard_id == parent)
        .map(|s| s.at)
        .max();
    let child_first = recorder
        .seen()
        .iter()
        .filter(|s| s.worker == "w2" && s.shard_id != parent)
        .map(|s| s.at)
        .min();
    if let (Some(p), Some(c)) = (parent_last, child_first) {
        assert!(
            p <= c,
            "a child was processed before its re-opened parent finished"
        );
    }
    w2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn two_resets_racing_one_wins_the_other_is_told_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(3);
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    produce(&model, STREAM, 10, 90, 0);
    let w1 = start("w1", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 90).await;
    w1.stop().await;
    let plan_for = |target| {
        let (table, model) = (table.clone(), model.clone());
        async move {
            let request = ResetRequest {
                target,
                shards: vec![],
            };
            reset::plan(
                table.as_ref(),
                model.as_ref(),
                STREAM,
                request,
                Duration::from_millis(10),
                model.system_now(),
            )
            .await
            .unwrap()
        }
    };
    // Both operators read the table before either writes.
    let horizon = plan_for(ResetTarget::TrimHorizon).await;
    let latest = plan_for(ResetTarget::Latest).await;
    assert_eq!((horizon.changes.len(), latest.changes.len()), (3, 3));
    let options = ApplyOptions::default();
    let (a, b) = tokio::join!(
        reset::apply(table.as_ref(), &horizon, &options),
        reset::apply(table.as_ref(), &latest, &options)
    );
    let (winner, loser) = match (&a, &b) {
        (Ok(_), Err(e)) => (ExtendedSequenceNumber::TrimHorizon, e),
        (Err(e), Ok(_)) => (ExtendedSequenceNumber::Latest, e),
        other => panic!("exactly one reset must win: {other:?}"),
    };
    match loser {
        AdminError::Raced { changed, .. } => assert!(changed.is_empty(), "{loser}"),
        other => panic!("expected Raced, got {other}"),
    }
    assert!(loser.to_string().contains("nothing was changed"), "{loser}");
    for lease in leases(&table).await {
        assert_eq!(lease.checkpoint, winner, "{lease:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(2);
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    produce(&model, STREAM, 10, 40, 0);
    let w1 = start("w1", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 40).await;
    w1.stop().await;
    let before = leases(&table).await;
    let shards = model.shard_ids(STREAM).unwrap();
    let now = model.system_now();
    let try_plan = |target: ResetTarget, shards: Vec<String>| {
        let (table, model) = (table.clone(), model.clone());
        async move {
            reset::plan(
                table.as_ref(),
                model.as_ref(),
                STREAM,
                ResetRequest { target, shards },
                Duration::from_millis(10),
                now,
            )
            .await
            .unwrap_err()
        }
    };
    let error = try_plan(ResetTarget::Latest, vec!["shardId-000000000099".into()]).await;
    assert!(matches!(error, AdminError::UnknownShard { .. }), "{error}");
    assert!(
        error.to_string().contains("shardId-000000000099"),
        "{error}"
    );
    let error = try_plan(
        ResetTarget::AtTimestamp(now + Duration::from_secs(3600)),
        vec![],
    )
    .await;
    assert!(matches!(error, AdminError::FutureTimestamp(_)), "{error}");
    assert!(error.to_string().contains("future"), "{error}");
    let seq = SequenceNumber::new("1").unwrap();
    let error = try_plan(ResetTarget::Sequence(seq.clone()), vec![]).await;
    assert!(
        matches!(error, AdminError::SequenceNeedsOneShard),
        "{error}"
    );
    // A sequence number of the other shard.
    let other = recorder
        .seen()
        .into_iter()
        .find(|s| s.shard_id == shards[1])
        .unwrap();
    let ExtendedSequenceNumber::Sequence { sequence, .. } = other.position else {
        panic!()
    };
    let error = try_plan(ResetTarget::Sequence(sequence), vec![shards[0].clone()]).await;
    assert!(matches!(error, AdminError::BadSequence { .. }), "{error}");
    assert_eq!(leases(&table).await, before, "nothing changed");

    // A lease mid-handoff between two workers is left alone, and the reset says so.
    let mut marked = before[0].clone();
    marked.owner = Some("w1".into());
    let update = LeaseUpdate::request_handoff(&marked, "w2");
    table
        .update(
            &before[0].key,
            &before[0].expectation(),
            &LeaseUpdate {
                owner: Some(Some("w1".into())),
                ..LeaseUpdate::default()
            },
        )
        .await
        .unwrap();
    let current = table.get(&before[0].key).await.unwrap().unwrap();
    table
        .update(&current.key, &current.expectation(), &update)
        .await
        .unwrap();
    // w1 and w2 look alive: their rows move while the plan watches.
    for w in ["w1", "w2"] {
        table
            .create_if_absent(&Lease::worker_heartbeat(w))
            .await
            .unwrap();
    }
    let bump = {
        let table = table.clone();
        tokio::spawn(async move {
            loop {
                for w in ["w1", "w2"] {
                    let key = format!("kcl-rs/worker/{w}");
                    let row = table.get(&key).await.unwrap().unwrap();
                    let _ = table
                        .update(&key, &row.expectation(), &LeaseUpdate::default())
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let marked_before = leases(&table).await;
    let plan = reset::plan(
        table.as_ref(),
        model.as_ref(),
        STREAM,
        ResetRequest {
            target: ResetTarget::TrimHorizon,
            shards: vec![before[0].key.clone()],
        },
        Duration::from_secs(2),
        now,
    )
    .await
    .unwrap();
    let error = reset::apply(table.as_ref(), &plan, &ApplyOptions::default())
        .await
        .unwrap_err();
    bump.abort();
    assert!(
        matches!(error, AdminError::HandoffInProgress { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    assert_eq!(leases(&table).await, marked_before, "nothing changed");
}

#[tokio::test(start_paused = true)]
async fn a_live_owner_that_never_hands_over_gets_its_lease_back_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(1);
    let table = sqlite(&dir).await;
    let shard = model.shard_ids(STREAM).unwrap()[0].clone();
    // An owner without a heartbeat row (a Java KCL 2.x worker) renewing its lease, which knows
    // nothing of handoff markers.
    let mut lease = Lease::new(&shard, ExtendedSequenceNumber::TrimHorizon);
    lease.owner = Some("java-worker".into());
    table.create_if_absent(&lease).await.unwrap();
    let renew = {
        let table = table.clone();
        let shard = shard.clone();
        tokio::spawn(async move {
            loop {
                let row = table.get(&shard).await.unwrap().unwrap();
                // Java renews conditional on its own counter; it does not look at the marker.
                let _ = table
                    .update(
                        &shard,
                        &kcl_core::lease::Expectation {
                            counter: Some(row.counter),
                            owner: None,
                        },
                        &LeaseUpdate::default(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let request = ResetRequest {
        target: ResetTarget::Latest,
        shards: vec![],
    };
    let plan = reset::plan(
        table.as_ref(),
        model.as_ref(),
        STREAM,
        request,
        Duration::from_secs(2),
        model.system_now(),
    )
    .await
    .unwrap();
    assert!(plan.changes[0].handoff);
    let options = ApplyOptions {
        wait: Duration::from_secs(5),
        ..ApplyOptions::default()
    };
    let error = reset::apply(table.as_ref(), &plan, &options)
        .await
        .unwrap_err();
    renew.abort();
    // The renewals bumped the counter under the tool's request: either the tool saw its claim
    // overwritten (raced) or it gave the lease back after the wait. Both leave the checkpoint.
    assert!(
        matches!(
            error,
            AdminError::HandoffTimedOut { .. } | AdminError::Raced { .. }
        ),
        "{error}"
    );
    let now = table.get(&shard).await.unwrap().unwrap();
    assert_eq!(now.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    assert_eq!(now.owner.as_deref(), Some("java-worker"));
}

/// A multi-stream worker (streams `a` and `b`, one lease table) named `name`.
fn start_multi(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    recorder: &Arc<Recorder>,
) -> Running {
    let tracker = kcl_core::worker::MultiStreamTracker::new(
        ["a", "b"].map(|s| kcl_core::worker::StreamConfig::parse(s).unwrap()),
    );
    support::start_multi_stream_worker(name, model.clone(), table, recorder, tracker, LONG)
}

/// In a multi-stream table, a reset names one stream and moves only that stream's leases
/// (keyed `account:stream:epoch:shardId`); describe shows each lease's stream and shard, and
/// measures the lag of the named stream's leases only. A restarted worker then delivers the
/// reset stream's records again and none of the other's.
#[tokio::test(start_paused = true)]
async fn a_reset_in_a_multi_stream_table_moves_only_the_named_streams_leases() {
    let dir = tempfile::tempdir().unwrap();
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("a", 2).unwrap();
    model.create_stream("b", 2).unwrap();
    let table = sqlite(&dir).await;
    let recorder = Recorder::new();
    let of_a: std::collections::HashSet<Bytes> = produce(&model, "a", 10, 100, 0)
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    produce(&model, "b", 10, 100, 1_000);
    let w1 = start_multi("w1", &model, &table, &recorder);
    recorder.wait_until(LONG, |r| r.distinct() >= 200).await;
    w1.stop().await;
    let before = leases(&table).await;
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(
        before
            .iter()
            .all(|l| l.key.contains(":a:") || l.key.contains(":b:"))
    );

    let d = describe::describe(table.as_ref(), Some((model.as_ref(), "a")), WATCH)
        .await
        .unwrap();
    for row in &d.leases {
        let stream = row.stream.as_deref().unwrap();
        assert!(row.key.ends_with(&format!(":{}", row.shard)), "{row:?}");
        assert!(row.shard.starts_with("shardId-"), "{row:?}");
        if stream.contains(":a:") {
            assert_eq!(
                row.lag.as_ref().map(|l| l.records_behind),
                Some(0),
                "{row:?}"
            );
        } else {
            assert!(row.lag.is_none(), "only stream a is measured: {row:?}");
        }
    }

    let request = ResetRequest {
        target: ResetTarget::TrimHorizon,
        shards: vec![],
    };
    let plan = reset::plan(
        table.as_ref(),
        model.as_ref(),
        "a",
        request.clone(),
        WATCH,
        std::time::SystemTime::now(),
    )
    .await
    .unwrap();
    assert!(plan.naming.stream().unwrap().contains(":a:"));
    assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
    reset::apply(table.as_ref(), &plan, &ApplyOptions::default())
        .await
        .unwrap();
    let after = leases(&table).await;
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.key, new.key);
        if new.key.contains(":a:") {
            assert_eq!(
                new.checkpoint,
                ExtendedSequenceNumber::TrimHorizon,
                "{new:?}"
            );
        } else {
            assert_eq!(
                new.checkpoint, old.checkpoint,
                "stream b untouched: {new:?}"
            );
        }
    }
    // A stream the multi-stream table holds no lease of, named without its epoch: refused.
    model.create_stream("c", 1).unwrap();
    let refused = reset::plan(
        table.as_ref(),
        model.as_ref(),
        "c",
        request,
        WATCH,
        std::time::SystemTime::now(),
    )
    .await;
    assert!(
        matches!(refused, Err(AdminError::StreamNotInTable { ref stream }) if stream == "c"),
        "{refused:?}"
    );

    let again = Recorder::new();
    let w2 = start_multi("w2", &model, &table, &again);
    again.wait_until(LONG, |r| r.distinct() >= 100).await;
    // w2 holds stream b's leases too and reads them for a while: none of b comes again.
    wait_held(&table, 4).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    w2.stop().await;
    let seen: std::collections::HashSet<Bytes> = deliveries(&again).into_keys().collect();
    assert_eq!(seen, of_a, "exactly stream a's records again, none of b");
}
