//! walhook's replication [`Source`] running in a task of the test, on a
//! database with a published table.

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walhook::decode::{Cell, Op, RecordEvent, SourceEvent};
use walhook::lsn::Lsn;
use walhook::source::{AckHandle, Source, SourceError, SourceOptions, SourceState, SourceStatus};

use super::{fresh_db, Db, WAIT};

/// Creates `items(id int primary key, note text)`, published as `pub`, and
/// an unpublished table to write WAL with.
pub(crate) async fn publish_items(db: &Db) {
    db.psql(
        "CREATE TABLE items (id int PRIMARY KEY, note text);
         CREATE TABLE unpublished (id bigserial PRIMARY KEY, pad text);
         CREATE PUBLICATION pub FOR TABLE items;",
    )
    .await;
}

/// A fresh database on the shared cluster with [`publish_items`] done.
pub(crate) async fn items_db(prefix: &str) -> Db {
    let db = fresh_db(prefix).await;
    publish_items(&db).await;
    db
}

/// Options for publication `pub` on this URL and slot.
pub(crate) fn options(url: &str, slot: &str) -> SourceOptions {
    let mut opts = SourceOptions::new(url, slot, vec!["pub".to_string()]);
    opts.application_name = format!("walhook_test_{slot}");
    opts
}

/// A source running in a task.
pub(crate) struct Running {
    pub(crate) events: mpsc::Receiver<SourceEvent>,
    pub(crate) acks: AckHandle,
    pub(crate) status: watch::Receiver<SourceStatus>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), SourceError>>,
}

pub(crate) fn spawn(opts: SourceOptions) -> Running {
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
    pub(crate) async fn wait_state(&self, state: SourceState) {
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
    pub(crate) async fn next(&mut self) -> SourceEvent {
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

    /// The next whole transaction: (commit LSN, commit end LSN, its records).
    pub(crate) async fn next_transaction(&mut self) -> (Lsn, Lsn, Vec<RecordEvent>) {
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
    pub(crate) async fn stop(self) -> Result<(), SourceError> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("source did not stop")
            .expect("source task panicked")
    }
}

/// The text of column `name` in a record's new image.
pub(crate) fn new_value(record: &RecordEvent, name: &str) -> Option<String> {
    let i = record.relation.column_index(name)?;
    match record.new.as_ref()?.0.get(i)? {
        Cell::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Asserts an insert into public.items with this id.
pub(crate) fn assert_insert(record: &RecordEvent, id: i32) {
    assert_eq!(record.op, Op::Insert);
    assert_eq!(record.relation.schema, "public");
    assert_eq!(record.relation.name, "items");
    assert_eq!(
        new_value(record, "id").as_deref(),
        Some(id.to_string().as_str())
    );
}
