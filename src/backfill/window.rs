//! Which rows of a chunk may go into the stream at its high watermark.
//!
//! Plain data, no I/O: the router feeds a [`Segment`] every change of the
//! table (key and transaction id) from the segment's start marker on, and
//! asks it about each chunk when the chunk's high watermark arrives.
//!
//! A chunk is read in one `REPEATABLE READ` snapshot `S` together with each
//! row's `xmin` (the transaction that wrote that version), and its high
//! watermark `H` is written to the WAL after `S` was taken. Every
//! transaction visible in `S` left the server's running set before `S`, so
//! its commit record precedes `H`: at `H` the stream has brought everything
//! the chunk shows, and maybe more. For a row of key `k` written by `X`:
//!
//! - no change of `k` since the start: the receiver's copy of `k` is what
//!   the row shows, or it has none; the row goes;
//! - the latest change of `k` in the stream was made by `X`: the receiver
//!   already holds that version; the row goes (it also fills in values the
//!   change left out as unchanged TOAST);
//! - a later transaction changed `k` (or deleted it): the receiver holds a
//!   newer version than the chunk; the row is dropped and the change wins.
//!
//! Two rows of one key are written in commit order by transactions that
//! wait for each other's row lock, so the versions a snapshot sees of a key
//! are a prefix of the key's changes in the stream. The one gap: a
//! transaction's commit record can reach the WAL (and the stream) before it
//! leaves the running set (the wait for `fsync` or a synchronous standby).
//! Such a transaction `Y` can be in the stream *before* the start marker yet
//! invisible to `S`, and its keys were not logged. The router keeps the ids
//! of the last transactions it saw commit; a chunk whose snapshot lists one
//! of those committed before the start as in progress is read again once
//! `Y` has finished ([`Decision::Retry`]). Changes whose key is not known
//! (a truncate; a delete under a replica identity without the primary key)
//! are handled the same way: if `S` did not see them, the chunk is read
//! again after they finished.
//!
//! Keys are the primary-key columns' text (the type's output function, the
//! same text pgoutput sends), so a row read by SQL and a change decoded from
//! the stream compare equal.

use std::collections::HashMap;

/// A primary key's columns as text, length-prefixed (see [`encode_key`]).
pub(crate) type Key = Box<[u8]>;

/// The encoding of a key's column texts; `None` is a NULL (never in a
/// primary key, but the encoding stays unambiguous).
pub(crate) fn encode_key<'a>(columns: impl IntoIterator<Item = Option<&'a [u8]>>) -> Key {
    let mut out = Vec::new();
    for column in columns {
        match column {
            Some(bytes) => {
                out.extend_from_slice(
                    &u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes(),
                );
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    out.into_boxed_slice()
}

/// `a` comes before `b` in the 32-bit transaction-id circle.
pub(crate) fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The 64-bit id of the 32-bit `xid` nearest to `reference` (a snapshot's
/// `xmax`): transaction ids in flight are within 2^31 of each other.
pub(crate) fn widen(xid: u32, reference: u64) -> u64 {
    let base = reference & !u64::from(u32::MAX);
    let candidate = base | u64::from(xid);
    let low = reference as u32;
    if precedes(xid, low) && candidate > reference {
        candidate.saturating_sub(1 << 32)
    } else if !precedes(xid, low) && candidate < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// A chunk's snapshot (`pg_current_snapshot()`): 64-bit transaction ids;
/// the stream carries their low 32 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotInfo {
    pub(crate) xmin: u64,
    pub(crate) xmax: u64,
    /// In progress when the snapshot was taken.
    pub(crate) xip: Vec<u64>,
}

impl SnapshotInfo {
    /// Parses `pg_snapshot` text: `xmin:xmax:xip,xip,…`.
    pub(crate) fn parse(text: &str) -> Option<SnapshotInfo> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(SnapshotInfo { xmin, xmax, xip })
    }

    /// Whether a committed transaction (32-bit id) is visible in the snapshot.
    pub(crate) fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmax as u32) && !self.xip.iter().any(|&x| x as u32 == xid)
    }

    fn xmin32(&self) -> u32 {
        self.xmin as u32
    }
}

/// One row of a chunk: its key and the transaction that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowVersion {
    pub(crate) key: Key,
    pub(crate) xmin: u32,
}

/// What to do with a chunk at its high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Row `i` goes when `keep[i]`.
    Emit { keep: Vec<bool> },
    /// Read the chunk again once these transactions (64-bit ids, from the
    /// chunk's snapshot) are no longer in progress.
    Retry { wait_for: Vec<u64> },
}

/// The ids of the transactions the router saw commit last, in a ring.
#[derive(Debug, Clone)]
pub(crate) struct RecentCommits {
    ring: Vec<u32>,
    next: usize,
    capacity: usize,
}

/// How many commits the router remembers: the race it covers lasts as long
/// as a commit waits for `fsync` or a synchronous standby.
pub(crate) const RECENT_COMMITS: usize = 65_536;

impl RecentCommits {
    pub(crate) fn new(capacity: usize) -> RecentCommits {
        RecentCommits {
            ring: Vec::new(),
            next: 0,
            capacity: capacity.max(1),
        }
    }

    /// A transaction committed (in stream order).
    pub(crate) fn push(&mut self, xid: u32) {
        if self.ring.len() < self.capacity {
            self.ring.push(xid);
        } else if let Some(slot) = self.ring.get_mut(self.next) {
            *slot = xid;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// The remembered ids, sorted, for a segment's start.
    pub(crate) fn sorted(&self) -> Vec<u32> {
        let mut ids = self.ring.clone();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// One segment of a run: from its start marker on, the latest change of
/// every key of the table (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Segment {
    /// Committed just before the start marker (sorted).
    before: Vec<u32>,
    /// Key → the transaction of its latest change since the start.
    latest: HashMap<Key, u32>,
    /// Transactions since the start that changed keys not known.
    unknown: Vec<u32>,
}

impl Segment {
    /// A segment starting now; `before` = [`RecentCommits::sorted`].
    pub(crate) fn new(before: Vec<u32>) -> Segment {
        Segment {
            before,
            latest: HashMap::new(),
            unknown: Vec::new(),
        }
    }

    /// Transaction `xid` changed (inserted, updated or deleted) `key`.
    pub(crate) fn changed(&mut self, key: Key, xid: u32) {
        self.latest.insert(key, xid);
    }

    /// Transaction `xid` changed rows whose keys are not known (a truncate).
    pub(crate) fn changed_unknown(&mut self, xid: u32) {
        if !self.unknown.contains(&xid) {
            self.unknown.push(xid);
        }
    }

    /// How many keys it remembers.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.latest.len()
    }

    /// The decision for a chunk read in `snapshot`; on `Emit` forgets what
    /// no later chunk needs (the chunk's keys, and changes every later
    /// snapshot sees).
    pub(crate) fn decide(&mut self, rows: &[RowVersion], snapshot: &SnapshotInfo) -> Decision {
        let mut wait_for: Vec<u64> = snapshot
            .xip
            .iter()
            .copied()
            .filter(|&x| self.before.binary_search(&(x as u32)).is_ok())
            .collect();
        for &xid in &self.unknown {
            if !snapshot.sees(xid) {
                wait_for.push(widen(xid, snapshot.xmax));
            }
        }
        if !wait_for.is_empty() {
            wait_for.sort_unstable();
            wait_for.dedup();
            return Decision::Retry { wait_for };
        }
        let keep = rows
            .iter()
            .map(|row| match self.latest.get(&row.key) {
                None => true,
                Some(&xid) => xid == row.xmin,
            })
            .collect();
        for row in rows {
            self.latest.remove(&row.key);
        }
        // Every later snapshot sees what this one's xmin precedes.
        let xmin = snapshot.xmin32();
        self.latest.retain(|_, xid| !precedes(*xid, xmin));
        self.unknown.retain(|xid| !precedes(*xid, xmin));
        self.before.retain(|xid| !precedes(*xid, xmin));
        Decision::Emit { keep }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn key(k: u32) -> Key {
        encode_key([Some(k.to_string().as_bytes())])
    }

    #[test]
    fn snapshots_parse_and_see_what_committed_before_them() {
        let s = SnapshotInfo::parse("100:105:101,103").expect("parses");
        assert_eq!(s.xip, vec![101, 103]);
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(!s.sees(101));
        assert!(s.sees(102));
        assert!(!s.sees(105));
        assert_eq!(SnapshotInfo::parse("7:7:").map(|s| s.xip.len()), Some(0));
        assert_eq!(SnapshotInfo::parse("x:7:"), None);
        // Epochs: the stream's 32-bit ids compare by their low bits.
        let s = SnapshotInfo::parse(&format!("{}:{}:", (1u64 << 32) + 10, (1u64 << 32) + 20))
            .expect("parses");
        assert!(s.sees(15));
        assert!(!s.sees(25));
        assert!(precedes(u32::MAX, 3));
    }

    #[test]
    fn a_32_bit_id_widens_to_the_nearest_64_bit_one() {
        let epoch = 3u64 << 32;
        assert_eq!(widen(10, epoch + 20), epoch + 10);
        assert_eq!(widen(30, epoch + 20), epoch + 30);
        assert_eq!(widen(u32::MAX - 5, epoch + 20), epoch - 6);
        assert_eq!(
            widen(5, epoch + u64::from(u32::MAX) - 2),
            epoch + (1 << 32) + 5
        );
    }

    #[test]
    fn keys_of_different_columns_never_collide() {
        assert_ne!(
            encode_key([Some(&b"ab"[..]), Some(&b"c"[..])]),
            encode_key([Some(&b"a"[..]), Some(&b"bc"[..])])
        );
        assert_ne!(encode_key([None]), encode_key([Some(&b""[..])]));
    }

    #[test]
    fn a_row_changed_later_is_dropped_and_one_changed_by_its_writer_goes() {
        let mut seg = Segment::new(vec![]);
        seg.changed(key(1), 50); // the version the chunk holds
        seg.changed(key(2), 51);
        seg.changed(key(2), 60); // newer than the chunk's
        let snapshot = SnapshotInfo::parse("55:61:60").expect("parses");
        let rows = vec![
            RowVersion {
                key: key(1),
                xmin: 50,
            },
            RowVersion {
                key: key(2),
                xmin: 51,
            },
            RowVersion {
                key: key(3),
                xmin: 7,
            },
        ];
        assert_eq!(
            seg.decide(&rows, &snapshot),
            Decision::Emit {
                keep: vec![true, false, true]
            }
        );
        // The chunk's keys are forgotten.
        assert_eq!(seg.remembered(), 0);
    }

    #[test]
    fn a_commit_before_the_start_the_snapshot_did_not_see_means_reading_again() {
        let mut seg = Segment::new(vec![40, 41]);
        let snapshot = SnapshotInfo::parse("41:45:41").expect("parses");
        assert_eq!(
            seg.decide(
                &[RowVersion {
                    key: key(1),
                    xmin: 3
                }],
                &snapshot
            ),
            Decision::Retry { wait_for: vec![41] }
        );
        let later = SnapshotInfo::parse("45:45:").expect("parses");
        assert!(matches!(seg.decide(&[], &later), Decision::Emit { .. }));
    }

    #[test]
    fn a_truncate_the_snapshot_did_not_see_means_reading_again() {
        let mut seg = Segment::new(vec![]);
        seg.changed_unknown(70);
        let before = SnapshotInfo::parse("69:70:").expect("parses");
        assert_eq!(
            seg.decide(&[], &before),
            Decision::Retry { wait_for: vec![70] }
        );
        let after = SnapshotInfo::parse("71:71:").expect("parses");
        assert!(matches!(seg.decide(&[], &after), Decision::Emit { .. }));
    }

    // A model of the database: transactions take row locks, write their
    // commit record to the WAL (the stream) and leave the running set later,
    // in any order. A backfill reads chunks in key order at random moments,
    // the router applies the decisions, and a receiver applies the stream
    // in arrival order. At the end its copy must equal the table.

    #[derive(Debug, Clone)]
    enum Step {
        /// A new transaction writes key `k`: `Some(v)` upsert, `None` delete.
        Write { k: u32, v: Option<u32> },
        /// Open transaction at position `i` writes key `k` too.
        WriteMore { i: usize, k: u32, v: Option<u32> },
        /// Transaction at position `i` (of the open ones) writes its commit record.
        CommitRecord(usize),
        /// Transaction at position `i` (of the committed-not-visible ones) becomes visible.
        Visible(usize),
        /// Transaction at position `i` (of the open ones) aborts.
        Abort(usize),
        /// A truncate in a transaction of its own (committed and visible at once).
        Truncate,
        /// The backfill does its next step.
        Backfill,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..12, proptest::option::weighted(0.8, 0u32..1000))
                .prop_map(|(k, v)| Step::Write { k, v }),
            2 => (0usize..8, 0u32..12, proptest::option::weighted(0.8, 0u32..1000))
                .prop_map(|(i, k, v)| Step::WriteMore { i, k, v }),
            4 => (0usize..8).prop_map(Step::CommitRecord),
            4 => (0usize..8).prop_map(Step::Visible),
            1 => (0usize..8).prop_map(Step::Abort),
            1 => Just(Step::Truncate),
            3 => Just(Step::Backfill),
        ]
    }

    #[derive(Debug, Clone)]
    struct Txn {
        xid: u32,
        /// key → value (`None` = deleted), or a truncate.
        writes: Vec<(u32, Option<u32>)>,
        truncate: bool,
    }

    /// A stream item, in WAL order.
    #[derive(Debug, Clone)]
    enum Wal {
        Commit(Txn),
        Start,
        High(usize),
    }

    #[derive(Default)]
    struct Db {
        next_xid: u32,
        /// Running, no commit record yet.
        open: Vec<Txn>,
        /// Commit record written, still running.
        committing: Vec<Txn>,
        /// Visible versions: key → (value, xmin).
        table: BTreeMap<u32, (u32, u32)>,
        /// Keys locked by running transactions.
        locked: BTreeSet<u32>,
        wal: Vec<Wal>,
    }

    impl Db {
        fn running(&self) -> impl Iterator<Item = u32> + '_ {
            self.open.iter().chain(&self.committing).map(|t| t.xid)
        }

        fn snapshot(&self) -> SnapshotInfo {
            let xip: Vec<u64> = self.running().map(u64::from).collect();
            // The next id to be assigned.
            let xmax = u64::from(self.next_xid) + 1;
            SnapshotInfo {
                xmin: xip.iter().copied().min().unwrap_or(xmax),
                xmax,
                xip,
            }
        }

        fn visible(&mut self, txn: Txn) {
            if txn.truncate {
                self.table.clear();
            }
            for (k, v) in &txn.writes {
                match v {
                    Some(v) => {
                        self.table.insert(*k, (*v, txn.xid));
                    }
                    None => {
                        self.table.remove(k);
                    }
                }
                self.locked.remove(k);
            }
        }

        fn new_xid(&mut self) -> u32 {
            self.next_xid += 1;
            self.next_xid
        }

        fn apply(&mut self, step: &Step) {
            match step {
                Step::Write { k, v } => {
                    if self.locked.contains(k) {
                        return;
                    }
                    let xid = self.new_xid();
                    self.locked.insert(*k);
                    self.open.push(Txn {
                        xid,
                        writes: vec![(*k, *v)],
                        truncate: false,
                    });
                }
                Step::WriteMore { i, k, v } => {
                    if self.open.is_empty() || self.locked.contains(k) {
                        return;
                    }
                    let n = self.open.len();
                    self.locked.insert(*k);
                    if let Some(txn) = self.open.get_mut(i % n) {
                        txn.writes.push((*k, *v));
                    }
                }
                Step::CommitRecord(i) => {
                    if self.open.is_empty() {
                        return;
                    }
                    let txn = self.open.remove(i % self.open.len());
                    self.wal.push(Wal::Commit(txn.clone()));
                    self.committing.push(txn);
                }
                Step::Visible(i) => {
                    if self.committing.is_empty() {
                        return;
                    }
                    let txn = self.committing.remove(i % self.committing.len());
                    self.visible(txn);
                }
                Step::Abort(i) => {
                    if self.open.is_empty() {
                        return;
                    }
                    let txn = self.open.remove(i % self.open.len());
                    for (k, _) in &txn.writes {
                        self.locked.remove(k);
                    }
                }
                Step::Truncate => {
                    // TRUNCATE waits for every lock on the table.
                    if !self.locked.is_empty() {
                        return;
                    }
                    let xid = self.new_xid();
                    let txn = Txn {
                        xid,
                        writes: vec![],
                        truncate: true,
                    };
                    self.wal.push(Wal::Commit(txn.clone()));
                    self.visible(txn);
                }
                Step::Backfill => {}
            }
        }

        /// Lets every transaction end.
        fn finish(&mut self) {
            while !self.open.is_empty() {
                self.apply(&Step::CommitRecord(0));
            }
            while !self.committing.is_empty() {
                self.apply(&Step::Visible(0));
            }
        }
    }

    /// A chunk as the backfill read it.
    struct Chunk {
        rows: Vec<(u32, u32, u32)>, // key, value, xmin
        snapshot: SnapshotInfo,
        last: Option<u32>,
    }

    /// The backfill's side: where it is in the table.
    struct Backfill {
        size: usize,
        /// The start marker was written.
        started: bool,
        /// Last key of the last chunk emitted.
        after: Option<u32>,
        /// A chunk whose high watermark is in the WAL, not yet decided.
        pending: Option<usize>,
        /// Must not read before these finished.
        wait_for: Vec<u64>,
        done: bool,
    }

    fn read_chunk(db: &Db, after: Option<u32>, size: usize) -> Chunk {
        let rows: Vec<(u32, u32, u32)> = db
            .table
            .range(after.map_or(0, |a| a + 1)..)
            .take(size)
            .map(|(k, (v, x))| (*k, *v, *x))
            .collect();
        Chunk {
            last: rows.last().map(|r| r.0),
            snapshot: db.snapshot(),
            rows,
        }
    }

    /// `reset`: the receiver's copy is emptied at the start marker (a new
    /// strategy, or a re-sync that begins with a truncate record); else it
    /// has applied the stream from the beginning.
    fn run(steps: &[Step], size: usize, reset: bool) -> Result<(), TestCaseError> {
        let mut db = Db::default();
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut bf = Backfill {
            size,
            started: false,
            after: None,
            pending: None,
            wait_for: vec![],
            done: false,
        };
        // The router and the receiver, reading the WAL as it grows.
        let mut read = 0;
        let mut recent = RecentCommits::new(RECENT_COMMITS);
        let mut segment: Option<Segment> = None;
        let mut copy: BTreeMap<u32, u32> = BTreeMap::new();
        let mut route = |db: &Db,
                         read: &mut usize,
                         segment: &mut Option<Segment>,
                         chunks: &[Chunk],
                         bf: &mut Backfill,
                         copy: &mut BTreeMap<u32, u32>| {
            while let Some(item) = db.wal.get(*read) {
                *read += 1;
                match item {
                    Wal::Commit(txn) => {
                        if txn.truncate {
                            copy.clear();
                            if let Some(s) = segment.as_mut() {
                                s.changed_unknown(txn.xid);
                            }
                        }
                        for (k, v) in &txn.writes {
                            match v {
                                Some(v) => copy.insert(*k, *v),
                                None => copy.remove(k),
                            };
                            if let Some(s) = segment.as_mut() {
                                s.changed(key(*k), txn.xid);
                            }
                        }
                        recent.push(txn.xid);
                    }
                    Wal::Start => {
                        *segment = Some(Segment::new(recent.sorted()));
                        if reset {
                            copy.clear();
                        }
                    }
                    Wal::High(c) => {
                        let chunk = &chunks[*c];
                        let seg = segment.as_mut().expect("started before");
                        let versions: Vec<RowVersion> = chunk
                            .rows
                            .iter()
                            .map(|(k, _, x)| RowVersion {
                                key: key(*k),
                                xmin: *x,
                            })
                            .collect();
                        match seg.decide(&versions, &chunk.snapshot) {
                            Decision::Emit { keep } => {
                                for (row, keep) in chunk.rows.iter().zip(keep) {
                                    if keep {
                                        copy.insert(row.0, row.1);
                                    }
                                }
                                if chunk.rows.len() < bf.size {
                                    bf.done = true;
                                }
                                bf.after = chunk.last.or(bf.after);
                            }
                            Decision::Retry { wait_for } => bf.wait_for = wait_for,
                        }
                        bf.pending = None;
                    }
                }
            }
        };
        for step in steps {
            db.apply(step);
            if matches!(step, Step::Backfill) && !bf.done && bf.pending.is_none() {
                if !bf.started {
                    db.wal.push(Wal::Start);
                    bf.started = true;
                } else if bf.wait_for.iter().all(|x| {
                    *x <= u64::from(db.next_xid) && db.running().all(|r| u64::from(r) != *x)
                }) {
                    bf.wait_for.clear();
                    let chunk = read_chunk(&db, bf.after, bf.size);
                    chunks.push(chunk);
                    bf.pending = Some(chunks.len() - 1);
                    db.wal.push(Wal::High(chunks.len() - 1));
                }
            }
            // The router lags the WAL by a random amount: only sometimes catch up.
            if matches!(step, Step::Visible(_) | Step::Backfill) {
                route(&db, &mut read, &mut segment, &chunks, &mut bf, &mut copy);
            }
        }
        // Everything ends; the backfill runs to completion.
        db.finish();
        route(&db, &mut read, &mut segment, &chunks, &mut bf, &mut copy);
        while !bf.done {
            if !bf.started {
                db.wal.push(Wal::Start);
                bf.started = true;
            } else {
                bf.wait_for.clear();
                let chunk = read_chunk(&db, bf.after, bf.size);
                chunks.push(chunk);
                db.wal.push(Wal::High(chunks.len() - 1));
            }
            route(&db, &mut read, &mut segment, &chunks, &mut bf, &mut copy);
        }
        let table: BTreeMap<u32, u32> = db.table.iter().map(|(k, (v, _))| (*k, *v)).collect();
        prop_assert_eq!(copy, table);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_receiver_applying_stream_and_chunks_in_order_ends_equal_to_the_table(
            steps in proptest::collection::vec(step(), 0..200),
            size in 1usize..5,
            reset in any::<bool>(),
        ) {
            run(&steps, size, reset)?;
        }
    }
}
