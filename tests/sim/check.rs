//! The invariants every simulation run must satisfy, checked on its log.
//!
//! 1. **No record lost**: every record produced is delivered at least once.
//! 2. **Order**: per partition key, first deliveries come in production order, across splits and
//!    merges.
//! 3. **One processor per shard**: once a session starts on a shard, no earlier session delivers
//!    on it, except the one batch a paused worker had in flight when it resumed (a zombie's
//!    batch, which cannot be checkpointed).
//! 4. **Fencing** (checked by the store as the run goes, [`super::faults::SimTable`]): a
//!    checkpoint is accepted only from the incarnation holding the lease, or the previous holder
//!    named by a handoff marker, and never moves backwards.
//! 5. **Resumption**: a session starts exactly at the shard's last accepted checkpoint and
//!    delivers only records after it.
//! 6. **Duplicates only after ungraceful failures**: a record is delivered again only if the
//!    session that delivered it before was killed, lost its lease, was paused, or hit injected
//!    store faults; and a session killed or paused without store faults leaves at most one
//!    cadence plus one batch to re-deliver.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use kcl_core::record::ExtendedSequenceNumber;

use super::SimConfig;
use super::log::{Delivery, End, Entries, IncidentKind, Session, Stamp};

/// Every violation of the invariants in `entries`.
pub fn check(entries: &Entries, config: &SimConfig) -> Vec<String> {
    let mut violations = entries.violations.clone();
    lost(entries, &mut violations);
    order(entries, &mut violations);
    exclusive(entries, &mut violations);
    resumption(entries, &mut violations);
    duplicates(entries, config, &mut violations);
    violations
}

fn lost(entries: &Entries, violations: &mut Vec<String>) {
    let delivered: HashSet<&Bytes> = entries.deliveries.iter().map(|d| &d.payload).collect();
    let missing: Vec<&Bytes> = entries
        .produced
        .iter()
        .map(|p| &p.payload)
        .filter(|p| !delivered.contains(p))
        .collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{} of {} records never delivered, e.g. {:?}",
            missing.len(),
            entries.produced.len(),
            &missing[..missing.len().min(5)]
        ));
    }
}

fn order(entries: &Entries, violations: &mut Vec<String>) {
    let mut expected: HashMap<&str, Vec<&Bytes>> = HashMap::new();
    for p in &entries.produced {
        expected.entry(p.key.as_str()).or_default().push(&p.payload);
    }
    let mut first: HashMap<&str, Vec<&Bytes>> = HashMap::new();
    let mut seen = HashSet::new();
    for d in &entries.deliveries {
        if seen.insert(&d.payload) {
            first.entry(d.key.as_str()).or_default().push(&d.payload);
        }
    }
    let mut keys: Vec<&&str> = expected.keys().collect();
    keys.sort();
    for key in keys {
        let want = &expected[*key];
        let got = first.get(*key).cloned().unwrap_or_default();
        if let Some(i) = want.iter().zip(&got).position(|(w, g)| w != g) {
            violations.push(format!(
                "first deliveries of {key} out of order at #{i}: expected {:?}, got {:?}",
                want[i], got[i]
            ));
        }
    }
}

/// Whether `d` belongs to a batch that was in flight when its paused worker resumed: handed to
/// the processor while the worker's claim was still valid, stuck until the resume. (A pause here
/// freezes the worker's I/O and its processor, so a batch can be handed over early in the pause;
/// a frozen process would have begun it before. Either way it is the one zombie batch.)
fn zombie_batch(entries: &Entries, session: &Session, d: &Delivery) -> bool {
    entries.incidents.iter().any(|i| {
        i.incarnation == session.incarnation
            && i.kind == IncidentKind::Paused
            && d.entered.seq < i.end.seq
            && i.end.seq <= d.delivered.seq
    })
}

fn exclusive(entries: &Entries, violations: &mut Vec<String>) {
    // For every session, when the next session on the same shard started.
    // A zombie session that delivered nothing and found its lease lost never processed: it
    // does not take the shard from anyone.
    let delivering: HashSet<usize> = entries.deliveries.iter().map(|d| d.session).collect();
    let mut by_shard: BTreeMap<&str, Vec<(usize, &Session)>> = BTreeMap::new();
    for (id, s) in entries.sessions.iter().enumerate() {
        let idle_zombie = !delivering.contains(&id) && matches!(s.ended, Some((_, End::LeaseLost)));
        if !idle_zombie {
            by_shard.entry(s.shard.as_str()).or_default().push((id, s));
        }
    }
    let mut superseded: HashMap<usize, (Stamp, usize)> = HashMap::new();
    for sessions in by_shard.values_mut() {
        sessions.sort_by_key(|(_, s)| s.started);
        for pair in sessions.windows(2) {
            superseded.insert(pair[0].0, (pair[1].1.started, pair[1].0));
        }
    }
    let mut reported = HashSet::new();
    for d in &entries.deliveries {
        let Some((next_start, next)) = superseded.get(&d.session) else {
            continue;
        };
        let session = &entries.sessions[d.session];
        if d.delivered.seq > next_start.seq
            && !zombie_batch(entries, session, d)
            && reported.insert(d.session)
        {
            let other = &entries.sessions[*next];
            violations.push(format!(
                "two processors on {} at once: {} (incarnation {}) delivered a batch (entered \
                 {:?}, delivered {:?}) after {} (incarnation {}) started at {:?}",
                session.shard,
                session.worker,
                session.incarnation,
                d.entered,
                d.delivered,
                other.worker,
                other.incarnation,
                next_start
            ));
        }
    }
}

fn resumption(entries: &Entries, violations: &mut Vec<String>) {
    for (id, session) in entries.sessions.iter().enumerate() {
        let last = entries
            .checkpoints
            .iter()
            .rfind(|c| c.shard == session.shard && c.at.seq < session.started.seq);
        if let Some(last) = last
            && last.position != session.resumed_from
        {
            violations.push(format!(
                "session on {} by {} resumed from {} but the last accepted checkpoint is {}",
                session.shard, session.worker, session.resumed_from, last.position
            ));
        }
        if let ExtendedSequenceNumber::Sequence { .. } = session.resumed_from
            && let Some(d) = entries
                .deliveries
                .iter()
                .find(|d| d.session == id && d.position <= session.resumed_from)
        {
            violations.push(format!(
                "session on {} by {} resumed from {} but delivered {} again",
                session.shard, session.worker, session.resumed_from, d.position
            ));
        }
    }
}

fn duplicates(entries: &Entries, config: &SimConfig, violations: &mut Vec<String>) {
    // Anything that happened to the previous holder between its delivery and the start of the
    // session delivering again (a kill, a pause, a store fault during its final writes).
    let faulted = |session: &Session, from: Stamp, until: Stamp| {
        entries.incidents.iter().any(|i| {
            i.incarnation == session.incarnation
                && i.end.seq >= from.seq
                && i.start.seq <= until.seq
        })
    };
    let mut by_payload: HashMap<&Bytes, Vec<&Delivery>> = HashMap::new();
    for d in &entries.deliveries {
        by_payload.entry(&d.payload).or_default().push(d);
    }
    // Records each session left for others to deliver again.
    let mut redelivered_from: HashMap<usize, usize> = HashMap::new();
    let mut reported = 0;
    let mut payloads: Vec<&&Bytes> = by_payload.keys().collect();
    payloads.sort();
    for payload in payloads {
        let deliveries = &by_payload[*payload];
        for pair in deliveries.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let p = &entries.sessions[prev.session];
            let n = &entries.sessions[next.session];
            if prev.session == next.session {
                violations.push(format!(
                    "{payload:?} delivered twice in one session on {}",
                    p.shard
                ));
                continue;
            }
            *redelivered_from.entry(prev.session).or_default() += 1;
            let ungraceful_end = matches!(p.ended, None | Some((_, End::Killed | End::LeaseLost)));
            let excused = ungraceful_end
                || faulted(p, prev.delivered, n.started)
                || zombie_batch(entries, n, next)
                || zombie_batch(entries, p, prev);
            if !excused && reported < 5 {
                reported += 1;
                violations.push(format!(
                    "{payload:?} delivered again by {} (incarnation {}) although {} (incarnation \
                     {}) ended its session on {} gracefully ({:?}) without faults",
                    n.worker, n.incarnation, p.worker, p.incarnation, p.shard, p.ended
                ));
            }
        }
    }
    // The cadence bounds what a crash or a pause (without store faults) leaves behind.
    let bound = config.every_records as usize + config.max_records_per_call as usize * 5;
    for (session, n) in redelivered_from {
        let s = &entries.sessions[session];
        if n > bound && !faulted_by_store(entries, s) {
            violations.push(format!(
                "{n} records of {} by {} (incarnation {}) delivered again; the cadence bounds it \
                 to {bound}",
                s.shard, s.worker, s.incarnation
            ));
        }
    }
}

/// Whether the incarnation of `session` hit injected store faults during it.
fn faulted_by_store(entries: &Entries, session: &Session) -> bool {
    let until = session.ended.map(|(at, _)| at.seq).unwrap_or(u64::MAX);
    entries.incidents.iter().any(|i| {
        i.incarnation == session.incarnation
            && matches!(i.kind, IncidentKind::StoreFault(_))
            && i.start.seq >= session.started.seq
            && i.start.seq <= until
    })
}

#[cfg(test)]
mod tests {
    //! The checker must catch what it claims to catch: synthetic logs with one violation each.

    use super::*;
    use crate::sim::log::{Incident, Produced};
    use kcl_core::record::SequenceNumber;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            seq,
            at: std::time::Duration::from_millis(seq),
        }
    }

    fn pos(n: u128) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::Sequence {
            sequence: SequenceNumber::from_u128(n),
            sub_sequence: 0,
        }
    }

    fn session(inc: u32, started: u64, ended: Option<(u64, End)>) -> Session {
        Session {
            incarnation: inc,
            worker: format!("w{inc}"),
            shard: "s".into(),
            started: stamp(started),
            resumed_from: ExtendedSequenceNumber::TrimHorizon,
            ended: ended.map(|(at, e)| (stamp(at), e)),
        }
    }

    fn delivery(session: usize, at: u64, n: u128) -> Delivery {
        Delivery {
            entered: stamp(at),
            delivered: stamp(at),
            session,
            position: pos(n),
            key: "k".into(),
            payload: Bytes::from(format!("k:{n}")),
        }
    }

    fn produced(n: u128) -> Produced {
        Produced {
            key: "k".into(),
            payload: Bytes::from(format!("k:{n}")),
        }
    }

    fn config() -> SimConfig {
        SimConfig::for_seed(0)
    }

    #[test]
    fn a_clean_log_passes() {
        let e = Entries {
            produced: vec![produced(1), produced(2)],
            sessions: vec![session(0, 1, Some((10, End::Shutdown)))],
            deliveries: vec![delivery(0, 2, 1), delivery(0, 3, 2)],
            ..Entries::default()
        };
        assert_eq!(check(&e, &config()), Vec::<String>::new());
    }

    #[test]
    fn loss_disorder_overlap_and_graceful_duplicates_are_caught() {
        // Lost: record 3 never delivered.
        let mut e = Entries {
            produced: vec![produced(1), produced(2), produced(3)],
            sessions: vec![session(0, 1, Some((10, End::Shutdown)))],
            deliveries: vec![delivery(0, 2, 1), delivery(0, 3, 2)],
            ..Entries::default()
        };
        assert!(check(&e, &config())[0].contains("never delivered"));
        // Out of order.
        e.deliveries = vec![delivery(0, 2, 2), delivery(0, 3, 1), delivery(0, 4, 3)];
        assert!(
            check(&e, &config())
                .iter()
                .any(|v| v.contains("out of order"))
        );
        // Overlap: session 0 delivers after session 1 started; graceful end, so the duplicate
        // is flagged too.
        e.deliveries = vec![
            delivery(0, 2, 1),
            delivery(1, 5, 2),
            delivery(0, 6, 2),
            delivery(1, 7, 3),
        ];
        e.sessions = vec![
            session(0, 1, Some((8, End::Shutdown))),
            session(1, 4, Some((10, End::Shutdown))),
        ];
        let v = check(&e, &config());
        assert!(v.iter().any(|v| v.contains("two processors")), "{v:?}");
        // A zombie's in-flight batch is excused: it was entered before a pause, delivered after.
        e.deliveries[2].entered = stamp(3);
        e.incidents.push(Incident {
            incarnation: 0,
            kind: IncidentKind::Paused,
            start: stamp(3).max(stamp(4)),
            end: stamp(6),
        });
        let v = check(&e, &config());
        assert!(!v.iter().any(|v| v.contains("two processors")), "{v:?}");
        // A re-delivery after a clean graceful end is flagged; after a kill it is not.
        let mut e = Entries {
            produced: vec![produced(1), produced(2)],
            sessions: vec![
                session(0, 1, Some((4, End::Shutdown))),
                session(1, 5, Some((10, End::Shutdown))),
            ],
            deliveries: vec![delivery(0, 2, 1), delivery(0, 3, 2), delivery(1, 6, 2)],
            ..Entries::default()
        };
        assert!(
            check(&e, &config())
                .iter()
                .any(|v| v.contains("gracefully"))
        );
        e.sessions[0].ended = Some((stamp(4), End::Killed));
        assert_eq!(check(&e, &config()), Vec::<String>::new());
    }

    #[test]
    fn resuming_anywhere_but_the_last_checkpoint_is_caught() {
        let mut e = Entries {
            produced: vec![produced(1), produced(2)],
            sessions: vec![
                session(0, 1, Some((4, End::Killed))),
                session(1, 5, Some((10, End::Shutdown))),
            ],
            deliveries: vec![delivery(0, 2, 1), delivery(0, 3, 2), delivery(1, 6, 2)],
            checkpoints: vec![crate::sim::log::AcceptedCheckpoint {
                at: stamp(3),
                incarnation: 0,
                shard: "s".into(),
                position: pos(1),
            }],
            ..Entries::default()
        };
        assert!(
            check(&e, &config())
                .iter()
                .any(|v| v.contains("resumed from"))
        );
        e.sessions[1].resumed_from = pos(1);
        assert_eq!(check(&e, &config()), Vec::<String>::new());
        e.sessions[1].resumed_from = pos(2);
        e.checkpoints[0].position = pos(2);
        assert!(check(&e, &config()).iter().any(|v| v.contains("again")));
    }
}
