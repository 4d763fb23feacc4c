//! The dispatcher: a strategy's pending records, and which of them may form
//! the next batch to send.
//!
//! Plain data, no timers and no I/O: the caller passes `now` in and gets a
//! batch or the time to ask again, so every rule is unit-tested with values.
//! The worker (`delivery::worker`) drives it.
//!
//! Rules:
//! - Records of one [`Group`] are sent in commit order and never in two
//!   batches in flight at once. Under `ordering = "commit"` every record is
//!   in one group, so batches go one at a time in commit order; under
//!   `"key"` a record waits only while a record of its group is in flight or
//!   waiting ahead of it, and other groups flow past it.
//! - A batch is the longest prefix of the records free to go, up to
//!   `batch_size` records and `max_batch_bytes` (a larger single record goes
//!   alone); it goes once full, or once its oldest record has waited
//!   `linger`.
//! - A [`Group::All`] record (a truncate) waits until nothing is in flight
//!   and goes alone; everything after it waits for it.
//! - Chained ([`Dispatcher::chained`], `ordering = "commit"`): the caller
//!   sends batches strictly in the order they were sealed, each after the
//!   one before it is done, so a batch in flight holds nothing here and the
//!   next one can be sealed (and stored) while it is on the wire. Only a
//!   full batch is sealed ahead ([`Dispatcher::next_ahead`]): one that is
//!   not full keeps filling while the endpoint is busy, as it would if it
//!   waited its turn.
//!
//! Parking ([`Dispatcher::park`]): records of a group that has parked work
//! (rows of `walhook.parked`, see `batch::park`) must follow it, so once
//! they are free (nothing of their group in flight or waiting ahead) they
//! go to the park lane instead: sealed into batches of their own (never
//! mixed with live records, so a batch is wholly one or the other) that
//! the worker stores behind the parked work instead of sending. Such a
//! batch counts as in flight while it is stored, and once sealed its
//! groups count as parked. A record holding several groups parks them
//! all. Park-lane batches wait [`PARK_LINGER`] to fill: they are not sent
//! now, and fewer, fuller rows drain faster. When the last parked row of
//! a group is gone ([`Dispatcher::unpark`]) its records go live again.
//! [`Dispatcher::hold`] sends every new record to the park lane.
//!
//! Batches sent before a restart ([`Stored`]): Postgres streams their
//! records again (everything after the slot's confirmed position), and they
//! are re-formed with exactly the records they had, so they carry the same
//! batch id and `webhook-id`. Order per group still holds: a stored batch
//! goes once, for each of its groups, its record is the earliest pending
//! one (so when stored batches share a group they go in the order they were
//! first sent), and a record after it that was in no stored batch waits
//! until it has gone.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::park::ParkKeys;
use super::payload::{self, Batch, RecordKey};
use super::{Decorate, Group, QueuedRecord};
use crate::budget::Charge;
use crate::lsn::Lsn;

/// Bodies of finished batches kept for reuse (one in flight and the next
/// being sealed under `ordering = "commit"`).
const BODIES_KEPT: usize = 2;
/// Bytes a kept body may have beyond `max_batch_bytes` (the envelope).
const BODY_SLACK: usize = 64 * 1024;
/// The least a park-lane batch waits to fill (see the module doc).
pub(crate) const PARK_LINGER: Duration = Duration::from_secs(1);

/// Where a sealed batch goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Sent to the endpoint.
    #[default]
    Live,
    /// Stored behind the strategy's parked work (see the module doc).
    Park,
}

/// Batching limits of one strategy.
#[derive(Debug, Clone)]
pub(crate) struct BatcherOptions {
    /// The strategy's name (in the payload and the batch id).
    pub(crate) strategy: Arc<str>,
    /// Most records per batch (at least 1).
    pub(crate) batch_size: usize,
    /// Most bytes of record JSON per batch; a larger single record goes alone.
    pub(crate) max_batch_bytes: usize,
    /// How long a batch that is not full waits after its first record.
    pub(crate) linger: Duration,
}

/// The records of a batch sent before a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Every record from `first` to `last` (a batch of consecutive records,
    /// as `ordering = "commit"` forms them).
    Range { first: RecordKey, last: RecordKey },
    /// Exactly these records, in order (`ordering = "key"`).
    List(Vec<RecordKey>),
}

impl Stored {
    fn contains(&self, key: RecordKey) -> bool {
        match self {
            Stored::Range { first, last } => *first <= key && key <= *last,
            Stored::List(keys) => keys.binary_search(&key).is_ok(),
        }
    }

    /// The first record.
    pub(crate) fn first(&self) -> Option<RecordKey> {
        match self {
            Stored::Range { first, .. } => Some(*first),
            Stored::List(keys) => keys.first().copied(),
        }
    }

    /// The last record.
    pub(crate) fn last(&self) -> Option<RecordKey> {
        match self {
            Stored::Range { last, .. } => Some(*last),
            Stored::List(keys) => keys.last().copied(),
        }
    }
}

/// What happened to a pushed record.
#[derive(Debug)]
pub(crate) enum Pushed {
    /// It waits for its batch.
    Queued,
    /// It was in a batch delivered before the restart (a stored batch whose
    /// first records Postgres no longer streams): it is not sent again (and
    /// its bytes are released).
    Skipped,
}

/// What [`Dispatcher::next`] decided.
#[derive(Debug)]
pub(crate) enum Next {
    /// Send this batch now.
    Batch(Box<Batch>),
    /// Nothing to send; ask again at this time (or when something changes).
    Wait(Option<Instant>),
}

struct Entry {
    record: QueuedRecord,
    arrived: Instant,
    /// The stored batch it re-forms.
    restored: Option<usize>,
}

/// A stored batch being re-formed.
struct Restored {
    members: Stored,
    /// Members arrived so far (sequence numbers), in order.
    arrived: Vec<u64>,
    /// All members that will come have come.
    complete: bool,
    /// Sent (or dropped empty).
    gone: bool,
}

/// A strategy's pending records and the groups in flight (see the module doc).
pub(crate) struct Dispatcher {
    opts: BatcherOptions,
    decorate: Arc<dyn Decorate>,
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Records free to go, in order (a prefix forms the next batch).
    eligible: VecDeque<u64>,
    eligible_bytes: usize,
    /// Records free to go to the park lane, in order.
    park_eligible: VecDeque<u64>,
    park_eligible_bytes: usize,
    /// Parked rows (stored, or sealed for storing) per group key, and
    /// those holding every group.
    parked: HashMap<u64, u32>,
    parked_all: u32,
    /// Every record goes to the park lane ([`Dispatcher::hold`]).
    held: bool,
    /// Keys of park-eligible records not sealed yet: later records of
    /// them follow them to the park lane.
    park_pending: HashSet<u64>,
    /// Keys of live-eligible records not sealed yet: a later record of
    /// one of them must not go to the park lane before it is sealed (the
    /// park could deliver it first).
    live_pending: HashSet<u64>,
    /// Groups a new record must wait for: in flight, or held by a record
    /// waiting ahead of it or by a stored batch.
    blocked: HashSet<u64>,
    /// Everything waits (a [`Group::All`] record is waiting or in flight).
    blocked_all: bool,
    /// Records in flight per group.
    in_flight: HashMap<u64, u32>,
    in_flight_all: u32,
    in_flight_batches: usize,
    /// `eligible` and `blocked` must be recomputed from the entries.
    dirty: bool,
    /// The first entry the scan has not classified yet (`None`: all are).
    /// A scan stops once a full batch is eligible, or once nothing after
    /// can be, so a batch costs about its own records, not every pending one.
    unscanned: Option<u64>,
    /// Pending entries per group key, and pending [`Group::All`] entries.
    pending_keys: HashMap<u64, usize>,
    pending_all: usize,
    /// Bodies of batches that are done, reused for the next ones.
    bodies: Vec<Vec<u8>>,
    /// Batches go strictly in seal order (see the module doc): groups in
    /// flight do not hold records back.
    chained: bool,
    /// Tests: scan every entry every time (the reference behaviour).
    #[cfg(test)]
    full_scan: bool,
    restored: Vec<Restored>,
    /// Stored batches delivered before the restart (their records are skipped).
    skip: Vec<Stored>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("opts", &self.opts)
            .field("pending", &self.entries.len())
            .field("in_flight_batches", &self.in_flight_batches)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub(crate) fn new(opts: BatcherOptions, decorate: Arc<dyn Decorate>) -> Self {
        let opts = BatcherOptions {
            batch_size: opts.batch_size.max(1),
            max_batch_bytes: opts.max_batch_bytes.max(1),
            ..opts
        };
        Dispatcher {
            opts,
            decorate,
            entries: BTreeMap::new(),
            next_seq: 0,
            eligible: VecDeque::new(),
            eligible_bytes: 0,
            park_eligible: VecDeque::new(),
            park_eligible_bytes: 0,
            parked: HashMap::new(),
            parked_all: 0,
            held: false,
            park_pending: HashSet::new(),
            live_pending: HashSet::new(),
            blocked: HashSet::new(),
            blocked_all: false,
            in_flight: HashMap::new(),
            in_flight_all: 0,
            in_flight_batches: 0,
            dirty: false,
            unscanned: None,
            pending_keys: HashMap::new(),
            pending_all: 0,
            bodies: Vec::new(),
            chained: false,
            #[cfg(test)]
            full_scan: false,
            restored: Vec::new(),
            skip: Vec::new(),
        }
    }

    /// The caller sends every batch only after the one sealed before it is
    /// done (delivered or dead-lettered): batches in flight then hold no
    /// group, and [`Dispatcher::next_ahead`] may seal the next one early.
    pub(crate) fn chained(mut self) -> Self {
        self.chained = true;
        self
    }

    /// Batches sent before a restart whose records will be streamed again
    /// (re-formed exactly), and batches known to be delivered whose later
    /// records will be streamed again (skipped).
    pub(crate) fn restore(&mut self, reform: Vec<Stored>, skip: Vec<Stored>) {
        self.restored = reform
            .into_iter()
            .map(|members| Restored {
                members,
                arrived: Vec::new(),
                complete: false,
                gone: false,
            })
            .collect();
        self.skip = skip;
    }

    /// Adds a record (records come in commit order).
    pub(crate) fn push(&mut self, record: QueuedRecord, now: Instant) -> Pushed {
        let key = (record.commit_lsn, record.index);
        // Records come in commit order: a stored batch whose last member is
        // before this record gets no more (its missing members were
        // filtered out since). Waiting for the transaction's end instead
        // would hold the batch, and everything queued behind it, until a big
        // transaction ends, while the memory budget fills: a deadlock.
        for stored in &mut self.restored {
            if !stored.complete && stored.members.last().is_some_and(|last| last < key) {
                stored.complete = true;
            }
        }
        if !self.skip.is_empty() {
            self.skip
                .retain(|s| s.last().is_some_and(|last| last >= key));
            if self.skip.iter().any(|s| s.contains(key)) {
                return Pushed::Skipped;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let group = record.group;
        let restored = self.restored_of(key);
        let len = record.json.len();
        self.entries.insert(
            seq,
            Entry {
                record,
                arrived: now,
                restored,
            },
        );
        self.count_pending(group, true);
        // Entries before it are not classified yet: the scan takes it in turn.
        let classify = self.unscanned.is_none();
        if let Some(r) = restored {
            if classify {
                self.block(group);
            }
            if let Some(stored) = self.restored.get_mut(r) {
                stored.arrived.push(seq);
                let all_came = match &stored.members {
                    Stored::Range { last, .. } => key == *last,
                    Stored::List(keys) => stored.arrived.len() == keys.len(),
                };
                if all_came {
                    stored.complete = true;
                }
            }
            return Pushed::Queued;
        }
        if classify {
            self.classify(seq, group, len, false);
        }
        Pushed::Queued
    }

    /// Every record of the transaction ending at `end_lsn` has been pushed:
    /// stored batches whose last transaction this is (or an earlier one) are
    /// complete with what came (a record filtered out since does not come).
    pub(crate) fn tx_end(&mut self, end_lsn: Lsn) {
        for stored in &mut self.restored {
            if !stored.complete && stored.members.last().is_some_and(|(lsn, _)| lsn < end_lsn) {
                stored.complete = true;
            }
        }
        self.skip
            .retain(|s| s.last().is_some_and(|(lsn, _)| lsn >= end_lsn));
    }

    /// The next batch to send (or to park, see [`Lane`]), if one may go
    /// now; call it while a slot is free. `flush` sends what is pending
    /// without waiting for `linger` (the queue has ended).
    pub(crate) fn next(&mut self, now: Instant, flush: bool) -> Next {
        if flush {
            for stored in &mut self.restored {
                stored.complete = true;
            }
        }
        if let Some(batch) = self.next_restored() {
            return Next::Batch(Box::new(batch));
        }
        if self.dirty {
            self.rescan();
        } else if self.unscanned.is_some() && !self.full() {
            self.scan();
        }
        let mut wait = None;
        for lane in [Lane::Live, Lane::Park] {
            let Some(due) = self.due(lane) else {
                continue;
            };
            if self.lane_full(lane) || flush || now >= due {
                let seqs = self.take(lane);
                return Next::Batch(Box::new(self.seal(seqs)));
            }
            wait = Some(wait.map_or(due, |w: Instant| w.min(due)));
        }
        Next::Wait(wait)
    }

    /// When the lane's oldest eligible record has waited its linger.
    fn due(&self, lane: Lane) -> Option<Instant> {
        let (queue, linger) = match lane {
            Lane::Live => (&self.eligible, self.opts.linger),
            Lane::Park => (&self.park_eligible, self.opts.linger.max(PARK_LINGER)),
        };
        let front = queue.front().and_then(|s| self.entries.get(s))?;
        Some(front.arrived + linger)
    }

    /// Takes the longest prefix of the lane's eligible records that fits a batch.
    fn take(&mut self, lane: Lane) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut bytes = 0usize;
        loop {
            let (queue, queued_bytes) = match lane {
                Lane::Live => (&mut self.eligible, &mut self.eligible_bytes),
                Lane::Park => (&mut self.park_eligible, &mut self.park_eligible_bytes),
            };
            let Some(&seq) = queue.front() else {
                break;
            };
            let len = self.entries.get(&seq).map_or(0, |e| e.record.json.len());
            if seqs.len() >= self.opts.batch_size
                || (!seqs.is_empty() && bytes + len > self.opts.max_batch_bytes)
            {
                break;
            }
            queue.pop_front();
            *queued_bytes = queued_bytes.saturating_sub(len);
            bytes += len;
            seqs.push(seq);
        }
        seqs
    }

    /// A row holding these keys was parked (a batch of this strategy that
    /// failed, or one found in the store at start): records of its groups
    /// go to the park lane until it is gone.
    pub(crate) fn park(&mut self, keys: &ParkKeys) {
        for key in &keys.keys {
            *self.parked.entry(*key).or_default() += 1;
        }
        if keys.all {
            self.parked_all += 1;
        }
        self.dirty = true;
    }

    /// A parked row holding these keys is gone (delivered or dead-lettered).
    pub(crate) fn unpark(&mut self, keys: &ParkKeys) {
        for key in &keys.keys {
            if let Some(n) = self.parked.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.parked.remove(key);
                }
            }
        }
        if keys.all {
            self.parked_all = self.parked_all.saturating_sub(1);
        }
        self.dirty = true;
    }

    /// While held, every record goes to the park lane.
    pub(crate) fn hold(&mut self, held: bool) {
        if self.held != held {
            self.held = held;
            self.dirty = true;
        }
    }

    /// True when records of `group` must follow parked work.
    fn is_parked(&self, group: Group) -> bool {
        if self.held || self.parked_all > 0 {
            return true;
        }
        match group {
            Group::All => !self.parked.is_empty() || !self.park_pending.is_empty(),
            g => g
                .keys()
                .any(|k| self.parked.contains_key(&k) || self.park_pending.contains(&k)),
        }
    }

    /// While a batch is in flight (chained): the next batch, if a full one
    /// is ready. One that is not full is not sealed ahead: it keeps filling
    /// until the one in flight is done.
    pub(crate) fn next_ahead(&mut self, now: Instant, flush: bool) -> Next {
        // Stored batches being re-formed (after a restart) go one at a
        // time: finding the next one scans every pending record.
        if !self.chained || !self.restored.is_empty() {
            return Next::Wait(None);
        }
        if !flush {
            if self.dirty {
                self.rescan();
            } else if self.unscanned.is_some() && !self.full() {
                self.scan();
            }
            if !self.full() {
                return Next::Wait(None);
            }
        }
        match self.next(now, flush) {
            // The caller asks again when the batch in flight is done.
            Next::Wait(_) => Next::Wait(None),
            batch => batch,
        }
    }

    /// A batch is done (delivered or dead-lettered): its groups are free.
    pub(crate) fn release(&mut self, batch: &Batch) {
        self.in_flight_batches = self.in_flight_batches.saturating_sub(1);
        if self.chained {
            return;
        }
        for group in &batch.groups {
            match group {
                Group::All => self.in_flight_all = self.in_flight_all.saturating_sub(1),
                _ => {
                    for key in group.keys() {
                        if let Some(n) = self.in_flight.get_mut(&key) {
                            *n -= 1;
                            if *n == 0 {
                                self.in_flight.remove(&key);
                            }
                        }
                    }
                }
            }
        }
        self.dirty = true;
    }

    /// Keeps the body of a batch that is done for a later batch, when
    /// nothing else holds it and it is of an ordinary batch's size.
    pub(crate) fn recycle(&mut self, body: Bytes) {
        if self.bodies.len() >= BODIES_KEPT
            || body.len() > self.opts.max_batch_bytes.saturating_add(BODY_SLACK)
        {
            return;
        }
        if let Ok(mut buf) = body.try_into_mut() {
            // Emptied first: turning it into a Vec then copies nothing.
            buf.clear();
            self.bodies.push(buf.into());
        }
    }

    /// Records pending (not in a batch yet).
    pub(crate) fn pending_len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored batch `key` re-forms, if any.
    fn restored_of(&self, key: RecordKey) -> Option<usize> {
        self.restored
            .iter()
            .position(|s| !s.gone && !s.complete && s.members.contains(key))
    }

    /// True when a new record of `group` may join the eligible records.
    fn is_free(&self, group: Group) -> bool {
        if self.blocked_all || self.in_flight_all > 0 {
            return false;
        }
        match group {
            Group::All => {
                self.eligible.is_empty()
                    && self.park_eligible.is_empty()
                    && self.blocked.is_empty()
                    && (self.chained || self.in_flight_batches == 0)
            }
            _ => group
                .keys()
                .all(|k| !self.blocked.contains(&k) && !self.in_flight.contains_key(&k)),
        }
    }

    fn block(&mut self, group: Group) {
        match group {
            Group::All => self.blocked_all = true,
            _ => self.blocked.extend(group.keys()),
        }
    }

    /// True when the eligible records of either lane fill a batch.
    fn full(&self) -> bool {
        self.lane_full(Lane::Live) || self.lane_full(Lane::Park)
    }

    fn lane_full(&self, lane: Lane) -> bool {
        let (len, bytes) = match lane {
            Lane::Live => (self.eligible.len(), self.eligible_bytes),
            Lane::Park => (self.park_eligible.len(), self.park_eligible_bytes),
        };
        len >= self.opts.batch_size || bytes >= self.opts.max_batch_bytes
    }

    /// Counts an entry of `group` in (or out of) the pending ones.
    fn count_pending(&mut self, group: Group, added: bool) {
        if group == Group::All {
            self.pending_all = if added {
                self.pending_all + 1
            } else {
                self.pending_all.saturating_sub(1)
            };
            return;
        }
        for key in group.keys() {
            if added {
                *self.pending_keys.entry(key).or_default() += 1;
            } else if let Some(n) = self.pending_keys.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.pending_keys.remove(&key);
                }
            }
        }
    }

    /// Places one entry, in commit order: eligible when its groups are
    /// free, else it blocks them for the entries after it.
    fn classify(&mut self, seq: u64, group: Group, len: usize, restored: bool) {
        if !restored && self.is_free(group) {
            if group == Group::All {
                self.blocked_all = true;
            }
            if !self.is_parked(group) {
                self.eligible.push_back(seq);
                self.eligible_bytes += len;
                self.live_pending.extend(group.keys());
            } else if group.keys().any(|k| self.live_pending.contains(&k)) {
                // An earlier record of one of its keys goes live: it waits.
                self.block(group);
            } else {
                self.park_eligible.push_back(seq);
                self.park_eligible_bytes += len;
                self.park_pending.extend(group.keys());
            }
        } else {
            self.block(group);
        }
    }

    /// Recomputes the eligible records from scratch, in commit order (after
    /// groups in flight changed): a stored batch's record holds its group
    /// for the records after it.
    fn rescan(&mut self) {
        self.dirty = false;
        self.eligible.clear();
        self.eligible_bytes = 0;
        self.park_eligible.clear();
        self.park_eligible_bytes = 0;
        self.park_pending.clear();
        self.live_pending.clear();
        self.blocked.clear();
        self.blocked_all = false;
        self.unscanned = self.entries.keys().next().copied();
        self.scan();
    }

    /// Classifies entries from `unscanned` on, until a batch is full or
    /// nothing after can be eligible (every pending group is blocked, or
    /// everything waits for a truncate): then the rest stays as it is, and
    /// entries pushed later are classified as they come.
    fn scan(&mut self) {
        while let Some(from) = self.unscanned {
            if !self.scan_everything() {
                if self.full() {
                    return;
                }
                let all_blocked = self.blocked_all
                    || (!self.blocked.is_empty() && self.blocked.len() >= self.pending_keys.len());
                if all_blocked {
                    // What the rest would do: a truncate among it blocks everything.
                    if self.pending_all > 0 {
                        self.blocked_all = true;
                    }
                    self.unscanned = None;
                    return;
                }
            }
            let Some((seq, group, len, restored)) =
                self.entries.range(from..).next().map(|(s, e)| {
                    (
                        *s,
                        e.record.group,
                        e.record.json.len(),
                        e.restored.is_some(),
                    )
                })
            else {
                self.unscanned = None;
                return;
            };
            self.unscanned = seq.checked_add(1);
            self.classify(seq, group, len, restored);
        }
    }

    #[cfg(test)]
    fn scan_everything(&self) -> bool {
        self.full_scan
    }

    #[cfg(not(test))]
    fn scan_everything(&self) -> bool {
        false
    }

    /// A complete stored batch that may go now: none of its groups in
    /// flight, and for each of its groups the earliest pending record is
    /// its own (so records of the group before it, stored or not, go first).
    fn next_restored(&mut self) -> Option<Batch> {
        if self.restored.is_empty() {
            return None;
        }
        let mut earliest: HashMap<u64, Option<usize>> = HashMap::new();
        let mut first_all: Option<(u64, Option<usize>)> = None;
        for (seq, e) in &self.entries {
            match e.record.group {
                Group::All => {
                    first_all.get_or_insert((*seq, e.restored));
                }
                g => {
                    for k in g.keys() {
                        earliest.entry(k).or_insert(e.restored);
                    }
                }
            }
        }
        let chosen = self.restored.iter().enumerate().position(|(i, stored)| {
            if stored.gone || !stored.complete {
                return false;
            }
            if self.in_flight_all > 0 {
                return stored.arrived.is_empty();
            }
            let last_seq = stored.arrived.last().copied().unwrap_or(0);
            if let Some((seq, owner)) = first_all {
                if seq < last_seq && owner != Some(i) {
                    return false;
                }
            }
            stored.arrived.iter().all(|s| {
                let Some(e) = self.entries.get(s) else {
                    return true;
                };
                match e.record.group {
                    Group::All => self.chained || self.in_flight_batches == 0,
                    g => g.keys().all(|k| {
                        !self.in_flight.contains_key(&k)
                            && earliest.get(&k).copied().flatten() == Some(i)
                    }),
                }
            })
        })?;
        let stored = self.restored.get_mut(chosen)?;
        stored.gone = true;
        let seqs = std::mem::take(&mut stored.arrived);
        if self.restored.iter().all(|s| s.gone) {
            self.restored.clear();
        }
        self.dirty = true;
        if seqs.is_empty() {
            return self.next_restored();
        }
        Some(self.seal(seqs))
    }

    /// Takes these entries out and seals them into a batch in flight.
    fn seal(&mut self, seqs: Vec<u64>) -> Batch {
        let mut records = Vec::with_capacity(seqs.len());
        let mut groups = Vec::with_capacity(seqs.len());
        let mut charge = Charge::default();
        for seq in seqs {
            if let Some(mut entry) = self.entries.remove(&seq) {
                self.count_pending(entry.record.group, false);
                groups.push(entry.record.group);
                charge.merge(std::mem::take(&mut entry.record.charge));
                records.push(entry.record);
            }
        }
        // Live records were classified with no group parked; a re-formed
        // batch holding a parked group follows the parked work whole.
        let lane = if groups.iter().any(|g| self.is_parked(*g)) {
            Lane::Park
        } else {
            Lane::Live
        };
        if lane == Lane::Park {
            self.park(&ParkKeys::of(&groups));
        }
        if !self.chained {
            for group in &groups {
                match group {
                    Group::All => self.in_flight_all += 1,
                    g => {
                        for key in g.keys() {
                            *self.in_flight.entry(key).or_default() += 1;
                        }
                    }
                }
            }
        }
        self.in_flight_batches += 1;
        self.dirty = true;
        let buf = self.bodies.pop().unwrap_or_default();
        let mut batch =
            payload::build_into(&self.opts.strategy, records, self.decorate.as_ref(), buf);
        batch.groups = groups;
        batch.charge = charge;
        batch.lane = lane;
        batch
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::batch::NoDecoration;

    fn rec(lsn: u64, index: u32, group: Group) -> QueuedRecord {
        let mut r = QueuedRecord::new(
            Lsn(lsn),
            index,
            0,
            format!("{{\"n\":{index}}}").into_bytes(),
        );
        r.group = group;
        r
    }

    fn sized(lsn: u64, index: u32, len: usize) -> QueuedRecord {
        let mut json = b"{\"x\":\"".to_vec();
        json.resize(len.saturating_sub(2).max(6), b'a');
        json.extend_from_slice(b"\"}");
        QueuedRecord::new(Lsn(lsn), index, 0, json)
    }

    fn dispatcher(size: usize, bytes: usize) -> Dispatcher {
        Dispatcher::new(
            BatcherOptions {
                strategy: "s".into(),
                batch_size: size,
                max_batch_bytes: bytes,
                linger: Duration::from_millis(20),
            },
            Arc::new(NoDecoration),
        )
    }

    fn batch(d: &mut Dispatcher, now: Instant) -> Option<Batch> {
        match d.next(now, false) {
            Next::Batch(b) => Some(*b),
            Next::Wait(_) => None,
        }
    }

    fn keys(b: &Batch) -> Vec<(u64, u32)> {
        b.keys.iter().map(|(l, i)| (l.0, *i)).collect()
    }

    const K: fn(u64) -> Group = Group::Key;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Group, usize),
        Next { flush: bool, later_ms: u64 },
        Release(prop::sample::Index),
        TxEnd,
    }

    fn op() -> impl Strategy<Value = Op> {
        let group = prop_oneof![
            8 => (0u64..4).prop_map(Group::Key),
            2 => (0u64..4, 0u64..4).prop_map(|(a, b)| Group::Keys(a, b)),
            1 => Just(Group::All),
        ];
        prop_oneof![
            6 => (group, 1usize..60).prop_map(|(g, len)| Op::Push(g, len)),
            3 => (any::<bool>(), 0u64..30).prop_map(|(flush, later_ms)| Op::Next { flush, later_ms }),
            2 => any::<prop::sample::Index>().prop_map(Op::Release),
            1 => Just(Op::TxEnd),
        ]
    }

    #[derive(Debug, Clone)]
    enum ParkOp {
        Push(Group),
        Next {
            flush: bool,
            later_ms: u64,
        },
        /// A batch in flight ends: delivered, or failed and parked.
        Finish(prop::sample::Index, bool),
        /// A drain of the next ready parked row starts.
        Drain,
        /// A parked row in flight is delivered.
        Drained(prop::sample::Index),
    }

    /// Parked rows of the model: their records and keys, by id.
    type Rows = HashMap<i64, (Vec<(u64, u32)>, ParkKeys)>;

    fn park_op() -> impl Strategy<Value = ParkOp> {
        let group = prop_oneof![
            8 => (0u64..4).prop_map(Group::Key),
            2 => (0u64..4, 0u64..4).prop_map(|(a, b)| Group::Keys(a, b)),
            1 => Just(Group::All),
        ];
        prop_oneof![
            6 => group.prop_map(ParkOp::Push),
            4 => (any::<bool>(), prop_oneof![Just(0u64), Just(30), Just(1100)])
                .prop_map(|(flush, later_ms)| ParkOp::Next { flush, later_ms }),
            4 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, f)| ParkOp::Finish(i, f)),
            2 => Just(ParkOp::Drain),
            2 => any::<prop::sample::Index>().prop_map(ParkOp::Drained),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Parking under `ordering = "key"`: whichever batches fail and are
        /// parked when, and however parked rows drain, records that share a
        /// key (or a truncate and anything) are delivered in commit order,
        /// and every record exactly once.
        #[test]
        fn parking_keeps_commit_order_per_key(
            size in 1usize..5,
            ops in prop::collection::vec(park_op(), 1..150),
        ) {
            use crate::batch::park::{ParkIndex, ParkedRow};
            let mut d = dispatcher(size, 1 << 20);
            let mut index = ParkIndex::default();
            let mut now = Instant::now();
            let mut lsn = 0u64;
            let mut groups: Vec<Group> = Vec::new();
            let mut in_flight: Vec<Batch> = Vec::new();
            let mut rows: Rows = HashMap::new();
            let mut next_id = 1i64;
            let mut draining: Vec<i64> = Vec::new();
            let mut delivered: Vec<u64> = Vec::new();
            let finish = |d: &mut Dispatcher, index: &mut ParkIndex, b: Batch, fail: bool,
                              delivered: &mut Vec<u64>, rows: &mut Rows,
                              next_id: &mut i64| {
                d.release(&b);
                let keys = park_keys(&b);
                if b.lane == Lane::Park || fail {
                    if b.lane == Lane::Live {
                        d.park(&keys);
                    }
                    let id = *next_id;
                    *next_id += 1;
                    index.insert(ParkedRow { id, keys: keys.clone(), bytes: 1, records: b.size as u64 });
                    rows.insert(id, (b.keys.iter().map(|(l, i)| (l.0, *i)).collect(), keys));
                } else {
                    delivered.extend(b.keys.iter().map(|(l, _)| l.0));
                }
            };
            for op in ops {
                match op {
                    ParkOp::Push(group) => {
                        groups.push(group);
                        d.push(rec(lsn, 0, group), now);
                        lsn += 1;
                    }
                    ParkOp::Next { flush, later_ms } => {
                        now += Duration::from_millis(later_ms);
                        if let Next::Batch(b) = d.next(now, flush) {
                            in_flight.push(*b);
                        }
                    }
                    ParkOp::Finish(i, fail) => {
                        if !in_flight.is_empty() {
                            let b = in_flight.remove(i.index(in_flight.len()));
                            finish(&mut d, &mut index, b, fail, &mut delivered, &mut rows, &mut next_id);
                        }
                    }
                    ParkOp::Drain => {
                        if let Some(id) = index.next_ready() {
                            draining.push(id);
                        }
                    }
                    ParkOp::Drained(i) => {
                        if !draining.is_empty() {
                            let id = draining.remove(i.index(draining.len()));
                            let (recs, keys) = rows.remove(&id).unwrap();
                            index.remove(id);
                            d.unpark(&keys);
                            delivered.extend(recs.iter().map(|(l, _)| *l));
                        }
                    }
                }
            }
            // The end: everything goes (flush), nothing fails any more.
            for _ in 0..10_000 {
                if let Next::Batch(b) = d.next(now, true) {
                    in_flight.push(*b);
                    continue;
                }
                if let Some(b) = in_flight.pop() {
                    finish(&mut d, &mut index, b, false, &mut delivered, &mut rows, &mut next_id);
                    continue;
                }
                if let Some(id) = draining.pop().or_else(|| index.next_ready()) {
                    let (recs, keys) = rows.remove(&id).unwrap();
                    index.remove(id);
                    d.unpark(&keys);
                    delivered.extend(recs.iter().map(|(l, _)| *l));
                    continue;
                }
                break;
            }
            prop_assert!(d.is_empty() && index.is_empty(), "everything went");
            let mut sorted = delivered.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..lsn).collect::<Vec<_>>(), "each record exactly once");
            let at: HashMap<u64, usize> = delivered.iter().enumerate().map(|(i, l)| (*l, i)).collect();
            let shares = |a: Group, b: Group| {
                a == Group::All || b == Group::All || a.keys().any(|k| b.keys().any(|j| j == k))
            };
            for x in 0..lsn {
                for y in x + 1..lsn {
                    if shares(groups[x as usize], groups[y as usize]) {
                        prop_assert!(at[&x] < at[&y], "record {x} ({:?}) after {y} ({:?}): {delivered:?}",
                            groups[x as usize], groups[y as usize]);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

        /// Chained (`ordering = "commit"`): whatever is asked when, every
        /// record is sealed exactly once and the batches, in the order they
        /// were sealed, hold the records in commit order; a truncate goes
        /// alone; a batch sealed ahead without a flush is full.
        #[test]
        fn chained_batches_in_seal_order_are_commit_order(
            size in 1usize..6,
            bytes in 20usize..200,
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let mut d = dispatcher(size, bytes).chained();
            let t0 = Instant::now();
            let mut now = t0;
            let mut lsn = 0u64;
            let mut sealed: Vec<(u64, u32)> = Vec::new();
            let mut in_flight: Vec<Batch> = Vec::new();
            let mut lens: Vec<usize> = Vec::new();
            let check = |b: &Batch, sealed: &mut Vec<(u64, u32)>| -> Result<(), TestCaseError> {
                if b.groups.contains(&Group::All) {
                    prop_assert_eq!(b.groups.len(), 1, "a truncate goes alone");
                }
                sealed.extend(keys(b));
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Push(group, len) => {
                        // Under commit order every record is in one group.
                        let mut r = sized(lsn, 0, len);
                        r.group = if group == Group::All { Group::All } else { Group::default() };
                        lens.push(r.json.len());
                        lsn += 1;
                        d.push(r, now);
                    }
                    Op::Next { flush, later_ms } => {
                        now += Duration::from_millis(later_ms);
                        let ahead = later_ms % 2 == 0;
                        let next = if ahead { d.next_ahead(now, flush) } else { d.next(now, flush) };
                        if let Next::Batch(b) = next {
                            if ahead && !flush {
                                let ks = keys(&b);
                                let len: usize = ks.iter().map(|k| lens[k.0 as usize]).sum();
                                let after = ks.last().and_then(|k| lens.get(k.0 as usize + 1));
                                prop_assert!(
                                    ks.len() == size || len >= bytes || after.is_some_and(|a| len + a > bytes),
                                    "sealed ahead but not full: {} records, {len} bytes", ks.len()
                                );
                            }
                            check(&b, &mut sealed)?;
                            in_flight.push(*b);
                        }
                    }
                    Op::Release(_) => {
                        // Chained batches finish in order.
                        if !in_flight.is_empty() {
                            let b = in_flight.remove(0);
                            d.release(&b);
                        }
                    }
                    Op::TxEnd => d.tx_end(Lsn(lsn)),
                }
            }
            while let Next::Batch(b) = d.next(now, true) {
                check(&b, &mut sealed)?;
            }
            prop_assert!(d.is_empty());
            let expected: Vec<(u64, u32)> = (0..lsn).map(|l| (l, 0)).collect();
            prop_assert_eq!(sealed, expected);
        }

        /// The scan that stops early forms exactly the batches, at exactly
        /// the times, of the scan of every pending record every time.
        #[test]
        fn the_short_scan_forms_the_batches_of_the_full_scan(
            size in 1usize..6,
            bytes in 20usize..200,
            stored in prop::option::of((0u64..20, 0u64..6)),
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let mut short = dispatcher(size, bytes);
            let mut full = dispatcher(size, bytes);
            full.full_scan = true;
            if let Some((first, n)) = stored {
                let range = || vec![Stored::Range { first: (Lsn(first), 0), last: (Lsn(first + n), 0) }];
                short.restore(range(), vec![]);
                full.restore(range(), vec![]);
            }
            let t0 = Instant::now();
            let mut now = t0;
            let mut lsn = 0u64;
            let mut in_flight: Vec<(Batch, Batch)> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(group, len) => {
                        let mut a = sized(lsn, 0, len);
                        a.group = group;
                        let mut b = sized(lsn, 0, len);
                        b.group = group;
                        lsn += 1;
                        let (pa, pb) = (short.push(a, now), full.push(b, now));
                        prop_assert_eq!(format!("{pa:?}"), format!("{pb:?}"));
                    }
                    Op::Next { flush, later_ms } => {
                        now += Duration::from_millis(later_ms);
                        match (short.next(now, flush), full.next(now, flush)) {
                            (Next::Batch(a), Next::Batch(b)) => {
                                prop_assert_eq!(keys(&a), keys(&b));
                                prop_assert_eq!(&a.groups, &b.groups);
                                in_flight.push((*a, *b));
                            }
                            (Next::Wait(a), Next::Wait(b)) => prop_assert_eq!(a, b),
                            (a, b) => prop_assert!(false, "short scan {a:?}, full scan {b:?}"),
                        }
                    }
                    Op::Release(i) => {
                        if !in_flight.is_empty() {
                            let (a, b) = in_flight.remove(i.index(in_flight.len()));
                            short.release(&a);
                            full.release(&b);
                        }
                    }
                    Op::TxEnd => {
                        short.tx_end(Lsn(lsn));
                        full.tx_end(Lsn(lsn));
                    }
                }
                prop_assert_eq!(short.pending_len(), full.pending_len());
            }
        }
    }

    #[test]
    fn a_finished_batch_body_is_reused_only_when_nothing_else_holds_it() {
        let mut d = dispatcher(2, 1 << 20);
        let t0 = Instant::now();
        for i in 0..6 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let mut first = batch(&mut d, t0).unwrap();
        let body = first.body.clone();
        d.release(&first);
        d.recycle(std::mem::take(&mut first.body));
        assert!(d.bodies.is_empty(), "still held elsewhere: not reused");
        drop(body);
        let mut second = batch(&mut d, t0).unwrap();
        d.release(&second);
        let at = second.body.as_ptr();
        let expected = second.body.clone();
        let copy = expected.to_vec();
        drop(expected);
        d.recycle(std::mem::take(&mut second.body));
        assert_eq!(d.bodies.len(), 1);
        let third = batch(&mut d, t0).unwrap();
        assert_eq!(third.body.as_ptr(), at, "the same buffer");
        assert_ne!(&third.body[..], &copy[..]);
        let v: serde_json::Value = serde_json::from_slice(&third.body).unwrap();
        assert_eq!(v["batch"]["size"], 2);
        assert_eq!(v["records"][0]["n"], 4);
    }

    #[test]
    fn a_batch_scans_about_its_own_records_not_every_pending_one() {
        // Commit order: 10,000 pending records, batches of 100.
        let mut d = dispatcher(100, 1 << 20);
        let t0 = Instant::now();
        for i in 0..10_000 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let first = batch(&mut d, t0).unwrap();
        assert_eq!(first.keys.len(), 100);
        // In flight: the scan stops at the first record (its group waits).
        assert!(batch(&mut d, t0).is_none());
        assert!(d.unscanned.is_none() && d.eligible.is_empty());
        d.release(&first);
        let second = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&second)[0], (100, 100));
        // The scan stopped once a batch was full: the rest is not classified yet.
        assert_eq!(d.unscanned, Some(200));
    }

    #[test]
    fn full_batches_go_at_once_and_the_rest_after_linger() {
        let mut d = dispatcher(3, 1 << 20);
        let t0 = Instant::now();
        for i in 0..4 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let first = batch(&mut d, t0).expect("a full batch");
        assert_eq!(keys(&first), [(100, 0), (100, 1), (100, 2)]);
        d.release(&first);
        match d.next(t0, false) {
            Next::Wait(Some(due)) => assert_eq!(due, t0 + Duration::from_millis(20)),
            other => panic!("{other:?}"),
        }
        let second = batch(&mut d, t0 + Duration::from_millis(20)).expect("after linger");
        assert_eq!(keys(&second), [(100, 3)]);
        assert!(d.is_empty());
    }

    #[test]
    fn commit_order_keeps_one_batch_in_flight() {
        let mut d = dispatcher(2, 1 << 20);
        let t0 = Instant::now();
        for i in 0..4 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let a = batch(&mut d, t0).unwrap();
        assert!(
            batch(&mut d, t0 + Duration::from_secs(1)).is_none(),
            "one in flight"
        );
        d.release(&a);
        let b = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&b), [(100, 2), (100, 3)]);
    }

    fn park_keys(b: &Batch) -> ParkKeys {
        ParkKeys::of(&b.groups)
    }

    #[test]
    fn a_parked_key_goes_to_the_park_lane_and_other_keys_stay_live() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        d.push(rec(100, 0, K(1)), t0);
        let failing = batch(&mut d, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(failing.lane, Lane::Live);
        // While it is in flight, more of key 1 waits behind it; key 2 flows.
        d.push(rec(200, 0, K(1)), t0);
        d.push(rec(200, 1, K(2)), t0);
        d.push(rec(300, 0, K(1)), t0);
        // It is parked: its key's later records must follow it.
        d.release(&failing);
        d.park(&park_keys(&failing));
        let live = batch(&mut d, t0 + Duration::from_millis(30)).unwrap();
        assert_eq!((live.lane, keys(&live)), (Lane::Live, vec![(200, 1)]));
        // The park lane waits longer to fill.
        assert!(batch(&mut d, t0 + Duration::from_millis(30)).is_none());
        let behind = batch(&mut d, t0 + PARK_LINGER).unwrap();
        assert_eq!(behind.lane, Lane::Park);
        assert_eq!(keys(&behind), [(200, 0), (300, 0)]);
        // Key 1 counts two parked rows now; a new record of it is parked
        // until both are gone, then it goes live.
        d.release(&behind);
        d.push(rec(400, 0, K(1)), t0);
        d.unpark(&park_keys(&failing));
        assert!(batch(&mut d, t0 + Duration::from_millis(30)).is_none());
        d.unpark(&park_keys(&behind));
        let again = batch(&mut d, t0 + Duration::from_millis(30)).unwrap();
        assert_eq!((again.lane, keys(&again)), (Lane::Live, vec![(400, 0)]));
    }

    #[test]
    fn a_key_change_of_a_parked_key_parks_both_keys_after_the_other_is_free() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        let late = t0 + PARK_LINGER;
        d.push(rec(100, 0, K(2)), t0);
        let two = batch(&mut d, late).unwrap();
        d.park(&ParkKeys {
            keys: vec![1],
            all: false,
        });
        // Key 1 is parked, key 2 is in flight: the key change waits for 2.
        d.push(rec(200, 0, Group::Keys(1, 2)), t0);
        d.push(rec(300, 0, K(2)), t0);
        assert!(batch(&mut d, late).is_none());
        d.release(&two);
        let moved = batch(&mut d, late).unwrap();
        assert_eq!(moved.lane, Lane::Park);
        assert_eq!(keys(&moved), [(200, 0), (300, 0)]);
        assert_eq!(park_keys(&moved).keys, [1, 2]);
    }

    #[test]
    fn chained_everything_follows_a_parked_batch_until_the_park_is_drained() {
        let mut d = dispatcher(2, 1 << 20).chained();
        let t0 = Instant::now();
        let late = t0 + PARK_LINGER;
        for i in 0..3 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let a = batch(&mut d, t0).unwrap();
        // `a` failed and was parked.
        d.release(&a);
        d.park(&park_keys(&a));
        let b = batch(&mut d, late).unwrap();
        assert_eq!((b.lane, keys(&b)), (Lane::Park, vec![(100, 2)]));
        d.release(&b);
        d.push(rec(200, 0, Group::default()), t0);
        d.unpark(&park_keys(&a));
        let c = batch(&mut d, late).unwrap();
        assert_eq!(
            (c.lane, keys(&c)),
            (Lane::Park, vec![(200, 0)]),
            "b is still parked"
        );
        d.release(&c);
        d.unpark(&park_keys(&b));
        d.unpark(&park_keys(&c));
        d.push(rec(300, 0, Group::default()), t0);
        let live = batch(&mut d, late).unwrap();
        assert_eq!((live.lane, keys(&live)), (Lane::Live, vec![(300, 0)]));
    }

    #[test]
    fn a_held_strategy_parks_everything_and_a_re_formed_batch_of_a_parked_key_is_parked() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        let late = t0 + PARK_LINGER;
        d.hold(true);
        d.push(rec(100, 0, K(1)), t0);
        d.push(rec(100, 1, K(2)), t0);
        let held = batch(&mut d, late).unwrap();
        assert_eq!(held.lane, Lane::Park);
        assert_eq!(keys(&held), [(100, 0), (100, 1)]);
        d.release(&held);
        d.hold(false);

        // After a restart: key 3 has a parked row, and a batch of key 3 and
        // 4 sent before the restart is re-formed: it follows the parked row.
        let mut r = dispatcher(10, 1 << 20);
        r.park(&ParkKeys {
            keys: vec![3],
            all: false,
        });
        r.restore(
            vec![Stored::List(vec![(Lsn(500), 0), (Lsn(500), 1)])],
            vec![],
        );
        r.push(rec(500, 0, K(3)), t0);
        r.push(rec(500, 1, K(4)), t0);
        r.tx_end(Lsn(501));
        let reformed = batch(&mut r, t0).unwrap();
        assert_eq!(reformed.lane, Lane::Park);
        assert_eq!(park_keys(&reformed).keys, [3, 4]);
    }

    #[test]
    fn chained_a_full_batch_is_sealed_ahead_and_a_partial_one_keeps_filling() {
        let mut d = dispatcher(2, 1 << 20).chained();
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        for i in 0..5 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let a = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&a), [(100, 0), (100, 1)]);
        // While `a` is in flight the next full batch is sealed ahead of it.
        let Next::Batch(b) = d.next_ahead(t0, false) else {
            panic!("a full batch goes ahead")
        };
        assert_eq!(keys(&b), [(100, 2), (100, 3)]);
        // One record is not a full batch: it waits, past linger, for more.
        assert!(matches!(d.next_ahead(late, false), Next::Wait(None)));
        d.push(rec(200, 0, Group::default()), late);
        let Next::Batch(c) = d.next_ahead(late, false) else {
            panic!("full again")
        };
        assert_eq!(keys(&c), [(100, 4), (200, 0)]);
        d.release(&a);
        d.release(&b);
        d.release(&c);
        assert!(d.is_empty());
        // Unchained, nothing goes ahead.
        let mut plain = dispatcher(2, 1 << 20);
        for i in 0..4 {
            plain.push(rec(100, i, Group::default()), t0);
        }
        let _a = batch(&mut plain, t0).unwrap();
        assert!(matches!(plain.next_ahead(t0, false), Next::Wait(None)));
    }

    #[test]
    fn chained_stored_batches_being_re_formed_go_one_at_a_time() {
        let mut d = dispatcher(2, 1 << 20).chained();
        let t0 = Instant::now();
        let range = |a: u32, b: u32| Stored::Range {
            first: (Lsn(100), a),
            last: (Lsn(100), b),
        };
        d.restore(vec![range(0, 1), range(2, 3)], vec![]);
        for i in 0..6 {
            d.push(rec(100, i, Group::default()), t0);
        }
        let a = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&a), [(100, 0), (100, 1)]);
        assert!(matches!(d.next_ahead(t0, false), Next::Wait(None)));
        d.release(&a);
        let b = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&b), [(100, 2), (100, 3)]);
        // Every stored batch has gone: the next full one is sealed ahead again.
        let Next::Batch(c) = d.next_ahead(t0, false) else {
            panic!("a full batch goes ahead")
        };
        assert_eq!(keys(&c), [(100, 4), (100, 5)]);
    }

    #[test]
    fn chained_a_truncate_still_goes_alone_in_its_place() {
        let mut d = dispatcher(10, 1 << 20).chained();
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, Group::default()), t0);
        d.push(rec(20, 0, Group::All), t0);
        d.push(rec(30, 0, Group::default()), t0);
        // Nothing is released: the caller sends them in this order.
        let sealed: Vec<_> = (0..3)
            .map(|_| keys(&batch(&mut d, late).unwrap()))
            .collect();
        assert_eq!(sealed, [vec![(10, 0)], vec![(20, 0)], vec![(30, 0)]]);
        assert!(d.is_empty());
    }

    #[test]
    fn other_keys_flow_past_a_key_in_flight_which_keeps_its_order() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, K(1)), t0);
        let a = batch(&mut d, late).unwrap();
        assert_eq!(keys(&a), [(10, 0)]);
        // Key 1 is in flight: its next records wait; keys 2 and 3 go.
        d.push(rec(20, 0, K(1)), t0);
        d.push(rec(20, 1, K(2)), t0);
        d.push(rec(20, 2, K(1)), t0);
        d.push(rec(20, 3, K(3)), t0);
        let b = batch(&mut d, late).unwrap();
        assert_eq!(keys(&b), [(20, 1), (20, 3)]);
        assert!(batch(&mut d, late).is_none(), "key 1 still in flight");
        d.release(&a);
        let c = batch(&mut d, late).unwrap();
        assert_eq!(keys(&c), [(20, 0), (20, 2)], "key 1 in commit order");
    }

    #[test]
    fn a_record_of_a_waiting_key_waits_behind_it() {
        let mut d = dispatcher(2, 1 << 20);
        let t0 = Instant::now();
        d.push(rec(10, 0, K(1)), t0);
        let a = batch(&mut d, t0 + Duration::from_secs(1)).unwrap();
        d.push(rec(20, 0, K(1)), t0); // waits (key 1 in flight)
        d.release(&a);
        d.push(rec(30, 0, K(1)), t0);
        d.push(rec(30, 1, K(2)), t0);
        // After the release, 20:0 and 30:0 of key 1 go together, in order;
        // the batch is full at 2, so 30:1 goes next.
        let b = batch(&mut d, t0).unwrap();
        assert_eq!(keys(&b), [(20, 0), (30, 0)]);
        let c = batch(&mut d, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(keys(&c), [(30, 1)]);
    }

    #[test]
    fn a_key_change_holds_both_keys() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, K(1)), t0);
        let a = batch(&mut d, late).unwrap();
        d.push(rec(20, 0, Group::Keys(2, 1)), t0); // key 1 became key 2
        d.push(rec(20, 1, K(2)), t0);
        d.push(rec(20, 2, K(3)), t0);
        let b = batch(&mut d, late).unwrap();
        assert_eq!(keys(&b), [(20, 2)]);
        d.release(&a);
        let c = batch(&mut d, late).unwrap();
        assert_eq!(keys(&c), [(20, 0), (20, 1)]);
    }

    #[test]
    fn a_truncate_waits_for_everything_and_everything_waits_for_it() {
        let mut d = dispatcher(10, 1 << 20);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, K(1)), t0);
        let a = batch(&mut d, late).unwrap();
        d.push(rec(20, 0, Group::All), t0);
        d.push(rec(30, 0, K(2)), t0);
        assert!(batch(&mut d, late).is_none());
        d.release(&a);
        let t = batch(&mut d, late).unwrap();
        assert_eq!(keys(&t), [(20, 0)]);
        assert!(batch(&mut d, late).is_none());
        d.release(&t);
        assert_eq!(keys(&batch(&mut d, late).unwrap()), [(30, 0)]);
    }

    #[test]
    fn max_bytes_splits_and_a_big_record_goes_alone() {
        let mut d = dispatcher(100, 100);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        for (i, len) in [40, 40, 40, 500, 10].into_iter().enumerate() {
            d.push(sized(1, i as u32, len), t0);
        }
        let mut got = Vec::new();
        while let Some(b) = batch(&mut d, late) {
            got.push(keys(&b));
            d.release(&b);
        }
        assert_eq!(
            got,
            vec![
                vec![(1, 0), (1, 1)],
                vec![(1, 2)],
                vec![(1, 3)],
                vec![(1, 4)]
            ]
        );
    }

    #[test]
    fn stored_batches_are_reformed_exactly_and_keep_their_order() {
        let mut d = dispatcher(2, 1 << 20);
        d.restore(
            vec![
                Stored::Range {
                    first: (Lsn(10), 1),
                    last: (Lsn(20), 0),
                },
                Stored::Range {
                    first: (Lsn(30), 0),
                    last: (Lsn(30), 0),
                },
            ],
            vec![],
        );
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, Group::default()), t0); // before any stored batch
        d.push(rec(10, 1, Group::default()), t0);
        d.push(rec(10, 2, Group::default()), t0);
        d.tx_end(Lsn(11));
        d.push(rec(20, 0, Group::default()), t0); // ends stored batch 1
        d.push(rec(30, 0, Group::default()), t0); // stored batch 2, alone
        d.push(rec(40, 0, Group::default()), t0);
        d.push(rec(40, 1, Group::default()), t0);
        let mut got = Vec::new();
        while let Some(b) = batch(&mut d, late) {
            got.push(keys(&b));
            d.release(&b);
        }
        assert_eq!(
            got,
            vec![
                vec![(10, 0)],
                vec![(10, 1), (10, 2), (20, 0)],
                vec![(30, 0)],
                vec![(40, 0), (40, 1)],
            ],
            "in commit order; the stored batches as they were"
        );
    }

    #[test]
    fn stored_lists_under_key_order_go_in_the_order_they_were_sent() {
        // Before the restart: key 1 was busy, so [20:0 (k2)] went before
        // [10:0 (k1), 30:0 (k2)]. Both go again, k2's earlier record first.
        let mut d = dispatcher(10, 1 << 20);
        d.restore(
            vec![
                Stored::List(vec![(Lsn(10), 0), (Lsn(30), 0)]),
                Stored::List(vec![(Lsn(20), 0)]),
            ],
            vec![],
        );
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, K(1)), t0);
        d.push(rec(20, 0, K(2)), t0);
        d.push(rec(30, 0, K(2)), t0);
        d.push(rec(35, 0, K(2)), t0); // not stored: waits for k2's stored batches
        let first = batch(&mut d, late).unwrap();
        assert_eq!(keys(&first), [(20, 0)]);
        assert!(batch(&mut d, late).is_none(), "k2 in flight");
        d.release(&first);
        let second = batch(&mut d, late).unwrap();
        assert_eq!(keys(&second), [(10, 0), (30, 0)]);
        assert!(batch(&mut d, late).is_none(), "35:0 waits for k2");
        d.release(&second);
        assert_eq!(keys(&batch(&mut d, late).unwrap()), [(35, 0)]);
    }

    #[test]
    fn a_stored_batch_whose_last_record_never_comes_goes_at_its_tx_end() {
        let mut d = dispatcher(10, 1 << 20);
        d.restore(
            vec![Stored::Range {
                first: (Lsn(10), 0),
                last: (Lsn(10), 5),
            }],
            vec![],
        );
        let t0 = Instant::now();
        d.push(rec(10, 0, Group::default()), t0);
        d.push(rec(10, 1, Group::default()), t0);
        assert!(batch(&mut d, t0 + Duration::from_secs(1)).is_none());
        d.tx_end(Lsn(12));
        assert_eq!(keys(&batch(&mut d, t0).unwrap()), [(10, 0), (10, 1)]);
    }

    #[test]
    fn a_stored_batch_whose_last_record_was_filtered_goes_when_a_later_record_comes() {
        // Inside one big transaction: the stored batch must not wait for the
        // transaction's end (the budget would fill behind it first).
        let mut d = dispatcher(10, 1 << 20);
        d.restore(
            vec![Stored::Range {
                first: (Lsn(10), 0),
                last: (Lsn(10), 5),
            }],
            vec![],
        );
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(1);
        d.push(rec(10, 0, Group::default()), t0);
        d.push(rec(10, 1, Group::default()), t0);
        assert!(batch(&mut d, late).is_none(), "(10, 2..=5) may still come");
        d.push(rec(10, 7, Group::default()), t0);
        let restored = batch(&mut d, late).expect("the stored batch goes");
        assert_eq!(keys(&restored), [(10, 0), (10, 1)]);
        d.release(&restored);
        assert_eq!(keys(&batch(&mut d, late).unwrap()), [(10, 7)]);
    }

    #[test]
    fn records_of_batches_delivered_before_the_restart_are_skipped() {
        let mut d = dispatcher(10, 1 << 20);
        d.restore(
            vec![],
            vec![Stored::List(vec![(Lsn(5), 0), (Lsn(10), 0), (Lsn(10), 2)])],
        );
        let t0 = Instant::now();
        assert!(matches!(d.push(rec(10, 0, K(1)), t0), Pushed::Skipped));
        assert!(matches!(d.push(rec(10, 1, K(2)), t0), Pushed::Queued));
        assert!(matches!(d.push(rec(10, 2, K(3)), t0), Pushed::Skipped));
        d.tx_end(Lsn(11));
        assert!(matches!(d.push(rec(20, 0, K(3)), t0), Pushed::Queued));
        assert_eq!(d.pending_len(), 2);
    }
}
