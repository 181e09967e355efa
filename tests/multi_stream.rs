//! Multi-stream workers on the in-memory model, under tokio's paused clock: several streams
//! through one lease table, streams added and removed at run time, resharding in one of them,
//! a stream recreated under its name, leases keyed as Java KCL keys them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::{
    BackendError, GetRecordsOutput, ListShardsPage, ListShardsRequest, ShardIterator,
    StartingPosition, StreamBackend, StreamDescription,
};
use kcl_core::lease::{InMemoryLeaseTable, Lease, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::BoxError;
use kcl_core::record::ExtendedSequenceNumber;
use kcl_core::stream::StreamIdentifier;
use kcl_core::worker::{FormerStreams, MultiStreamTracker, StreamConfig};
use support::{Call, Faults, Recorder, RecordingProcessor, Running, within};

const LONG: Duration = Duration::from_secs(600);
/// The model's account (its ARNs name it).
const ACCOUNT: &str = "000000000000";

/// Puts `count` records into `stream` over 5 keys; payloads `<stream>/<key>:<n>` with `n`
/// counting per key. Returns them.
fn produce(model: &KinesisModel, stream: &str, count: usize, start: usize) -> Vec<Bytes> {
    (start..start + count)
        .map(|i| {
            let key = format!("{stream}-key-{}", i % 5);
            let data = Bytes::from(format!("{key}:{:08}", i / 5));
            model.put_record(stream, &key, data.clone(), None).unwrap();
            data
        })
        .collect()
}

/// The streams a test's tracker lists, changed while the workers run.
#[derive(Clone, Default)]
struct Tracked(Arc<Mutex<Vec<String>>>);

impl Tracked {
    fn set(&self, streams: &[&str]) {
        *self.0.lock().unwrap() = streams.iter().map(|s| (*s).to_owned()).collect();
    }

    fn tracker(&self, interval: Duration) -> MultiStreamTracker {
        let list = self.0.clone();
        MultiStreamTracker::polled(move || {
            let streams = list.lock().unwrap().clone();
            async move {
                streams
                    .iter()
                    .map(|s| StreamConfig::parse(s).map_err(BoxError::from))
                    .collect()
            }
        })
        .interval(interval)
    }
}

fn start(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    recorder: &Arc<Recorder>,
    tracker: MultiStreamTracker,
) -> Running {
    support::start_multi_stream_worker(name, model.clone(), table, recorder, tracker, LONG)
}

/// The serialized identifier of `stream` as the model describes it now.
async fn serialized(model: &KinesisModel, stream: &str) -> String {
    let description = kcl_core::backend::StreamBackend::describe_stream(model, stream)
        .await
        .unwrap();
    StreamIdentifier::from_name(stream)
        .unwrap()
        .resolve(&description)
        .unwrap()
        .serialize()
        .unwrap()
}

async fn shard_leases(table: &dyn LeaseTable) -> Vec<Lease> {
    let mut leases: Vec<Lease> = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.heartbeat_of().is_none())
        .collect();
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    leases
}

/// Every payload seen, per stream (the recorder's shard ids are `<stream>/<shard>`).
fn seen_by_stream(recorder: &Recorder) -> HashMap<String, BTreeSet<Bytes>> {
    let mut out: HashMap<String, BTreeSet<Bytes>> = HashMap::new();
    for s in recorder.seen() {
        let stream = s.shard_id.split('/').next().unwrap().to_owned();
        out.entry(stream).or_default().insert(s.data);
    }
    out
}

fn has_all(recorder: &Recorder, stream: &str, produced: &[Bytes]) -> bool {
    seen_by_stream(recorder)
        .get(stream)
        .is_some_and(|seen| produced.iter().all(|p| seen.contains(p)))
}

/// Order per partition key, across everything seen.
fn assert_order_per_key(recorder: &Recorder) {
    for (key, payloads) in recorder.first_deliveries_by_key() {
        assert!(
            payloads.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {payloads:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn three_streams_one_added_one_removed_a_split_three_workers() {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("alpha", 2).unwrap();
    model.create_stream("beta", 1).unwrap();
    model.create_stream("gamma", 3).unwrap();
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let tracked = Tracked::default();
    tracked.set(&["alpha", "beta"]);
    let interval = Duration::from_secs(5);
    let mut alpha = produce(&model, "alpha", 200, 0);
    let beta = produce(&model, "beta", 100, 0);
    let workers: Vec<Running> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| start(name, &model, &table, &recorder, tracked.tracker(interval)))
        .collect();
    recorder
        .wait_until(LONG, |r| {
            has_all(r, "alpha", &alpha) && has_all(r, "beta", &beta)
        })
        .await;
    assert!(
        !seen_by_stream(&recorder).contains_key("gamma"),
        "not tracked yet"
    );

    // Leases keyed as Java keys multi-stream leases, one per shard of each tracked stream.
    let (alpha_id, beta_id, gamma_id) = (
        serialized(&model, "alpha").await,
        serialized(&model, "beta").await,
        serialized(&model, "gamma").await,
    );
    assert!(alpha_id.starts_with(&format!("{ACCOUNT}:alpha:")));
    let keys: Vec<String> = shard_leases(table.as_ref())
        .await
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(
        keys,
        [
            format!("{alpha_id}:shardId-000000000000"),
            format!("{alpha_id}:shardId-000000000001"),
            format!("{beta_id}:shardId-000000000000"),
        ]
    );

    // gamma is added, beta removed (its leases are kept: the default former-streams strategy),
    // and a shard of alpha split.
    tracked.set(&["alpha", "gamma"]);
    let gamma = produce(&model, "gamma", 300, 0);
    let parent = "shardId-000000000000";
    let range = model
        .shards("alpha")
        .unwrap()
        .into_iter()
        .find(|s| s.shard_id == parent)
        .unwrap()
        .hash_key_range;
    let children = model
        .split_shard(
            "alpha",
            parent,
            &(range.start + (range.end - range.start) / 2).to_string(),
        )
        .unwrap();
    alpha.extend(produce(&model, "alpha", 200, 200));
    let beta_late = produce(&model, "beta", 20, 100);
    recorder
        .wait_until(LONG, |r| {
            has_all(r, "alpha", &alpha)
                && has_all(r, "gamma", &gamma)
                && has_all(r, "beta", &beta_late)
        })
        .await;

    let leases = shard_leases(table.as_ref()).await;
    let keys: BTreeSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
    for shard in [
        "shardId-000000000000",
        "shardId-000000000001",
        "shardId-000000000002",
    ] {
        assert!(
            keys.contains(format!("{gamma_id}:{shard}").as_str()),
            "{keys:?}"
        );
    }
    for child in &children {
        let key = format!("{alpha_id}:{child}");
        let lease = leases.iter().find(|l| l.key == key).expect("child leased");
        // Lineage in plain shard ids, as Java stores it.
        assert_eq!(lease.parent_shard_ids, [parent]);
    }
    // The removed stream's leases are still there (kept), and were still processed.
    assert!(keys.contains(format!("{beta_id}:shardId-000000000000").as_str()));

    // Parents before children, per stream: the parent ended before either child started.
    let events = recorder.events();
    let ended = events
        .iter()
        .position(|e| e.shard_id == format!("alpha/{parent}") && e.call == Call::ShardEnded)
        .expect("the parent ended");
    for child in &children {
        let first = events
            .iter()
            .position(|e| e.shard_id == format!("alpha/{child}"))
            .expect("the child started");
        assert!(ended < first, "{child} started before its parent ended");
    }
    assert_order_per_key(&recorder);

    // Balancing counts the leases of all streams together: the unfinished leases (alpha's
    // two children and shard 1, beta's, gamma's three) end up spread over the three workers.
    let balanced = async {
        loop {
            let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
            for lease in shard_leases(table.as_ref()).await {
                if !lease.is_finished() {
                    *per_owner
                        .entry(lease.owner.unwrap_or_default())
                        .or_default() += 1;
                }
            }
            let counts: Vec<usize> = per_owner.values().copied().collect();
            if per_owner.len() == 3
                && !per_owner.contains_key("")
                && counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1
            {
                return per_owner;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let per_owner = within(LONG, "balanced leases", balanced).await;
    assert_eq!(per_owner.values().sum::<usize>(), 7, "{per_owner:?}");
    // The status names each shard's stream.
    let statuses: Vec<_> = workers
        .iter()
        .flat_map(|w| w.handle.status().shards)
        .collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.stream == "gamma" && s.lease_key.starts_with(&gamma_id))
    );
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_recreated_stream_starts_afresh_and_never_reads_through_its_old_leases() {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("orders", 1).unwrap();
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let tracked = Tracked::default();
    tracked.set(&["orders"]);
    let old = produce(&model, "orders", 50, 0);
    let w = start(
        "w1",
        &model,
        &table,
        &recorder,
        tracked.tracker(Duration::from_secs(5)),
    );
    recorder
        .wait_until(LONG, |r| has_all(r, "orders", &old))
        .await;
    let old_id = serialized(&model, "orders").await;

    // Deleted and created again, with two shards this time, a few seconds later.
    model.delete_stream("orders").unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    model.create_stream("orders", 2).unwrap();
    let new_id = serialized(&model, "orders").await;
    assert_ne!(old_id, new_id, "another creation epoch");
    let new = produce(&model, "orders", 60, 1_000);
    recorder
        .wait_until(LONG, |r| has_all(r, "orders", &new))
        .await;
    let leases = shard_leases(table.as_ref()).await;
    let by_stream: BTreeMap<&str, usize> = leases.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.key.rsplit_once(':').unwrap().0).or_default() += 1;
        m
    });
    assert_eq!(by_stream.get(new_id.as_str()), Some(&2), "{by_stream:?}");
    // The old incarnation's lease stays its own, never the new stream's: either its consumer
    // found the shard gone and recorded it as ended (as Java KCL does), or the worker let it go
    // first on seeing the name tracked under the new epoch (it cannot process it any more).
    let old_lease = leases
        .iter()
        .find(|l| l.key == format!("{old_id}:shardId-000000000000"))
        .expect("old lease kept");
    assert!(
        old_lease.checkpoint == ExtendedSequenceNumber::ShardEnd || old_lease.owner.is_none(),
        "{old_lease:?}"
    );
    for lease in leases.iter().filter(|l| l.key.starts_with(&new_id)) {
        assert!(
            lease.parent_shard_ids.is_empty(),
            "new stream's lease {} has lineage from the old stream",
            lease.key
        );
    }
    // The new stream was read from its start: every new record seen exactly once so far.
    let seen_new = recorder
        .seen()
        .into_iter()
        .filter(|s| new.contains(&s.data))
        .count();
    assert_eq!(seen_new, new.len());
    w.stop().await;
}

/// Runs three streams with `former`, stops tracking beta and gamma, and returns the streams
/// whose leases remain (by name) 15 s and 120 s after (virtual time).
async fn former_streams_run(former: FormerStreams) -> (BTreeSet<String>, BTreeSet<String>) {
    former_streams_run_with(former, false).await
}

/// As [`former_streams_run`]; with `delete`, beta and gamma are deleted (still listed) instead
/// of untracked.
async fn former_streams_run_with(
    former: FormerStreams,
    delete: bool,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let model = KinesisModel::new(ModelConfig::new());
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let tracked = Tracked::default();
    let mut produced = Vec::new();
    for stream in ["alpha", "beta", "gamma"] {
        model.create_stream(stream, 1).unwrap();
        produced.push((stream, produce(&model, stream, 30, 0)));
    }
    tracked.set(&["alpha", "beta", "gamma"]);
    support::init_tracing();
    let worker = kcl_core::worker::Worker::builder(RecordingProcessor::factory(
        "w1",
        recorder.clone(),
        Faults::default(),
    ))
    .application_name("app")
    .multi_stream(
        tracked
            .tracker(Duration::from_secs(2))
            .former_streams(former),
    )
    .shard_sync_interval(Duration::from_secs(5))
    .worker_id("w1")
    .backend(model.clone())
    .lease_table(table.clone())
    .initial_position(kcl_core::shard_sync::InitialPosition::TrimHorizon)
    .build()
    .unwrap();
    let w = Running {
        handle: worker.handle(),
        task: tokio::spawn(async move { worker.run().await.unwrap() }),
        bound: LONG,
    };
    recorder
        .wait_until(LONG, |r| produced.iter().all(|(s, p)| has_all(r, s, p)))
        .await;
    if delete {
        model.delete_stream("beta").unwrap();
        model.delete_stream("gamma").unwrap();
    } else {
        tracked.set(&["alpha"]);
    }
    let streams_with_leases = || async {
        shard_leases(table.as_ref())
            .await
            .into_iter()
            .map(|l| l.key.split(':').nth(1).unwrap().to_owned())
            .collect::<BTreeSet<String>>()
    };
    // Not before the wait.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let early = streams_with_leases().await;
    tokio::time::sleep(Duration::from_secs(105)).await;
    let late = streams_with_leases().await;
    w.stop().await;
    (early, late)
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(start_paused = true)]
async fn former_streams_keep_their_leases_by_default() {
    let (early, late) = former_streams_run(FormerStreams::Keep).await;
    assert_eq!(early, names(&["alpha", "beta", "gamma"]));
    assert_eq!(late, names(&["alpha", "beta", "gamma"]));
}

#[tokio::test(start_paused = true)]
async fn untracked_streams_lose_their_leases_after_the_wait() {
    let (early, late) = former_streams_run(FormerStreams::DeleteWhenUntracked {
        wait: Duration::from_secs(30),
    })
    .await;
    assert_eq!(
        early,
        names(&["alpha", "beta", "gamma"]),
        "not before the wait"
    );
    assert_eq!(late, names(&["alpha"]));
}

/// A stream the user still lists whose describe says it does not exist keeps its leases under
/// DeleteWhenUntracked (as Java KCL, which deletes only the streams that left the list).
#[tokio::test(start_paused = true)]
async fn listed_streams_that_are_gone_keep_their_leases() {
    let (early, late) = former_streams_run_with(
        FormerStreams::DeleteWhenUntracked {
            wait: Duration::from_secs(30),
        },
        true,
    )
    .await;
    assert_eq!(early, names(&["alpha", "beta", "gamma"]));
    assert_eq!(late, names(&["alpha", "beta", "gamma"]));
}

#[tokio::test(start_paused = true)]
async fn only_the_streams_listed_as_former_lose_their_leases() {
    let (early, late) = former_streams_run(FormerStreams::DeleteListed {
        wait: Duration::from_secs(30),
        // gamma by name, and alpha: listed but still tracked, so kept.
        list: Arc::new(|| {
            vec![
                StreamIdentifier::from_name("gamma").unwrap(),
                StreamIdentifier::from_name("alpha").unwrap(),
            ]
        }),
    })
    .await;
    assert_eq!(
        early,
        names(&["alpha", "beta", "gamma"]),
        "not before the wait"
    );
    assert_eq!(late, names(&["alpha", "beta"]));
}

#[tokio::test(start_paused = true)]
async fn each_stream_reads_its_own_way_and_fan_out_registers_on_its_stream() {
    let model =
        KinesisModel::new(ModelConfig::new().with_consumer_registration_time(Duration::ZERO));
    model.create_stream("polled", 2).unwrap();
    model.create_stream("pushed", 2).unwrap();
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let polled = produce(&model, "polled", 50, 0);
    let pushed = produce(&model, "pushed", 50, 0);
    let tracker = MultiStreamTracker::new([
        StreamConfig::parse("polled").unwrap(),
        StreamConfig::parse("pushed")
            .unwrap()
            .retrieval(kcl_core::retrieval::Retrieval::fan_out()),
    ]);
    let metrics = support::metrics::recorder();
    let w = start("w-fanout", &model, &table, &recorder, tracker);
    recorder
        .wait_until(LONG, |r| {
            has_all(r, "polled", &polled) && has_all(r, "pushed", &pushed)
        })
        .await;
    // Each shard's metrics carry its own stream's label.
    let processed = |stream: &str| {
        metrics.value(
            kcl_core::metrics::names::RECORDS_PROCESSED,
            &[("worker", "w-fanout"), ("stream", stream)],
        )
    };
    assert_eq!((processed("polled"), processed("pushed")), (50.0, 50.0));
    let fan_out = kcl_core::backend::StreamBackend::fan_out(model.as_ref()).unwrap();
    // The consumer (named after the application) exists on the fan-out stream only.
    assert!(
        fan_out
            .describe_stream_consumer("pushed", "app")
            .await
            .is_ok()
    );
    assert!(matches!(
        fan_out.describe_stream_consumer("polled", "app").await,
        Err(kcl_core::backend::BackendError::ResourceNotFound(_))
    ));
    w.stop().await;
}

/// A lease of the other key style (a single-stream table's `shardId-...` key) appearing in a
/// multi-stream worker's table is never taken: the worker cannot process it, so it must stay
/// free for a worker that can (neither held forever nor counted in its fair share).
#[tokio::test(start_paused = true)]
async fn a_multi_stream_worker_never_takes_a_lease_it_cannot_process() {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("orders", 1).unwrap();
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let tracked = Tracked::default();
    tracked.set(&["orders"]);
    let produced = produce(&model, "orders", 20, 0);
    let w = start(
        "w1",
        &model,
        &table,
        &recorder,
        tracked.tracker(Duration::from_secs(5)),
    );
    recorder
        .wait_until(LONG, |r| has_all(r, "orders", &produced))
        .await;
    // A single-stream worker's lease, free (its owner left it).
    let plain = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&plain).await.unwrap());
    tokio::time::advance(Duration::from_secs(120)).await;
    let more = produce(&model, "orders", 20, 20);
    recorder
        .wait_until(LONG, |r| has_all(r, "orders", &more))
        .await;
    tokio::time::advance(Duration::from_secs(120)).await;
    let row = shard_leases(table.as_ref())
        .await
        .into_iter()
        .find(|l| l.key == plain.key)
        .unwrap();
    assert_eq!(row.owner, None, "the single-stream lease is held: {row:?}");
    assert_eq!(
        (row.counter, row.owner_switches_since_checkpoint),
        (plain.counter, 0),
        "the single-stream lease was written (taken, or taken and released): {row:?}"
    );
    w.stop().await;
}

/// A multi-stream worker refuses a table with live single-stream leases (it would create fresh
/// leases at the initial position beside them), and a single-stream worker refuses the reverse;
/// the error names one of the other mode's keys. Finished leases of the other mode are fine.
#[tokio::test(start_paused = true)]
async fn a_table_of_the_other_key_style_is_refused_at_start() {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("orders", 1).unwrap();
    let multi_key = format!(
        "{}:shardId-000000000000",
        serialized(&model, "orders").await
    );
    for (multi, live, finished) in [
        (
            true,
            "shardId-000000000001",
            "shardId-000000000000".to_owned(),
        ),
        (false, multi_key.as_str(), format!("{multi_key}9")),
    ] {
        let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
        let live = Lease::new(live, ExtendedSequenceNumber::TrimHorizon);
        assert!(table.create_if_absent(&live).await.unwrap());
        let done = Lease::new(finished, ExtendedSequenceNumber::ShardEnd);
        assert!(table.create_if_absent(&done).await.unwrap());
        let builder = kcl_core::worker::Worker::builder(RecordingProcessor::factory(
            "w1",
            Recorder::new(),
            Faults::default(),
        ))
        .application_name("app")
        .worker_id("w1")
        .backend(model.clone())
        .lease_table(table.clone());
        let builder = if multi {
            builder.multi_stream(MultiStreamTracker::new([
                StreamConfig::parse("orders").unwrap()
            ]))
        } else {
            builder.stream("orders")
        };
        let error = within(LONG, "a refused worker", builder.build().unwrap().run())
            .await
            .unwrap_err();
        match &error {
            kcl_core::worker::WorkerError::LeaseKeyStyle {
                multi_stream,
                example,
            } => {
                assert_eq!(*multi_stream, multi);
                assert_eq!(example, &live.key);
            }
            other => panic!("expected a key-style refusal, got {other}"),
        }
        assert!(error.to_string().contains(&live.key), "{error}");
        // Nothing was created beside the other mode's leases.
        assert_eq!(shard_leases(table.as_ref()).await.len(), 2);
    }
}

/// A stream tracked by its serialized identifier (`account:stream:creationEpoch`) and then
/// deleted and created again under its name is another stream: the identifier's leases never
/// read the new incarnation (its shard has the same id), and no lease is made for it.
#[tokio::test(start_paused = true)]
async fn a_serialized_identifier_never_reads_a_recreated_stream() {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream("orders", 1).unwrap();
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let old_id = serialized(&model, "orders").await;
    let tracked = Tracked::default();
    tracked.set(&[old_id.as_str()]);
    let old = produce(&model, "orders", 30, 0);
    let backend = Arc::new(Freezing {
        inner: model.clone(),
        frozen: tokio::sync::watch::channel(false).0,
    });
    support::init_tracing();
    let worker = kcl_core::worker::Worker::builder(RecordingProcessor::factory(
        "w1",
        recorder.clone(),
        Faults::default(),
    ))
    .application_name("app")
    .multi_stream(tracked.tracker(Duration::from_secs(5)))
    .worker_id("w1")
    .backend(backend.clone())
    .lease_table(table.clone())
    .initial_position(kcl_core::shard_sync::InitialPosition::TrimHorizon)
    .build()
    .unwrap();
    let w = Running {
        handle: worker.handle(),
        task: tokio::spawn(async move { worker.run().await.unwrap() }),
        bound: LONG,
    };
    recorder
        .wait_until(LONG, |r| has_all(r, "orders", &old))
        .await;
    // The consumer does not get to see the deletion: its reads wait meanwhile.
    backend.frozen.send_replace(true);
    model.delete_stream("orders").unwrap();
    tokio::time::advance(Duration::from_secs(3)).await;
    model.create_stream("orders", 1).unwrap();
    let new_id = serialized(&model, "orders").await;
    assert_ne!(old_id, new_id);
    let new = produce(&model, "orders", 30, 1_000);
    // The tracker re-reads the streams meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    backend.frozen.send_replace(false);
    // Two minutes of virtual time, every timer of the worker's firing on the way.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let read_new: Vec<_> = recorder
        .seen()
        .into_iter()
        .filter(|s| new.contains(&s.data))
        .collect();
    assert!(
        read_new.is_empty(),
        "the old identifier read the new stream: {read_new:?}"
    );
    let leases = shard_leases(table.as_ref()).await;
    assert!(
        leases.iter().all(|l| l.key.starts_with(&old_id)),
        "{leases:?}"
    );
    // The old lease is let go, not consumed: neither held nor recorded as ended by reading
    // (through the name) the new stream, whose shard of the same id it would hide.
    let old_lease = &leases[0];
    assert_eq!(old_lease.owner, None, "{old_lease:?}");
    assert_ne!(
        old_lease.checkpoint,
        ExtendedSequenceNumber::ShardEnd,
        "{old_lease:?}"
    );
    w.stop().await;
}

/// The model, with `GetRecords` waiting while `frozen` is set.
#[derive(Debug)]
struct Freezing {
    inner: Arc<KinesisModel>,
    frozen: tokio::sync::watch::Sender<bool>,
}

#[async_trait::async_trait]
impl StreamBackend for Freezing {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        self.inner.describe_stream(stream).await
    }
    async fn list_shards(&self, r: ListShardsRequest) -> Result<ListShardsPage, BackendError> {
        self.inner.list_shards(r).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        let _ = self.frozen.subscribe().wait_for(|f| !*f).await;
        self.inner
            .get_shard_iterator(stream, shard_id, position)
            .await
    }
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        let _ = self.frozen.subscribe().wait_for(|f| !*f).await;
        self.inner.get_records(iterator, limit).await
    }
}
