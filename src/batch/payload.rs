//! The payload: the JSON walhook sends, written here and nowhere else
//! (DESIGN.md "Payload"). A batch, one POST:
//!
//! ```json
//! {"strategy":"…","batch":{"id":"msg_…","size":2,"first_lsn":"0/16B3748","last_lsn":"0/16B3A10"},
//!  "records":[<record>,<record>], <the strategy's body fields>, "token":"…"}
//! ```
//!
//! `batch` also holds `"record_shape":"flat"` when the strategy's records
//! are flat (exactly its `record` mapping); an envelope batch leaves it out.
//!
//! A record (also one line of `walhook run --stdout`):
//!
//! ```json
//! {"id":"0/16B3748:0","op":"insert","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,
//!  "commit_time":"2026-11-22T07:04:00.123456Z","new":{…},"old":null,"unchanged_toast":["doc"]}
//! ```
//!
//! - A record's id is `<commit LSN>:<index in transaction>` ([`RecordKey`]),
//!   the same on every redelivery.
//! - `new` and `old` are the row images ([`RecordEvent::write_json`]): under
//!   DEFAULT/INDEX replica identity `old` holds only the key columns; an
//!   unchanged TOASTed value is left out of `new` and named in
//!   `unchanged_toast` (present only when not empty). A strategy with
//!   `record` puts its mapped fields in `new` (inserts, updates, reads) or
//!   `old` (deletes) instead, or with `record_shape = "flat"` the record is
//!   the mapped object alone ([`RecordEvent::write_mapped_json`]); the
//!   envelope's own values can be mapped in ([`RecordEvent::write_meta`]).
//! - Each value is written by [`crate::decode::convert`], `commit_time` by
//!   [`crate::timestamp`].
//! - The batch id is `msg_` + base64url(sha256(strategy name, NUL, each
//!   record id followed by a newline)): the same records give the same id on
//!   every redelivery, and it is the `webhook-id` header too.
//! - `token` is added at delivery, when the endpoint asks for one ([`with_token`]).
//!
//! Nothing is serialised twice: a record's object is written once, when the
//! router queues it, and a batch is those bytes with the envelope around
//! them, written into one buffer when it is sealed ([`build`]).

use std::io::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::dispatch::Lane;
use super::{BatchMeta, Decorate, Group, QueuedRecord, ReplyLog};
use crate::budget::Charge;
use crate::config::RecordShape;
use crate::decode::convert::{write_cell_json, write_json_string};
use crate::decode::{Cell, Op, RecordEvent, Tuple};
use crate::lsn::{write_decimal, Lsn};
use crate::timestamp::write_rfc3339;

/// One of a record envelope's own fields, as a mapping can read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meta {
    /// `id`: `<commit LSN>:<index>`.
    Id,
    /// `op`.
    Op,
    /// `schema`.
    Schema,
    /// `table`.
    Table,
    /// `lsn`: the commit LSN.
    Lsn,
    /// `xid`.
    Xid,
    /// `commit_time`, RFC 3339.
    CommitTime,
}

/// A record's position: (commit LSN, index in its transaction).
pub(crate) type RecordKey = (Lsn, u32);

/// The record id of `key`: `<commit LSN>:<index>`.
fn record_id((lsn, index): RecordKey) -> String {
    format!("{lsn}:{index}")
}

/// Parses a record id (`<commit LSN>:<index>`) back into its key.
pub(crate) fn parse_record_id(id: &str) -> Option<RecordKey> {
    let (lsn, index) = id.rsplit_once(':')?;
    Some((lsn.parse().ok()?, index.parse().ok()?))
}

/// A logical message as a record (`"op": "message"`, see README's
/// "Transactional outbox"). Non-transactional messages have no transaction:
/// their `lsn` is the message's own, `xid` and `commit_time` are null.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageRecord<'a> {
    pub(crate) commit_lsn: Lsn,
    pub(crate) index: u32,
    /// `None` for a non-transactional message.
    pub(crate) txn: Option<(u32, i64)>,
    pub(crate) message_lsn: Lsn,
    pub(crate) prefix: &'a str,
    pub(crate) content: &'a [u8],
}

impl MessageRecord<'_> {
    /// Appends the record object. `content` is embedded as JSON when it
    /// parses as JSON (`"content_format": "json"`), else as a string when it
    /// is UTF-8 (`"text"`), else base64 (`"base64"`): never dropped.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{{\"id\":\"{}:{}\",\"op\":\"message\",\"prefix\":",
            self.commit_lsn, self.index
        );
        write_json_string(self.prefix.as_bytes(), out);
        let _ = write!(
            out,
            ",\"transactional\":{},\"lsn\":\"{}\",\"message_lsn\":\"{}\",",
            self.txn.is_some(),
            self.commit_lsn,
            self.message_lsn
        );
        match self.txn {
            Some((xid, commit_time)) => {
                let _ = write!(out, "\"xid\":{xid},\"commit_time\":\"");
                write_rfc3339(commit_time, out);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"\"xid\":null,\"commit_time\":null"),
        }
        let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(self.content).is_ok();
        if is_json {
            out.extend_from_slice(b",\"content_format\":\"json\",\"content\":");
            out.extend_from_slice(self.content);
        } else if std::str::from_utf8(self.content).is_ok() {
            out.extend_from_slice(b",\"content_format\":\"text\",\"content\":");
            write_json_string(self.content, out);
        } else {
            out.extend_from_slice(b",\"content_format\":\"base64\",\"content\":\"");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(self.content)
                    .as_bytes(),
            );
            out.push(b'"');
        }
        out.push(b'}');
    }
}

/// A batch ready to send.
#[derive(Debug)]
pub struct Batch {
    /// The strategy's name.
    pub(crate) strategy: std::sync::Arc<str>,
    /// `batch.id` and the `webhook-id` header.
    pub id: String,
    /// Number of records.
    pub(crate) size: usize,
    /// Commit LSN of the first record.
    pub(crate) first_lsn: Lsn,
    /// Commit LSN of the last record.
    pub(crate) last_lsn: Lsn,
    /// The records' positions, in order.
    pub(crate) keys: Vec<RecordKey>,
    /// The records' groups, in order (freed when the batch is done).
    pub(crate) groups: Vec<Group>,
    /// The records' bytes held against the memory budget, released with the batch.
    pub(crate) charge: Charge,
    /// Commit time of the first record, µs since the Unix epoch.
    pub(crate) first_commit_time: i64,
    /// The JSON payload.
    pub body: Bytes,
    /// Request headers from the strategy's templates.
    pub(crate) headers: Vec<(String, String)>,
    /// Query parameters from the strategy's templates.
    pub(crate) query: Vec<(String, String)>,
    /// Why the strategy's templates could not be evaluated (each attempt
    /// then fails without a request; the text names the field, never values).
    pub(crate) decorate_error: Option<String>,
    /// Where the endpoint's answers are kept (synchronous runs).
    pub(crate) replies: Option<std::sync::Arc<ReplyLog>>,
    /// Sent, or stored behind the strategy's parked work.
    pub(crate) lane: Lane,
}

impl Batch {
    /// A batch stored before (a dead letter, a parked batch): its exact
    /// body and ids, headers and query evaluated again by `decorate`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stored(
        strategy: &str,
        id: String,
        size: usize,
        first_lsn: Lsn,
        last_lsn: Lsn,
        keys: Vec<RecordKey>,
        first_commit_time: i64,
        body: Bytes,
        decorate: &dyn Decorate,
    ) -> Batch {
        let mut batch = Batch {
            strategy: strategy.into(),
            id,
            size,
            first_lsn,
            last_lsn,
            keys,
            groups: Vec::new(),
            charge: Charge::default(),
            first_commit_time,
            body,
            headers: Vec::new(),
            query: Vec::new(),
            decorate_error: None,
            replies: None,
            lane: Lane::Live,
        };
        batch.decorate(decorate);
        batch
    }

    /// Evaluates the headers and query parameters again (a reload changed
    /// the templates, or the batch was stored); the body stays as it is.
    pub(crate) fn decorate(&mut self, decorate: &dyn Decorate) {
        let meta = BatchMeta {
            strategy: &self.strategy,
            id: &self.id,
            size: self.size,
            first_lsn: self.first_lsn,
            last_lsn: self.last_lsn,
        };
        match decorate.decorate(&meta) {
            Ok(d) => {
                self.headers = d.headers;
                self.query = d.query;
                self.decorate_error = None;
            }
            Err(e) => {
                self.headers.clear();
                self.query.clear();
                self.decorate_error = Some(e);
            }
        }
    }

    /// `records[0].id`.
    pub(crate) fn first_record_id(&self) -> String {
        self.keys
            .first()
            .copied()
            .map(record_id)
            .unwrap_or_default()
    }

    /// The last `records[].id`.
    pub(crate) fn last_record_id(&self) -> String {
        self.keys.last().copied().map(record_id).unwrap_or_default()
    }
}

/// `msg_` + base64url(sha256(strategy, NUL, record ids each followed by `\n`)).
fn batch_id<'a>(strategy: &str, keys: impl IntoIterator<Item = &'a RecordKey>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(strategy.as_bytes());
    hasher.update([0u8]);
    let mut id = Vec::with_capacity(32);
    for (lsn, index) in keys {
        id.clear();
        lsn.write_text(&mut id);
        id.push(b':');
        write_decimal(u64::from(*index), &mut id);
        id.push(b'\n');
        hasher.update(&id);
    }
    let digest = hasher.finalize();
    let mut out = String::from("msg_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(digest, &mut out);
    out
}

/// Seals `records` (not empty) into a batch.
pub fn build(
    strategy: &std::sync::Arc<str>,
    records: Vec<QueuedRecord>,
    decorate: &dyn Decorate,
) -> Batch {
    build_into(strategy, records, decorate, Vec::new())
}

/// [`build`], writing the body into `buf` (cleared first): the buffer of
/// a batch that is done, so a megabyte body does not cost fresh pages
/// every time.
pub(crate) fn build_into(
    strategy: &std::sync::Arc<str>,
    records: Vec<QueuedRecord>,
    decorate: &dyn Decorate,
    mut out: Vec<u8>,
) -> Batch {
    let keys: Vec<RecordKey> = records.iter().map(|r| (r.commit_lsn, r.index)).collect();
    let id = batch_id(strategy, &keys);
    let first_lsn = records.first().map(|r| r.commit_lsn).unwrap_or_default();
    let last_lsn = records.last().map(|r| r.commit_lsn).unwrap_or_default();
    let first_commit_time = records.first().map(|r| r.commit_time).unwrap_or_default();
    let meta = BatchMeta {
        strategy,
        id: &id,
        size: records.len(),
        first_lsn,
        last_lsn,
    };
    let (decoration, decorate_error) = match decorate.decorate(&meta) {
        Ok(d) => (d, None),
        Err(e) => (Default::default(), Some(e)),
    };

    let records_len: usize = records.iter().map(|r| r.json.len() + 1).sum();
    out.clear();
    out.reserve(records_len + strategy.len() + 160);
    out.extend_from_slice(b"{\"strategy\":");
    write_str(&mut out, strategy);
    out.extend_from_slice(b",\"batch\":{\"id\":");
    write_str(&mut out, &id);
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        ",\"size\":{},\"first_lsn\":\"{first_lsn}\",\"last_lsn\":\"{last_lsn}\"",
        records.len()
    );
    if decorate.record_shape() == RecordShape::Flat {
        out.extend_from_slice(b",\"record_shape\":\"flat\"");
    }
    out.extend_from_slice(b"},\"records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record.json);
    }
    out.push(b']');
    // Configuration refuses body keys that collide with the ones above.
    for (key, value) in &decoration.body {
        out.push(b',');
        write_str(&mut out, key);
        out.push(b':');
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');
    let replies = decorate.replies(&keys);

    Batch {
        strategy: strategy.clone(),
        id,
        size: records.len(),
        first_lsn,
        last_lsn,
        keys,
        groups: Vec::new(),
        charge: Charge::default(),
        first_commit_time,
        body: Bytes::from(out),
        headers: decoration.headers,
        query: decoration.query,
        decorate_error,
        replies,
        lane: Lane::Live,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `body` (a batch's payload) with `"token":"<token>"` as its last field,
/// inserted before the final `}` so nothing is re-serialised; `None` when
/// `body` is not a JSON object.
pub(crate) fn with_token(body: &[u8], token: &str) -> Option<Bytes> {
    let close = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .filter(|&i| body.get(i) == Some(&b'}'))?;
    let head = body.get(..close)?;
    let last = head.iter().rposition(|b| !b.is_ascii_whitespace())?;
    let empty = head.get(last) == Some(&b'{');
    let mut out = Vec::with_capacity(body.len() + token.len() + 12);
    out.extend_from_slice(head);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"token\":");
    write_json_string(token.as_bytes(), &mut out);
    out.push(b'}');
    Some(Bytes::from(out))
}

impl RecordEvent {
    /// The record id: `<commit LSN>:<index in transaction>`, stable across redeliveries.
    pub fn id(&self) -> String {
        record_id((self.commit_lsn, self.index))
    }

    /// Appends this record's payload object with the whole row images
    /// (a strategy without `record`, and `walhook run --stdout`).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_record(None::<fn(&mut Vec<u8>)>, out);
    }

    /// Appends this record's payload object for a strategy with `record`,
    /// where `mapped` writes the mapped fields' JSON object. Envelope: the
    /// same envelope as [`RecordEvent::write_json`], with that object as
    /// `new` (inserts, updates, reads) or `old` (deletes); a truncate has
    /// neither. Flat: the object alone.
    pub(crate) fn write_mapped_json(
        &self,
        shape: RecordShape,
        mapped: impl FnOnce(&mut Vec<u8>),
        out: &mut Vec<u8>,
    ) {
        match shape {
            RecordShape::Envelope => self.write_record(Some(mapped), out),
            RecordShape::Flat => mapped(out),
        }
    }

    /// Appends the JSON value of one of the envelope's own fields, as the
    /// envelope writes it, for a mapping that names it (`{ expr = "id" }`).
    pub(crate) fn write_meta(&self, meta: Meta, out: &mut Vec<u8>) {
        match meta {
            Meta::Id => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "\"{}:{}\"", self.commit_lsn, self.index);
            }
            Meta::Op => {
                out.push(b'"');
                out.extend_from_slice(self.op.as_str().as_bytes());
                out.push(b'"');
            }
            Meta::Schema => write_json_string(self.relation.schema.as_bytes(), out),
            Meta::Table => write_json_string(self.relation.name.as_bytes(), out),
            Meta::Lsn => {
                let _ = write!(out, "\"{}\"", self.commit_lsn);
            }
            Meta::Xid => {
                let _ = write!(out, "{}", self.xid);
            }
            Meta::CommitTime => {
                out.push(b'"');
                write_rfc3339(self.commit_time, out);
                out.push(b'"');
            }
        }
    }

    fn write_record(&self, mapped: Option<impl FnOnce(&mut Vec<u8>)>, out: &mut Vec<u8>) {
        let rel = &*self.relation;
        out.extend_from_slice(b"{\"id\":\"");
        self.commit_lsn.write_text(out);
        out.push(b':');
        write_decimal(u64::from(self.index), out);
        out.extend_from_slice(b"\",\"op\":\"");
        out.extend_from_slice(self.op.as_str().as_bytes());
        out.extend_from_slice(b"\",\"schema\":");
        write_json_string(rel.schema.as_bytes(), out);
        out.extend_from_slice(b",\"table\":");
        write_json_string(rel.name.as_bytes(), out);
        out.extend_from_slice(b",\"lsn\":\"");
        self.commit_lsn.write_text(out);
        out.extend_from_slice(b"\",\"xid\":");
        write_decimal(u64::from(self.xid), out);
        out.extend_from_slice(b",\"commit_time\":\"");
        write_rfc3339(self.commit_time, out);
        out.push(b'"');
        match mapped {
            None => {
                out.extend_from_slice(b",\"new\":");
                self.write_image(self.new.as_ref(), false, out);
                out.extend_from_slice(b",\"old\":");
                self.write_image(self.old.as_ref(), self.old_is_key_only(), out);
            }
            Some(write_mapped) => match self.op {
                Op::Insert | Op::Update | Op::Read => {
                    out.extend_from_slice(b",\"new\":");
                    write_mapped(out);
                    out.extend_from_slice(b",\"old\":null");
                }
                Op::Delete => {
                    out.extend_from_slice(b",\"new\":null,\"old\":");
                    write_mapped(out);
                }
                Op::Truncate => out.extend_from_slice(b",\"new\":null,\"old\":null"),
            },
        }
        let mut first = true;
        for name in self.unchanged_toast() {
            out.extend_from_slice(if first {
                b",\"unchanged_toast\":["
            } else {
                b","
            });
            write_json_string(name.as_bytes(), out);
            first = false;
        }
        if !first {
            out.push(b']');
        }
        out.push(b'}');
    }

    /// About how long [`RecordEvent::write_json`]'s output is (longer when
    /// values need escaping), so its buffer is allocated once, not grown
    /// and copied for every doubling of a wide row.
    pub(crate) fn json_len_hint(&self) -> usize {
        let rel = &*self.relation;
        let image = |tuple: &Option<Tuple>| {
            tuple.as_ref().map_or(4, |t| {
                let cells: usize = rel
                    .columns
                    .iter()
                    .zip(&t.0)
                    .map(|(col, cell)| {
                        col.name.len()
                            + 4
                            + match cell {
                                Cell::Text(b) => b.len() + 2,
                                Cell::Binary(b) => b.len().div_ceil(3) * 4 + 2,
                                Cell::Null | Cell::Unchanged => 4,
                            }
                    })
                    .sum();
                cells + 2
            })
        };
        192 + rel.schema.len() + rel.name.len() + image(&self.new) + image(&self.old)
    }

    /// A row image as a JSON object: unchanged TOASTed values left out, and
    /// only key columns when `key_only`.
    fn write_image(&self, tuple: Option<&Tuple>, key_only: bool, out: &mut Vec<u8>) {
        let Some(tuple) = tuple else {
            out.extend_from_slice(b"null");
            return;
        };
        out.push(b'{');
        let mut first = true;
        for (col, cell) in self.relation.columns.iter().zip(&tuple.0) {
            if *cell == Cell::Unchanged || (key_only && !col.key) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_json_string(col.name.as_bytes(), out);
            out.push(b':');
            write_cell_json(&col.kind, cell, out);
        }
        out.push(b'}');
    }

    /// The record's object as a `serde_json::Value` (tests). Beware:
    /// without serde_json's `arbitrary_precision`, numbers beyond f64 (a
    /// 30-digit numeric) lose digits here; [`RecordEvent::write_json`] keeps
    /// them exact.
    #[cfg(test)]
    pub(crate) fn to_json_value(&self) -> serde_json::Value {
        let mut buf = Vec::new();
        self.write_json(&mut buf);
        serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::batch::{Decoration, NoDecoration};
    use crate::decode::{Column, Relation, ReplicaIdentity, TypeKind};

    fn rec(lsn: u64, index: u32) -> QueuedRecord {
        QueuedRecord::new(
            Lsn(lsn),
            index,
            1_700_000_000_000_000,
            format!("{{\"id\":\"{}:{index}\"}}", Lsn(lsn)).into_bytes(),
        )
    }

    struct Body;
    impl Decorate for Body {
        fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
            Ok(Decoration {
                headers: vec![("x-size".into(), meta.size.to_string())],
                query: vec![],
                body: vec![("source".into(), serde_json::json!("erp"))],
            })
        }
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let s: Arc<str> = "big \"orders\"".into();
        let b = build(&s, vec![rec(0x16B3748, 0), rec(0x16B3A10, 1)], &Body);
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v["strategy"], "big \"orders\"");
        assert_eq!(v["batch"]["id"], b.id.as_str());
        assert_eq!(v["batch"]["size"], 2);
        assert_eq!(v["batch"]["first_lsn"], "0/16B3748");
        assert_eq!(v["batch"]["last_lsn"], "0/16B3A10");
        assert_eq!(v["records"][1]["id"], "0/16B3A10:1");
        assert_eq!(v["source"], "erp");
        assert!(v["batch"].get("record_shape").is_none());
        assert_eq!(b.headers, vec![("x-size".to_string(), "2".to_string())]);
        assert_eq!(b.first_record_id(), "0/16B3748:0");
        assert_eq!(b.last_record_id(), "0/16B3A10:1");
    }

    #[test]
    fn batch_id_depends_on_strategy_and_records_only() {
        let s: Arc<str> = "s".into();
        let a = build(&s, vec![rec(1, 0), rec(1, 1)], &NoDecoration);
        let b = build(&s, vec![rec(1, 0), rec(1, 1)], &NoDecoration);
        let c = build(&s, vec![rec(1, 0)], &NoDecoration);
        let other: Arc<str> = "t".into();
        let d = build(&other, vec![rec(1, 0), rec(1, 1)], &NoDecoration);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert!(a.id.starts_with("msg_"));
        assert_eq!(a.id.len(), 4 + 43);
    }

    #[test]
    fn a_batch_is_its_records_bytes_in_the_envelope() {
        let s: Arc<str> = "s".into();
        let b = build(&s, vec![rec(0x16B3748, 0), rec(0x16B3A10, 1)], &Body);
        assert_eq!(
            std::str::from_utf8(&b.body).unwrap(),
            format!(
                r#"{{"strategy":"s","batch":{{"id":"{}","size":2,"first_lsn":"0/16B3748","last_lsn":"0/16B3A10"}},"records":[{{"id":"0/16B3748:0"}},{{"id":"0/16B3A10:1"}}],"source":"erp"}}"#,
                b.id
            )
        );
        // msg_ + base64url(sha256("s" NUL "0/16B3748:0\n0/16B3A10:1\n")).
        assert_eq!(b.id, "msg_lrPW5ISOPCNip1vbuEYOaeUSyMUJJuX5Yp2IA78hqt0");
    }

    struct Flat;
    impl Decorate for Flat {
        fn decorate(&self, _meta: &BatchMeta<'_>) -> Result<Decoration, String> {
            Ok(Decoration::default())
        }
        fn record_shape(&self) -> RecordShape {
            RecordShape::Flat
        }
    }

    #[test]
    fn a_flat_batch_says_so_in_its_batch_object() {
        let s: Arc<str> = "s".into();
        let mut r = rec(1, 0);
        r.json = br#"{"k":1}"#.to_vec();
        let b = build(&s, vec![r], &Flat);
        assert_eq!(
            std::str::from_utf8(&b.body).unwrap(),
            format!(
                r#"{{"strategy":"s","batch":{{"id":"{}","size":1,"first_lsn":"0/1","last_lsn":"0/1","record_shape":"flat"}},"records":[{{"k":1}}]}}"#,
                b.id
            )
        );
    }

    #[test]
    fn message_records_keep_their_content() {
        let message = |content: &'static [u8]| {
            let mut out = Vec::new();
            MessageRecord {
                commit_lsn: Lsn(0x100),
                index: 1,
                txn: Some((7, 0)),
                message_lsn: Lsn(0xF0),
                prefix: "orders.created",
                content,
            }
            .write_json(&mut out);
            serde_json::from_slice::<serde_json::Value>(&out).unwrap()
        };
        let json = message(br#" {"order": 1} "#);
        assert_eq!(json["id"], "0/100:1");
        assert_eq!(json["op"], "message");
        assert_eq!(json["prefix"], "orders.created");
        assert_eq!(json["transactional"], true);
        assert_eq!(json["lsn"], "0/100");
        assert_eq!(json["message_lsn"], "0/F0");
        assert_eq!(json["xid"], 7);
        assert_eq!(json["content_format"], "json");
        assert_eq!(json["content"], serde_json::json!({"order": 1}));
        let text = message(b"not \"json\"");
        assert_eq!(text["content_format"], "text");
        assert_eq!(text["content"], "not \"json\"");
        let bytes = message(b"\xff\x00");
        assert_eq!(bytes["content_format"], "base64");
        assert_eq!(bytes["content"], "/wA=");
    }

    #[test]
    fn record_ids_parse_back() {
        assert_eq!(parse_record_id("0/16B3748:3"), Some((Lsn(0x16B3748), 3)));
        assert_eq!(record_id((Lsn(0x16B3748), 3)), "0/16B3748:3");
        assert_eq!(parse_record_id("nonsense"), None);
        assert_eq!(parse_record_id("0/1:x"), None);
    }

    #[test]
    fn the_token_goes_last_in_the_object() {
        let body = with_token(br#"{"strategy":"s","records":[]}"#, "a.b.c").unwrap();
        assert_eq!(
            &body[..],
            br#"{"strategy":"s","records":[],"token":"a.b.c"}"#
        );
        assert_eq!(
            &with_token(b"{ }\n", "a.b.c").unwrap()[..],
            br#"{ "token":"a.b.c"}"#
        );
        assert_eq!(with_token(b"[1]", "t"), None);
        assert_eq!(with_token(b"}", "t"), None);
        assert_eq!(with_token(b"", "t"), None);
    }

    fn relation(identity: ReplicaIdentity) -> Arc<Relation> {
        let col = |name: &str, kind: TypeKind, key: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_modifier: -1,
            key,
            kind,
        };
        Arc::new(Relation {
            oid: 16384,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: identity,
            columns: vec![
                col("id", TypeKind::Int, true),
                col(
                    "amount",
                    TypeKind::Numeric,
                    identity == ReplicaIdentity::Full,
                ),
                col("status", TypeKind::Text, identity == ReplicaIdentity::Full),
                col("doc", TypeKind::Text, identity == ReplicaIdentity::Full),
            ],
        })
    }

    fn t(s: &'static str) -> Cell {
        Cell::Text(Bytes::from_static(s.as_bytes()))
    }

    fn record(
        identity: ReplicaIdentity,
        op: Op,
        new: Option<Vec<Cell>>,
        old: Option<Vec<Cell>>,
    ) -> String {
        let r = RecordEvent {
            relation: relation(identity),
            op,
            commit_lsn: Lsn(0x16B3748),
            index: 0,
            xid: 750,
            commit_time: 1_795_331_040_123_456,
            new: new.map(Tuple),
            old: old.map(Tuple),
        };
        let mut out = Vec::new();
        r.write_json(&mut out);
        // Nothing here needs escaping: the buffer is allocated once.
        assert!(r.json_len_hint() >= out.len(), "hint below {}", out.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_wide_row_is_written_into_one_allocation_of_about_its_length() {
        let wide = "x".repeat(8192);
        let r = RecordEvent {
            relation: relation(ReplicaIdentity::Full),
            op: Op::Update,
            commit_lsn: Lsn(0x16B3748),
            index: 0,
            xid: 750,
            commit_time: 0,
            new: Some(Tuple(vec![
                t("1"),
                Cell::Binary(Bytes::from_static(b"\x00\x01")),
                Cell::Unchanged,
                Cell::Text(Bytes::from(wide.clone())),
            ])),
            old: Some(Tuple(vec![
                t("1"),
                Cell::Null,
                t("open"),
                Cell::Text(Bytes::from(wide)),
            ])),
        };
        let hint = r.json_len_hint();
        let mut out = Vec::with_capacity(hint);
        r.write_json(&mut out);
        assert_eq!(out.capacity(), hint, "never grown");
        assert!(
            hint - out.len() < 512,
            "hint {hint} for {} bytes",
            out.len()
        );
    }

    #[test]
    fn insert_record_matches_the_design_payload() {
        let json = record(
            ReplicaIdentity::Default,
            Op::Insert,
            Some(vec![t("1"), t("150.50"), t("open"), Cell::Null]),
            None,
        );
        assert_eq!(
            json,
            r#"{"id":"0/16B3748:0","op":"insert","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z","new":{"id":1,"amount":150.50,"status":"open","doc":null},"old":null}"#
        );
    }

    #[test]
    fn update_with_unchanged_toast_under_default_identity() {
        let json = record(
            ReplicaIdentity::Default,
            Op::Update,
            Some(vec![t("2"), t("1"), t("paid"), Cell::Unchanged]),
            Some(vec![t("1"), Cell::Null, Cell::Null, Cell::Null]),
        );
        assert_eq!(
            json,
            r#"{"id":"0/16B3748:0","op":"update","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z","new":{"id":2,"amount":1,"status":"paid"},"old":{"id":1},"unchanged_toast":["doc"]}"#
        );
    }

    #[test]
    fn delete_under_full_identity_has_the_whole_old_row() {
        let json = record(
            ReplicaIdentity::Full,
            Op::Delete,
            None,
            Some(vec![t("1"), t("NaN"), Cell::Null, t("x")]),
        );
        assert_eq!(
            json,
            r#"{"id":"0/16B3748:0","op":"delete","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z","new":null,"old":{"id":1,"amount":"NaN","status":null,"doc":"x"}}"#
        );
    }

    #[test]
    fn truncate_has_no_images() {
        let json = record(ReplicaIdentity::Default, Op::Truncate, None, None);
        assert!(json.ends_with(r#""new":null,"old":null}"#), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["op"], "truncate");
        assert!(v.get("unchanged_toast").is_none());
    }

    #[test]
    fn names_are_escaped() {
        let mut rel = (*relation(ReplicaIdentity::Default)).clone();
        rel.name = "we\"ird".into();
        rel.columns[0].name = "a\\b".into();
        let r = RecordEvent {
            relation: Arc::new(rel),
            op: Op::Insert,
            commit_lsn: Lsn(1),
            index: 3,
            xid: 1,
            commit_time: 0,
            new: Some(Tuple(vec![t("1"), Cell::Null, Cell::Null, Cell::Null])),
            old: None,
        };
        let v = r.to_json_value();
        assert_eq!(v["table"], "we\"ird");
        assert_eq!(v["new"]["a\\b"], 1);
        assert_eq!(v["id"], "0/1:3");
    }

    fn mapped(identity: ReplicaIdentity, op: Op, new: Option<Vec<Cell>>) -> String {
        let r = RecordEvent {
            relation: relation(identity),
            op,
            commit_lsn: Lsn(0x16B3748),
            index: 2,
            xid: 750,
            commit_time: 1_795_331_040_123_456,
            new: new.map(Tuple),
            old: None,
        };
        let mut out = Vec::new();
        r.write_mapped_json(
            RecordShape::Envelope,
            |out| out.extend_from_slice(br#"{"k":1}"#),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_flat_record_is_the_mapped_object_alone_and_meta_fields_match_the_envelope() {
        let r = RecordEvent {
            relation: relation(ReplicaIdentity::Default),
            op: Op::Update,
            commit_lsn: Lsn(0x16B3748),
            index: 2,
            xid: 750,
            commit_time: 1_795_331_040_123_456,
            new: Some(Tuple(vec![t("1"), Cell::Null, Cell::Unchanged, Cell::Null])),
            old: None,
        };
        let mut out = Vec::new();
        r.write_mapped_json(
            RecordShape::Flat,
            |out| out.extend_from_slice(br#"{"k":1}"#),
            &mut out,
        );
        assert_eq!(out, br#"{"k":1}"#);
        let envelope = r.to_json_value();
        for (meta, key) in [
            (Meta::Id, "id"),
            (Meta::Op, "op"),
            (Meta::Schema, "schema"),
            (Meta::Table, "table"),
            (Meta::Lsn, "lsn"),
            (Meta::Xid, "xid"),
            (Meta::CommitTime, "commit_time"),
        ] {
            let mut out = Vec::new();
            r.write_meta(meta, &mut out);
            let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(value, envelope[key], "{key}");
        }
    }

    #[test]
    fn a_mapped_record_keeps_the_envelope_and_places_the_fields_by_op() {
        let envelope = |op: &str| {
            format!(
                r#"{{"id":"0/16B3748:2","op":"{op}","schema":"public","table":"orders","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-22T07:04:00.123456Z""#
            )
        };
        let identity = ReplicaIdentity::Default;
        assert_eq!(
            mapped(
                identity,
                Op::Insert,
                Some(vec![t("1"), Cell::Null, Cell::Null, Cell::Null])
            ),
            envelope("insert") + r#","new":{"k":1},"old":null}"#
        );
        assert_eq!(
            mapped(
                identity,
                Op::Read,
                Some(vec![t("1"), Cell::Null, Cell::Null, Cell::Null])
            ),
            envelope("read") + r#","new":{"k":1},"old":null}"#
        );
        // An unchanged TOASTed column is still named.
        assert_eq!(
            mapped(
                identity,
                Op::Update,
                Some(vec![t("1"), Cell::Null, Cell::Unchanged, Cell::Unchanged])
            ),
            envelope("update") + r#","new":{"k":1},"old":null,"unchanged_toast":["status","doc"]}"#
        );
        assert_eq!(
            mapped(identity, Op::Delete, None),
            envelope("delete") + r#","new":null,"old":{"k":1}}"#
        );
        assert_eq!(
            mapped(identity, Op::Truncate, None),
            envelope("truncate") + r#","new":null,"old":null}"#
        );
    }
}
