//! This worker's own liveness: its heartbeat row and how long it may act on its leases.
//!
//! With [`Renewal::Heartbeat`] the worker increments the counter of its heartbeat row
//! ([`Lease::worker_heartbeat`]) every renewal interval. The instant a successful heartbeat was
//! *sent* bounds when any other worker can have seen it, so the worker may act on its leases until
//! that instant plus [`LeaseConfig::validity`] (the failover time minus a safety margin): by then it
//! has stopped, before any observer, counting on its own clock, may consider the heartbeat stale.
//!
//! The row also says whether the worker is *leaving* (graceful shutdown in progress): its owner is
//! cleared while the counter keeps moving, so others stop counting it for balancing and never hand
//! it leases, but do not consider its leases expired.
//!
//! With [`Renewal::PerLease`] there is no row; each lease's own last write is its proof of life.
//!
//! **Epochs.** A heartbeat whose reply comes back more than the validity after the previous one
//! was sent (the worker was paused or cut off in between) starts a new epoch. A lease is only valid in the epoch it
//! was acquired in, so a lapse invalidates every lease held before it at once, even when the
//! heartbeat that ends the lapse is written before anyone got round to dropping them.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::config::{LeaseConfig, Renewal};
use super::{Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate};

/// When this worker's claim on its leases was last renewed, and how long that lasts.
#[derive(Debug)]
pub(crate) struct Liveness {
    worker_id: String,
    renewal: Renewal,
    validity: Duration,
    /// Send instant of the last successful heartbeat (heartbeat mode) and the current epoch.
    heartbeat: Mutex<(Option<Instant>, u64)>,
}

impl Liveness {
    pub(crate) fn new(worker_id: &str, config: &LeaseConfig) -> Self {
        Self {
            worker_id: worker_id.to_owned(),
            renewal: config.renewal,
            validity: config.validity(),
            heartbeat: Mutex::new((None, 0)),
        }
    }

    pub(crate) fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, u64)> {
        self.heartbeat.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_heartbeat(&self) -> Option<Instant> {
        self.state().0
    }

    /// Whether a heartbeat ever succeeded.
    pub(crate) fn ever_renewed(&self) -> bool {
        self.last_heartbeat().is_some()
    }

    /// The current epoch (see the module docs).
    pub(crate) fn epoch(&self) -> u64 {
        self.state().1
    }

    /// Records a heartbeat sent at `sent` whose reply came back now. It extends the claim from
    /// `sent` (it cannot have landed earlier), but only continues the epoch if the reply came
    /// back before the previous heartbeat's validity ran out: a heartbeat held up in a paused
    /// process may land after others saw the previous one go stale and took over.
    fn record_heartbeat(&self, sent: Instant) {
        let received = Instant::now();
        let mut state = self.state();
        match state.0 {
            Some(last) if last >= sent => {}
            Some(last) => {
                if received >= last + self.validity {
                    state.1 += 1;
                }
                state.0 = Some(sent);
            }
            None => state.0 = Some(sent),
        }
    }

    /// Whether a lease acquired in `epoch` and last written at `lease_written_at` may still be
    /// acted on.
    pub(crate) fn is_valid(&self, epoch: u64, lease_written_at: Instant) -> bool {
        let renewed = match self.renewal {
            Renewal::Heartbeat => {
                let (last, current) = *self.state();
                match last {
                    Some(at) if current == epoch => at,
                    _ => return false,
                }
            }
            Renewal::PerLease => lease_written_at,
        };
        Instant::now() < renewed + self.validity
    }

    /// Whether the worker as a whole may take and hold leases now.
    pub(crate) fn is_alive(&self) -> bool {
        match self.renewal {
            Renewal::Heartbeat => self
                .last_heartbeat()
                .is_some_and(|at| Instant::now() < at + self.validity),
            Renewal::PerLease => true,
        }
    }
}

/// This worker's heartbeat row, as last written.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    row: tokio::sync::Mutex<Option<Lease>>,
}

impl Heartbeat {
    /// Writes one heartbeat (creating the row if needed); records success in `liveness`.
    /// `leaving` clears the row's owner (graceful shutdown in progress); `load` is reported in
    /// the row ([`Lease::load`]). Returns the row's poke count ([`Lease::pokes`]) as written.
    pub(crate) async fn beat(
        &self,
        table: &dyn LeaseTable,
        liveness: &Liveness,
        leaving: bool,
        load: u64,
    ) -> Result<u64, LeaseError> {
        let mut row = self.row.lock().await;
        let me = liveness.worker_id();
        // At most three steps: create or read the row, then write it.
        for _ in 0..3 {
            let sent = Instant::now();
            let Some(current) = row.as_ref() else {
                // A random first counter: a row deleted as stale and created again by a worker
                // with the same id must never look unchanged to a worker that saw the old one
                // (the ABA problem), or that worker would think the new one dead.
                let mut fresh = Lease::worker_heartbeat(me);
                fresh.counter = fastrand::u64(..1 << 62);
                fresh.load = Some(load);
                if table.create_if_absent(&fresh).await? {
                    debug!("heartbeat row created");
                    liveness.record_heartbeat(sent);
                    let pokes = fresh.pokes();
                    *row = Some(fresh);
                    if !leaving {
                        return Ok(pokes);
                    }
                } else {
                    // Left by an earlier run with this worker id (or deleted and re-created
                    // concurrently): adopt it with the next write.
                    *row = table.get(&fresh.key).await?;
                }
                continue;
            };
            let owner = if leaving { None } else { Some(me.to_owned()) };
            let update = LeaseUpdate {
                owner: (current.owner != owner).then_some(owner),
                load: Some(load),
                ..LeaseUpdate::default()
            };
            match beat_reconciled(table, current, &update).await {
                Ok(written) => {
                    liveness.record_heartbeat(sent);
                    let pokes = written.pokes();
                    *row = Some(written);
                    return Ok(pokes);
                }
                Err(LeaseError::NotFound(_)) => {
                    info!("heartbeat row was removed as stale; re-creating it");
                    *row = None;
                }
                Err(LeaseError::ConditionFailed { current, .. }) => {
                    warn!(
                        worker_id = me,
                        "heartbeat row changed by someone else: is this worker id used by two \
                         processes at once?"
                    );
                    *row = current.map(|c| *c);
                    if row.is_none() {
                        *row = table.get(&Lease::worker_heartbeat(me).key).await?;
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Err(LeaseError::Unavailable(
            "heartbeat row kept changing under this worker".to_owned(),
        ))
    }

    /// Deletes the heartbeat row (graceful shutdown, after every lease was let go).
    pub(crate) async fn remove(&self, table: &dyn LeaseTable) -> Result<(), LeaseError> {
        let mut row = self.row.lock().await;
        let Some(current) = row.take() else {
            return Ok(());
        };
        let expect = Expectation {
            counter: Some(current.counter),
            owner: Some(current.owner.clone()),
        };
        match table.delete(&current.key, &expect).await {
            Ok(()) | Err(LeaseError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// One heartbeat write, conditional on the row as last written. When its outcome is unknown
/// (the reply was lost), the row is read back: the counter one higher and the owner as written
/// mean it landed. Other attributes may have moved meanwhile: others poke the row.
async fn beat_reconciled(
    table: &dyn LeaseTable,
    row: &Lease,
    update: &LeaseUpdate,
) -> Result<Lease, LeaseError> {
    match table.update(&row.key, &row.expectation(), update).await {
        Err(LeaseError::Unknown(reason)) => {
            let mut expected = row.clone();
            update.apply(&mut expected);
            match table.get(&row.key).await? {
                Some(current)
                    if current.counter == expected.counter && current.owner == expected.owner =>
                {
                    Ok(current)
                }
                Some(current) if current.counter == row.counter && current.owner == row.owner => {
                    Err(LeaseError::Unavailable(reason))
                }
                Some(current) => Err(LeaseError::ConditionFailed {
                    key: row.key.clone(),
                    current: Some(Box::new(current)),
                }),
                None => Err(LeaseError::NotFound(row.key.clone())),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::InMemoryLeaseTable;

    fn config() -> LeaseConfig {
        LeaseConfig::with_failover(Duration::from_secs(10))
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_valid_for_the_failover_time_minus_the_margin() {
        let table = InMemoryLeaseTable::new();
        let liveness = Liveness::new("w", &config());
        assert!(!liveness.is_alive(), "no heartbeat yet");
        let heartbeat = Heartbeat::default();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert!(liveness.is_alive());
        let row = table.get("kcl-rs/worker/w").await.unwrap().unwrap();
        assert_eq!(row.owner.as_deref(), Some("w"));
        assert!(row.is_finished(), "a heartbeat row never looks like work");
        tokio::time::advance(config().validity() - Duration::from_millis(1)).await;
        assert!(liveness.is_alive());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!liveness.is_alive());
        // The next beat increments the counter and restores liveness.
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert!(liveness.is_alive());
        let renewed = table.get("kcl-rs/worker/w").await.unwrap().unwrap();
        assert_eq!(renewed.counter, row.counter + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_after_a_lapse_starts_a_new_epoch() {
        let table = InMemoryLeaseTable::new();
        let liveness = Liveness::new("w", &config());
        let heartbeat = Heartbeat::default();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        let acquired = (liveness.epoch(), Instant::now());
        tokio::time::advance(config().renew_interval).await;
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert!(liveness.is_valid(acquired.0, acquired.1), "renewed in time");
        // Paused past the validity; the next heartbeat succeeds at once (say it re-created a row
        // removed meanwhile): leases from before the lapse stay invalid.
        tokio::time::advance(config().failover_time * 3).await;
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert!(liveness.is_alive());
        assert!(!liveness.is_valid(acquired.0, acquired.1));
        assert!(liveness.is_valid(liveness.epoch(), Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_held_up_past_the_validity_starts_a_new_epoch() {
        let table = crate::lease::test_table::FaultyTable::default();
        let liveness = Liveness::new("w", &config());
        let heartbeat = Heartbeat::default();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        let epoch = liveness.epoch();
        tokio::time::advance(config().renew_interval).await;
        // Sent in time, but it reaches the store (and replies) only after the previous one's
        // validity ran out: others may have taken over meanwhile.
        table.set_delay(config().failover_time);
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert_ne!(liveness.epoch(), epoch);
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_clears_the_owner_and_remove_deletes_the_row() {
        let table = InMemoryLeaseTable::new();
        let liveness = Liveness::new("w", &config());
        let heartbeat = Heartbeat::default();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        heartbeat.beat(&table, &liveness, true, 0).await.unwrap();
        let row = table.get("kcl-rs/worker/w").await.unwrap().unwrap();
        assert_eq!(row.owner, None);
        heartbeat.remove(&table).await.unwrap();
        assert!(table.get("kcl-rs/worker/w").await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_row_left_by_an_earlier_run_is_adopted_and_a_removed_row_recreated() {
        let table = InMemoryLeaseTable::new();
        let mut old = Lease::worker_heartbeat("w");
        old.counter = 41;
        old.owner = None;
        table.create_if_absent(&old).await.unwrap();
        let liveness = Liveness::new("w", &config());
        let heartbeat = Heartbeat::default();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        let row = table.get("kcl-rs/worker/w").await.unwrap().unwrap();
        assert_eq!((row.counter, row.owner.as_deref()), (42, Some("w")));
        // Someone removed it as stale: the next beat re-creates it.
        table
            .delete(&row.key, &Expectation::default())
            .await
            .unwrap();
        heartbeat.beat(&table, &liveness, false, 0).await.unwrap();
        assert!(table.get("kcl-rs/worker/w").await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn per_lease_renewal_judges_each_lease_by_its_own_last_write() {
        let mut c = config();
        c.renewal = Renewal::PerLease;
        let liveness = Liveness::new("w", &c);
        assert!(liveness.is_alive());
        let written = Instant::now();
        assert!(liveness.is_valid(0, written));
        tokio::time::advance(c.validity()).await;
        assert!(!liveness.is_valid(0, written));
    }
}
