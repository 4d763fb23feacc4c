//! The replication sub-protocol as pure functions: CopyData payloads
//! (XLogData, keepalive, standby status), command text with quoting, and
//! the rows replication commands return.
//!
//! Layouts (big-endian, times in µs since 2000-01-01):
//! - XLogData `'w'` start:u64 walEnd:u64 sendTime:i64 data…
//! - keepalive `'k'` walEnd:u64 sendTime:i64 reply:u8
//! - standby status `'r'` write:u64 flush:u64 apply:u64 clientTime:i64 reply:u8 (34 bytes)

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;
use crate::pg::{quote_ident, quote_literal};

/// Malformed replication protocol input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WireError(pub(crate) String);

/// A server → client CopyData payload during streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CopyMessage {
    XLogData(XLogData),
    Keepalive(Keepalive),
}

/// One pgoutput message with its WAL header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct XLogData {
    /// Zero for messages that are not the last write of a change (Relation,
    /// Type): never use it as a checkpoint.
    pub(crate) start: Lsn,
    pub(crate) wal_end: Lsn,
    send_time: i64,
    /// The pgoutput message: a zero-copy slice of the received frame.
    pub(crate) data: Bytes,
}

/// Primary keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    /// Everything before this position has been decoded and sent.
    pub(crate) wal_end: Lsn,
    pub(crate) send_time: i64,
    /// The server wants a standby status now.
    pub(crate) reply_requested: bool,
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Parses a CopyData payload received while streaming.
pub(crate) fn parse_copy_data(data: Bytes) -> Result<CopyMessage, WireError> {
    let short = |what: &str, need: usize| {
        WireError(format!(
            "{what} message of {} bytes, expected at least {need}",
            data.len()
        ))
    };
    match data.first() {
        Some(b'w') => {
            const HEADER: usize = 1 + 8 + 8 + 8;
            let (Some(start), Some(wal_end), Some(send_time)) =
                (be_u64(&data, 1), be_u64(&data, 9), be_u64(&data, 17))
            else {
                return Err(short("XLogData", HEADER));
            };
            Ok(CopyMessage::XLogData(XLogData {
                start: Lsn(start),
                wal_end: Lsn(wal_end),
                send_time: send_time as i64,
                data: data.slice(HEADER..),
            }))
        }
        Some(b'k') => {
            let (Some(wal_end), Some(send_time), Some(&reply)) =
                (be_u64(&data, 1), be_u64(&data, 9), data.get(17))
            else {
                return Err(short("keepalive", 18));
            };
            Ok(CopyMessage::Keepalive(Keepalive {
                wal_end: Lsn(wal_end),
                send_time: send_time as i64,
                reply_requested: reply != 0,
            }))
        }
        Some(tag) => Err(WireError(format!(
            "unexpected CopyData message type {:?}",
            char::from(*tag)
        ))),
        None => Err(WireError("empty CopyData message".into())),
    }
}

/// A standby status update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StandbyStatus {
    /// Highest position received.
    pub(crate) write: Lsn,
    /// Durable downstream: the server may discard WAL before it.
    pub(crate) flush: Lsn,
    pub(crate) apply: Lsn,
    /// µs since 2000-01-01.
    pub(crate) client_time: i64,
    /// Ask the server to answer with a keepalive at once.
    pub(crate) reply_requested: bool,
}

/// Length of the standby status payload.
pub(crate) const STANDBY_STATUS_LEN: usize = 34;

impl StandbyStatus {
    /// The CopyData payload (34 bytes).
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.reserve(STANDBY_STATUS_LEN);
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.client_time);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// Postgres's rule for slot names (`ReplicationSlotValidateName`).
pub(crate) fn validate_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "slot name {name:?} must be 1 to 63 characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "slot name {name:?} may contain only lower-case letters, digits and underscores"
        ));
    }
    Ok(())
}

/// Publication names must be non-empty identifiers without NUL bytes.
pub(crate) fn validate_publications(names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Err("at least one publication is needed".into());
    }
    for name in names {
        if name.is_empty() || name.contains('\0') {
            return Err(format!("invalid publication name {name:?}"));
        }
    }
    Ok(())
}

/// `START_REPLICATION SLOT "s" LOGICAL X/Y (proto_version '1', publication_names '"a","b"')`,
/// with `, messages 'true'` (PostgreSQL 14+) when logical messages are wanted.
pub(crate) fn start_replication(
    slot: &str,
    start: Lsn,
    publications: &[String],
    messages: bool,
) -> String {
    let names: Vec<String> = publications.iter().map(|p| quote_ident(p)).collect();
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names {}{})",
        quote_ident(slot),
        quote_literal(&names.join(",")),
        if messages { ", messages 'true'" } else { "" }
    )
}

/// Which of these publications exist in the current database.
pub(crate) fn publications_query(publications: &[String]) -> String {
    let list: Vec<String> = publications.iter().map(|p| quote_literal(p)).collect();
    format!(
        "SELECT pubname FROM pg_publication WHERE pubname IN ({})",
        list.join(", ")
    )
}

/// Parses a duration as `SHOW` prints it (`5s`, `1min`, `500ms`, `0`; a
/// bare number is milliseconds, wal_sender_timeout's base unit).
pub(crate) fn parse_pg_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Standby status period: at most min(10 s, wal_sender_timeout / 2), so the
/// walsender never times us out (0 disables its timeout).
pub(crate) fn feedback_interval(wal_sender_timeout: Duration) -> Duration {
    const MAX: Duration = Duration::from_secs(10);
    if wal_sender_timeout.is_zero() {
        MAX
    } else {
        MAX.min(wal_sender_timeout / 2)
    }
}

/// How long the server may stay silent, while we keep asking for replies
/// (every [`feedback_interval`]), before the connection counts as dead:
/// `wal_sender_timeout` itself (at least 5 s), the time after which the
/// server gives up on us too; 60 s when it has no timeout.
pub(crate) fn silence_limit(wal_sender_timeout: Duration) -> Duration {
    if wal_sender_timeout.is_zero() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5).max(wal_sender_timeout)
    }
}

/// How long data sent on the replication socket may stay unacknowledged
/// before the kernel gives the connection up (`TCP_USER_TIMEOUT`): half
/// of `wal_sender_timeout` (5–30 s). Standby status goes out at least
/// every [`feedback_interval`], so a silent partition is noticed within
/// `wal_sender_timeout`, and a healed link is used by a new connection
/// instead of waiting for TCP's backed-off retransmissions.
pub(crate) fn user_timeout(wal_sender_timeout: Duration) -> Duration {
    if wal_sender_timeout.is_zero() {
        Duration::from_secs(30)
    } else {
        (wal_sender_timeout / 2).clamp(Duration::from_secs(5), Duration::from_secs(30))
    }
}

/// The text rows of a simple query (one shape for every connection).
pub(crate) use crate::pg::TextRows as Rows;

fn require<'a>(rows: &'a Rows, row: usize, column: &str) -> Result<&'a str, WireError> {
    rows.get(row, column)
        .ok_or_else(|| WireError(format!("missing column {column} in the server's answer")))
}

/// IDENTIFY_SYSTEM's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemInfo {
    pub(crate) system_id: String,
    pub(crate) timeline: u32,
    pub(crate) xlog_pos: Lsn,
    pub(crate) dbname: Option<String>,
}

impl SystemInfo {
    pub(crate) fn from_rows(rows: &Rows) -> Result<Self, WireError> {
        let bad = |what: &str| WireError(format!("IDENTIFY_SYSTEM returned an invalid {what}"));
        Ok(SystemInfo {
            system_id: require(rows, 0, "systemid")?.to_string(),
            timeline: require(rows, 0, "timeline")?
                .parse()
                .map_err(|_| bad("timeline"))?,
            xlog_pos: require(rows, 0, "xlogpos")?
                .parse()
                .map_err(|_| bad("xlogpos"))?,
            dbname: rows.get(0, "dbname").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, end: u64, time: i64, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn xlogdata_parses_with_zero_copy_payload() {
        let frame = xlogdata(0x16B3748, 0x16B3800, 42, b"B\x00\x01");
        let CopyMessage::XLogData(x) = parse_copy_data(frame.clone()).unwrap() else {
            panic!("not XLogData")
        };
        assert_eq!(x.start, Lsn(0x16B3748));
        assert_eq!(x.wal_end, Lsn(0x16B3800));
        assert_eq!(x.send_time, 42);
        assert_eq!(&x.data[..], b"B\x00\x01");
        // Same allocation as the frame.
        assert_eq!(x.data.as_ptr(), frame[25..].as_ptr());
        // An empty payload is allowed (the decoder judges it).
        let empty = parse_copy_data(xlogdata(1, 2, 3, b"")).unwrap();
        assert!(matches!(empty, CopyMessage::XLogData(x) if x.data.is_empty()));
    }

    #[test]
    fn keepalive_parses() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x1_0000_0010);
        b.put_i64(7);
        b.put_u8(1);
        assert_eq!(
            parse_copy_data(b.freeze()).unwrap(),
            CopyMessage::Keepalive(Keepalive {
                wal_end: Lsn(0x1_0000_0010),
                send_time: 7,
                reply_requested: true
            })
        );
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_panic() {
        let full = xlogdata(1, 2, 3, b"");
        for n in 0..full.len() {
            assert!(parse_copy_data(full.slice(..n)).is_err(), "len {n}");
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_bytes(0, 17);
        let k = k.freeze();
        for n in 0..k.len() {
            assert!(parse_copy_data(k.slice(..n)).is_err(), "len {n}");
        }
        assert!(parse_copy_data(Bytes::from_static(b"z123")).is_err());
    }

    #[test]
    fn standby_status_is_34_bytes() {
        let mut out = BytesMut::new();
        StandbyStatus {
            write: Lsn(0x0102030405060708),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: -1,
            reply_requested: true,
        }
        .encode(&mut out);
        assert_eq!(out.len(), STANDBY_STATUS_LEN);
        assert_eq!(out[0], b'r');
        assert_eq!(&out[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[9..17], &2u64.to_be_bytes());
        assert_eq!(&out[17..25], &3u64.to_be_bytes());
        assert_eq!(&out[25..33], &[0xff; 8]);
        assert_eq!(out[33], 1);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            start_replication(
                "s_1",
                Lsn(0x16B3748),
                &["a".into(), "b\"c".into(), "d'e".into()],
                false
            ),
            r#"START_REPLICATION SLOT "s_1" LOGICAL 0/16B3748 (proto_version '1', publication_names '"a","b""c","d''e"')"#
        );
        assert_eq!(
            start_replication("s", Lsn(1), &["a".into()], true),
            r#"START_REPLICATION SLOT "s" LOGICAL 0/1 (proto_version '1', publication_names '"a"', messages 'true')"#
        );
        assert_eq!(
            publications_query(&["a".into(), "o'k".into()]),
            "SELECT pubname FROM pg_publication WHERE pubname IN ('a', 'o''k')"
        );
    }

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(validate_slot_name("walhook_1").is_ok());
        assert!(validate_slot_name("").is_err());
        assert!(validate_slot_name("Walhook").is_err());
        assert!(validate_slot_name("a-b").is_err());
        assert!(validate_slot_name("x'; DROP").is_err());
        assert!(validate_slot_name(&"a".repeat(64)).is_err());
        assert!(validate_publications(&[]).is_err());
        assert!(validate_publications(&["a\0".into()]).is_err());
        assert!(validate_publications(&["Mixed Case".into()]).is_ok());
    }

    #[test]
    fn durations_as_show_prints_them() {
        assert_eq!(parse_pg_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_pg_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_pg_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_pg_duration("5 weeks"), None);
        assert_eq!(parse_pg_duration(""), None);
        assert_eq!(
            feedback_interval(Duration::from_secs(5)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            feedback_interval(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
        assert_eq!(feedback_interval(Duration::ZERO), Duration::from_secs(10));
        // A silent server is given up on when the server gives up on us.
        assert_eq!(
            silence_limit(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            silence_limit(Duration::from_secs(1)),
            Duration::from_secs(5)
        );
        assert_eq!(silence_limit(Duration::ZERO), Duration::from_secs(60));
        assert_eq!(
            user_timeout(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            user_timeout(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            user_timeout(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }

    fn rows(columns: &[&str], values: &[Option<&str>]) -> Rows {
        Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: vec![values.iter().map(|v| v.map(str::to_string)).collect()],
        }
    }

    #[test]
    fn identify_system_rows() {
        let r = rows(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[Some("7312"), Some("1"), Some("0/16B3748"), Some("app")],
        );
        let s = SystemInfo::from_rows(&r).unwrap();
        assert_eq!(s.xlog_pos, Lsn(0x16B3748));
        assert_eq!(s.dbname.as_deref(), Some("app"));
        assert!(SystemInfo::from_rows(&Rows::default()).is_err());
    }
}
