//! The in-flight window of a key-ordered shard: pure bookkeeping, no I/O (the `key_ordered`
//! module drives it).
//!
//! The window holds every record received and not yet covered by the checkpoint, in shard
//! order, each waiting for its key, in flight, or done. It decides
//!
//! - **which batch goes out next**: the next records of keys with no batch in flight, in the
//!   order the keys became ready, about `1/max_in_flight` of the records ready to go (so the
//!   slots share the work) and at most `max_batch_records`, in shard order. A key is in at most
//!   one batch in flight, and a batch takes a key's records from its oldest on, so the records of
//!   a key are delivered strictly in order;
//! - **how far the checkpoint may go**: the end of the contiguous prefix of done records (a
//!   record is done once processed, dead-lettered or skipped for its age);
//! - **what is remembered beyond it**: the runs of done records after the first unfinished one,
//!   encoded ([`encode_remembered`]) into the pending checkpoint's application state, so that
//!   the next owner of the shard skips them ([`decode_remembered`]).
//!
//! Memory is bounded: the window takes a fetched batch only while it holds fewer than
//! `max_window_records` records (so at most that plus one fetch); the per-key queues are
//! threaded through the window's entries (no allocation per key beyond a map slot for keys with
//! records in the window); the encoded state is cut at `max_state_bytes` (runs past it are simply
//! not remembered: delivered again after a restart, never lost). A record stays charged to the
//! prefetch budget until the prefix passes it, so the worker-wide prefetch bound covers the
//! window too.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

use crate::lease::PendingCheckpoint;
use crate::record::{ExtendedSequenceNumber, Record};

/// No entry (the end of a key's queue).
const NONE: u64 = u64::MAX;

/// The window's limits (from `KeyOrdered`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub max_in_flight: usize,
    pub max_batch_records: usize,
    pub max_window_records: usize,
}

/// One record of the window.
#[derive(Debug)]
struct Entry {
    position: ExtendedSequenceNumber,
    /// The record until it is handed out.
    record: Option<Record>,
    /// The next waiting record of the same key ([`NONE`] at the end).
    next: u64,
    done: bool,
}

/// The waiting records of one key, threaded through the entries.
#[derive(Debug)]
struct KeyQueue {
    head: u64,
    tail: u64,
    waiting: usize,
    /// A batch with this key is in flight.
    busy: bool,
}

/// A fetched batch whose prefetch budget goes back once the prefix passes `end`.
#[derive(Debug)]
struct Fetched {
    end: u64,
    records: usize,
    bytes: usize,
}

/// A batch handed out: its records (in shard order) and what the window needs back.
#[derive(Debug)]
pub(super) struct Batch {
    pub records: Vec<Record>,
    /// The window index of each record.
    pub indices: Vec<u64>,
    /// The keys the batch holds.
    pub keys: Vec<u64>,
}

/// What a completion or a new done record moved.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Advance {
    /// Records that joined the done prefix.
    pub records: usize,
    /// Prefetch budget to give back: fetched records and bytes.
    pub released: (usize, usize),
}

/// Key hashes are hashes already: mix them enough for the map's bucket and tag bits.
#[derive(Clone, Copy, Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The window. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Window {
    limits: Limits,
    /// The window index of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    keys: HashMap<u64, KeyQueue, BuildHasherDefault<KeyHasher>>,
    /// Keys with waiting records and no batch in flight, in the order they became ready.
    ready: VecDeque<u64>,
    /// Waiting records of the ready keys.
    ready_records: usize,
    /// Batches in flight.
    in_flight: usize,
    /// Done records in `entries` (after the first unfinished one).
    done_beyond: usize,
    /// The last record of the done prefix.
    prefix: Option<ExtendedSequenceNumber>,
    fetched: VecDeque<Fetched>,
}

impl Window {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_in_flight: limits.max_in_flight.max(1),
                max_batch_records: limits.max_batch_records.max(1),
                max_window_records: limits.max_window_records.max(1),
            },
            base: 0,
            entries: VecDeque::new(),
            keys: HashMap::default(),
            ready: VecDeque::new(),
            ready_records: 0,
            in_flight: 0,
            done_beyond: 0,
            prefix: None,
            fetched: VecDeque::new(),
        }
    }

    /// Records in the window (not yet in the done prefix).
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether another fetched batch may come in.
    pub(super) fn has_room(&self) -> bool {
        self.entries.len() < self.limits.max_window_records
    }

    /// Batches in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether every record received is done (and nothing is in flight).
    pub(super) fn is_drained(&self) -> bool {
        self.entries.is_empty() && self.in_flight == 0
    }

    /// Whether a batch could go out now.
    pub(super) fn can_dispatch(&self) -> bool {
        self.in_flight < self.limits.max_in_flight && !self.ready.is_empty()
    }

    /// The last record of the done prefix: how far the checkpoint may go.
    pub(super) fn prefix(&self) -> Option<&ExtendedSequenceNumber> {
        self.prefix.as_ref()
    }

    /// Whether records are done after the first unfinished one.
    #[cfg(test)]
    pub(super) fn has_remembered(&self) -> bool {
        self.done_beyond > 0
    }

    fn entry(&mut self, index: u64) -> Option<&mut Entry> {
        let offset = usize::try_from(index.checked_sub(self.base)?).ok()?;
        self.entries.get_mut(offset)
    }

    /// Adds a record waiting for its key.
    pub(super) fn push(&mut self, record: Record, key: u64) {
        let index = self.base + self.entries.len() as u64;
        self.entries.push_back(Entry {
            position: record.position(),
            record: Some(record),
            next: NONE,
            done: false,
        });
        let queue = self.keys.entry(key).or_insert(KeyQueue {
            head: NONE,
            tail: NONE,
            waiting: 0,
            busy: false,
        });
        let tail = queue.tail;
        queue.tail = index;
        if queue.head == NONE {
            queue.head = index;
        }
        queue.waiting += 1;
        let busy = queue.busy;
        let became_ready = !busy && queue.waiting == 1;
        if tail != NONE
            && let Some(previous) = self.entry(tail)
        {
            previous.next = index;
        }
        if became_ready {
            self.ready.push_back(key);
        }
        if !busy {
            self.ready_records += 1;
        }
    }

    /// Adds a record that is done already (a previous owner completed it).
    pub(super) fn push_done(&mut self, position: ExtendedSequenceNumber) -> Advance {
        self.entries.push_back(Entry {
            position,
            record: None,
            next: NONE,
            done: true,
        });
        self.done_beyond += 1;
        self.advance()
    }

    /// Marks the end of a fetched batch: its prefetch budget goes back once the prefix passes
    /// its last record (at once if it brought none).
    pub(super) fn end_fetch(&mut self, records: usize, bytes: usize) -> Advance {
        self.fetched.push_back(Fetched {
            end: self.base + self.entries.len() as u64,
            records,
            bytes,
        });
        self.advance()
    }

    /// The next batch, if a slot is free and records are ready.
    pub(super) fn next_batch(&mut self) -> Option<Batch> {
        if !self.can_dispatch() {
            return None;
        }
        let max = self.limits.max_batch_records;
        let target = self
            .ready_records
            .div_ceil(self.limits.max_in_flight)
            .clamp(1, max);
        let mut indices = Vec::with_capacity(target);
        let mut keys = Vec::new();
        while indices.len() < target {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(queue) = self.keys.get_mut(&key) else {
                continue;
            };
            let take = queue.waiting.min(max - indices.len());
            self.ready_records -= queue.waiting;
            queue.waiting -= take;
            queue.busy = true;
            let mut at = queue.head;
            for _ in 0..take {
                indices.push(at);
                let offset = at
                    .checked_sub(self.base)
                    .and_then(|o| usize::try_from(o).ok());
                at = offset
                    .and_then(|o| self.entries.get(o))
                    .map_or(NONE, |e| e.next);
            }
            if let Some(queue) = self.keys.get_mut(&key) {
                queue.head = at;
                if at == NONE {
                    queue.tail = NONE;
                }
            }
            keys.push(key);
        }
        if indices.is_empty() {
            return None;
        }
        if keys.len() > 1 {
            indices.sort_unstable();
        }
        let mut records = Vec::with_capacity(indices.len());
        for &index in &indices {
            if let Some(record) = self.entry(index).and_then(|e| e.record.take()) {
                records.push(record);
            }
        }
        self.in_flight += 1;
        Some(Batch {
            records,
            indices,
            keys,
        })
    }

    /// A batch came back with its first `handled` records done; its keys are free again. The
    /// rest (a batch cut short because the shard stops) stays unfinished.
    pub(super) fn complete(&mut self, indices: &[u64], keys: &[u64], handled: usize) -> Advance {
        for &index in indices.iter().take(handled) {
            if let Some(entry) = self.entry(index)
                && !entry.done
            {
                entry.done = true;
                self.done_beyond += 1;
            }
        }
        for key in keys {
            let Some(queue) = self.keys.get_mut(key) else {
                continue;
            };
            queue.busy = false;
            if queue.waiting > 0 {
                self.ready_records += queue.waiting;
                self.ready.push_back(*key);
            } else {
                self.keys.remove(key);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.advance()
    }

    /// Moves done records at the front into the prefix; gives back the budget of fetched
    /// batches the prefix passed.
    fn advance(&mut self) -> Advance {
        let mut advance = Advance::default();
        while self.entries.front().is_some_and(|e| e.done) {
            if let Some(entry) = self.entries.pop_front() {
                self.prefix = Some(entry.position);
            }
            self.base += 1;
            self.done_beyond -= 1;
            advance.records += 1;
        }
        while self.fetched.front().is_some_and(|f| f.end <= self.base) {
            if let Some(fetched) = self.fetched.pop_front() {
                advance.released.0 += fetched.records;
                advance.released.1 += fetched.bytes;
            }
        }
        advance
    }

    /// The runs of done records after the first unfinished one: `(first, last)` positions.
    fn runs(&self) -> impl Iterator<Item = (&ExtendedSequenceNumber, &ExtendedSequenceNumber)> {
        let mut entries = self.entries.iter().peekable();
        std::iter::from_fn(move || {
            while entries.next_if(|e| !e.done).is_some() {}
            let first = entries.next()?;
            let mut last = first;
            while let Some(e) = entries.next_if(|e| e.done) {
                last = e;
            }
            Some((&first.position, &last.position))
        })
    }

    /// What to remember beyond the prefix, as the pending checkpoint of a checkpoint at
    /// `checkpoint` (the prefix, or the lease's checkpoint while the prefix is empty); `None`
    /// when nothing is done beyond it.
    pub(super) fn remembered(
        &self,
        checkpoint: &ExtendedSequenceNumber,
        max_bytes: usize,
    ) -> Option<PendingCheckpoint> {
        if self.done_beyond == 0 {
            return None;
        }
        encode_remembered(checkpoint, self.runs(), max_bytes)
    }
}

/// The first bytes of a state written by [`encode_remembered`] (then a version byte).
const MAGIC: &[u8; 4] = b"KCLW";
const VERSION: u8 = 1;

/// Encodes `runs` (ascending, after `checkpoint`) as a pending checkpoint: its position is the
/// last remembered record, its state the runs relative to `checkpoint`. Runs that would take the
/// state past `max_bytes` are left out; `None` if none fits.
///
/// Layout: `KCLW`, version 1, the checkpoint, a LEB128 count, then each run as its first and
/// last position. A position is its text front-coded against the previous one (LEB128 length
/// shared, LEB128 length of the rest, the rest) and its LEB128 sub-sequence number: sequence
/// numbers of one shard share most of their digits, so a run costs about 20 to 40 bytes.
pub(super) fn encode_remembered<'a>(
    checkpoint: &ExtendedSequenceNumber,
    runs: impl Iterator<Item = (&'a ExtendedSequenceNumber, &'a ExtendedSequenceNumber)>,
    max_bytes: usize,
) -> Option<PendingCheckpoint> {
    let mut head = Vec::with_capacity(64);
    head.extend_from_slice(MAGIC);
    head.push(VERSION);
    let mut previous = "";
    put_position(&mut head, &mut previous, checkpoint);
    let mut body = Vec::new();
    let mut count: u64 = 0;
    let mut last = None;
    for (first, end) in runs {
        let mut next = Vec::with_capacity(48);
        let mut at = previous;
        put_position(&mut next, &mut at, first);
        put_position(&mut next, &mut at, end);
        if head.len() + varint_len(count + 1) + body.len() + next.len() > max_bytes {
            break;
        }
        body.extend_from_slice(&next);
        previous = at;
        count += 1;
        last = Some(end);
    }
    let last = last?;
    put_varint(&mut head, count);
    head.extend_from_slice(&body);
    Some(PendingCheckpoint {
        position: last.clone(),
        state: Some(Bytes::from(head)),
    })
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_position<'a>(
    out: &mut Vec<u8>,
    previous: &mut &'a str,
    position: &'a ExtendedSequenceNumber,
) {
    let text = position.checkpoint_text();
    let shared = text
        .bytes()
        .zip(previous.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    put_varint(out, shared as u64);
    put_varint(out, (text.len() - shared) as u64);
    out.extend_from_slice(&text.as_bytes()[shared..]);
    put_varint(out, position.sub_sequence());
    *previous = text;
}

/// Why a remembered-completions state could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StateError {
    /// The bytes are cut short or inconsistent.
    #[error("remembered completions are malformed: {0}")]
    Malformed(&'static str),
    /// A position in it is not a position.
    #[error("remembered completions hold an invalid position {0:?}")]
    Position(String),
    /// It was written for another checkpoint than the lease's.
    #[error("remembered completions were written at checkpoint {written}, the lease is at {lease}")]
    Stale {
        /// The checkpoint it was written with.
        written: ExtendedSequenceNumber,
        /// The lease's checkpoint.
        lease: ExtendedSequenceNumber,
    },
}

/// Runs of records done out of order, read from a pending checkpoint's state.
pub(super) type Runs = Vec<(ExtendedSequenceNumber, ExtendedSequenceNumber)>;

/// Reads the runs [`encode_remembered`] wrote. `Ok(None)` if `state` is not such a state (an
/// application's own); an error if it is one but malformed or written at another checkpoint
/// than `checkpoint`.
pub(super) fn decode_remembered(
    state: &[u8],
    checkpoint: &ExtendedSequenceNumber,
) -> Result<Option<Runs>, StateError> {
    let Some(rest) = state.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let mut reader = Reader {
        bytes: rest,
        previous: String::new(),
    };
    if reader.byte()? != VERSION {
        return Err(StateError::Malformed("unknown version"));
    }
    let written = reader.position()?;
    if written != *checkpoint {
        return Err(StateError::Stale {
            written,
            lease: checkpoint.clone(),
        });
    }
    let count = reader.varint()?;
    let mut runs = Vec::new();
    let mut after = written;
    for _ in 0..count {
        let first = reader.position()?;
        let last = reader.position()?;
        if first <= after
            || last < first
            || !matches!(first, ExtendedSequenceNumber::Sequence { .. })
        {
            return Err(StateError::Malformed("runs out of order"));
        }
        after = last.clone();
        runs.push((first, last));
    }
    if !reader.bytes.is_empty() {
        return Err(StateError::Malformed("trailing bytes"));
    }
    Ok(Some(runs))
}

struct Reader<'a> {
    bytes: &'a [u8],
    previous: String,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, StateError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or(StateError::Malformed("cut short"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, StateError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StateError::Malformed("varint too long"))
    }

    fn length(&mut self) -> Result<usize, StateError> {
        usize::try_from(self.varint()?).map_err(|_| StateError::Malformed("length too large"))
    }

    fn position(&mut self) -> Result<ExtendedSequenceNumber, StateError> {
        let shared = self.length()?;
        let len = self.length()?;
        if shared > self.previous.len() || len > self.bytes.len() {
            return Err(StateError::Malformed("position cut short"));
        }
        let (suffix, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        let suffix =
            std::str::from_utf8(suffix).map_err(|_| StateError::Malformed("position not text"))?;
        let mut text = String::with_capacity(shared + len);
        text.push_str(
            self.previous
                .get(..shared)
                .ok_or(StateError::Malformed("position not text"))?,
        );
        text.push_str(suffix);
        let sub = self.varint()?;
        let position = ExtendedSequenceNumber::from_parts(&text, sub)
            .map_err(|_| StateError::Position(text.clone()))?;
        self.previous = text;
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SequenceNumber;

    const BIG: u128 = 49_590_338_271_490_256_608_559_692_538_361_571;

    fn record(n: u128, key: &str) -> Record {
        Record::new(
            key,
            Bytes::from_static(b"x"),
            SequenceNumber::from_u128(BIG + n),
        )
    }

    fn pos(n: u128) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at(SequenceNumber::from_u128(BIG + n))
    }

    fn window(in_flight: usize, batch: usize) -> Window {
        Window::new(Limits {
            max_in_flight: in_flight,
            max_batch_records: batch,
            max_window_records: 1000,
        })
    }

    fn key_of(r: &Record) -> u64 {
        r.partition_key().as_bytes()[0].into()
    }

    fn fill(w: &mut Window, keys: &[&str]) {
        for (n, key) in keys.iter().enumerate() {
            let r = record(n as u128, key);
            let k = key_of(&r);
            w.push(r, k);
        }
    }

    fn seqs(batch: &Batch) -> Vec<u128> {
        batch
            .records
            .iter()
            .map(|r| r.sequence_number().as_str().parse::<u128>().unwrap() - BIG)
            .collect()
    }

    #[test]
    fn a_key_is_in_one_batch_at_a_time_and_its_records_go_in_order() {
        let mut w = window(4, 10);
        fill(&mut w, &["a", "b", "a", "c", "a", "b"]);
        // 6 ready records over 4 slots: batches of about 2, whole keys, in shard order.
        let first = w.next_batch().unwrap();
        assert_eq!(seqs(&first), vec![0, 2, 4], "all of a's waiting records");
        let second = w.next_batch().unwrap();
        assert_eq!(seqs(&second), vec![1, 5]);
        let third = w.next_batch().unwrap();
        assert_eq!(seqs(&third), vec![3]);
        assert!(w.next_batch().is_none(), "nothing ready");
        // More records of a busy key wait for its batch.
        let r = record(6, "a");
        let k = key_of(&r);
        w.push(r, k);
        assert!(w.next_batch().is_none(), "a is in flight");
        let advance = w.complete(&second.indices, &second.keys, 2);
        assert_eq!(advance.records, 0, "record 0 is not done");
        assert!(w.has_remembered());
        assert!(w.next_batch().is_none());
        w.complete(&first.indices, &first.keys, 3);
        assert_eq!(w.prefix(), Some(&pos(2)), "0, 1 and 2 done; 3 in flight");
        let fourth = w.next_batch().unwrap();
        assert_eq!(seqs(&fourth), vec![6]);
        w.complete(&third.indices, &third.keys, 1);
        assert_eq!(w.prefix(), Some(&pos(5)));
        w.complete(&fourth.indices, &fourth.keys, 1);
        assert_eq!(w.prefix(), Some(&pos(6)));
        assert!(w.is_drained());
        assert!(w.keys.is_empty(), "no key kept without records");
    }

    #[test]
    fn batches_are_capped_and_a_hot_key_is_split_in_order() {
        let mut w = window(2, 3);
        fill(&mut w, &["a"; 8]);
        let first = w.next_batch().unwrap();
        assert_eq!(seqs(&first), vec![0, 1, 2]);
        assert!(w.next_batch().is_none(), "the rest of a waits");
        w.complete(&first.indices, &first.keys, 3);
        assert_eq!(seqs(&w.next_batch().unwrap()), vec![3, 4, 5]);
    }

    #[test]
    fn an_unhandled_tail_stays_unfinished() {
        let mut w = window(1, 10);
        fill(&mut w, &["a", "a", "a"]);
        let b = w.next_batch().unwrap();
        w.complete(&b.indices, &b.keys, 1);
        assert_eq!(w.prefix(), Some(&pos(0)));
        assert_eq!(w.len(), 2);
        assert!(!w.has_remembered());
    }

    #[test]
    fn fetched_budget_comes_back_when_the_prefix_passes_it() {
        let mut w = window(2, 10);
        assert_eq!(
            w.end_fetch(3, 300).released,
            (3, 300),
            "an empty fetch at once"
        );
        fill(&mut w, &["a", "b"]);
        assert_eq!(w.end_fetch(2, 200).released, (0, 0));
        let a = w.next_batch().unwrap();
        let b = w.next_batch().unwrap();
        assert_eq!(w.complete(&b.indices, &b.keys, 1).released, (0, 0));
        assert_eq!(w.complete(&a.indices, &a.keys, 1).released, (2, 200));
    }

    #[test]
    fn remembered_runs_round_trip_and_mark_records_done() {
        let mut w = window(8, 1);
        fill(&mut w, &["a", "b", "c", "d", "e", "f"]);
        let batches: Vec<Batch> = std::iter::from_fn(|| w.next_batch()).collect();
        assert_eq!(batches.len(), 6);
        // 1, 2 and 4, 5 done; 0 and 3 not.
        for i in [1, 2, 4, 5] {
            w.complete(&batches[i].indices, &batches[i].keys, 1);
        }
        let checkpoint = ExtendedSequenceNumber::TrimHorizon;
        let pending = w.remembered(&checkpoint, 1024).unwrap();
        assert_eq!(pending.position, pos(5));
        let state = pending.state.unwrap();
        assert!(state.len() < 150, "{} bytes", state.len());
        let runs = decode_remembered(&state, &checkpoint).unwrap().unwrap();
        assert_eq!(runs, vec![(pos(1), pos(2)), (pos(4), pos(5))]);
        // Only the first run fits in fewer bytes; nothing fits in fewer still.
        let small = w.remembered(&checkpoint, state.len() - 1).unwrap();
        assert_eq!(small.position, pos(2));
        assert!(w.remembered(&checkpoint, 8).is_none());
        // Written at another checkpoint: not used.
        assert!(matches!(
            decode_remembered(&state, &pos(0)),
            Err(StateError::Stale { .. })
        ));
        // A new owner marks them done as they come in.
        let mut next = window(8, 10);
        for n in 0..6 {
            let p = pos(n);
            if runs.iter().any(|(a, b)| *a <= p && p <= *b) {
                next.push_done(p);
            } else {
                let r = record(n, "k");
                next.push(r, 1);
            }
        }
        let b = next.next_batch().unwrap();
        assert_eq!(seqs(&b), vec![0, 3]);
        next.complete(&b.indices, &b.keys, 2);
        assert_eq!(next.prefix(), Some(&pos(5)));
    }

    #[test]
    fn states_that_are_not_ours_or_broken_are_told_apart() {
        let cp = pos(0);
        assert_eq!(decode_remembered(b"application state", &cp), Ok(None));
        let mut w = window(2, 1);
        fill(&mut w, &["a", "b"]);
        let _a = w.next_batch().unwrap();
        let b = w.next_batch().unwrap();
        w.complete(&b.indices, &b.keys, 1);
        let state = w.remembered(&cp, 1024).unwrap().state.unwrap();
        for cut in 5..state.len() {
            assert!(
                decode_remembered(&state[..cut], &cp).is_err(),
                "cut at {cut} accepted"
            );
        }
        let mut trailing = state.to_vec();
        trailing.push(0);
        assert!(decode_remembered(&trailing, &cp).is_err());
        let mut version = state.to_vec();
        version[4] = 9;
        assert!(decode_remembered(&version, &cp).is_err());
        // Garbage after the magic never panics.
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut junk = MAGIC.to_vec();
            junk.push(VERSION);
            junk.extend((0..rng.usize(0..40)).map(|_| rng.u8(..)));
            let _ = decode_remembered(&junk, &cp);
        }
    }

    #[test]
    fn positions_inside_aggregates_keep_their_sub_sequence() {
        let seq = SequenceNumber::from_u128(BIG);
        let at = |sub| ExtendedSequenceNumber::Sequence {
            sequence: seq.clone(),
            sub_sequence: sub,
        };
        let runs = [(at(2), at(3)), (at(5), at(5))];
        let pending = encode_remembered(&at(0), runs.iter().map(|(a, b)| (a, b)), 1024).unwrap();
        let back = decode_remembered(&pending.state.unwrap(), &at(0))
            .unwrap()
            .unwrap();
        assert_eq!(back, runs.to_vec());
    }
}
