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
use crate::lsn::Lsn;
use crate::timestamp::pg_to_unix_micros;

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

/// Shows the decoder's state, never a row value.
impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("in_transaction", &self.txn.is_some())
            .field("buffered_streams", &self.streams.len())
            .finish_non_exhaustive()
    }
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
                    let rel = match self.relations.get(rel.oid) {
                        Some(known) if **known == rel => Arc::clone(known),
                        _ => Arc::new(rel),
                    };
                    let stream = self.streams.entry(top).or_default();
                    stream.relations.insert(rel.oid, rel);
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
                let index = match (&mut self.txn, m.transactional) {
                    (Some(txn), true) => {
                        let index = txn.next_index;
                        txn.next_index = index.wrapping_add(1);
                        index
                    }
                    _ => 0,
                };
                let event = SourceEvent::Message {
                    transactional: m.transactional,
                    lsn: m.lsn,
                    index,
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
                    match &mut event {
                        SourceEvent::Record(r) => {
                            r.commit_lsn = c.commit_lsn;
                            r.commit_time = commit_time;
                            r.index = index;
                            index = index.wrapping_add(1);
                        }
                        SourceEvent::Message {
                            index: message_index,
                            ..
                        } => {
                            *message_index = index;
                            index = index.wrapping_add(1);
                        }
                        _ => {}
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
    #[cfg(test)]
    fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Streamed transactions whose changes are buffered awaiting their commit.
    #[cfg(test)]
    fn buffered_streams(&self) -> usize {
        self.streams.len()
    }

    /// The relation as the latest Relation message (outside streams) described it.
    #[cfg(test)]
    fn relation_by_oid(&self, oid: u32) -> Option<&Arc<Relation>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::model::TypeKind;
    use crate::decode::pgoutput::tests::W;
    use crate::timestamp::PG_EPOCH_OFFSET_MICROS;

    const ORDERS: u32 = 16384;
    const ITEMS: u32 = 16390;

    fn begin(xid: u32, lsn: u64) -> Bytes {
        W::tag(b'B').u64(lsn).u64(1_000_000).u32(xid).bytes()
    }

    fn commit(lsn: u64) -> Bytes {
        W::tag(b'C')
            .u8(0)
            .u64(lsn)
            .u64(lsn + 0x30)
            .u64(1_000_000)
            .bytes()
    }

    /// orders(id int4 key, amount numeric, doc text); `xid` = inside a stream.
    fn relation(oid: u32, identity: u8, xid: Option<u32>, extra: Option<(&str, u32)>) -> Bytes {
        let key_all = u8::from(identity == b'f');
        let mut w = W::tag(b'R');
        if let Some(x) = xid {
            w = w.u32(x);
        }
        let n = if extra.is_some() { 4 } else { 3 };
        w = w
            .u32(oid)
            .str("public")
            .str(if oid == ORDERS { "orders" } else { "items" })
            .u8(identity)
            .i16(n)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(key_all)
            .str("amount")
            .u32(1700)
            .i32(-1)
            .u8(key_all)
            .str("doc")
            .u32(25)
            .i32(-1);
        if let Some((name, oid)) = extra {
            w = w.u8(key_all).str(name).u32(oid).i32(-1);
        }
        w.bytes()
    }

    fn insert(oid: u32, xid: Option<u32>, id: &str) -> Bytes {
        let mut w = W::tag(b'I');
        if let Some(x) = xid {
            w = w.u32(x);
        }
        w.u32(oid)
            .u8(b'N')
            .i16(3)
            .text(id)
            .text("1.50")
            .text("d")
            .bytes()
    }

    fn run(d: &mut Decoder, msgs: &[Bytes]) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        for m in msgs {
            d.decode(m.clone(), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    fn records(events: &[SourceEvent]) -> Vec<&RecordEvent> {
        events
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Record(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn json(r: &RecordEvent) -> serde_json::Value {
        r.to_json_value()
    }

    fn text(s: &'static str) -> Cell {
        Cell::Text(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn a_transaction_becomes_begin_records_commit() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                begin(750, 0x16B3748),
                insert(ORDERS, None, "1"),
                insert(ORDERS, None, "2"),
                commit(0x16B3748),
            ],
        );
        assert_eq!(events.len(), 4);
        match &events[0] {
            SourceEvent::Begin {
                xid,
                commit_lsn,
                commit_time,
            } => {
                assert_eq!((*xid, *commit_lsn), (750, Lsn(0x16B3748)));
                assert_eq!(*commit_time, PG_EPOCH_OFFSET_MICROS + 1_000_000);
            }
            other => panic!("{other:?}"),
        }
        let recs = records(&events);
        assert_eq!(recs[0].id(), "0/16B3748:0");
        assert_eq!(recs[1].id(), "0/16B3748:1");
        assert_eq!(recs[1].xid, 750);
        assert_eq!(recs[0].op, Op::Insert);
        assert!(Arc::ptr_eq(&recs[0].relation, &recs[1].relation));
        assert_eq!(
            json(recs[0])["new"],
            serde_json::json!({"id": 1, "amount": 1.5, "doc": "d"})
        );
        assert_eq!(json(recs[0])["commit_time"], "2000-01-01T00:00:01.000000Z");
        assert!(matches!(
            events[3],
            SourceEvent::Commit {
                commit_lsn: Lsn(0x16B3748),
                end_lsn: Lsn(0x16B3778)
            }
        ));
        assert!(!d.in_transaction());
        // A second transaction numbers its records from 0 again.
        let events = run(
            &mut d,
            &[
                begin(751, 0x2000),
                insert(ORDERS, None, "3"),
                commit(0x2000),
            ],
        );
        assert_eq!(records(&events)[0].id(), "0/2000:0");
    }

    fn update(old: Option<(u8, Vec<&str>)>, new: Vec<&str>) -> Bytes {
        let cells = |mut w: W, cells: Vec<&str>| {
            w = w.i16(cells.len() as i16);
            for c in cells {
                w = match c {
                    "<n>" => w.u8(b'n'),
                    "<u>" => w.u8(b'u'),
                    v => w.text(v),
                };
            }
            w
        };
        let mut w = W::tag(b'U').u32(ORDERS);
        if let Some((kind, old)) = old {
            w = cells(w.u8(kind), old);
        }
        cells(w.u8(b'N'), new).bytes()
    }

    #[test]
    fn unchanged_toast_stays_unchanged_under_default_identity() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                begin(1, 0x100),
                update(None, vec!["1", "2.00", "<u>"]),
                commit(0x100),
            ],
        );
        let r = records(&events)[0];
        assert_eq!(r.new.as_ref().unwrap().0[2], Cell::Unchanged);
        let v = json(r);
        assert_eq!(v["new"], serde_json::json!({"id": 1, "amount": 2.0}));
        assert_eq!(v["unchanged_toast"], serde_json::json!(["doc"]));
        assert_eq!(r.unchanged_toast().collect::<Vec<_>>(), ["doc"]);
        assert_eq!(v["old"], serde_json::Value::Null);
    }

    #[test]
    fn unchanged_toast_is_filled_from_the_old_row_under_full_identity() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'f', None, None),
                begin(1, 0x100),
                update(
                    Some((b'O', vec!["1", "1.00", "big value"])),
                    vec!["1", "2.00", "<u>"],
                ),
                commit(0x100),
            ],
        );
        let r = records(&events)[0];
        assert_eq!(r.new.as_ref().unwrap().0[2], text("big value"));
        let v = json(r);
        assert_eq!(v["new"]["doc"], "big value");
        assert_eq!(
            v["old"],
            serde_json::json!({"id": 1, "amount": 1.0, "doc": "big value"})
        );
        assert!(v.get("unchanged_toast").is_none());
    }

    #[test]
    fn key_only_old_image_under_default_identity() {
        let mut d = Decoder::new();
        let del = W::tag(b'D')
            .u32(ORDERS)
            .u8(b'K')
            .i16(3)
            .text("7")
            .u8(b'n')
            .u8(b'n')
            .bytes();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                begin(1, 0x100),
                update(Some((b'K', vec!["6", "<n>", "<n>"])), vec!["7", "1", "x"]),
                del,
                commit(0x100),
            ],
        );
        let recs = records(&events);
        assert_eq!(json(recs[0])["old"], serde_json::json!({"id": 6}));
        assert_eq!(json(recs[1])["old"], serde_json::json!({"id": 7}));
        assert_eq!(json(recs[1])["new"], serde_json::Value::Null);
        assert_eq!(recs[1].op, Op::Delete);
        assert_eq!(
            recs[1].old.as_ref().and_then(|t| t.get(0)),
            Some(&text("7"))
        );
        assert_eq!(recs[1].unchanged_toast().count(), 0);
    }

    #[test]
    fn truncate_gives_one_record_per_table() {
        let mut d = Decoder::new();
        let trunc = W::tag(b'T').i32(2).u8(0).u32(ORDERS).u32(ITEMS).bytes();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                relation(ITEMS, b'd', None, None),
                begin(1, 0x100),
                trunc,
                commit(0x100),
            ],
        );
        let recs = records(&events);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].relation.name.as_str(), recs[0].index),
            ("orders", 0)
        );
        assert_eq!(
            (recs[1].relation.name.as_str(), recs[1].index),
            ("items", 1)
        );
        assert!(recs
            .iter()
            .all(|r| r.op == Op::Truncate && r.new.is_none() && r.old.is_none()));
    }

    #[test]
    fn relation_changes_apply_from_the_next_row_on() {
        let mut d = Decoder::new();
        let wide = W::tag(b'I')
            .u32(ORDERS)
            .u8(b'N')
            .i16(4)
            .text("2")
            .text("1")
            .text("d")
            .text("t")
            .bytes();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                begin(1, 0x100),
                insert(ORDERS, None, "1"),
                relation(ORDERS, b'd', None, Some(("flag", 16))),
                wide,
                commit(0x100),
            ],
        );
        let recs = records(&events);
        assert_eq!(recs[0].relation.columns.len(), 3);
        assert_eq!(recs[1].relation.columns[3].kind, TypeKind::Bool);
        assert_eq!(json(recs[1])["new"]["flag"], true);
        assert_eq!(recs[1].index, 1);
        // The old shape is gone: a three-column tuple is now an error.
        let mut out = Vec::new();
        d.decode(begin(2, 0x200), &mut out).unwrap();
        let err = d.decode(insert(ORDERS, None, "3"), &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::ColumnCount {
                    expected: 4,
                    got: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("public.orders"));
    }

    #[test]
    fn unknown_relation_is_an_error_naming_the_oid() {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.decode(begin(1, 0x100), &mut out).unwrap();
        let err = d.decode(insert(ORDERS, None, "1"), &mut out).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownRelation(ORDERS)));
        assert!(err.to_string().contains("16384"), "{err}");
    }

    #[test]
    fn messages_out_of_order_are_errors() {
        let mut out = Vec::new();
        let mut d = Decoder::new();
        d.decode(relation(ORDERS, b'd', None, None), &mut out)
            .unwrap();
        assert!(matches!(
            d.decode(insert(ORDERS, None, "1"), &mut out),
            Err(DecodeError::OutOfOrder { tag: 'I', .. })
        ));
        assert!(d.decode(commit(0x100), &mut out).is_err());
        assert!(d.decode(W::tag(b'E').bytes(), &mut out).is_err());
        d.decode(begin(1, 0x100), &mut out).unwrap();
        assert!(d.decode(begin(2, 0x200), &mut out).is_err());
        assert!(d
            .decode(W::tag(b'S').u32(5).u8(1).bytes(), &mut out)
            .is_err());
        assert!(out.iter().all(|e| !matches!(e, SourceEvent::Record(_))));
    }

    #[test]
    fn logical_messages_pass_through_in_order() {
        let mut d = Decoder::new();
        let m = |t: u8| {
            W::tag(b'M')
                .u8(t)
                .u64(0x99)
                .str("walhook")
                .i32(2)
                .raw(b"hi")
                .bytes()
        };
        let events = run(&mut d, &[m(0), begin(1, 0x100), m(1), commit(0x100)]);
        assert!(
            matches!(&events[0], SourceEvent::Message { transactional: false, prefix, .. } if prefix == "walhook")
        );
        assert!(
            matches!(&events[2], SourceEvent::Message { transactional: true, content, .. } if &content[..] == b"hi")
        );
    }

    #[test]
    fn origin_and_type_messages_emit_nothing() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                W::tag(b'Y').u32(16500).str("").str("int4").bytes(),
                begin(1, 0x100),
                W::tag(b'O').u64(5).str("other").bytes(),
                commit(0x100),
            ],
        );
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn domain_columns_convert_as_their_base_type() {
        let mut d = Decoder::new();
        let rel = W::tag(b'R')
            .u32(ORDERS)
            .str("public")
            .str("orders")
            .u8(b'd')
            .i16(1)
            .u8(1)
            .str("qty")
            .u32(16500)
            .i32(-1)
            .bytes();
        let ins = W::tag(b'I').u32(ORDERS).u8(b'N').i16(1).text("42").bytes();
        let events = run(
            &mut d,
            &[
                W::tag(b'Y').u32(16500).str("").str("int4").bytes(),
                rel,
                begin(1, 0x100),
                ins,
                commit(0x100),
            ],
        );
        assert_eq!(json(records(&events)[0])["new"]["qty"], 42);
    }

    fn stream_start(xid: u32, first: bool) -> Bytes {
        W::tag(b'S').u32(xid).u8(u8::from(first)).bytes()
    }

    fn stream_stop() -> Bytes {
        W::tag(b'E').bytes()
    }

    fn stream_commit(xid: u32, lsn: u64) -> Bytes {
        W::tag(b'c')
            .u32(xid)
            .u8(0)
            .u64(lsn)
            .u64(lsn + 0x30)
            .u64(2_000_000)
            .bytes()
    }

    fn stream_abort(xid: u32, subxid: u32) -> Bytes {
        W::tag(b'A').u32(xid).u32(subxid).bytes()
    }

    fn ids(events: &[SourceEvent]) -> Vec<String> {
        records(events)
            .iter()
            .map(|r| {
                format!(
                    "{}={}",
                    r.id(),
                    r.new
                        .as_ref()
                        .map_or("-".into(), |t| format!("{:?}", t.0[0]))
                )
            })
            .collect()
    }

    #[test]
    fn streamed_transaction_is_released_at_stream_commit() {
        let mut d = Decoder::new();
        let mut events = run(
            &mut d,
            &[
                stream_start(10, true),
                relation(ORDERS, b'd', Some(10), None),
                insert(ORDERS, Some(10), "1"),
                insert(ORDERS, Some(11), "2"), // subtransaction 11
                stream_stop(),
                // An ordinary transaction between segments goes straight through.
                relation(ORDERS, b'd', None, None),
                begin(20, 0x500),
                insert(ORDERS, None, "100"),
                commit(0x500),
                stream_start(10, false),
                insert(ORDERS, Some(12), "3"),
                stream_stop(),
                stream_abort(10, 11),
            ],
        );
        assert_eq!(ids(&events), vec![r#"0/500:0=Text(b"100")"#]);
        assert_eq!(d.buffered_streams(), 1);
        events.clear();
        let events = run(&mut d, &[stream_commit(10, 0x900)]);
        assert!(matches!(
            events[0],
            SourceEvent::Begin {
                xid: 10,
                commit_lsn: Lsn(0x900),
                commit_time
            } if commit_time == PG_EPOCH_OFFSET_MICROS + 2_000_000
        ));
        assert_eq!(
            ids(&events),
            vec![r#"0/900:0=Text(b"1")"#, r#"0/900:1=Text(b"3")"#]
        );
        let recs = records(&events);
        assert!(recs
            .iter()
            .all(|r| r.xid == 10 && r.commit_time == PG_EPOCH_OFFSET_MICROS + 2_000_000));
        assert!(matches!(
            events.last(),
            Some(SourceEvent::Commit {
                commit_lsn: Lsn(0x900),
                end_lsn: Lsn(0x930)
            })
        ));
        assert_eq!(d.buffered_streams(), 0);
    }

    #[test]
    fn stream_abort_of_the_whole_transaction_drops_it() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                stream_start(10, true),
                insert(ORDERS, Some(10), "1"),
                W::tag(b'M').u32(10).u8(1).u64(1).str("p").i32(0).bytes(),
                stream_stop(),
                stream_abort(10, 10),
            ],
        );
        assert!(events.is_empty());
        assert_eq!(d.buffered_streams(), 0);
        // A later commit of that xid has nothing left to release.
        let events = run(&mut d, &[stream_commit(10, 0x900)]);
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn relations_sent_inside_a_stream_stay_there_until_it_commits() {
        let mut d = Decoder::new();
        let wide_streamed = W::tag(b'I')
            .u32(10)
            .u32(ORDERS)
            .u8(b'N')
            .i16(4)
            .text("1")
            .text("1")
            .text("d")
            .text("t")
            .bytes();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                stream_start(10, true),
                relation(ORDERS, b'd', Some(10), Some(("flag", 16))),
                wide_streamed,
                stream_stop(),
                // A concurrent ordinary transaction still has the old shape.
                begin(20, 0x500),
                insert(ORDERS, None, "100"),
                commit(0x500),
                stream_commit(10, 0x900),
            ],
        );
        let recs = records(&events);
        assert_eq!(recs[0].relation.columns.len(), 3);
        assert_eq!(recs[1].relation.columns.len(), 4);
        assert_eq!(json(recs[1])["new"]["flag"], true);
        // After the commit the streamed shape is the session's.
        assert_eq!(d.relation_by_oid(ORDERS).unwrap().columns.len(), 4);
    }

    #[test]
    fn identical_relation_inside_a_stream_shares_the_session_arc() {
        let mut d = Decoder::new();
        let events = run(
            &mut d,
            &[
                relation(ORDERS, b'd', None, None),
                stream_start(10, true),
                relation(ORDERS, b'd', Some(10), None),
                insert(ORDERS, Some(10), "1"),
                stream_stop(),
                stream_commit(10, 0x900),
            ],
        );
        let session = d.relation_by_oid(ORDERS).unwrap();
        assert!(Arc::ptr_eq(&records(&events)[0].relation, session));
    }
}

#[cfg(test)]
mod send_check {
    /// The source stage moves the decoder into a task.
    #[test]
    fn decoder_and_events_are_send() {
        fn send<T: Send + 'static>() {}
        send::<super::Decoder>();
        send::<super::SourceEvent>();
    }
}
