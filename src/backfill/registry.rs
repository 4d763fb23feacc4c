//! The channel between runs and the router.
//!
//! A run opens a segment ([`BackfillHandle::open`]) and writes its start
//! marker into the WAL; for each chunk it registers the rows
//! ([`BackfillHandle::chunk`]) *before* writing the chunk's high watermark,
//! so the router always has them when the watermark comes through the
//! stream. The router ([`Backfills`]) logs the table's changes for every
//! started segment and, at a watermark, answers with what it queued.
//!
//! Watermarks are non-transactional logical messages with the prefix
//! [`PREFIX`]. After a restart the stream brings old ones again: a segment
//! or chunk this process did not register is ignored (its run reads that
//! chunk again).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::window::{
    encode_key, Decision, Key, RecentCommits, RowVersion, Segment, SnapshotInfo, RECENT_COMMITS,
};
use crate::batch::ReplyLog;
use crate::config::TableName;
use crate::decode::{Cell, Op, RecordEvent, Relation, Tuple};
use crate::lsn::Lsn;

/// The logical-message prefix of walhook's watermarks.
pub(crate) const PREFIX: &str = "walhook.backfill";

/// A segment of a run: from one start marker to the run's end, pause or
/// the process's end.
pub(crate) type SegmentId = u64;

/// The watermark message's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Watermark {
    /// The segment, in hex (a JSON number would lose bits in other readers).
    #[serde(with = "hex_id")]
    pub(crate) segment: SegmentId,
    /// `None`: the start marker; `Some(n)`: chunk `n`'s high watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) chunk: Option<u64>,
}

mod hex_id {
    pub(super) fn serialize<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:016x}"))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

impl Watermark {
    /// The message content.
    pub(crate) fn to_json(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// One row of a chunk: its version (key, xmin) and the record to send.
#[derive(Debug, Clone)]
pub(crate) struct ChunkRow {
    pub(crate) version: RowVersion,
    /// Op `read`; its LSN and index are set when it goes.
    pub(crate) event: RecordEvent,
}

/// What became of a chunk at its high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChunkOutcome {
    /// `sent` rows were queued to the strategy at `end_lsn` (its route is
    /// checkpoint index `slot`); `dropped` rows lost to a newer change.
    Queued {
        slot: usize,
        end_lsn: Lsn,
        sent: u64,
        dropped: u64,
    },
    /// Read the chunk again once these transactions finished.
    Retry { wait_for: Vec<u64> },
    /// The strategy has no route now (a reload removed it).
    NoStrategy,
}

/// What the router queues at a watermark.
#[derive(Debug)]
pub(crate) struct Emission {
    pub(crate) strategy: Arc<str>,
    /// The records, their LSN and index set.
    pub(crate) events: Vec<RecordEvent>,
    pub(crate) dropped: u64,
    /// Where they go in the stream (the byte after the watermark).
    pub(crate) end_lsn: Lsn,
    /// Answer with [`ChunkOutcome::Queued`] (or `NoStrategy`); `None` for
    /// a segment's start.
    pub(crate) reply: Option<oneshot::Sender<ChunkOutcome>>,
}

enum Command {
    Open {
        segment: SegmentId,
        strategy: Arc<str>,
        table: TableName,
        key_columns: Vec<String>,
        reset: Option<Arc<Relation>>,
        started: oneshot::Sender<()>,
    },
    Chunk {
        segment: SegmentId,
        chunk: u64,
        rows: Vec<ChunkRow>,
        snapshot: SnapshotInfo,
        replies: Option<Arc<ReplyLog>>,
        reply: oneshot::Sender<ChunkOutcome>,
    },
    Close {
        segment: SegmentId,
    },
}

/// The runs' side: cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct BackfillHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Open { segment, .. } => write!(f, "Open({segment:x})"),
            Command::Chunk { segment, chunk, .. } => write!(f, "Chunk({segment:x}, {chunk})"),
            Command::Close { segment } => write!(f, "Close({segment:x})"),
        }
    }
}

/// The router is gone (walhook is stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the router stopped")]
pub(crate) struct RouterGone;

impl BackfillHandle {
    /// Registers a segment of `strategy`'s run over `table` (keyed by its
    /// primary key `key_columns`); the answer comes when the router reached
    /// its start marker. Write the marker ([`Watermark`] without a chunk)
    /// right after. `reset`: the table's relation, when a truncate record
    /// goes first (a re-sync after changes were lost: the receiver drops
    /// its copy, and the run and the stream rebuild it).
    pub(crate) fn open(
        &self,
        strategy: Arc<str>,
        table: TableName,
        key_columns: Vec<String>,
        reset: Option<Arc<Relation>>,
    ) -> Result<(SegmentId, oneshot::Receiver<()>), RouterGone> {
        let segment = rand::random::<u64>();
        let (started, answer) = oneshot::channel();
        self.tx
            .send(Command::Open {
                segment,
                strategy,
                table,
                key_columns,
                reset,
                started,
            })
            .map_err(|_| RouterGone)?;
        Ok((segment, answer))
    }

    /// Registers chunk `chunk`'s rows, read in `snapshot`; write its high
    /// watermark right after. The answer comes when the router reached it.
    /// `replies`: a sync run's log, told the LSN the rows go at before they do.
    pub(crate) fn chunk(
        &self,
        segment: SegmentId,
        chunk: u64,
        rows: Vec<ChunkRow>,
        snapshot: SnapshotInfo,
        replies: Option<Arc<ReplyLog>>,
    ) -> Result<oneshot::Receiver<ChunkOutcome>, RouterGone> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Chunk {
                segment,
                chunk,
                rows,
                snapshot,
                replies,
                reply,
            })
            .map_err(|_| RouterGone)?;
        Ok(answer)
    }

    /// The segment ended: the router stops logging its table.
    pub(crate) fn close(&self, segment: SegmentId) {
        let _ = self.tx.send(Command::Close { segment });
    }
}

/// A registered segment.
struct Open {
    strategy: Arc<str>,
    table: TableName,
    key_columns: Vec<String>,
    /// A truncate record goes at the start marker.
    reset: Option<Arc<Relation>>,
    /// Set at the start marker.
    segment: Option<Segment>,
    started: Option<oneshot::Sender<()>>,
    /// The key columns' positions in the relation they were found for.
    positions: Option<(Arc<Relation>, Vec<Option<usize>>)>,
}

struct Pending {
    rows: Vec<ChunkRow>,
    snapshot: SnapshotInfo,
    replies: Option<Arc<ReplyLog>>,
    reply: oneshot::Sender<ChunkOutcome>,
}

/// The router's side (see the module doc).
pub(crate) struct Backfills {
    rx: mpsc::UnboundedReceiver<Command>,
    recent: RecentCommits,
    open: HashMap<SegmentId, Open>,
    /// Whether any segment has started (the per-record check).
    logging: bool,
    chunks: HashMap<(SegmentId, u64), Pending>,
}

impl std::fmt::Debug for Backfills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfills")
            .field("segments", &self.open.len())
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

/// A connected pair.
pub(crate) fn channel() -> (Backfills, BackfillHandle) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Backfills {
            rx,
            recent: RecentCommits::new(RECENT_COMMITS),
            open: HashMap::new(),
            logging: false,
            chunks: HashMap::new(),
        },
        BackfillHandle { tx },
    )
}

impl Backfills {
    /// Takes what the runs sent.
    fn drain(&mut self) {
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Open {
                    segment,
                    strategy,
                    table,
                    key_columns,
                    reset,
                    started,
                } => {
                    self.open.insert(
                        segment,
                        Open {
                            strategy,
                            table,
                            key_columns,
                            reset,
                            segment: None,
                            started: Some(started),
                            positions: None,
                        },
                    );
                }
                Command::Chunk {
                    segment,
                    chunk,
                    rows,
                    snapshot,
                    replies,
                    reply,
                } => {
                    self.chunks.insert(
                        (segment, chunk),
                        Pending {
                            rows,
                            snapshot,
                            replies,
                            reply,
                        },
                    );
                }
                Command::Close { segment } => {
                    self.open.remove(&segment);
                    self.chunks.retain(|(s, _), _| *s != segment);
                }
            }
        }
        self.logging = self.open.values().any(|o| o.segment.is_some());
    }

    /// A transaction committed (in stream order).
    pub(crate) fn committed(&mut self, xid: u32) {
        self.recent.push(xid);
        if !self.open.is_empty() {
            self.drain();
        }
    }

    /// A change of transaction `xid`: logged for the segments of its table.
    pub(crate) fn record(&mut self, record: &RecordEvent, xid: u32) {
        if !self.logging {
            return;
        }
        let rel = &record.relation;
        for open in self.open.values_mut() {
            let Some(segment) = open.segment.as_mut() else {
                continue;
            };
            if open.table.schema != rel.schema || open.table.name != rel.name {
                continue;
            }
            if record.op == Op::Truncate {
                segment.changed_unknown(xid);
                continue;
            }
            let fresh = open
                .positions
                .as_ref()
                .is_some_and(|(r, _)| Arc::ptr_eq(r, rel));
            if !fresh {
                let positions = open
                    .key_columns
                    .iter()
                    .map(|c| rel.column_index(c))
                    .collect();
                open.positions = Some((rel.clone(), positions));
            }
            let Some((_, positions)) = &open.positions else {
                continue;
            };
            let new = key_of(record.new.as_ref(), positions);
            let old = key_of(record.old.as_ref(), positions);
            match (record.op, new, old) {
                (Op::Delete, _, Some(Some(old))) => segment.changed(old, xid),
                (Op::Delete, _, _) => segment.changed_unknown(xid),
                (_, Some(Some(new)), old) => {
                    match old {
                        Some(Some(old)) if old != new => segment.changed(old, xid),
                        // An update under a replica identity without the
                        // whole key: the old key is not known.
                        Some(None) => segment.changed_unknown(xid),
                        _ => {}
                    }
                    segment.changed(new, xid);
                }
                _ => segment.changed_unknown(xid),
            }
        }
    }

    /// A watermark at `lsn` (a message with [`PREFIX`]): starts a segment,
    /// or decides a chunk. `Some` when the chunk's rows go (the router
    /// queues them and answers); retries and ignored watermarks are handled
    /// here.
    pub(crate) fn watermark(&mut self, lsn: Lsn, content: &[u8]) -> Option<Emission> {
        self.drain();
        let Ok(mark) = serde_json::from_slice::<Watermark>(content) else {
            tracing::warn!(%lsn, "ignoring a malformed backfill watermark");
            return None;
        };
        let Some(chunk) = mark.chunk else {
            let open = self.open.get_mut(&mark.segment)?;
            if open.segment.is_none() {
                open.segment = Some(Segment::new(self.recent.sorted()));
            }
            if let Some(started) = open.started.take() {
                let _ = started.send(());
            }
            self.logging = true;
            let relation = open.reset.take()?;
            return Some(Emission {
                strategy: open.strategy.clone(),
                events: vec![RecordEvent {
                    relation,
                    op: Op::Truncate,
                    commit_lsn: lsn,
                    index: 0,
                    xid: 0,
                    commit_time: crate::timestamp::unix_now_micros(),
                    new: None,
                    old: None,
                }],
                dropped: 0,
                end_lsn: Lsn(lsn.0.saturating_add(1)),
                reply: None,
            });
        };
        let pending = self.chunks.remove(&(mark.segment, chunk))?;
        let open = self.open.get_mut(&mark.segment)?;
        let segment = open.segment.as_mut()?;
        let versions: Vec<RowVersion> = pending.rows.iter().map(|r| r.version.clone()).collect();
        match segment.decide(&versions, &pending.snapshot) {
            Decision::Retry { wait_for } => {
                let _ = pending.reply.send(ChunkOutcome::Retry { wait_for });
                None
            }
            Decision::Emit { keep } => {
                if let Some(log) = &pending.replies {
                    log.watch(lsn);
                }
                let mut events = Vec::with_capacity(pending.rows.len());
                let mut dropped = 0;
                for (row, keep) in pending.rows.into_iter().zip(keep) {
                    if !keep {
                        dropped += 1;
                        continue;
                    }
                    let mut event = row.event;
                    event.commit_lsn = lsn;
                    event.index = u32::try_from(events.len()).unwrap_or(u32::MAX);
                    events.push(event);
                }
                Some(Emission {
                    strategy: open.strategy.clone(),
                    events,
                    dropped,
                    end_lsn: Lsn(lsn.0.saturating_add(1)),
                    reply: Some(pending.reply),
                })
            }
        }
    }
}

/// The key of `tuple` at `positions`: `None` without a tuple, `Some(None)`
/// when a key column is missing or was not sent.
fn key_of(tuple: Option<&Tuple>, positions: &[Option<usize>]) -> Option<Option<Key>> {
    let tuple = tuple?;
    let mut columns = Vec::with_capacity(positions.len());
    for position in positions {
        match position.and_then(|p| tuple.get(p)) {
            Some(Cell::Text(bytes)) => columns.push(Some(&bytes[..])),
            _ => return Some(None),
        }
    }
    Some(Some(encode_key(columns)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Column, ReplicaIdentity, TypeKind};
    use bytes::Bytes;

    fn relation() -> Arc<Relation> {
        let column = |name: &str, key| Column {
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
            key,
            kind: TypeKind::Int,
        };
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column("id", true), column("v", false)],
        })
    }

    fn tuple(id: &str, v: &str) -> Tuple {
        Tuple(vec![
            Cell::Text(Bytes::from(id.to_string())),
            Cell::Text(Bytes::from(v.to_string())),
        ])
    }

    fn event(rel: &Arc<Relation>, op: Op, new: Option<Tuple>, old: Option<Tuple>) -> RecordEvent {
        RecordEvent {
            relation: rel.clone(),
            op,
            commit_lsn: Lsn(1),
            index: 0,
            xid: 0,
            commit_time: 0,
            new,
            old,
        }
    }

    fn row(rel: &Arc<Relation>, id: &str, xmin: u32) -> ChunkRow {
        ChunkRow {
            version: RowVersion {
                key: encode_key([Some(id.as_bytes())]),
                xmin,
            },
            event: event(rel, Op::Read, Some(tuple(id, "x")), None),
        }
    }

    fn table() -> TableName {
        TableName::parse("public.t").expect("a table")
    }

    #[tokio::test]
    async fn a_chunk_goes_at_its_watermark_without_the_rows_changed_since_the_start() {
        let rel = relation();
        let (mut router, handle) = channel();
        let (segment, mut started) = handle
            .open("s".into(), table(), vec!["id".into()], None)
            .expect("open");
        let start = Watermark {
            segment,
            chunk: None,
        };
        assert!(router
            .watermark(Lsn(100), start.to_json().as_bytes())
            .is_none());
        assert!(started.try_recv().is_ok());
        // Live: row 2 updated by 60 after the chunk's snapshot, row 3 deleted.
        router.record(&event(&rel, Op::Update, Some(tuple("2", "new")), None), 60);
        router.record(&event(&rel, Op::Delete, None, Some(tuple("3", ""))), 61);
        router.committed(61);
        let snapshot = SnapshotInfo::parse("60:62:60,61").expect("parses");
        let mut answer = handle
            .chunk(
                segment,
                0,
                vec![row(&rel, "1", 5), row(&rel, "2", 5), row(&rel, "3", 5)],
                snapshot,
                None,
            )
            .expect("chunk");
        let mark = Watermark {
            segment,
            chunk: Some(0),
        };
        let emission = router
            .watermark(Lsn(200), mark.to_json().as_bytes())
            .expect("the chunk goes");
        assert_eq!(emission.events.len(), 1);
        assert_eq!(emission.dropped, 2);
        assert_eq!(emission.end_lsn, Lsn(201));
        assert_eq!(emission.events[0].commit_lsn, Lsn(200));
        assert!(matches!(
            emission.events[0].new.as_ref().and_then(|t| t.get(0)),
            Some(Cell::Text(b)) if &b[..] == b"1"
        ));
        emission
            .reply
            .expect("a chunk's answer")
            .send(ChunkOutcome::NoStrategy)
            .expect("answer");
        assert_eq!(answer.try_recv(), Ok(ChunkOutcome::NoStrategy));
    }

    #[test]
    fn watermarks_of_other_processes_are_ignored() {
        let (mut router, _handle) = channel();
        let old = Watermark {
            segment: 7,
            chunk: Some(3),
        };
        assert!(router.watermark(Lsn(5), old.to_json().as_bytes()).is_none());
        assert!(router.watermark(Lsn(5), b"not json").is_none());
        let round = serde_json::from_str::<Watermark>(&old.to_json()).expect("round trip");
        assert_eq!(round, old);
    }
}
