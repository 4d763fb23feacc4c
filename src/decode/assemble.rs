//! Stateful pgoutput message stream → [`SourceEvent`]s.
//!
//! The parser sees one message at a time; meaning needs context. The
//! [`Decoder`] remembers relations and types, the open transaction (its xid,
//! commit LSN and time, and how many records it has produced, which gives
//! each record its stable id `<commit LSN>:<index>`), and, for protocol v2,
//! the changes of in-progress transactions that the server streams before
//! they commit.
//!
//! Streamed transactions are buffered per top-level xid between Stream Start
//! and Stream Stop and released at Stream Commit as an ordinary
//! Begin / records / Commit sequence, so downstream only ever sees committed
//! changes. Stream Abort drops the transaction, or only the aborted
//! subtransaction's changes. A Relation message inside a stream applies to
//! that stream's later changes at once, and to the session only when the
//! transaction commits (as PostgreSQL's own apply worker does); a row that
//! arrives for an unknown relation is an error, never a guess.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::model::{Cell, Op, RecordEvent, Relation, ReplicaIdentity, SourceEvent, Tuple};
use super::pgoutput::{self, DecodeError, LogicalMessage, OldKind};
use super::relcache::{RelationCache, TypeCache};
use crate::lsn::{pg_to_unix_micros, Lsn};

/// Keeps relation/type caches and transaction state across messages. Use a
/// new one for every replication session: the server resends relations.
#[derive(Default)]
pub struct Decoder {
    types: TypeCache,
    relations: RelationCache,
    txn: Option<Txn>,
    /// Top-level xid of the open stream segment (Stream Start … Stream Stop).
    segment: Option<u32>,
    streams: HashMap<u32, Streamed>,
}

/// The open (non-streamed) transaction.
struct Txn {
    xid: u32,
    commit_lsn: Lsn,
    commit_time: i64,
    next_index: u32,
}

/// What a streamed transaction has sent so far.
#[derive(Default)]
struct Streamed {
    /// Changes with the (sub)transaction xid that made them. Records carry
    /// placeholder commit fields until Stream Commit fills them in.
    events: Vec<(u32, SourceEvent)>,
    /// Relation messages sent inside this transaction's stream.
    relations: HashMap<u32, Arc<Relation>>,
}

/// One change before it is placed in a transaction.
struct Change {
    relation: Arc<Relation>,
    op: Op,
    new: Option<Tuple>,
    old: Option<Tuple>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one pgoutput message (an XLogData payload), appending what it
    /// yields to `out` (zero, one, or several events for Truncate and Stream
    /// Commit).
    pub fn decode(&mut self, data: Bytes, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        match pgoutput::parse(&data, self.segment.is_some())? {
            LogicalMessage::Begin(b) => {
                if self.txn.is_some() || self.segment.is_some() {
                    return Err(out_of_order(
                        'B',
                        "Begin while a transaction or stream is open",
                    ));
                }
                let commit_time = pg_to_unix_micros(b.timestamp);
                self.txn = Some(Txn {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_time,
                    next_index: 0,
                });
                out.push(SourceEvent::Begin {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    commit_time,
                });
            }
            LogicalMessage::Commit(c) => {
                if self.txn.take().is_none() {
                    return Err(out_of_order('C', "Commit without Begin"));
                }
                out.push(SourceEvent::Commit {
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                });
            }
            LogicalMessage::Origin(_) => {}
            LogicalMessage::Type(t) => self.types.update(&t),
            LogicalMessage::Relation(r) => match self.segment {
                Some(top) => {
                    let rel = RelationCache::build(r, &self.types);
                    let stream = self.streams.entry(top).or_default();
                    stream.relations.insert(rel.oid, Arc::new(rel));
                }
                None => {
                    self.relations.update(r, &self.types);
                }
            },
            LogicalMessage::Insert(m) => {
                let relation = self.relation(m.relation)?;
                check_columns(&relation, &m.new)?;
                let change = Change {
                    relation,
                    op: Op::Insert,
                    new: Some(m.new),
                    old: None,
                };
                self.push_change('I', m.xid, change, out)?;
            }
            LogicalMessage::Update(m) => {
                let relation = self.relation(m.relation)?;
                let mut new = m.new;
                check_columns(&relation, &new)?;
                let old = match m.old {
                    Some((kind, old)) => {
                        check_columns(&relation, &old)?;
                        if kind == OldKind::Full
                            || relation.replica_identity == ReplicaIdentity::Full
                        {
                            fill_unchanged(&mut new, &old);
                        }
                        Some(old)
                    }
                    None => None,
                };
                let change = Change {
                    relation,
                    op: Op::Update,
                    new: Some(new),
                    old,
                };
                self.push_change('U', m.xid, change, out)?;
            }
            LogicalMessage::Delete(m) => {
                let relation = self.relation(m.relation)?;
                let (_, old) = m.old;
                check_columns(&relation, &old)?;
                let change = Change {
                    relation,
                    op: Op::Delete,
                    new: None,
                    old: Some(old),
                };
                self.push_change('D', m.xid, change, out)?;
            }
            LogicalMessage::Truncate(m) => {
                for oid in m.relations {
                    let relation = self.relation(oid)?;
                    let change = Change {
                        relation,
                        op: Op::Truncate,
                        new: None,
                        old: None,
                    };
                    self.push_change('T', m.xid, change, out)?;
                }
            }
            LogicalMessage::Message(m) => {
                let event = SourceEvent::Message {
                    transactional: m.transactional,
                    lsn: m.lsn,
                    prefix: m.prefix,
                    content: m.content,
                };
                match (self.segment, m.transactional) {
                    (Some(top), true) => {
                        let sub = m.xid.unwrap_or(top);
                        self.streams
                            .entry(top)
                            .or_default()
                            .events
                            .push((sub, event));
                    }
                    _ => out.push(event),
                }
            }
            LogicalMessage::StreamStart(s) => {
                if self.txn.is_some() || self.segment.is_some() {
                    return Err(out_of_order(
                        'S',
                        "Stream Start while a transaction or stream is open",
                    ));
                }
                self.segment = Some(s.xid);
                self.streams.entry(s.xid).or_default();
            }
            LogicalMessage::StreamStop => {
                if self.segment.take().is_none() {
                    return Err(out_of_order('E', "Stream Stop without Stream Start"));
                }
            }
            LogicalMessage::StreamCommit(c) => {
                if self.txn.is_some() || self.segment.is_some() {
                    return Err(out_of_order(
                        'c',
                        "Stream Commit while a transaction or stream is open",
                    ));
                }
                let stream = self.streams.remove(&c.xid).unwrap_or_default();
                let commit_time = pg_to_unix_micros(c.timestamp);
                out.reserve(stream.events.len() + 2);
                out.push(SourceEvent::Begin {
                    xid: c.xid,
                    commit_lsn: c.commit_lsn,
                    commit_time,
                });
                let mut index: u32 = 0;
                for (_, mut event) in stream.events {
                    if let SourceEvent::Record(r) = &mut event {
                        r.commit_lsn = c.commit_lsn;
                        r.commit_time = commit_time;
                        r.index = index;
                        index = index.wrapping_add(1);
                    }
                    out.push(event);
                }
                out.push(SourceEvent::Commit {
                    commit_lsn: c.commit_lsn,
                    end_lsn: c.end_lsn,
                });
                for relation in stream.relations.into_values() {
                    self.relations.insert(relation);
                }
            }
            LogicalMessage::StreamAbort(a) => {
                if self.segment.is_some() {
                    return Err(out_of_order('A', "Stream Abort inside a stream segment"));
                }
                if a.subxid == a.xid {
                    self.streams.remove(&a.xid);
                } else if let Some(stream) = self.streams.get_mut(&a.xid) {
                    stream.events.retain(|(sub, _)| *sub != a.subxid);
                }
            }
        }
        Ok(())
    }

    /// True between Begin and Commit of an ordinary transaction.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Streamed transactions whose changes are buffered awaiting their commit.
    pub fn buffered_streams(&self) -> usize {
        self.streams.len()
    }

    /// The relation as the latest Relation message (outside streams) described it.
    pub fn relation_by_oid(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(oid)
    }

    /// The relation a row message in the current context refers to.
    fn relation(&self, oid: u32) -> Result<Arc<Relation>, DecodeError> {
        let streamed = self
            .segment
            .and_then(|top| self.streams.get(&top))
            .and_then(|s| s.relations.get(&oid));
        streamed
            .or_else(|| self.relations.get(oid))
            .map(Arc::clone)
            .ok_or(DecodeError::UnknownRelation(oid))
    }

    /// Emits a change in the open transaction, or buffers it in the open stream.
    fn push_change(
        &mut self,
        tag: char,
        xid: Option<u32>,
        change: Change,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        if let Some(top) = self.segment {
            let record = RecordEvent {
                relation: change.relation,
                op: change.op,
                commit_lsn: Lsn::ZERO,
                index: 0,
                xid: top,
                commit_time: 0,
                new: change.new,
                old: change.old,
            };
            let sub = xid.unwrap_or(top);
            self.streams
                .entry(top)
                .or_default()
                .events
                .push((sub, SourceEvent::Record(record)));
            return Ok(());
        }
        let Some(txn) = self.txn.as_mut() else {
            return Err(out_of_order(tag, "row change outside a transaction"));
        };
        let index = txn.next_index;
        txn.next_index = index.wrapping_add(1);
        out.push(SourceEvent::Record(RecordEvent {
            relation: change.relation,
            op: change.op,
            commit_lsn: txn.commit_lsn,
            index,
            xid: txn.xid,
            commit_time: txn.commit_time,
            new: change.new,
            old: change.old,
        }));
        Ok(())
    }
}

fn out_of_order(tag: char, why: &'static str) -> DecodeError {
    DecodeError::OutOfOrder { tag, why }
}

fn check_columns(relation: &Relation, tuple: &Tuple) -> Result<(), DecodeError> {
    if tuple.0.len() == relation.columns.len() {
        Ok(())
    } else {
        Err(DecodeError::ColumnCount {
            relation: format!("{}.{}", relation.schema, relation.name),
            expected: relation.columns.len(),
            got: tuple.0.len(),
        })
    }
}

/// Under REPLICA IDENTITY FULL the old row is complete, so an unchanged
/// TOASTed value in the new row is the old value.
fn fill_unchanged(new: &mut Tuple, old: &Tuple) {
    for (n, o) in new.0.iter_mut().zip(&old.0) {
        if *n == Cell::Unchanged && matches!(o, Cell::Text(_) | Cell::Binary(_)) {
            *n = o.clone();
        }
    }
}
