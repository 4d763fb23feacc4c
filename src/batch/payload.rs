//! A sealed batch and its payload, serialised once into one buffer:
//!
//! ```json
//! {"strategy":"…","batch":{"id":"msg_…","size":2,"first_lsn":"0/16B3748","last_lsn":"0/16B3A10"},
//!  "records":[<record>,<record>], <the strategy's body fields>}
//! ```
//!
//! The batch id is `msg_` + base64url(sha256(strategy name, NUL, each record
//! id followed by a newline)): the same records give the same id on every
//! redelivery, and it is the `webhook-id` header too.

use std::fmt::Write as _;

use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::batcher::RecordKey;
use super::{BatchMeta, Decorate, QueuedRecord};
use crate::lsn::Lsn;

/// Top-level payload keys walhook writes itself; body fields cannot replace them.
pub const RESERVED_KEYS: [&str; 3] = ["strategy", "batch", "records"];

/// A batch ready to send.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The strategy's name.
    pub strategy: std::sync::Arc<str>,
    /// `batch.id` and the `webhook-id` header.
    pub id: String,
    /// Number of records.
    pub size: usize,
    /// Commit LSN of the first record.
    pub first_lsn: Lsn,
    /// Commit LSN of the last record.
    pub last_lsn: Lsn,
    /// The records' positions, in order.
    pub keys: Vec<RecordKey>,
    /// The last transaction end received before the batch was sealed: once
    /// it is delivered, every record of that transaction (and all before) is.
    pub complete_through: Option<Lsn>,
    /// Commit time of the first record, µs since the Unix epoch.
    pub first_commit_time: i64,
    /// The JSON payload.
    pub body: Bytes,
    /// Request headers from the strategy's templates.
    pub headers: Vec<(String, String)>,
    /// Query parameters from the strategy's templates.
    pub query: Vec<(String, String)>,
    /// Why the strategy's templates could not be evaluated (each attempt
    /// then fails without a request; the text names the field, never values).
    pub decorate_error: Option<String>,
}

impl Batch {
    /// `records[0].id`.
    pub fn first_record_id(&self) -> String {
        self.keys
            .first()
            .map(|(l, i)| format!("{l}:{i}"))
            .unwrap_or_default()
    }

    /// The last `records[].id`.
    pub fn last_record_id(&self) -> String {
        self.keys
            .last()
            .map(|(l, i)| format!("{l}:{i}"))
            .unwrap_or_default()
    }
}

/// `msg_` + base64url(sha256(strategy, NUL, record ids each followed by `\n`)).
pub fn batch_id<'a>(strategy: &str, keys: impl IntoIterator<Item = &'a RecordKey>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(strategy.as_bytes());
    hasher.update([0u8]);
    let mut id = String::with_capacity(32);
    for (lsn, index) in keys {
        id.clear();
        // Writing to a String cannot fail.
        let _ = writeln!(id, "{lsn}:{index}");
        hasher.update(id.as_bytes());
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
    complete_through: Option<Lsn>,
    decorate: &dyn Decorate,
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
    let mut out = Vec::with_capacity(records_len + strategy.len() + 160);
    out.extend_from_slice(b"{\"strategy\":");
    write_str(&mut out, strategy);
    out.extend_from_slice(b",\"batch\":{\"id\":");
    write_str(&mut out, &id);
    let _ = write_fmt(
        &mut out,
        format_args!(
            ",\"size\":{},\"first_lsn\":\"{first_lsn}\",\"last_lsn\":\"{last_lsn}\"}},\"records\":[",
            records.len()
        ),
    );
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record.json);
    }
    out.push(b']');
    for (key, value) in &decoration.body {
        if RESERVED_KEYS.contains(&key.as_str()) {
            continue;
        }
        out.push(b',');
        write_str(&mut out, key);
        out.push(b':');
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');

    Batch {
        strategy: strategy.clone(),
        id,
        size: records.len(),
        first_lsn,
        last_lsn,
        keys,
        complete_through,
        first_commit_time,
        body: Bytes::from(out),
        headers: decoration.headers,
        query: decoration.query,
        decorate_error,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::Write::write_fmt(out, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Decoration, NoDecoration};
    use std::sync::Arc;

    fn rec(lsn: u64, index: u32) -> QueuedRecord {
        QueuedRecord {
            commit_lsn: Lsn(lsn),
            index,
            commit_time: 1_700_000_000_000_000,
            json: format!("{{\"id\":\"{}:{index}\"}}", Lsn(lsn)).into_bytes(),
        }
    }

    struct Body;
    impl Decorate for Body {
        fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String> {
            Ok(Decoration {
                headers: vec![("x-size".into(), meta.size.to_string())],
                query: vec![],
                body: vec![
                    ("source".into(), serde_json::json!("erp")),
                    ("records".into(), serde_json::json!("ignored")),
                ],
            })
        }
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let s: Arc<str> = "big \"orders\"".into();
        let b = build(&s, vec![rec(0x16B3748, 0), rec(0x16B3A10, 1)], None, &Body);
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v["strategy"], "big \"orders\"");
        assert_eq!(v["batch"]["id"], b.id.as_str());
        assert_eq!(v["batch"]["size"], 2);
        assert_eq!(v["batch"]["first_lsn"], "0/16B3748");
        assert_eq!(v["batch"]["last_lsn"], "0/16B3A10");
        assert_eq!(v["records"][1]["id"], "0/16B3A10:1");
        assert_eq!(v["source"], "erp");
        assert!(
            v["records"].is_array(),
            "body fields cannot replace records"
        );
        assert_eq!(b.headers, vec![("x-size".to_string(), "2".to_string())]);
        assert_eq!(b.first_record_id(), "0/16B3748:0");
        assert_eq!(b.last_record_id(), "0/16B3A10:1");
    }

    #[test]
    fn batch_id_depends_on_strategy_and_records_only() {
        let s: Arc<str> = "s".into();
        let a = build(&s, vec![rec(1, 0), rec(1, 1)], Some(Lsn(2)), &NoDecoration);
        let b = build(&s, vec![rec(1, 0), rec(1, 1)], None, &NoDecoration);
        let c = build(&s, vec![rec(1, 0)], None, &NoDecoration);
        let other: Arc<str> = "t".into();
        let d = build(&other, vec![rec(1, 0), rec(1, 1)], None, &NoDecoration);
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_ne!(a.id, d.id);
        assert!(a.id.starts_with("msg_"));
        assert_eq!(a.id.len(), 4 + 43);
    }
}
