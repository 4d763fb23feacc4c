//! Helpers for the replication source's integration tests: a database with
//! a published table, a running [`Source`], and what Postgres reports.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::decode::{Cell, Op, RecordEvent, SourceEvent};
use walhook::lsn::Lsn;
use walhook::source::{AckHandle, Source, SourceError, SourceOptions, SourceState, SourceStatus};

use crate::common::cluster;

/// Generous bound for anything that should take a moment.
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs SQL with psql off the async threads.
pub async fn psql(db: &str, sql: &str) -> String {
    let (db, sql) = (db.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        cluster()
            .psql(&db, &sql)
            .unwrap_or_else(|e| panic!("psql in {db}: {e}\n{sql}"))
    })
    .await
    .expect("psql task")
}

/// The database name at the end of a URL from `fresh_db`.
pub fn db_of(url: &str) -> String {
    url.rsplit('/').next().unwrap_or_default().to_string()
}

/// A fresh database with `items(id int primary key, note text)` published as `pub`.
pub async fn published_db(prefix: &str) -> (String, String) {
    let url = crate::common::fresh_db(prefix);
    let db = db_of(&url);
    psql(
        &db,
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE TABLE unpublished (id bigserial PRIMARY KEY, pad text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
    (url, db)
}

/// A source running in a task.
pub struct Running {
    pub events: mpsc::Receiver<SourceEvent>,
    pub acks: AckHandle,
    pub status: watch::Receiver<SourceStatus>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), SourceError>>,
}

pub fn options(url: &str, slot: &str) -> SourceOptions {
    let mut opts = SourceOptions::new(url, slot, vec!["pub".to_string()]);
    opts.application_name = format!("walhook_test_{slot}");
    opts
}

pub fn spawn(opts: SourceOptions) -> Running {
    let (source, acks, status) = Source::new(opts.clone());
    let (tx, events) = mpsc::channel(opts.channel_capacity);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, shutdown.clone()));
    Running {
        events,
        acks,
        status,
        shutdown,
        task,
    }
}

impl Running {
    /// Waits for `state`, failing early if the source failed instead.
    pub async fn wait_state(&self, state: SourceState) {
        let mut status = self.status.clone();
        let found = tokio::time::timeout(
            WAIT,
            status.wait_for(|s| s.state == state || s.state == SourceState::Failed),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for state {state:?}: {:?}",
                *self.status.borrow()
            )
        })
        .expect("status sender dropped")
        .clone();
        assert_eq!(found.state, state, "source state: {found:?}");
    }

    /// The next event, within [`WAIT`].
    pub async fn next(&mut self) -> SourceEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no event within {WAIT:?}; status {:?}",
                    *self.status.borrow()
                )
            })
            .expect("event channel closed")
    }

    /// The next whole transaction: (commit end LSN, its records).
    pub async fn next_transaction(&mut self) -> (Lsn, Lsn, Vec<RecordEvent>) {
        let begin = self.next().await;
        let SourceEvent::Begin { commit_lsn, .. } = begin else {
            panic!("expected Begin, got {begin:?}");
        };
        let mut records = Vec::new();
        loop {
            match self.next().await {
                SourceEvent::Record(r) => records.push(r),
                SourceEvent::Commit {
                    commit_lsn: c,
                    end_lsn,
                } => {
                    assert_eq!(c, commit_lsn, "Commit does not match Begin");
                    return (commit_lsn, end_lsn, records);
                }
                other => panic!("unexpected event inside a transaction: {other:?}"),
            }
        }
    }

    /// Stops the source and returns what `run` returned.
    pub async fn stop(self) -> Result<(), SourceError> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source did not stop")
            .expect("source task panicked")
    }
}

/// The text of column `name` in a record's new image.
pub fn new_value(record: &RecordEvent, name: &str) -> Option<String> {
    let i = record.relation.column_index(name)?;
    match record.new.as_ref()?.0.get(i)? {
        Cell::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Asserts an insert into public.items with this id.
pub fn assert_insert(record: &RecordEvent, id: i32) {
    assert_eq!(record.op, Op::Insert);
    assert_eq!(record.relation.schema, "public");
    assert_eq!(record.relation.name, "items");
    assert_eq!(
        new_value(record, "id").as_deref(),
        Some(id.to_string().as_str())
    );
}

/// The slot's confirmed_flush_lsn, if the slot exists.
pub async fn confirmed_flush(db: &str, slot: &str) -> Option<Lsn> {
    let out = psql(
        db,
        &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await;
    out.trim().parse().ok()
}

/// The PID of the walsender holding the slot, if any.
pub async fn active_pid(db: &str, slot: &str) -> Option<i32> {
    let out = psql(
        db,
        &format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    )
    .await;
    out.trim().parse().ok()
}

pub async fn current_wal_lsn(db: &str) -> Lsn {
    psql(db, "SELECT pg_current_wal_lsn()")
        .await
        .trim()
        .parse()
        .expect("pg_current_wal_lsn")
}

/// Waits until the slot's confirmed_flush_lsn reaches `at_least`.
pub async fn wait_confirmed(db: &str, slot: &str, at_least: Lsn) {
    crate::common::wait_until(
        WAIT,
        &format!("confirmed_flush_lsn of {slot} >= {at_least}"),
        || async {
            confirmed_flush(db, slot)
                .await
                .is_some_and(|c| c >= at_least)
        },
    )
    .await;
}
