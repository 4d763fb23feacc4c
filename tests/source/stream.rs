//! The replication source against a real throwaway PostgreSQL: slot
//! creation, streaming, acknowledgements, quiet slots, backpressure, and a
//! second instance waiting as a standby.

use std::time::Duration;

use walhook::decode::SourceEvent;
use walhook::source::{Disposition, SourceState};

use crate::support::source::{assert_insert, items_db, new_value, options, spawn};
use crate::support::{wait_until, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_slot_streams_an_insert_and_confirms_the_ack() {
    let db = items_db("src_stream").await;
    let url = db.url();
    let mut src = spawn(options(&url, "s_insert"));
    src.wait_state(SourceState::Streaming).await;

    let plugin = db.psql("SELECT plugin || ' ' || slot_type || ' ' || database FROM pg_replication_slots WHERE slot_name = 's_insert'",
    )
    .await;
    assert_eq!(plugin, format!("pgoutput logical {}", db.name()));

    db.psql("INSERT INTO items VALUES (1, 'first'), (2, 'second')")
        .await;
    let (commit_lsn, end_lsn, records) = src.next_transaction().await;
    assert_eq!(records.len(), 2);
    assert_insert(&records[0], 1);
    assert_insert(&records[1], 2);
    assert_eq!(new_value(&records[0], "note").as_deref(), Some("first"));
    assert_eq!(records[1].id(), format!("{commit_lsn}:1"));
    assert!(end_lsn > commit_lsn);

    // Not acknowledged yet: the slot must not move past the transaction.
    assert!(db.confirmed_flush("s_insert").await.unwrap() < end_lsn);
    src.acks.ack(end_lsn);
    db.wait_confirmed("s_insert", end_lsn).await;
    assert!(src.status.borrow().acked_lsn >= end_lsn);

    assert!(src.stop().await.is_ok());
    // A clean stop releases the slot.
    assert_eq!(db.active_pid("s_insert").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_slot_keeps_advancing_while_an_unpublished_table_writes() {
    let db = items_db("src_quiet").await;
    let url = db.url();
    let mut src = spawn(options(&url, "s_quiet"));
    src.wait_state(SourceState::Streaming).await;
    let pid = db.active_pid("s_quiet").await.expect("walsender pid");

    // ~15 s of commits to a table outside the publication (3 × wal_sender_timeout).
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        writer_db
            .psql(
                "DO $$ BEGIN
               FOR i IN 1..150 LOOP
                 INSERT INTO unpublished (pad) VALUES (repeat('x', 100));
                 COMMIT;
                 PERFORM pg_sleep(0.1);
               END LOOP;
             END $$;",
            )
            .await
    });

    let mut rounds = 0;
    let mut last = db.confirmed_flush("s_quiet").await.unwrap();
    while !writer.is_finished() {
        let point = db.current_wal_lsn().await;
        db.wait_confirmed("s_quiet", point).await;
        let now = db.confirmed_flush("s_quiet").await.unwrap();
        assert!(
            now >= last,
            "confirmed_flush_lsn moved backwards: {last} → {now}"
        );
        last = now;
        rounds += 1;
    }
    writer.await.unwrap();
    let end = db.current_wal_lsn().await;
    db.wait_confirmed("s_quiet", end).await;
    assert!(rounds >= 3, "only {rounds} rounds while the writer ran");

    // The same walsender all along: never timed out, never reconnected.
    assert_eq!(db.active_pid("s_quiet").await, Some(pid));
    assert_eq!(src.status.borrow().state, SourceState::Streaming);
    assert!(
        src.status.borrow().last_error.is_none(),
        "{:?}",
        src.status.borrow()
    );
    assert!(
        src.events.try_recv().is_err(),
        "unpublished changes were delivered"
    );
    src.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_stops_reading_but_keeps_the_walsender_alive() {
    let db = items_db("src_backpressure").await;
    let url = db.url();
    let mut opts = options(&url, "s_full");
    opts.channel_capacity = 1;
    let app = opts.application_name.clone();
    let mut src = spawn(opts);
    src.wait_state(SourceState::Streaming).await;
    let pid = db.active_pid("s_full").await.expect("walsender pid");

    db.psql("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 200) g")
        .await;
    // Nobody reads the channel. Wait until the walsender has lived through
    // more than wal_sender_timeout (5 s) with a fresh reply from us.
    wait_until(Duration::from_secs(40), "7 s of a blocked consumer with fresh replies", || async {
        db.psql(&format!(
                "SELECT now() - backend_start > interval '7 s' AND now() - reply_time < interval '3 s'
                 FROM pg_stat_replication WHERE application_name = '{app}'"
            ),
        )
        .await
            == "t"
    })
    .await;
    assert_eq!(db.active_pid("s_full").await, Some(pid));

    // Everything arrives once the consumer reads.
    let (_, end_lsn, records) = src.next_transaction().await;
    assert_eq!(records.len(), 200);
    for (i, r) in records.iter().enumerate() {
        assert_insert(r, i as i32 + 1);
        assert_eq!(r.index, i as u32);
    }
    src.acks.ack(end_lsn);
    db.wait_confirmed("s_full", end_lsn).await;
    assert_eq!(db.active_pid("s_full").await, Some(pid));
    src.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_source_on_the_same_slot_waits_as_standby_then_takes_over() {
    let db = items_db("src_standby").await;
    let url = db.url();
    let mut first = spawn(options(&url, "s_shared"));
    first.wait_state(SourceState::Streaming).await;

    let mut second = spawn(options(&url, "s_shared"));
    second.wait_state(SourceState::Standby).await;
    let error = second
        .status
        .borrow()
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(error.contains("is active for PID"), "{error}");
    // Every state the standby goes through until it streams.
    let mut watcher = second.status.clone();
    let states = tokio::spawn(async move {
        let mut seen = Vec::new();
        while watcher.changed().await.is_ok() {
            let state = watcher.borrow_and_update().state;
            seen.push(state);
            if state == SourceState::Streaming {
                break;
            }
        }
        seen
    });

    db.psql("INSERT INTO items VALUES (1, 'to the first')")
        .await;
    let (_, end_lsn, records) = first.next_transaction().await;
    assert_insert(&records[0], 1);
    first.acks.ack(end_lsn);
    db.wait_confirmed("s_shared", end_lsn).await;
    // Still standby: it never crashed and never stole the slot.
    assert_eq!(second.status.borrow().state, SourceState::Standby);
    assert!(!second.task.is_finished());

    first.stop().await.unwrap();
    second.wait_state(SourceState::Streaming).await;
    // It waited as a standby without flapping through Connecting.
    let states = states.await.unwrap();
    assert!(!states.contains(&SourceState::Connecting), "{states:?}");
    assert_eq!(states.last(), Some(&SourceState::Streaming));
    db.psql("INSERT INTO items VALUES (2, 'to the second')")
        .await;
    let (_, _, records) = second.next_transaction().await;
    assert_eq!(
        records.len(),
        1,
        "the acked transaction was delivered again"
    );
    assert_insert(&records[0], 2);
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_dropped_after_streaming_is_fatal_and_never_recreated() {
    let db = items_db("src_dropped").await;
    let url = db.url();
    let src = spawn(options(&url, "s_dropped"));
    src.wait_state(SourceState::Streaming).await;

    // Kick the walsender and drop the slot before the source gets it back.
    db.psql(
        "DO $$ BEGIN
           FOR i IN 1..500 LOOP
             PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
               WHERE slot_name = 's_dropped' AND active_pid IS NOT NULL;
             BEGIN
               PERFORM pg_drop_replication_slot('s_dropped');
               RETURN;
             EXCEPTION WHEN object_in_use THEN
               PERFORM pg_sleep(0.01);
             END;
           END LOOP;
           RAISE 'could not drop the slot';
         END $$;",
    )
    .await;

    src.wait_state(SourceState::Failed).await;
    let err = tokio::time::timeout(WAIT, src.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.disposition(), Disposition::Fatal);
    assert!(
        text.contains("s_dropped") && text.contains("never recreates"),
        "{text}"
    );
    assert_eq!(
        db.confirmed_flush("s_dropped").await,
        None,
        "the slot was recreated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_slot_or_publication_is_a_clear_fatal_error() {
    let url = items_db("src_missing").await.url();
    let mut opts = options(&url, "s_absent");
    opts.create_slot = false;
    let src = spawn(opts);
    let err = src.task.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("\"s_absent\" does not exist"),
        "{err}"
    );
    assert_eq!(err.disposition(), Disposition::Fatal);

    let mut opts = options(&url, "s_nopub");
    opts.publications = vec!["no_such_pub".into()];
    let src = spawn(opts);
    let err = src.task.await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains("publication \"no_such_pub\" does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transactional_messages_and_updates_arrive() {
    let db = items_db("src_msgs").await;
    let url = db.url();
    let mut src = spawn(options(&url, "s_msgs"));
    src.wait_state(SourceState::Streaming).await;
    db.psql("INSERT INTO items VALUES (7, 'a'); UPDATE items SET note = 'b' WHERE id = 7; DELETE FROM items WHERE id = 7;").await;
    let mut ops = Vec::new();
    for _ in 0..3 {
        let (_, end, records) = src.next_transaction().await;
        ops.extend(records.iter().map(|r| r.op.as_str()));
        src.acks.ack(end);
    }
    assert_eq!(ops, ["insert", "update", "delete"]);
    // proto_version 1 without `messages`: logical messages are not sent, and
    // nothing else is pending.
    db.psql("SELECT pg_logical_emit_message(false, 'walhook', 'x')")
        .await;
    db.psql("INSERT INTO items VALUES (8, 'after')").await;
    match src.next().await {
        SourceEvent::Begin { .. } => {}
        other => panic!("expected the next transaction, got {other:?}"),
    }
    src.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_cut_by_a_reconnect_continues_without_duplicates_or_gaps() {
    let db = items_db("src_resume").await;
    let url = db.url();
    let mut opts = options(&url, "s_resume");
    opts.channel_capacity = 1;
    let mut src = spawn(opts);
    src.wait_state(SourceState::Streaming).await;
    let pid = db.active_pid("s_resume").await.expect("walsender pid");

    db.psql("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(0, 199) g")
        .await;
    let SourceEvent::Begin { commit_lsn, .. } = src.next().await else {
        panic!("expected Begin");
    };
    let mut indexes = Vec::new();
    for _ in 0..10 {
        let SourceEvent::Record(r) = src.next().await else {
            panic!("expected a record");
        };
        indexes.push(r.index);
    }

    // Kill the walsender while the transaction is half-way downstream.
    db.psql(&format!("SELECT pg_terminate_backend({pid})"))
        .await;
    wait_until(WAIT, "a new walsender on the slot", || async {
        db.active_pid("s_resume").await.is_some_and(|p| p != pid)
    })
    .await;

    loop {
        match src.next().await {
            SourceEvent::Record(r) => {
                assert_eq!(r.commit_lsn, commit_lsn);
                indexes.push(r.index);
            }
            SourceEvent::Commit {
                commit_lsn: c,
                end_lsn,
            } => {
                assert_eq!(c, commit_lsn);
                src.acks.ack(end_lsn);
                break;
            }
            other => panic!("unexpected {other:?} (a second Begin means a duplicate)"),
        }
    }
    assert_eq!(indexes, (0..200).collect::<Vec<u32>>());
    // The connection loss was shown, and cleared by the reconnect.
    assert!(
        src.status.borrow().recovered_at.is_some(),
        "no reconnect happened"
    );
    src.stop().await.unwrap();
}
