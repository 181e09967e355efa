//! Which leases to take, give and ask for: a pure function of one read of the table.
//!
//! Every full read, each worker decides on its own, from what it read:
//!
//! 1. **Fair share.** `target = ceil(assignable leases / live workers)`, capped by
//!    `max_leases_for_worker`. Assignable leases are unfinished leases whose parents have all
//!    finished: a finished (`SHARD_END`) lease never counts, and neither does a child still waiting
//!    for its parents, so closed shards and blocked children cannot crowd out open shards (Java KCL
//!    issues #837, #662). Live workers are this one, every worker with a fresh heartbeat that is not
//!    leaving, and every owner of a lease that has not expired.
//! 2. **Leases in its name** (assigned to it, left by an earlier run) are all taken: nobody else
//!    would process them. So are the leases of a dead worker it is responsible for (its turn on
//!    the takeover ring), so a takeover never waits for balancing.
//! 3. **Free leases** (unowned, or of a departed or expired owner nobody is responsible for) are
//!    taken, the longest-unattended first, up to the target; the rest are **assigned** to the
//!    least loaded other live workers, so no free lease waits for someone to happen to look.
//! 4. **Steal only when nothing is free**, from the most loaded worker, and only while it holds at
//!    least two leases more than this worker; at most `max_steals_per_cycle` per read. A steal is
//!    a handoff request: the owner finishes its batch, checkpoints and hands over.
//! 5. **Push.** A worker left above its target while some live worker holds at least two fewer
//!    names those workers, least loaded first, as many as its excess: the coordinator pokes them
//!    and they steal (rule 4).
//!
//! **Why leases do not bounce.** A lease only moves by a steal from a worker holding `v` leases
//! to one holding `m <= v - 2`. Such a move lowers the sum of the squares of all workers' loads by
//! `2 (v - m) - 2 >= 2`, and assignments only give free leases to the least loaded, so with a
//! consistent view the number of moves is finite and the final state has every pair of workers
//! within one lease of each other, except that no one steals above its target. A lease moving
//! back would need the opposite inequality at the same time. Views taken at slightly different
//! times can make two workers steal from the same victim in one cycle; each still only steals
//! below its own target, so the excess is bounded by one cycle's steals and undone, if needed,
//! by the same rule.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Lease;

/// Where an assignable lease stands, as this worker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing<'a> {
    /// Held by this worker, or requested by it and being handed over.
    Mine,
    /// In this worker's name without being held: assigned to it, or left by an earlier run.
    InMyName,
    /// Free to take: unowned, or its owner departed or expired.
    Free,
    /// Its owner is dead and this worker's turn has come: take it whatever the target.
    Rescue,
    /// Its owner is dead and another worker's turn comes first: leave it.
    Waiting,
    /// Held by a live worker that can be asked for it.
    Owned(&'a str),
    /// Held by a live worker but not to be asked for (already being handed over, or the owner is
    /// leaving): counts for its owner's load only.
    Settled(&'a str),
}

/// An assignable lease, with what the scan found about it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate<'a> {
    pub lease: &'a Lease,
    pub standing: Standing<'a>,
    /// How long the lease (or its owner) has looked unattended.
    pub idle_for: Duration,
}

/// Limits of one decision.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub live_workers: usize,
    pub max_leases_for_worker: usize,
    pub max_steals_per_cycle: usize,
}

/// What to do this read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// This worker's fair share.
    pub target: usize,
    /// Leases to take now.
    pub take: Vec<&'a Lease>,
    /// Free leases to write in another worker's name, and whose.
    pub assign: Vec<(&'a Lease, &'a str)>,
    /// Leases to ask their owners for.
    pub steal: Vec<&'a Lease>,
    /// Under-loaded workers to poke so that they steal (this worker is above its target).
    pub push: Vec<&'a str>,
}

/// Decides what to take, assign, steal and push. `receivers` are the other live workers that
/// may be given leases (not leaving, fresh heartbeat). `pick(n)` chooses one of `n` equally good
/// leases of a victim (random in production, seeded in simulations).
pub(crate) fn plan<'a>(
    candidates: &[Candidate<'a>],
    receivers: &[&'a str],
    limits: Limits,
    mut pick: impl FnMut(usize) -> usize,
) -> Plan<'a> {
    let target = candidates
        .len()
        .div_ceil(limits.live_workers.max(1))
        .min(limits.max_leases_for_worker);
    let mine = candidates
        .iter()
        .filter(|c| c.standing == Standing::Mine)
        .count();
    let mut plan = Plan {
        target,
        ..Plan::default()
    };
    // Loads of the others: what they hold, and zero for receivers holding nothing.
    let mut load: BTreeMap<&str, usize> = receivers.iter().map(|w| (*w, 0)).collect();
    let mut stealable: BTreeMap<&str, Vec<&'a Lease>> = BTreeMap::new();
    for c in candidates {
        match c.standing {
            Standing::Owned(owner) => {
                *load.entry(owner).or_default() += 1;
                stealable.entry(owner).or_default().push(c.lease);
            }
            Standing::Settled(owner) => *load.entry(owner).or_default() += 1,
            _ => {}
        }
    }
    let room = |held: usize| limits.max_leases_for_worker.saturating_sub(held);

    // In this worker's name, then rescues: all of them, up to the worker maximum.
    let mut leftover: Vec<&Candidate<'a>> = Vec::new();
    for standing in [Standing::InMyName, Standing::Rescue] {
        for c in candidates.iter().filter(|c| c.standing == standing) {
            if room(mine + plan.take.len()) > 0 {
                plan.take.push(c.lease);
            } else {
                leftover.push(c);
            }
        }
    }
    // Free leases: up to the target, the rest to the least loaded others.
    let mut free: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| c.standing == Standing::Free)
        .collect();
    let any_free = !free.is_empty();
    free.sort_by(|a, b| {
        b.idle_for
            .cmp(&a.idle_for)
            .then_with(|| a.lease.key.cmp(&b.lease.key))
    });
    for c in free {
        if mine + plan.take.len() < target {
            plan.take.push(c.lease);
        } else {
            leftover.push(c);
        }
    }
    for c in leftover {
        let receiver = load
            .iter()
            .filter(|(w, held)| receivers.contains(w) && room(**held) > 0)
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(w, _)| *w);
        if let Some(receiver) = receiver {
            plan.assign.push((c.lease, receiver));
            *load.entry(receiver).or_default() += 1;
        }
    }
    let mine_now = mine + plan.take.len();

    if mine_now > target {
        // Push: name the least loaded workers that hold two fewer, one per lease in excess.
        let mut under: Vec<(&str, usize)> = load
            .iter()
            .filter(|(w, held)| receivers.contains(w) && **held + 2 <= mine_now)
            .map(|(w, held)| (*w, *held))
            .collect();
        under.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
        plan.push = under
            .into_iter()
            .take(mine_now - target)
            .map(|(w, _)| w)
            .collect();
        return plan;
    }
    if mine_now >= target || any_free {
        return plan;
    }

    // Nothing free: ask the most loaded workers, while they hold at least two more than us.
    let mut mine_now = mine_now;
    let budget = (target - mine_now).min(limits.max_steals_per_cycle);
    while plan.steal.len() < budget {
        // The most loaded worker that still has a lease we may ask for (ties: smallest id).
        let victim = load
            .iter()
            .filter(|(owner, _)| stealable.get(*owner).is_some_and(|l| !l.is_empty()))
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(owner, count)| (*owner, *count));
        let Some((victim, count)) = victim else {
            break;
        };
        if count < mine_now + 2 {
            break;
        }
        let Some(leases) = stealable.get_mut(victim) else {
            break;
        };
        let chosen = leases.swap_remove(pick(leases.len()).min(leases.len() - 1));
        plan.steal.push(chosen);
        if let Some(count) = load.get_mut(victim) {
            *count -= 1;
        }
        mine_now += 1;
    }
    plan
}

/// The workers the sync leader's audit pokes: live workers holding at least two leases fewer
/// than the most loaded one, least loaded first, at most `limit`. `loads` has every live worker.
pub(crate) fn under_loaded<'a>(loads: &BTreeMap<&'a str, usize>, limit: usize) -> Vec<&'a str> {
    let Some(max) = loads.values().copied().max() else {
        return Vec::new();
    };
    let mut under: Vec<(&str, usize)> = loads
        .iter()
        .filter(|(_, held)| **held + 2 <= max)
        .map(|(w, held)| (*w, *held))
        .collect();
    under.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    under.into_iter().take(limit).map(|(w, _)| w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ExtendedSequenceNumber;

    fn leases(n: usize) -> Vec<Lease> {
        (0..n)
            .map(|i| Lease::new(format!("shard-{i:02}"), ExtendedSequenceNumber::TrimHorizon))
            .collect()
    }

    fn limits(live_workers: usize) -> Limits {
        Limits {
            live_workers,
            max_leases_for_worker: usize::MAX,
            max_steals_per_cycle: usize::MAX,
        }
    }

    fn keys(leases: &[&Lease]) -> Vec<String> {
        leases.iter().map(|l| l.key.clone()).collect()
    }

    /// Candidates owned as `owners[i]` ("me", "" for free, or a worker id).
    fn candidates<'a>(leases: &'a [Lease], owners: &[&'a str]) -> Vec<Candidate<'a>> {
        leases
            .iter()
            .zip(owners)
            .map(|(lease, owner)| Candidate {
                lease,
                standing: match *owner {
                    "me" => Standing::Mine,
                    "" => Standing::Free,
                    other => Standing::Owned(other),
                },
                idle_for: Duration::ZERO,
            })
            .collect()
    }

    #[test]
    fn takes_free_leases_longest_unattended_first_up_to_the_fair_share() {
        let all = leases(5);
        let mut c = candidates(&all, &["", "", "", "", ""]);
        c[3].idle_for = Duration::from_secs(30);
        c[1].idle_for = Duration::from_secs(20);
        let plan = plan(&c, &[], limits(2), |_| 0);
        assert_eq!(plan.target, 3);
        assert_eq!(keys(&plan.take), ["shard-03", "shard-01", "shard-00"]);
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn never_steals_while_something_is_free() {
        let all = leases(6);
        let c = candidates(&all, &["a", "a", "a", "a", "a", ""]);
        let plan = plan(&c, &[], limits(2), |_| 0);
        assert_eq!(keys(&plan.take), ["shard-05"]);
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn steals_from_the_most_loaded_only_while_it_holds_two_more() {
        let all = leases(12);
        // a: 7, b: 4, me: 1; three live workers, target 4.
        let owners = ["a", "a", "a", "a", "a", "a", "a", "b", "b", "b", "b", "me"];
        let c = candidates(&all, &owners);
        let plan = plan(&c, &[], limits(3), |_| 0);
        assert_eq!(plan.target, 4);
        // a (7) >= 1 + 2, a (6) >= 2 + 2, then a (5) and b (4) vs me (3): a 5 >= 5, so a third.
        assert_eq!(plan.steal.len(), 3);
        assert!(plan.steal.iter().all(|l| l.key.as_str() < "shard-07"));
    }

    #[test]
    fn a_balanced_table_is_left_alone() {
        let all = leases(11);
        // 4, 4, 3: no worker holds two more than another.
        let owners = ["a", "a", "a", "a", "b", "b", "b", "b", "me", "me", "me"];
        let plan = plan(&candidates(&all, &owners), &[], limits(3), |_| 0);
        assert_eq!(plan.target, 4);
        assert!(plan.take.is_empty() && plan.steal.is_empty());
    }

    #[test]
    fn the_per_cycle_bound_and_the_worker_maximum_hold() {
        let all = leases(20);
        let owners = vec!["a"; 20];
        let mut l = limits(2);
        l.max_steals_per_cycle = 3;
        let plan1 = plan(&candidates(&all, &owners), &[], l, |_| 0);
        assert_eq!(plan1.steal.len(), 3);
        let mut l = limits(2);
        l.max_leases_for_worker = 4;
        let plan2 = plan(&candidates(&all, &owners), &[], l, |_| 0);
        assert_eq!(plan2.target, 4);
        assert_eq!(plan2.steal.len(), 4);
    }

    #[test]
    fn settled_leases_count_for_load_but_are_never_asked_for() {
        let all = leases(4);
        let mut c = candidates(&all, &["a", "a", "a", "a"]);
        for candidate in &mut c[..3] {
            candidate.standing = Standing::Settled("a");
        }
        let plan = plan(&c, &[], limits(2), |_| 0);
        assert_eq!(keys(&plan.steal), ["shard-03"]);
    }

    #[test]
    fn leases_in_its_name_and_rescues_are_all_taken_the_rest_of_the_free_ones_given_away() {
        let all = leases(8);
        let mut c = candidates(&all, &["me", "", "", "", "", "", "a", "b"]);
        c[1].standing = Standing::InMyName;
        c[2].standing = Standing::Rescue;
        c[3].standing = Standing::Rescue;
        c[4].standing = Standing::Waiting;
        c[5].idle_for = Duration::from_secs(1);
        // Four workers: target 2. One held, one in its name, two rescues: all taken (4). The
        // free one goes to the least loaded receiver (c holds nothing); the waiting one stays.
        let plan = plan(&c, &["a", "b", "c"], limits(4), |_| 0);
        assert_eq!(plan.target, 2);
        assert_eq!(keys(&plan.take), ["shard-01", "shard-02", "shard-03"]);
        let assigned: Vec<(String, &str)> = plan
            .assign
            .iter()
            .map(|(l, w)| (l.key.clone(), *w))
            .collect();
        assert_eq!(assigned, [("shard-05".to_owned(), "c")]);
        assert!(plan.steal.is_empty());
        // Four held, target 2: push the workers holding two fewer (c after its assignment: 1,
        // a: 1, b: 1), one per lease in excess.
        assert_eq!(plan.push, ["a", "b"]);
    }

    #[test]
    fn the_worker_maximum_caps_even_leases_in_its_name() {
        let all = leases(3);
        let mut c = candidates(&all, &["", "", ""]);
        for candidate in &mut c {
            candidate.standing = Standing::InMyName;
        }
        let mut l = limits(2);
        l.max_leases_for_worker = 2;
        let plan = plan(&c, &["a"], l, |_| 0);
        assert_eq!(plan.take.len(), 2);
        assert_eq!(plan.assign.len(), 1);
        assert_eq!(plan.assign[0].1, "a");
    }

    #[test]
    fn the_audit_names_workers_two_below_the_most_loaded() {
        let loads = BTreeMap::from([("a", 5), ("b", 3), ("c", 4), ("d", 2)]);
        assert_eq!(under_loaded(&loads, 8), ["d", "b"]);
        assert_eq!(under_loaded(&loads, 1), ["d"]);
        let balanced = BTreeMap::from([("a", 3), ("b", 2)]);
        assert!(under_loaded(&balanced, 8).is_empty());
    }

    /// Steps many workers through the rule with consistent views: it converges within the bound
    /// the potential argument gives and ends with loads within one of each other.
    #[test]
    fn repeated_balancing_converges_without_bouncing() {
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..200 {
            let n = rng.usize(1..40);
            let workers = rng.usize(1..8);
            let all = leases(n);
            let ids: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
            let mut owner: Vec<usize> = (0..n).map(|_| rng.usize(0..workers)).collect();
            let mut moves = vec![0usize; n];
            for _step in 0..1000 {
                let mut moved = false;
                for w in 0..workers {
                    let owners: Vec<&str> = owner
                        .iter()
                        .map(|&o| if o == w { "me" } else { ids[o].as_str() })
                        .collect();
                    let c = candidates(&all, &owners);
                    let p = plan(&c, &[], limits(workers), |len| rng.usize(0..len));
                    for stolen in p.steal {
                        let i = all.iter().position(|l| l.key == stolen.key).unwrap();
                        owner[i] = w;
                        moves[i] += 1;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
            let mut load = vec![0usize; workers];
            for &o in &owner {
                load[o] += 1;
            }
            let (min, max) = (load.iter().min().unwrap(), load.iter().max().unwrap());
            assert!(max - min <= 1, "round {round}: unbalanced {load:?}");
            // Each move lowers the sum of squared loads by at least 2; it starts at most n^2.
            let total: usize = moves.iter().sum();
            assert!(
                total <= n * n / 2,
                "round {round}: {total} moves for {n} leases"
            );
        }
    }
}
