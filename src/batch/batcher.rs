//! The batcher: groups a strategy's queued records into batches by
//! `batch_size`, `max_batch_bytes` and `linger`, and remembers which
//! transactions a batch completes.
//!
//! Plain data, no timers and no I/O: the caller passes `now` in and asks for
//! the linger deadline, so every rule is unit-tested with values. The worker
//! (`delivery::worker`) drives it with tokio timers.
//!
//! Why `complete_through`: a batch delivered means every record queued before
//! it was delivered (batches go out in order), so the last transaction end
//! received before the batch was sealed is fully delivered with it. That is
//! what the checkpoint is told.
//!
//! Why stored boundaries: after a restart Postgres streams again what was
//! delivered but not yet acknowledged. Re-forming those batches with exactly
//! the boundaries they had gives them the same batch id, so receivers can
//! de-duplicate whole batches, not just records.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::payload::{self, Batch, RecordKey};
use super::{Decorate, QueuedRecord};
use crate::lsn::Lsn;

/// The first and last record of a batch sent before a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boundary {
    pub(crate) first: RecordKey,
    pub(crate) last: RecordKey,
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

/// Groups records into sealed [`Batch`]es.
pub(crate) struct Batcher {
    opts: BatcherOptions,
    decorate: Arc<dyn Decorate>,
    pending: Vec<QueuedRecord>,
    pending_bytes: usize,
    first_at: Option<Instant>,
    /// The last transaction end received.
    last_tx_end: Option<Lsn>,
    /// Batch boundaries from before a restart, oldest first.
    boundaries: VecDeque<Boundary>,
    /// The pending records re-form a stored boundary (sealed only at its end).
    replaying: Option<Boundary>,
    ready: VecDeque<Batch>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("opts", &self.opts)
            .field("pending", &self.pending.len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Batcher {
    pub(crate) fn new(opts: BatcherOptions, decorate: Arc<dyn Decorate>) -> Self {
        let opts = BatcherOptions {
            batch_size: opts.batch_size.max(1),
            max_batch_bytes: opts.max_batch_bytes.max(1),
            ..opts
        };
        Batcher {
            opts,
            decorate,
            pending: Vec::new(),
            pending_bytes: 0,
            first_at: None,
            last_tx_end: None,
            boundaries: VecDeque::new(),
            replaying: None,
            ready: VecDeque::new(),
        }
    }

    /// Batches sent before a restart whose records will be streamed again:
    /// they are re-formed with exactly these boundaries.
    pub(crate) fn restore_boundaries(&mut self, mut boundaries: Vec<Boundary>) {
        boundaries.sort_by_key(|b| b.first);
        self.boundaries = boundaries.into();
    }

    /// Adds a record; may seal batches (see [`Batcher::pop_ready`]).
    pub(crate) fn push(&mut self, record: QueuedRecord, now: Instant) {
        let key = (record.commit_lsn, record.index);
        // Stored boundaries this record has passed can no longer be re-formed.
        while let Some(b) = self.boundaries.front().copied() {
            if b.last >= key {
                break;
            }
            self.boundaries.pop_front();
            if self.replaying == Some(b) {
                self.seal();
            }
        }
        if let Some(b) = self.boundaries.front().copied() {
            if b.first <= key {
                if self.replaying != Some(b) {
                    self.seal();
                    self.replaying = Some(b);
                }
                self.add(record, now);
                if key == b.last {
                    self.boundaries.pop_front();
                    self.seal();
                }
                return;
            }
        }
        let len = record.json.len();
        if !self.pending.is_empty() && self.pending_bytes + len > self.opts.max_batch_bytes {
            self.seal();
        }
        self.add(record, now);
        if self.pending.len() >= self.opts.batch_size
            || self.pending_bytes >= self.opts.max_batch_bytes
        {
            self.seal();
        }
    }

    /// Every record of the transaction ending at `end_lsn` has been pushed.
    pub(crate) fn tx_end(&mut self, end_lsn: Lsn) {
        self.last_tx_end = Some(self.last_tx_end.map_or(end_lsn, |l| l.max(end_lsn)));
        // A stored batch whose last record's transaction has ended without
        // that record (the filter changed since) is sealed as it stands.
        if let Some(b) = self.replaying {
            if end_lsn > b.last.0 {
                if self.boundaries.front() == Some(&b) {
                    self.boundaries.pop_front();
                }
                self.seal();
            }
        }
    }

    /// When the pending (not full) batch must be sealed, if there is one.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if self.replaying.is_some() {
            return None;
        }
        self.first_at.map(|t| t + self.opts.linger)
    }

    /// Seals the pending batch if its linger has passed.
    pub(crate) fn poll_linger(&mut self, now: Instant) {
        if self.deadline().is_some_and(|d| d <= now) {
            self.seal();
        }
    }

    /// Seals whatever is pending now (the queue has ended).
    pub(crate) fn flush(&mut self) {
        self.seal();
    }

    /// The oldest sealed batch, if any.
    pub(crate) fn pop_ready(&mut self) -> Option<Batch> {
        self.ready.pop_front()
    }

    /// Sealed batches waiting to be sent.
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Records not yet sealed.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Records in sealed batches not yet taken.
    pub(crate) fn ready_records(&self) -> usize {
        self.ready.iter().map(|b| b.size).sum()
    }

    /// True when nothing is pending or sealed.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.ready.is_empty()
    }

    /// The last transaction end received.
    pub(crate) fn last_tx_end(&self) -> Option<Lsn> {
        self.last_tx_end
    }

    fn add(&mut self, record: QueuedRecord, now: Instant) {
        if self.pending.is_empty() {
            self.first_at = Some(now);
        }
        self.pending_bytes += record.json.len();
        self.pending.push(record);
    }

    fn seal(&mut self) {
        self.replaying = None;
        self.first_at = None;
        self.pending_bytes = 0;
        if self.pending.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.pending);
        let batch = payload::build(
            &self.opts.strategy,
            records,
            self.last_tx_end,
            self.decorate.as_ref(),
        );
        self.ready.push_back(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::NoDecoration;

    fn rec(lsn: u64, index: u32, len: usize) -> QueuedRecord {
        let mut json = b"{\"x\":\"".to_vec();
        json.resize(len.saturating_sub(2).max(6), b'a');
        json.extend_from_slice(b"\"}");
        QueuedRecord {
            commit_lsn: Lsn(lsn),
            index,
            commit_time: 0,
            json,
        }
    }

    fn batcher(size: usize, bytes: usize) -> Batcher {
        Batcher::new(
            BatcherOptions {
                strategy: "s".into(),
                batch_size: size,
                max_batch_bytes: bytes,
                linger: Duration::from_millis(20),
            },
            Arc::new(NoDecoration),
        )
    }

    fn drain(b: &mut Batcher) -> Vec<Vec<RecordKey>> {
        std::iter::from_fn(|| b.pop_ready())
            .map(|batch| batch.keys.clone())
            .collect()
    }

    #[test]
    fn seals_at_batch_size() {
        let mut b = batcher(3, 1 << 20);
        let now = Instant::now();
        for i in 0..7 {
            b.push(rec(100, i, 10), now);
        }
        b.tx_end(Lsn(200));
        let batches = drain(&mut b);
        assert_eq!(batches.len(), 2);
        assert_eq!(b.pending_len(), 1);
        b.poll_linger(now + Duration::from_millis(20));
        let last = b.pop_ready().unwrap();
        assert_eq!(last.keys, vec![(Lsn(100), 6)]);
        assert_eq!(last.complete_through, Some(Lsn(200)));
    }

    #[test]
    fn linger_waits_from_the_first_record() {
        let mut b = batcher(10, 1 << 20);
        let t0 = Instant::now();
        assert_eq!(b.deadline(), None);
        b.push(rec(1, 0, 10), t0);
        b.push(rec(1, 1, 10), t0 + Duration::from_millis(15));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(20)));
        b.poll_linger(t0 + Duration::from_millis(19));
        assert_eq!(b.ready_len(), 0);
        b.poll_linger(t0 + Duration::from_millis(20));
        assert_eq!(drain(&mut b), vec![vec![(Lsn(1), 0), (Lsn(1), 1)]]);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn max_bytes_splits_and_a_big_record_goes_alone() {
        let mut b = batcher(100, 100);
        let now = Instant::now();
        b.push(rec(1, 0, 40), now);
        b.push(rec(1, 1, 40), now);
        b.push(rec(1, 2, 40), now); // would pass 100: seals the first two
        b.push(rec(1, 3, 500), now); // seals [2], then goes alone
        b.push(rec(1, 4, 10), now);
        b.poll_linger(now + Duration::from_secs(1));
        assert_eq!(
            drain(&mut b),
            vec![
                vec![(Lsn(1), 0), (Lsn(1), 1)],
                vec![(Lsn(1), 2)],
                vec![(Lsn(1), 3)],
                vec![(Lsn(1), 4)],
            ]
        );
    }

    #[test]
    fn complete_through_is_the_last_tx_end_before_sealing() {
        let mut b = batcher(2, 1 << 20);
        let now = Instant::now();
        b.push(rec(10, 0, 10), now);
        b.tx_end(Lsn(11));
        b.push(rec(20, 0, 10), now); // seals [10:0, 20:0] with txn 20 still open
        b.tx_end(Lsn(21));
        let first = b.pop_ready().unwrap();
        assert_eq!(first.complete_through, Some(Lsn(11)));
        assert_eq!(b.last_tx_end(), Some(Lsn(21)));
    }

    #[test]
    fn stored_boundaries_are_reformed_exactly() {
        let mut b = batcher(2, 1 << 20);
        b.restore_boundaries(vec![
            Boundary {
                first: (Lsn(10), 1),
                last: (Lsn(20), 0),
            },
            Boundary {
                first: (Lsn(30), 0),
                last: (Lsn(30), 0),
            },
        ]);
        let now = Instant::now();
        b.push(rec(10, 0, 10), now); // before any boundary: normal batching
        b.push(rec(10, 1, 10), now); // starts boundary 1: seals [10:0]
        b.push(rec(10, 2, 10), now);
        assert_eq!(b.deadline(), None, "a re-formed batch does not linger");
        b.tx_end(Lsn(11));
        b.push(rec(20, 0, 10), now); // ends boundary 1 (3 records > batch_size)
        b.push(rec(30, 0, 10), now); // boundary 2, alone
        b.push(rec(40, 0, 10), now);
        b.push(rec(40, 1, 10), now);
        assert_eq!(
            drain(&mut b),
            vec![
                vec![(Lsn(10), 0)],
                vec![(Lsn(10), 1), (Lsn(10), 2), (Lsn(20), 0)],
                vec![(Lsn(30), 0)],
                vec![(Lsn(40), 0), (Lsn(40), 1)],
            ]
        );
    }

    #[test]
    fn a_boundary_whose_last_record_never_comes_is_sealed_at_its_tx_end() {
        let mut b = batcher(10, 1 << 20);
        b.restore_boundaries(vec![Boundary {
            first: (Lsn(10), 0),
            last: (Lsn(10), 5),
        }]);
        let now = Instant::now();
        b.push(rec(10, 0, 10), now);
        b.push(rec(10, 1, 10), now);
        assert_eq!(b.ready_len(), 0);
        b.tx_end(Lsn(12));
        assert_eq!(drain(&mut b), vec![vec![(Lsn(10), 0), (Lsn(10), 1)]]);
    }
}
