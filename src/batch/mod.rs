//! Batching: records that passed a strategy's filter, grouped by
//! `batch_size`, `max_batch_bytes` and `linger`, serialised once per batch.
//!
//! This file starts with the queue contract between the router (strategy/)
//! and the per-strategy worker (batch/ and delivery/): what travels on a
//! strategy's bounded queue, and how a strategy fills in per-batch headers,
//! query parameters and body fields.
//!
//! Below the contract: `dispatch` (pure rules for which pending records
//! form the next batch: size, bytes, linger, order per group, batches
//! re-formed after a restart, the park lane), `park` (the strategy's
//! parked rows and which may be attempted now) and `payload` (the one writer of the
//! payload's JSON: each record's object, and the sealed [`Batch`] with its
//! id and body, written once into one buffer). The dispatcher uses the
//! payload to seal batches; the payload knows nothing of the dispatcher.

mod dispatch;
pub(crate) mod park;
pub(crate) mod payload;

pub(crate) use dispatch::{BatcherOptions, Dispatcher, Lane, Next, Pushed, Stored};
pub use payload::{build, Batch};

use std::sync::Arc;

use crate::budget::Charge;
use crate::config::RecordShape;
use crate::lsn::Lsn;

/// What the router puts on a strategy's queue, in commit order.
#[derive(Debug)]
pub enum WorkItem {
    /// One record that passed the strategy's filter, already mapped.
    Record(QueuedRecord),
    /// Every record of the transaction ending at `end_lsn` (and of every
    /// earlier one) has been queued. Sent only to strategies that got records
    /// of that transaction; see [`crate::checkpoint`].
    TxEnd { end_lsn: Lsn },
}

/// A mapped record, ready to be placed in a batch's `records` array.
#[derive(Debug)]
pub struct QueuedRecord {
    /// Commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// Position in its transaction, from 0.
    pub index: u32,
    /// Commit time, µs since the Unix epoch (for `commit_to_delivery_seconds`).
    pub commit_time: i64,
    /// The complete JSON object of this record as it appears in `records[]`.
    pub json: Vec<u8>,
    /// Which records it must stay in order with (`ordering`).
    pub group: Group,
    /// Its bytes held against the memory budget until its batch is done.
    pub(crate) charge: Charge,
}

impl QueuedRecord {
    /// A record in the strategy's one group (commit order), holding no budget.
    pub fn new(commit_lsn: Lsn, index: u32, commit_time: i64, json: Vec<u8>) -> QueuedRecord {
        QueuedRecord {
            commit_lsn,
            index,
            commit_time,
            json,
            group: Group::default(),
            charge: Charge::default(),
        }
    }
}

/// The records a record must stay in commit order with. Under `ordering =
/// "commit"` every record is in one group; under `"key"` a group is a hash of
/// the record's key (or `group_by` value): records of one group are sent in
/// commit order and never in two batches in flight at once. A hash collision
/// only orders two keys that need not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// One group.
    Key(u64),
    /// An update that changed the key: ordered with both the old and the new key.
    Keys(u64, u64),
    /// Ordered with every record (a truncate under `ordering = "key"`).
    All,
}

impl Default for Group {
    /// The strategy's one group (`ordering = "commit"`).
    fn default() -> Self {
        Group::Key(0)
    }
}

impl Group {
    /// The keys, one or two (none for [`Group::All`]).
    pub(crate) fn keys(self) -> impl Iterator<Item = u64> {
        let (a, b) = match self {
            Group::Key(a) => (Some(a), None),
            Group::Keys(a, b) => (Some(a), Some(b)),
            Group::All => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// What per-batch expressions can see (`batch.size`, `batch.first_lsn`,
/// `batch.last_lsn`, `strategy`).
#[derive(Debug, Clone, Copy)]
pub struct BatchMeta<'a> {
    pub strategy: &'a str,
    pub(crate) id: &'a str,
    pub size: usize,
    pub(crate) first_lsn: Lsn,
    pub last_lsn: Lsn,
}

/// Per-batch request parts computed from the endpoint's and strategy's
/// `headers`, `query` and `body` templates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoration {
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    /// Extra top-level payload fields, after `records`.
    pub body: Vec<(String, serde_json::Value)>,
}

/// Computes a batch's [`Decoration`]; implemented by the compiled strategy.
pub trait Decorate: Send + Sync + 'static {
    /// An `Err` (an expression failing at send time) names the field, never values.
    fn decorate(&self, meta: &BatchMeta<'_>) -> Result<Decoration, String>;

    /// How the strategy shapes its records (a flat batch says so in
    /// `batch.record_shape`, so receivers and the JSON Schema can tell).
    fn record_shape(&self) -> RecordShape {
        RecordShape::Envelope
    }

    /// Where the endpoint's answers to a batch of these records are kept
    /// (synchronous runs answer with them); `None` = not kept.
    fn replies(&self, _records: &[(Lsn, u32)]) -> Option<Arc<ReplyLog>> {
        None
    }
}

/// The last answer an endpoint gave to each batch, in the order the batches
/// were first attempted: what a synchronous run answers with. A run merged
/// into a live stream watches the LSNs its records went at ([`ReplyLog::watch`]):
/// only batches holding them are logged, and their records delivered are
/// counted per LSN (a run's progress, finer than its chunks).
#[derive(Debug)]
pub struct ReplyLog {
    replies: std::sync::Mutex<Vec<Reply>>,
    /// Keep the answers (sync runs), or only count.
    keep: bool,
    /// Watched LSN → records delivered and dead-lettered at it.
    watched: std::sync::Mutex<Vec<(Lsn, u64, u64)>>,
}

impl Default for ReplyLog {
    fn default() -> Self {
        ReplyLog {
            replies: std::sync::Mutex::default(),
            keep: true,
            watched: std::sync::Mutex::default(),
        }
    }
}

/// An endpoint's answer to one batch (its last attempt).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reply {
    /// The batch (`webhook-id`).
    pub batch_id: String,
    /// The HTTP status; `None` when no response came.
    pub status: Option<u16>,
    /// The response body as text (invalid UTF-8 replaced), at most 64 KiB.
    pub body: String,
    /// The body was longer than 64 KiB and is cut.
    pub truncated: bool,
    /// Why no response came (timeout, connection refused), never a secret.
    pub error: Option<String>,
}

impl ReplyLog {
    /// A log that only counts delivered records (async runs).
    pub(crate) fn counting() -> ReplyLog {
        ReplyLog {
            keep: false,
            ..ReplyLog::default()
        }
    }

    /// Whether answers' bodies are kept.
    pub(crate) fn keeps(&self) -> bool {
        self.keep
    }

    /// Records at `lsn` are the run's: batches holding one are logged.
    pub(crate) fn watch(&self, lsn: Lsn) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((lsn, 0, 0));
    }

    /// Whether a batch of `records` holds one of the watched LSNs.
    pub(crate) fn watches(&self, records: &[(Lsn, u32)]) -> bool {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        records
            .iter()
            .any(|(lsn, _)| watched.iter().any(|(w, _, _)| w == lsn))
    }

    /// Records delivered and dead-lettered at watched `lsn` so far.
    pub(crate) fn ended_at(&self, lsn: Lsn) -> (u64, u64) {
        let watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched
            .iter()
            .find(|(w, _, _)| *w == lsn)
            .map_or((0, 0), |(_, delivered, dead)| (*delivered, *dead))
    }

    /// The batch of `records` was dead-lettered: its watched records count
    /// as failed.
    pub(crate) fn dead_lettered(&self, records: &[(Lsn, u32)]) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for (lsn, _) in records {
            if let Some((_, _, dead)) = watched.iter_mut().find(|(w, _, _)| w == lsn) {
                *dead += 1;
            }
        }
    }

    /// Keeps `reply` as the last answer to the batch of `records`, and
    /// counts its watched records delivered on a 2xx.
    pub(crate) fn record(&self, reply: Reply, records: &[(Lsn, u32)]) {
        if reply.status.is_some_and(|s| (200..300).contains(&s)) {
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            for (lsn, _) in records {
                if let Some((_, n, _)) = watched.iter_mut().find(|(w, _, _)| w == lsn) {
                    *n += 1;
                }
            }
        }
        if !self.keep {
            return;
        }
        let mut replies = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        match replies.iter_mut().find(|r| r.batch_id == reply.batch_id) {
            Some(slot) => *slot = reply,
            None => replies.push(reply),
        }
    }

    /// Every batch's last answer.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A strategy without per-batch templates.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDecoration;

impl Decorate for NoDecoration {
    fn decorate(&self, _meta: &BatchMeta<'_>) -> Result<Decoration, String> {
        Ok(Decoration::default())
    }
}
