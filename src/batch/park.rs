//! The parked work of one strategy as the worker sees it: which rows of
//! `walhook.parked` exist (ids, the group keys they hold, their bytes) and
//! which of them may be attempted now. Pure data; the bodies stay in the
//! state store until a row is attempted.
//!
//! Why an index and not "the row with the lowest id": under `ordering =
//! "key"` a parked row only has to wait for earlier rows that share one of
//! its keys. A batch rejected for good must not hold every other key that
//! happened to fail once, so the drain follows the same rule as the
//! dispatcher: a row may go when no earlier row (attempted or not) holds
//! one of its keys, a row holding every group (a truncate) waits for all
//! before it and all after it wait for it. Under `ordering = "commit"`
//! every row holds key 0, so rows go strictly one after another, in id
//! order, which is the order they were parked in.
//!
//! Group keys are hashes (`std::hash::DefaultHasher`): stable for one
//! build, not promised across Rust releases. Each row stores
//! [`fingerprint`] beside its keys; rows written by a build that hashes
//! differently are read as holding every group, so order is kept (more
//! conservatively) after an upgrade.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hasher as _;

use super::Group;

/// How many rows past the first a search for a ready row looks at: enough
/// for every batch in flight and more, without scanning thousands of rows
/// that wait behind one failing key.
const LOOKAHEAD: usize = 512;

/// The keys a parked row holds: each record's group keys, sorted and
/// without repeats, and whether one record holds every group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParkKeys {
    pub(crate) keys: Vec<u64>,
    pub(crate) all: bool,
}

impl ParkKeys {
    /// The keys of a batch's records' groups.
    pub(crate) fn of(groups: &[Group]) -> ParkKeys {
        let mut keys: Vec<u64> = groups.iter().flat_map(|g| g.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        ParkKeys {
            keys,
            all: groups.contains(&Group::All),
        }
    }

    /// Holds every group (used when its keys cannot be trusted).
    pub(crate) fn everything() -> ParkKeys {
        ParkKeys {
            keys: Vec::new(),
            all: true,
        }
    }

    /// The keys as stored (`bigint[]`: the same 64 bits).
    pub(crate) fn stored(&self) -> Vec<i64> {
        self.keys
            .iter()
            .map(|k| i64::from_ne_bytes(k.to_ne_bytes()))
            .collect()
    }

    /// Keys read back from the store; `None` for `all`.
    pub(crate) fn from_stored(keys: &[i64], all: bool) -> ParkKeys {
        ParkKeys {
            keys: keys
                .iter()
                .map(|k| u64::from_ne_bytes(k.to_ne_bytes()))
                .collect(),
            all,
        }
    }
}

/// What this build's group hashing gives for a fixed input: stored beside
/// each row's keys, so rows hashed by another build are recognised.
pub(crate) fn fingerprint() -> i64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(b"walhook group keys v1");
    hasher.write_u64(0x5eed);
    i64::from_ne_bytes(hasher.finish().to_ne_bytes())
}

/// One parked row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParkedRow {
    /// `walhook.parked.id`: the order it was parked in.
    pub(crate) id: i64,
    pub(crate) keys: ParkKeys,
    /// Its body's bytes (counted against `max_parked_bytes`).
    pub(crate) bytes: u64,
    /// Its records.
    pub(crate) records: u64,
}

/// A strategy's parked rows (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct ParkIndex {
    rows: BTreeMap<i64, ParkedRow>,
    /// Rows being attempted now.
    in_flight: HashSet<i64>,
    bytes: u64,
    records: u64,
}

impl ParkIndex {
    /// A row was parked (or found parked at start).
    pub(crate) fn insert(&mut self, row: ParkedRow) {
        self.bytes += row.bytes;
        self.records += row.records;
        if let Some(old) = self.rows.insert(row.id, row) {
            self.bytes -= old.bytes;
            self.records -= old.records;
        }
    }

    /// A row is gone from the store (delivered or dead-lettered).
    pub(crate) fn remove(&mut self, id: i64) -> Option<ParkedRow> {
        self.in_flight.remove(&id);
        let row = self.rows.remove(&id)?;
        self.bytes -= row.bytes;
        self.records -= row.records;
        Some(row)
    }

    /// The attempts of row `id` stopped without an end (shutdown): it may
    /// be picked again.
    pub(crate) fn release(&mut self, id: i64) {
        self.in_flight.remove(&id);
    }

    /// The next row that may be attempted now, marked in flight.
    pub(crate) fn next_ready(&mut self) -> Option<i64> {
        let mut held: HashSet<u64> = HashSet::new();
        let mut earlier = false;
        for row in self.rows.values().take(LOOKAHEAD + self.in_flight.len()) {
            let free = if row.keys.all {
                !earlier
            } else {
                !row.keys.keys.iter().any(|k| held.contains(k))
            };
            if free && !self.in_flight.contains(&row.id) {
                self.in_flight.insert(row.id);
                return Some(row.id);
            }
            if row.keys.all {
                // Everything after waits for it.
                return None;
            }
            held.extend(row.keys.keys.iter().copied());
            earlier = true;
        }
        None
    }

    /// The row with the lowest id.
    pub(crate) fn first(&self) -> Option<&ParkedRow> {
        self.rows.values().next()
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes of every row's body.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records of every row.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, keys: &[u64], all: bool) -> ParkedRow {
        ParkedRow {
            id,
            keys: ParkKeys {
                keys: keys.to_vec(),
                all,
            },
            bytes: 10,
            records: 1,
        }
    }

    #[test]
    fn rows_sharing_a_key_go_in_id_order_others_go_past() {
        let mut index = ParkIndex::default();
        index.insert(row(1, &[7, 8], false));
        index.insert(row(2, &[8], false));
        index.insert(row(3, &[9], false));
        assert_eq!(index.next_ready(), Some(1));
        // 2 shares key 8 with 1 (in flight): 3 goes past it.
        assert_eq!(index.next_ready(), Some(3));
        assert_eq!(index.next_ready(), None);
        index.remove(1);
        assert_eq!(index.next_ready(), Some(2));
        assert_eq!((index.len(), index.bytes(), index.records()), (2, 20, 2));
    }

    #[test]
    fn under_commit_order_rows_go_one_at_a_time() {
        let mut index = ParkIndex::default();
        for id in 1..=3 {
            index.insert(row(id, &[0], false));
        }
        assert_eq!(index.next_ready(), Some(1));
        assert_eq!(index.next_ready(), None);
        // Stopped without an end: it goes again first.
        index.release(1);
        assert_eq!(index.next_ready(), Some(1));
        index.remove(1);
        assert_eq!(index.next_ready(), Some(2));
    }

    #[test]
    fn a_row_holding_every_group_waits_for_all_before_it_and_all_after_wait_for_it() {
        let mut index = ParkIndex::default();
        index.insert(row(1, &[1], false));
        index.insert(row(2, &[], true));
        index.insert(row(3, &[3], false));
        assert_eq!(index.next_ready(), Some(1));
        assert_eq!(index.next_ready(), None);
        index.remove(1);
        assert_eq!(index.next_ready(), Some(2));
        assert_eq!(index.next_ready(), None);
        index.remove(2);
        assert_eq!(index.next_ready(), Some(3));
    }

    #[test]
    fn keys_round_trip_through_bigint_and_the_fingerprint_is_stable() {
        let keys = ParkKeys::of(&[Group::Key(u64::MAX), Group::Keys(3, 1), Group::Key(3)]);
        assert_eq!(keys.keys, vec![1, 3, u64::MAX]);
        assert!(!keys.all);
        assert_eq!(ParkKeys::from_stored(&keys.stored(), false), keys);
        assert!(ParkKeys::of(&[Group::Key(1), Group::All]).all);
        assert_eq!(fingerprint(), fingerprint());
    }
}
