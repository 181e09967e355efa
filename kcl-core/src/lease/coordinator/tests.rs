//! Coordinator unit tests on the in-memory table, under tokio's paused clock.

use super::*;
use crate::lease::InMemoryLeaseTable;
use crate::lease::test_table::FaultyTable;
use crate::record::{ExtendedSequenceNumber, SequenceNumber};

const FAILOVER: Duration = Duration::from_secs(10);

async fn table_with(keys: &[&str]) -> Arc<dyn LeaseTable> {
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    for key in keys {
        table
            .create_if_absent(&Lease::new(*key, ExtendedSequenceNumber::TrimHorizon))
            .await
            .unwrap();
    }
    table
}

fn config() -> LeaseConfig {
    LeaseConfig::with_failover(FAILOVER)
}

async fn worker(id: &str, table: &Arc<dyn LeaseTable>, config: LeaseConfig) -> LeaseCoordinator {
    let c = LeaseCoordinator::new(id.into(), table.clone(), config);
    assert!(c.renew().await, "first heartbeat");
    c
}

fn keys(held: &[Arc<HeldLease>]) -> Vec<String> {
    let mut keys: Vec<String> = held.iter().map(|h| h.key().to_owned()).collect();
    keys.sort();
    keys
}

async fn owner(table: &Arc<dyn LeaseTable>, key: &str) -> Option<String> {
    table.get(key).await.unwrap().unwrap().owner
}

/// Advances the clock in half-second steps, renewing `alive` workers and reading the whole table
/// for `scanning` ones at every step (the decisions of a full read, independent of the pace).
async fn run_for(total: Duration, alive: &[&LeaseCoordinator], scanning: &[&LeaseCoordinator]) {
    let step = Duration::from_millis(500);
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        tokio::time::advance(step).await;
        elapsed += step;
        for w in alive {
            w.renew().await;
        }
        for w in scanning {
            w.full_scan().await.unwrap();
        }
    }
}

/// Runs workers as their loops would, for `total`: each renews every renewal interval (the
/// `alive` ones) and scans when `next_scan_at` says (the `scanning` ones), as the worker loop
/// does. Returns when it stops.
async fn run_loops(total: Duration, alive: &[&LeaseCoordinator], scanning: &[&LeaseCoordinator]) {
    let end = Instant::now() + total;
    let mut next_renew: Vec<Instant> = alive.iter().map(|_| Instant::now()).collect();
    let mut next_scan: Vec<Instant> = scanning.iter().map(|w| w.next_scan_at()).collect();
    loop {
        let next = next_renew
            .iter()
            .chain(next_scan.iter())
            .copied()
            .min()
            .unwrap_or(end)
            .min(end);
        tokio::time::sleep_until(next).await;
        if Instant::now() >= end {
            return;
        }
        for (i, w) in alive.iter().enumerate() {
            if next_renew[i] <= Instant::now() {
                let ok = w.renew().await;
                next_renew[i] = Instant::now() + w.next_renewal_in(ok);
            }
        }
        for (i, w) in scanning.iter().enumerate() {
            if next_scan[i] <= Instant::now() {
                w.scan().await.unwrap();
                if w.has_pending() {
                    w.poll_pending().await.unwrap();
                }
                next_scan[i] = w.next_scan_at();
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn takes_free_leases_up_to_the_fair_share() {
    let table = table_with(&["a", "b", "c", "d"]).await;
    let w1 = worker("w1", &table, config()).await;
    // Alone, w1 takes everything.
    assert_eq!(w1.scan().await.unwrap().len(), 4);
    // A second worker counts both heartbeats: fair share 2, nothing free, so it asks w1 for two
    // (once w1 has had time to see it appear).
    let w2 = worker("w2", &table, config()).await;
    assert!(w2.scan().await.unwrap().is_empty());
    assert_eq!(
        w2.stats().handoffs_requested,
        0,
        "not before it has been seen"
    );
    // It gave w1 a heads-up instead, so w1 reads fast when the request comes.
    assert_eq!(w2.stats().pokes_sent, 1);
    w2.backdate_visibility();
    assert!(w2.full_scan().await.unwrap().is_empty());
    assert_eq!(w2.stats().handoffs_requested, 2);
    // A third read by w2 asks for nothing more: the two pending handoffs count as its own.
    w2.full_scan().await.unwrap();
    assert_eq!(w2.stats().handoffs_requested, 2);
}

#[tokio::test(start_paused = true)]
async fn a_steal_is_a_handoff_the_owner_completes_after_its_checkpoint() {
    let table = table_with(&["a", "b", "c", "d"]).await;
    let w1 = worker("w1", &table, config()).await;
    w1.scan().await.unwrap();
    let w2 = worker("w2", &table, config()).await;
    w2.backdate_visibility();
    w2.scan().await.unwrap();
    // The owner was poked: its next scan, otherwise a read of the heartbeat rows alone, reads
    // the table; the two leases asked for are "handoff requested".
    let before = w1.stats();
    w1.scan().await.unwrap();
    assert_eq!(w1.stats().pokes_received, before.pokes_received + 1);
    assert_eq!(w1.stats().full_scans, before.full_scans + 1);
    let asked: Vec<Arc<HeldLease>> = w1
        .held()
        .into_iter()
        .filter(|h| h.status() == HeldStatus::HandoffRequested)
        .collect();
    assert_eq!(asked.len(), 2);
    // Until the owner hands over, the requester does not start.
    assert!(w2.poll_pending().await.unwrap().is_empty());
    // The owner may still checkpoint (the marker names it), then hands over.
    let position = ExtendedSequenceNumber::Sequence {
        sequence: SequenceNumber::from_u128(42),
        sub_sequence: 0,
    };
    for h in &asked {
        h.write(&LeaseUpdate::checkpoint(position.clone(), None))
            .await
            .unwrap();
        h.release(None).await.unwrap();
        assert!(h.is_lost());
    }
    let received = w2.poll_pending().await.unwrap();
    assert_eq!(keys(&received), keys(&asked));
    for h in &received {
        let lease = h.lease().await;
        assert_eq!(lease.owner.as_deref(), Some("w2"));
        assert_eq!(lease.checkpoint_owner, None);
        assert_eq!(
            lease.checkpoint, position,
            "starts right after the checkpoint"
        );
    }
    assert_eq!(w2.stats().handoffs_received, 2);
    assert!(!w2.has_pending());
    // Balanced: further scans move nothing.
    w1.scan().await.unwrap();
    w2.scan().await.unwrap();
    assert_eq!(w1.held().len(), 2);
    assert_eq!(w2.held().len(), 2);
    assert_eq!(w2.stats().handoffs_requested, 2);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_observed_on_the_local_clock() {
    let table = table_with(&["a"]).await;
    let dead = worker("dead", &table, config()).await;
    dead.scan().await.unwrap();
    let w = worker("w", &table, config()).await;
    // First sighting: not expired, however old the heartbeat really is.
    assert!(w.scan().await.unwrap().is_empty());
    // The owner keeps renewing: never expired.
    run_for(Duration::from_secs(30), &[&dead, &w], &[&w]).await;
    assert!(w.held().is_empty());
    assert_eq!(owner(&table, "a").await.as_deref(), Some("dead"));
    // The owner stops: taken only after its heartbeat was still for the failover time.
    run_for(FAILOVER - Duration::from_secs(1), &[&w], &[&w]).await;
    assert!(w.held().is_empty());
    run_for(Duration::from_secs(2), &[&w], &[&w]).await;
    assert_eq!(keys(&w.held()), ["a"]);
    assert_eq!(w.stats().taken_expired, 1);
    let lease = table.get("a").await.unwrap().unwrap();
    assert_eq!(lease.owner.as_deref(), Some("w"));
    assert_eq!(lease.owner_switches_since_checkpoint, 2);
}

#[tokio::test(start_paused = true)]
async fn a_zombie_stops_before_others_may_take_over_and_is_fenced_after() {
    let table = table_with(&["a"]).await;
    let zombie = worker("zombie", &table, config()).await;
    zombie.scan().await.unwrap();
    let held = zombie.held().pop().unwrap();
    let w = worker("w", &table, config()).await;
    w.scan().await.unwrap();
    // The zombie is paused: no renewals. Its claim lapses before anyone may take the lease.
    let mut advanced = Duration::ZERO;
    while held.is_valid() {
        run_for(Duration::from_millis(500), &[&w], &[&w]).await;
        advanced += Duration::from_millis(500);
        assert!(w.held().is_empty(), "taken while the owner could still act");
    }
    assert!(advanced < FAILOVER);
    run_for(FAILOVER, &[&w], &[&w]).await;
    assert_eq!(keys(&w.held()), ["a"]);
    // The zombie resumes: its renewal drops the lease; a late checkpoint is refused.
    zombie.renew().await;
    assert!(held.is_lost());
    let late = held
        .write(&LeaseUpdate::checkpoint(
            ExtendedSequenceNumber::Sequence {
                sequence: SequenceNumber::from_u128(1),
                sub_sequence: 0,
            },
            None,
        ))
        .await;
    assert!(matches!(late, Err(HeldWriteError::Lost(_))), "{late:?}");
    let lease = table.get("a").await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
}

#[tokio::test(start_paused = true)]
async fn a_write_racing_a_take_is_rejected_by_the_store() {
    let table = table_with(&["a"]).await;
    let old = worker("old", &table, config()).await;
    old.scan().await.unwrap();
    let held = old.held().pop().unwrap();
    // Someone takes the lease directly (as after an expiry the old owner did not notice).
    let current = table.get("a").await.unwrap().unwrap();
    table.take(&current, "new").await.unwrap();
    let result = held
        .write(&LeaseUpdate::checkpoint(
            ExtendedSequenceNumber::ShardEnd,
            None,
        ))
        .await;
    assert!(matches!(result, Err(HeldWriteError::Lost(_))));
    assert!(!table.get("a").await.unwrap().unwrap().is_finished());
}

#[tokio::test(start_paused = true)]
async fn per_lease_renewal_judges_by_the_lease_counter() {
    let mut c = config();
    c.renewal = Renewal::PerLease;
    let table = table_with(&["a"]).await;
    let dead = worker("dead", &table, c.clone()).await;
    dead.scan().await.unwrap();
    let w = worker("w", &table, c.clone()).await;
    w.scan().await.unwrap();
    // Renewals move the lease counter: never expired while they go on.
    run_for(Duration::from_secs(30), &[&dead, &w], &[&w]).await;
    assert!(w.held().is_empty());
    assert!(
        table.get("a").await.unwrap().unwrap().counter > 5,
        "renewed per lease"
    );
    assert!(
        table
            .list()
            .await
            .unwrap()
            .iter()
            .all(|l| l.heartbeat_of().is_none())
    );
    run_for(FAILOVER + Duration::from_secs(1), &[&w], &[&w]).await;
    assert_eq!(keys(&w.held()), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn finished_leases_and_blocked_children_are_not_taken() {
    let table = table_with(&[]).await;
    let mut parent = Lease::new("parent", ExtendedSequenceNumber::TrimHorizon);
    parent.owner = Some("other".into());
    table.create_if_absent(&parent).await.unwrap();
    let child = Lease::new("child", ExtendedSequenceNumber::TrimHorizon).with_parents(["parent"]);
    table.create_if_absent(&child).await.unwrap();
    let done = Lease::new("done", ExtendedSequenceNumber::ShardEnd);
    table.create_if_absent(&done).await.unwrap();
    let w = worker("w", &table, config()).await;
    let taken = w.scan().await.unwrap();
    assert!(taken.is_empty(), "took {:?}", keys(&taken));
    // Parent finishes: the child becomes available.
    let p = table.get("parent").await.unwrap().unwrap();
    table
        .checkpoint(&p, ExtendedSequenceNumber::ShardEnd)
        .await
        .unwrap();
    assert_eq!(keys(&w.full_scan().await.unwrap()), ["child"]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_cannot_renew_drops_its_leases_in_time() {
    for renewal in [Renewal::Heartbeat, Renewal::PerLease] {
        let mut c = config();
        c.renewal = renewal;
        let failing = Arc::new(FaultyTable::default());
        failing
            .create_if_absent(&Lease::new("a", ExtendedSequenceNumber::TrimHorizon))
            .await
            .unwrap();
        let table: Arc<dyn LeaseTable> = failing.clone();
        let w = worker("w", &table, c.clone()).await;
        w.scan().await.unwrap();
        let held = w.held().pop().unwrap();
        failing.set_failing(true);
        tokio::time::advance(c.renew_interval).await;
        assert!(!w.renew().await);
        assert!(
            held.is_valid(),
            "{renewal:?}: one failed renewal keeps the lease"
        );
        tokio::time::advance(c.validity() - c.renew_interval).await;
        w.renew().await;
        assert!(
            held.is_lost(),
            "{renewal:?}: past the validity the lease is dropped"
        );
        assert!(w.held().is_empty());
        assert_eq!(w.stats().lost, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_leaving_worker_hands_its_leases_to_the_least_loaded_live_worker() {
    let table = table_with(&["a", "b", "c", "d"]).await;
    let w1 = worker("w1", &table, config()).await;
    w1.scan().await.unwrap();
    let w2 = worker("w2", &table, config()).await;
    let w3 = worker("w3", &table, config()).await;
    // w2 takes one lease from w1 by a completed handoff; w3 holds nothing.
    {
        let a = table.get("a").await.unwrap().unwrap();
        table.request_handoff(&a, "w2").await.unwrap();
        w1.full_scan().await.unwrap();
        let held = w1.held().into_iter().find(|h| h.key() == "a").unwrap();
        held.release(None).await.unwrap();
        w2.full_scan().await.unwrap();
    }
    assert_eq!(keys(&w2.held()), ["a"]);
    w1.full_scan().await.unwrap();
    // w1 leaves: its three leases go to w3 (0), w2 (1), then w3 again.
    w1.begin_leaving().await;
    let mut given = Vec::new();
    for held in w1.held() {
        let successor = w1.successor_for(held.key());
        held.release(successor.as_deref()).await.unwrap();
        given.push(successor.unwrap());
    }
    given.sort();
    assert_eq!(given, ["w2", "w3", "w3"]);
    // The others count w1 out as soon as it announced leaving.
    let (_, live) = w2.candidates(&View::new(&table.list().await.unwrap()), Instant::now());
    assert_eq!(live, 2);
    w1.finish().await;
    assert!(table.get("kcl-rs/worker/w1").await.unwrap().is_none());
    // The successors were poked: their next scans read the table and find the leases in their
    // names.
    w2.scan().await.unwrap();
    w3.scan().await.unwrap();
    assert_eq!(w2.held().len() + w3.held().len(), 4);
    assert_eq!(w3.held().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_handoff_from_a_dead_owner_completes_after_the_failover_time() {
    let table = table_with(&["a", "b"]).await;
    let w1 = worker("w1", &table, config()).await;
    w1.scan().await.unwrap();
    let w2 = worker("w2", &table, config()).await;
    w2.backdate_visibility();
    w2.scan().await.unwrap();
    assert!(w2.has_pending());
    // w1 dies without handing over. w2 keeps waiting while w1 looks alive, then takes it.
    run_loops(FAILOVER - Duration::from_secs(1), &[&w2], &[&w2]).await;
    assert!(w2.held().is_empty());
    run_loops(Duration::from_secs(2), &[&w2], &[&w2]).await;
    assert_eq!(w2.stats().handoffs_forced, 1);
    // ... and the other lease as expired.
    assert_eq!(keys(&w2.held()), ["a", "b"]);
    let lease = table
        .get(&w2.held()[0].lease().await.key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.checkpoint_owner, None);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_rows_of_stopped_workers_are_removed() {
    let table = table_with(&[]).await;
    let gone = worker("gone", &table, config()).await;
    let w = worker("w", &table, config()).await;
    w.scan().await.unwrap();
    drop(gone);
    // Its takeover successor removes the row of a dead worker that owns nothing.
    run_for(FAILOVER - Duration::from_secs(1), &[&w], &[&w]).await;
    assert!(table.get("kcl-rs/worker/gone").await.unwrap().is_some());
    run_for(Duration::from_secs(2), &[&w], &[&w]).await;
    assert!(table.get("kcl-rs/worker/gone").await.unwrap().is_none());
    assert!(table.get("kcl-rs/worker/w").await.unwrap().is_some());
    // Anyone removes a row still for twice the failover time, turn or not: with per-lease
    // renewal there is no ring.
    let mut c = config();
    c.renewal = Renewal::PerLease;
    let table = table_with(&[]).await;
    let stale = worker("stale", &table, config()).await;
    let w = worker("w", &table, c).await;
    w.scan().await.unwrap();
    drop(stale);
    run_for(2 * FAILOVER - Duration::from_secs(1), &[&w], &[&w]).await;
    assert!(table.get("kcl-rs/worker/stale").await.unwrap().is_some());
    run_for(Duration::from_secs(2), &[&w], &[&w]).await;
    assert!(table.get("kcl-rs/worker/stale").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn leases_of_a_worker_whose_heartbeat_row_vanished_are_free_at_once() {
    let table = table_with(&["a", "b"]).await;
    let gone = worker("gone", &table, config()).await;
    gone.scan().await.unwrap();
    let w = worker("w", &table, config()).await;
    w.backdate_visibility();
    w.scan().await.unwrap();
    assert_eq!(w.stats().handoffs_requested, 1, "asked for its share");
    // The worker left without letting its leases go (say its releases failed): its row is gone.
    let row = table.get("kcl-rs/worker/gone").await.unwrap().unwrap();
    table.delete(&row.key, &row.expectation()).await.unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    w.renew().await;
    w.full_scan().await.unwrap();
    assert_eq!(
        keys(&w.held()),
        ["a", "b"],
        "no failover wait for a departed worker"
    );
    // A worker never seen with a row (a Java KCL worker) is judged by its lease counter instead.
    let table = table_with(&["j"]).await;
    let j = table.get("j").await.unwrap().unwrap();
    table.take(&j, "java-worker").await.unwrap();
    let w = worker("w", &table, config()).await;
    w.scan().await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    w.renew().await;
    w.full_scan().await.unwrap();
    assert!(
        w.held().is_empty(),
        "a Java lease is not taken before its counter is stale"
    );
    // Its loop reads the table at the moment the lease may have expired.
    run_loops(FAILOVER + Duration::from_secs(1), &[&w], &[&w]).await;
    assert_eq!(keys(&w.held()), ["j"]);
}

#[tokio::test(start_paused = true)]
async fn at_rest_only_the_heartbeat_rows_are_read_idly_and_fast_while_something_is_expected() {
    let c = config();
    let table = table_with(&["a", "b"]).await;
    let w1 = worker("w1", &table, c.clone()).await;
    // Just started: the first scan reads the table, and reads come fast for a while.
    w1.scan().await.unwrap();
    assert_eq!(w1.stats().full_scans, 1);
    assert_eq!(w1.held().len(), 2);
    assert_eq!(w1.next_scan_at() - Instant::now(), c.scan_interval);
    run_loops(c.settle_time() + Duration::from_secs(1), &[&w1], &[&w1]).await;
    // Settled: idle reads of the heartbeat rows alone.
    assert_eq!(w1.next_scan_at() - Instant::now(), c.idle_scan_interval);
    let before = w1.stats();
    run_loops(Duration::from_secs(60), &[&w1], &[&w1]).await;
    let after = w1.stats();
    assert_eq!(after.full_scans, before.full_scans, "no full read at rest");
    let reads = after.membership_reads - before.membership_reads;
    let expected = (60.0 / c.idle_scan_interval.as_secs_f64()) as u64;
    assert!(reads.abs_diff(expected) <= 1, "{reads} reads in 60 s");
    // A newcomer pokes w1 ahead of its steal: w1 reads fast until the steal is done.
    let w2 = worker("w2", &table, c.clone()).await;
    w2.scan().await.unwrap();
    assert_eq!(w2.stats().handoffs_requested, 0);
    w1.scan().await.unwrap();
    assert_eq!(w1.stats().pokes_received, 1);
    assert_eq!(w1.next_scan_at() - Instant::now(), c.scan_interval);
    // Once visible for an idle interval, w2 asks (a full read is due then).
    run_loops(
        c.idle_scan_interval - Duration::from_millis(100),
        &[&w1, &w2],
        &[&w2],
    )
    .await;
    assert_eq!(w2.stats().handoffs_requested, 0);
    run_loops(Duration::from_millis(200), &[&w1, &w2], &[&w2]).await;
    assert_eq!(w2.stats().handoffs_requested, 1);
}

#[tokio::test(start_paused = true)]
async fn the_first_successor_on_the_ring_takes_a_dead_worker_over_then_pushes_the_excess() {
    let c = config();
    let keys_: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let key_refs: Vec<&str> = keys_.iter().map(String::as_str).collect();
    let table = table_with(&key_refs).await;
    let a = worker("a", &table, c.clone()).await;
    let b = worker("b", &table, c.clone()).await;
    let d = worker("d", &table, c.clone()).await;
    for w in [&a, &b, &d] {
        w.backdate_visibility();
    }
    // Balance 2/2/2 through the loops.
    run_loops(Duration::from_secs(20), &[&a, &b, &d], &[&a, &b, &d]).await;
    let held = |w: &LeaseCoordinator| w.held().len();
    assert_eq!((held(&a), held(&b), held(&d)), (2, 2, 2));
    // b dies. d is its first live successor on the ring (a, d), a the second.
    let died = Instant::now();
    run_loops(c.failover_time + c.idle_scan_interval, &[&a, &d], &[&a, &d]).await;
    assert_eq!(held(&d), 4, "d took all of b's leases at once");
    assert!(d.stats().taken_expired >= 2);
    assert_eq!(a.stats().taken_expired, 0, "a waited for its turn");
    assert!(
        Instant::now() - died <= c.failover_time + c.idle_scan_interval * 2,
        "within failover plus an idle interval or so"
    );
    // d deleted b's row, and pushed its excess: a asked for one, d handed it over.
    run_loops(Duration::from_secs(10), &[&a, &d], &[&a, &d]).await;
    assert!(table.get("kcl-rs/worker/b").await.unwrap().is_none());
    // The handoff needs d's consumer: here nobody releases, so complete it by hand.
    for h in d.held() {
        if h.status() == HeldStatus::HandoffRequested {
            h.release(None).await.unwrap();
        }
    }
    run_loops(Duration::from_secs(5), &[&a, &d], &[&a, &d]).await;
    assert_eq!((held(&a), held(&d)), (3, 3));
    assert_eq!(a.stats().handoffs_received, 1);
}

#[tokio::test(start_paused = true)]
async fn the_next_successor_steps_in_when_the_first_is_dead_too() {
    let c = config();
    let table = table_with(&["s0", "s1", "s2", "s3"]).await;
    let a = worker("a", &table, c.clone()).await;
    let b = worker("b", &table, c.clone()).await;
    let d = worker("d", &table, c.clone()).await;
    for w in [&a, &b, &d] {
        w.backdate_visibility();
    }
    run_loops(Duration::from_secs(20), &[&a, &b, &d], &[&a, &b, &d]).await;
    assert_eq!(a.held().len() + b.held().len() + d.held().len(), 4);
    // b and d (b's first successor) die together: a takes both over, d's at its first turn,
    // b's an idle interval later (its second turn).
    run_loops(c.failover_time + c.idle_scan_interval * 3, &[&a], &[&a]).await;
    assert_eq!(a.held().len(), 4);
    assert!(table.get("kcl-rs/worker/b").await.unwrap().is_none());
    assert!(table.get("kcl-rs/worker/d").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_request_withdrawn_at_shutdown_leaves_the_owner_holding_its_lease() {
    let table = table_with(&["a", "b"]).await;
    let owner = worker("owner", &table, config()).await;
    owner.scan().await.unwrap();
    let asker = worker("asker", &table, config()).await;
    asker.backdate_visibility();
    asker.scan().await.unwrap();
    assert!(asker.has_pending());
    // The asker shuts down before the owner handed over: the request goes back.
    asker.finish().await;
    let marked = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.checkpoint_owner.as_deref() == Some("owner"))
        .count();
    assert_eq!(
        marked, 1,
        "the lease is back in the owner's name, the marker naming it"
    );
    // The owner never noticed; its next checkpoint adopts the lease and clears the marker.
    let position = ExtendedSequenceNumber::Sequence {
        sequence: SequenceNumber::from_u128(5),
        sub_sequence: 0,
    };
    for h in owner.held() {
        h.write(&LeaseUpdate::checkpoint(position.clone(), None))
            .await
            .unwrap();
        assert_eq!(h.status(), HeldStatus::Held);
        let lease = table.get(h.key()).await.unwrap().unwrap();
        assert_eq!(lease.owner.as_deref(), Some("owner"));
        assert_eq!(lease.checkpoint_owner, None);
        assert_eq!(lease.checkpoint, position);
    }
    assert_eq!(owner.held().len(), 2, "nothing lost");
}

/// Three workers that have watched each other for an idle interval.
async fn three_visible(table: &Arc<dyn LeaseTable>) -> [LeaseCoordinator; 3] {
    let c = config();
    let workers = [
        worker("a", table, c.clone()).await,
        worker("b", table, c.clone()).await,
        worker("c", table, c).await,
    ];
    for w in &workers {
        w.backdate_visibility();
        w.scan().await.unwrap();
    }
    workers
}

#[tokio::test(start_paused = true)]
async fn only_the_sync_leader_creates_leases_each_in_a_live_workers_name() {
    use crate::model::{KinesisModel, ModelConfig};
    use crate::shard_sync::{InitialPosition, SyncTarget};
    use crate::stream::LeaseNaming;
    let model = KinesisModel::new(ModelConfig::unlimited());
    model.create_stream("s", 6).unwrap();
    let table = table_with(&[]).await;
    let [a, b, c] = three_visible(&table).await;
    /// When the worker next checks its duty: at once-synced plus the interval, or as told.
    async fn sync(w: &LeaseCoordinator, model: &KinesisModel) -> Instant {
        let outcome = w
            .sync_shards(
                model,
                &[SyncTarget {
                    stream: "s".into(),
                    naming: LeaseNaming::Single,
                    initial: InitialPosition::TrimHorizon,
                }],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        match outcome {
            SyncOutcome::NotMine(at) => at,
            SyncOutcome::Synced(..) => Instant::now() + Duration::from_secs(60),
        }
    }
    // The others only check whether they lead; the smallest live id does.
    for w in [&b, &c] {
        let next = sync(w, &model).await;
        assert_eq!(next - Instant::now(), config().idle_scan_interval);
        assert_eq!(w.stats().created, 0);
    }
    let next = sync(&a, &model).await;
    assert_eq!(next - Instant::now(), Duration::from_secs(60));
    assert_eq!(a.stats().created, 6);
    let leases: Vec<Lease> = table
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.heartbeat_of().is_none())
        .collect();
    let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
    for l in &leases {
        *per_owner.entry(l.owner.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_owner.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
    // Each was poked (a poked itself): their next scans read the table and take them.
    for w in [&a, &b, &c] {
        assert_eq!(w.scan().await.unwrap().len(), 2, "{w:?}");
    }
    // A second sync creates nothing.
    tokio::time::advance(Duration::from_secs(60)).await;
    for w in [&a, &b, &c] {
        w.renew().await;
    }
    sync(&a, &model).await;
    assert_eq!(a.stats().created, 6);
}

#[tokio::test(start_paused = true)]
async fn the_leaders_audit_finds_a_lease_given_to_a_worker_that_never_heard_of_it() {
    use crate::model::{KinesisModel, ModelConfig};
    use crate::shard_sync::{InitialPosition, SyncTarget};
    use crate::stream::LeaseNaming;
    let model = KinesisModel::new(ModelConfig::unlimited());
    model.create_stream("s", 1).unwrap();
    let table = table_with(&[]).await;
    let [a, b, _c] = three_visible(&table).await;
    // A lease written in b's name by someone whose poke never arrived.
    let mut lost = Lease::new("lost", ExtendedSequenceNumber::TrimHorizon);
    lost.owner = Some("b".into());
    table.create_if_absent(&lost).await.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    for w in [&a, &b] {
        w.renew().await;
    }
    assert!(b.scan().await.unwrap().is_empty(), "b does not know");
    // The leader compares b's reported load (0) with the leases in its name (1), and pokes it.
    a.sync_shards(
        model.as_ref(),
        &[SyncTarget {
            stream: "s".into(),
            naming: LeaseNaming::Single,
            initial: InitialPosition::TrimHorizon,
        }],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(keys(&b.scan().await.unwrap()), ["lost"]);
}

/// A lease released after its shard failed is released in the table (not only forgotten, which
/// left it in this worker's name for the next scan to take back), and left alone for the
/// failover time, twice that after a second failure in a row, before it is taken again.
#[tokio::test(start_paused = true)]
async fn a_lease_released_after_a_failure_is_held_off_with_backoff() {
    let table = table_with(&["shard-1"]).await;
    let w = worker("w1", &table, config()).await;
    run_for(FAILOVER, &[&w], &[&w]).await;
    assert_eq!(keys(&w.held()), ["shard-1"]);
    for failures in 1..=2u32 {
        let held = w.held();
        w.release_failed(&held[0]).await;
        assert_eq!(
            owner(&table, "shard-1").await,
            None,
            "released in the table"
        );
        let hold_off = FAILOVER * 2u32.pow(failures - 1);
        run_for(hold_off - Duration::from_secs(1), &[&w], &[&w]).await;
        assert!(
            w.held().is_empty(),
            "retaken during the hold-off ({failures})"
        );
        assert_eq!(owner(&table, "shard-1").await, None);
        run_for(Duration::from_secs(3), &[&w], &[&w]).await;
        assert_eq!(
            keys(&w.held()),
            ["shard-1"],
            "taken again after it ({failures})"
        );
    }
}
