//! The ordered finaliser: batches complete out of order, the position a
//! strategy reports to the [`super::Checkpoint`] only moves over a
//! contiguous prefix of finished work.
//!
//! Why counts per commit LSN and not a queue of batches: under `ordering =
//! "key"` a batch holds records from anywhere in the pending stream, so
//! "every batch before it is done" says nothing about the records between
//! them. What must hold is simpler: a transaction's end is released once no
//! record committed at or before it is still open. Records are counted per
//! commit LSN when they arrive and uncounted when their batch is delivered,
//! dead-lettered or parked; transaction ends are released in order while the oldest
//! open record is newer than them. (vectordotdev/vector's `OrderedFinalizer`
//! has the same contract for acknowledgements: completions in any order,
//! releases in order.)

use std::collections::{BTreeMap, VecDeque};

use crate::lsn::Lsn;

/// One strategy's finaliser. Pure data; the worker drives it.
#[derive(Debug, Default)]
pub(crate) struct Finaliser {
    /// Open (undelivered) records per commit LSN.
    open: BTreeMap<Lsn, u32>,
    /// Transaction ends received and not yet released, in order.
    ends: VecDeque<Lsn>,
    /// The last end released.
    released: Option<Lsn>,
    /// The sum of `open`'s counts (read on every transaction end).
    open_total: usize,
}

impl Finaliser {
    /// A record of the transaction committed at `commit_lsn` arrived.
    pub(crate) fn open(&mut self, commit_lsn: Lsn) {
        *self.open.entry(commit_lsn).or_default() += 1;
        self.open_total += 1;
    }

    /// Every record of the transaction ending at `end_lsn` has arrived.
    /// Returns the new position if it moved.
    pub(crate) fn tx_end(&mut self, end_lsn: Lsn) -> Option<Lsn> {
        if self.ends.back().is_none_or(|last| end_lsn > *last)
            && self.released.is_none_or(|r| end_lsn > r)
        {
            self.ends.push_back(end_lsn);
        }
        self.release()
    }

    /// Records of these commit LSNs were delivered, dead-lettered or parked.
    /// Returns the new position if it moved.
    pub(crate) fn done(&mut self, commits: impl IntoIterator<Item = Lsn>) -> Option<Lsn> {
        for lsn in commits {
            if let Some(count) = self.open.get_mut(&lsn) {
                *count -= 1;
                self.open_total -= 1;
                if *count == 0 {
                    self.open.remove(&lsn);
                }
            }
        }
        self.release()
    }

    /// Records not yet delivered (or dead-lettered, or parked).
    pub(crate) fn open_records(&self) -> usize {
        self.open_total
    }

    /// Releases every transaction end before the oldest open record.
    fn release(&mut self) -> Option<Lsn> {
        let oldest_open = self.open.keys().next().copied();
        let mut moved = None;
        while let Some(&end) = self.ends.front() {
            // A transaction's records have commit LSNs below its end; later
            // transactions' records have commit LSNs at or above it.
            if oldest_open.is_some_and(|open| open < end) {
                break;
            }
            self.ends.pop_front();
            moved = Some(end);
        }
        if moved.is_some() {
            self.released = moved;
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completions_release_in_order() {
        let mut f = Finaliser::default();
        // Three transactions: commits 10, 20, 30 ending at 11, 21, 31.
        for (commit, end) in [(10, 11), (20, 21), (30, 31)] {
            f.open(Lsn(commit));
            f.open(Lsn(commit));
            assert_eq!(f.tx_end(Lsn(end)), None);
        }
        // The last transaction's batch finishes first: nothing moves.
        assert_eq!(f.done([Lsn(30), Lsn(30)]), None);
        // Half of the first: still nothing.
        assert_eq!(f.done([Lsn(10)]), None);
        // The rest of the first: its end is released, not the third's.
        assert_eq!(f.done([Lsn(10), Lsn(20)]), Some(Lsn(11)));
        assert_eq!(f.open_records(), 1);
        // The second completes: both remaining ends at once.
        assert_eq!(f.done([Lsn(20)]), Some(Lsn(31)));
        assert_eq!(f.open_records(), 0);
    }

    #[test]
    fn a_transaction_end_with_nothing_open_is_released_at_once() {
        let mut f = Finaliser::default();
        assert_eq!(f.tx_end(Lsn(5)), Some(Lsn(5)));
        f.open(Lsn(10));
        assert_eq!(f.tx_end(Lsn(12)), None);
        // Records of the next transaction arriving do not release it.
        f.open(Lsn(20));
        assert_eq!(f.done([Lsn(20)]), None);
        assert_eq!(f.done([Lsn(10)]), Some(Lsn(12)));
        // Ends never go backwards.
        assert_eq!(f.tx_end(Lsn(12)), None);
        assert_eq!(f.tx_end(Lsn(3)), None);
    }

    #[test]
    fn a_batch_ending_inside_a_transaction_releases_only_the_ones_before() {
        let mut f = Finaliser::default();
        f.open(Lsn(10));
        f.tx_end(Lsn(11));
        f.open(Lsn(20));
        f.open(Lsn(20));
        // The batch [10:0, 20:0] is delivered; 20:1 is still open.
        assert_eq!(f.done([Lsn(10), Lsn(20)]), Some(Lsn(11)));
        assert_eq!(f.tx_end(Lsn(21)), None);
        assert_eq!(f.done([Lsn(20)]), Some(Lsn(21)));
    }
}
