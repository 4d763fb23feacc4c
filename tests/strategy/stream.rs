//! Filters and routing on real changes: a real replication stream from the
//! throwaway cluster, through the router, onto each strategy's queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walhook::batch::WorkItem;
use walhook::checkpoint::Checkpoint;
use walhook::config::Config;
use walhook::lsn::Lsn;
use walhook::source::SourceState;
use walhook::strategy::{CompiledStrategy, Route, Router};

use crate::support::source::{options, spawn};
use crate::support::{fresh_db, wait_until};

const STRATEGIES: &str = r#"
[[strategies]]
name = "big"
table = "orders"
endpoint = "a"
on_insert = "new.amount > 100"

[[strategies]]
name = "open"
table = "orders"
endpoint = "a"
on_insert = 'new.status == "open"'
record = { id = { expr = "row.id" }, amount = { expr = "row.amount" } }

[[strategies]]
name = "status"
table = "tickets"
endpoint = "a"
on_update = 'changed("status")'
"#;

fn config() -> Config {
    let text = format!(
        r#"
[source]
url = "postgres://unused@127.0.0.1/x"
publication = "pub"

[endpoints.a]
url = "http://127.0.0.1:9000/a"
{STRATEGIES}"#
    );
    Config::parse(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// What one queue received: each record's `new` exactly as sent, and `end`.
fn drain(rx: &mut mpsc::Receiver<WorkItem>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(match item {
            WorkItem::Record(r) => {
                #[derive(serde::Deserialize)]
                struct Record<'a> {
                    #[serde(borrow)]
                    new: &'a serde_json::value::RawValue,
                }
                let record: Record<'_> = serde_json::from_slice(&r.json).expect("record JSON");
                record.new.get().to_string()
            }
            WorkItem::TxEnd { .. } => "end".to_string(),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_changes_reach_only_the_strategies_whose_filters_pass() {
    let db = fresh_db("strategy_stream").await;
    let url = db.url();
    db.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, amount numeric, status text);
         CREATE TABLE tickets (id int PRIMARY KEY, status text, note text, doc text);
         ALTER TABLE tickets REPLICA IDENTITY FULL;
         ALTER TABLE tickets ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO tickets VALUES (1, 'new', 'n', repeat('x', 100000));
         CREATE PUBLICATION pub FOR TABLE orders, tickets;",
    )
    .await;
    let cfg = config();
    let src = spawn(options(&url, "s_strategy"));
    src.wait_state(SourceState::Streaming).await;

    let acks = src.acks.clone();
    let checkpoint = Arc::new(Checkpoint::new(3, Lsn::ZERO, move |lsn| acks.ack(lsn)));
    let mut routes = Vec::new();
    let mut queues = Vec::new();
    for i in 0..3 {
        let (tx, rx) = mpsc::channel(100);
        let strategy = CompiledStrategy::compile(&cfg, i).unwrap_or_else(|e| panic!("{e}"));
        routes.push(Route {
            strategy: Arc::new(strategy),
            tx,
        });
        queues.push(rx);
    }
    let router = Router::new(routes, checkpoint.clone());
    let stop = CancellationToken::new();
    // The router reads the source's events (moved out of the helper).
    let mut src = src;
    let events = std::mem::replace(&mut src.events, mpsc::channel(1).1);
    let router_task = tokio::spawn(router.run(events, stop.clone()));

    db.psql(
        "INSERT INTO orders VALUES (1, 50, 'open'), (2, 150.25, 'open'), (3, NULL, 'done'),
                                   (4, 12345678901234567890.5, NULL);
         INSERT INTO orders VALUES (5, 1, 'done');
         UPDATE orders SET status = 'x';
         DELETE FROM orders WHERE id = 1;
         UPDATE tickets SET note = 'only the note';
         UPDATE tickets SET status = 'open';",
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the last transaction to be routed",
        || {
            let checkpoint = checkpoint.clone();
            async move {
                checkpoint
                    .position(2)
                    .is_some_and(|p| p.queued_through > Lsn::ZERO)
            }
        },
    )
    .await;

    assert_eq!(
        drain(&mut queues[0]),
        [
            r#"{"id":2,"amount":150.25,"status":"open"}"#,
            r#"{"id":4,"amount":12345678901234567890.5,"status":null}"#,
            "end"
        ]
    );
    assert_eq!(
        drain(&mut queues[1]),
        [
            r#"{"amount":50,"id":1}"#,
            r#"{"amount":150.25,"id":2}"#,
            "end"
        ]
    );
    let tickets = drain(&mut queues[2]);
    assert_eq!(tickets.len(), 2, "only the status change: {tickets:?}");
    assert!(tickets[0].contains(r#""status":"open""#), "{tickets:?}");

    // Each strategy delivers what it got: the acknowledged position then
    // passes the later transactions that matched nothing (insert 5, the
    // updates and the delete on orders, the note-only ticket update).
    let queued = |i| checkpoint.position(i).expect("strategy").queued_through;
    let (first, last) = (queued(0), queued(2));
    assert_eq!(queued(1), first);
    assert!(last > first);
    checkpoint.delivered(0, first);
    checkpoint.delivered(1, first);
    assert_eq!(
        checkpoint.acked(),
        Lsn::ZERO,
        "strategy status has not delivered its record yet"
    );
    checkpoint.delivered(2, last);
    assert_eq!(checkpoint.acked(), last);
    db.wait_confirmed("s_strategy", last).await;

    stop.cancel();
    router_task.await.expect("router task").expect("router");
    assert!(src.stop().await.is_ok());
}
