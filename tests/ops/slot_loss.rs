//! A lost slot is never silently recreated (issue 24, scope 5): walhook
//! records the slot it streams from (`walhook.slots`) and, when that slot
//! is missing, invalidated or replaced by one it did not feed, `run` and
//! `check` say what happened, which changes are lost and the fix, and exit
//! 2 without creating a slot. A kill -9 and restart with a writer running
//! is not a loss. Through the built binary, as README's least-privileged
//! role after the administrator ran the printed setup SQL.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use walhook::lsn::Lsn;

use crate::support::cluster::{add_hba_lines, exclusive_cluster};
use crate::support::receiver::new_ids;
use crate::support::walhook::{admin_get, admin_runs_printed_setup, base_config_with_admin};
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

/// README's role (step 2): LOGIN, REPLICATION, SELECT on the table.
async fn least_privileged_role(db: &Db, role: &str, hba: bool) {
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw-{role}';
         GRANT SELECT ON public.orders TO {role};"
    ))
    .await;
    if hba {
        add_hba_lines(&[
            &format!("host all         {role} 127.0.0.1/32 scram-sha-256"),
            &format!("host replication {role} 127.0.0.1/32 scram-sha-256"),
        ])
        .await;
    }
}

/// One strategy on `public.orders` sending every insert to `receiver`; the
/// admin server on `port`.
fn config(url: &str, slot: &str, port: u16, receiver: &Receiver, extra: &str) -> String {
    format!(
        "{}[endpoints.hook]\nurl = \"{}\"\n{extra}\n\n[[strategies]]\nname = \"orders\"\n\
         table = \"public.orders\"\nendpoint = \"hook\"\non_insert = \"true\"\nlinger = \"10ms\"\n",
        base_config_with_admin(url, slot, slot, port),
        receiver.url("/hook"),
    )
}

/// A database with `public.orders`, the role, and the printed setup SQL
/// run by the administrator; the config the role runs with (admin server
/// on `port`).
async fn attached(
    db: &Db,
    slot: &str,
    (port, receiver): (u16, &Receiver),
    extra: &str,
    hba: bool,
) -> String {
    db.psql("CREATE TABLE public.orders (id bigint PRIMARY KEY, note text)")
        .await;
    let role = format!("{slot}_app");
    least_privileged_role(db, &role, hba).await;
    let url = db.url_as(&role, &format!("pw-{role}"));
    let config = config(&url, slot, port, receiver, extra);
    admin_runs_printed_setup(db, &config).await;
    config
}

/// Streams rows 1..=10 through walhook and stops it with SIGTERM.
async fn deliver_ten_and_stop(db: &Db, slot: &str, config: &str, receiver: &Receiver) {
    let mut walhook = Walhook::run(config).spawn();
    walhook.wait_streaming(db, slot).await;
    db.psql("INSERT INTO public.orders SELECT g, 'before' FROM generate_series(1, 10) g")
        .await;
    receiver.wait_accepted_records(10, WAIT).await;
    walhook.stop().await;
}

/// The position walhook recorded for `slot`.
async fn recorded(db: &Db, slot: &str) -> Lsn {
    db.psql(&format!(
        "SELECT confirmed_lsn FROM walhook.slots WHERE slot_name = '{slot}'"
    ))
    .await
    .parse()
    .expect("a recorded position in walhook.slots")
}

async fn slot_count(db: &Db, slot: &str) -> String {
    db.psql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .await
}

/// `walhook check` exits 2 with an error finding naming the loss.
async fn check_refuses(config: &str, says: &str) {
    let out = Walhook::command(&["check", "--no-network", "-c", "config.toml"])
        .config(config)
        .output()
        .await;
    assert_eq!(out.code(), Some(2), "check:\n{}{}", out.stdout, out.stderr);
    let finding = out
        .stdout
        .lines()
        .find(|l| l.starts_with("error slot_loss:"))
        .unwrap_or_else(|| panic!("no slot_loss finding:\n{}", out.stdout));
    assert!(finding.contains(says), "{finding}");
    assert!(finding.contains("on_slot_lost = \"resync\""), "{finding}");
}

/// Today's silent loss, reproduced: 100 rows committed while walhook was
/// stopped and its slot dropped must not be skipped by a new slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_walhook_was_stopped_is_refused_at_start() {
    let db = fresh_db("sl_dropped").await;
    let receiver = Receiver::start().await;
    let config = attached(&db, "sl_dropped", (free_port(), &receiver), "", true).await;
    deliver_ten_and_stop(&db, "sl_dropped", &config, &receiver).await;
    let confirmed = db.confirmed_flush("sl_dropped").await.expect("the slot");

    db.psql("INSERT INTO public.orders SELECT g, 'while stopped' FROM generate_series(11, 110) g")
        .await;
    db.psql("SELECT pg_drop_replication_slot('sl_dropped')")
        .await;

    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let recorded = recorded(&db, "sl_dropped").await;
    assert!(recorded >= confirmed, "{recorded} < {confirmed}");
    assert!(
        out.stderr
            .contains("replication slot \"sl_dropped\" no longer exists")
            && out
                .stderr
                .contains(&format!("the changes committed after {recorded}"))
            && out.stderr.contains("on_slot_lost")
            && out.stderr.contains("walhook teardown"),
        "{}",
        out.stderr
    );
    assert_eq!(slot_count(&db, "sl_dropped").await, "0", "no slot created");
    let mut ids = new_ids(&receiver.accepted());
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<i64>>());
    check_refuses(&config, "no longer exists").await;
}

/// `run --hold-unrecoverable` (the Kubernetes manifest's): refused the
/// same way, but it stays up, alive and unready with the message, until
/// SIGTERM, then exits 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_after_the_refusal_it_answers_unready_with_the_loss_until_sigterm() {
    let db = fresh_db("sl_held").await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let config = attached(&db, "sl_held", (port, &receiver), "", true).await;
    deliver_ten_and_stop(&db, "sl_held", &config, &receiver).await;
    db.psql("SELECT pg_drop_replication_slot('sl_held')").await;

    let mut walhook = Walhook::command(&["run", "-c", "config.toml", "--hold-unrecoverable"])
        .config(&config)
        .env("WALHOOK_LOG", "info")
        .spawn();
    wait_until(WAIT, "/readyz to report the loss", || async {
        matches!(admin_get(port, "/readyz").await,
            Some((503, body)) if body.contains("\"sl_held\" no longer exists"))
    })
    .await;
    assert_eq!(
        admin_get(port, "/healthz").await.map(|(code, _)| code),
        Some(200)
    );
    assert!(walhook.is_running());
    assert_eq!(slot_count(&db, "sl_held").await, "0", "no slot created");
    walhook.signal(libc::SIGTERM);
    let status = walhook.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(2), "{}", walhook.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_and_recreated_by_hand_is_refused_naming_the_lost_range() {
    let db = fresh_db("sl_replaced").await;
    let receiver = Receiver::start().await;
    let config = attached(&db, "sl_replaced", (free_port(), &receiver), "", true).await;
    deliver_ten_and_stop(&db, "sl_replaced", &config, &receiver).await;

    db.psql("INSERT INTO public.orders SELECT g, 'while stopped' FROM generate_series(11, 110) g")
        .await;
    db.psql("SELECT pg_drop_replication_slot('sl_replaced')")
        .await;
    db.psql("SELECT pg_create_logical_replication_slot('sl_replaced', 'pgoutput')")
        .await;
    let replacing = db.confirmed_flush("sl_replaced").await.expect("the slot");

    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let recorded = recorded(&db, "sl_replaced").await;
    assert!(
        out.stderr.contains("is not the slot walhook streamed from")
            && out.stderr.contains(&format!(
                "the changes committed in ({recorded}, {replacing}] are lost"
            )),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.confirmed_flush("sl_replaced").await,
        Some(replacing),
        "walhook did not stream from the replacing slot"
    );
    assert_eq!(new_ids(&receiver.accepted()).len(), 10);
    check_refuses(&config, &format!("({recorded}, {replacing}]")).await;
}

/// The gate's point: Postgres never confirms more than walhook recorded,
/// so a crash is not mistaken for a replaced slot. Five kill -9 while a
/// writer commits single-row transactions (8 batches in flight, so
/// acknowledgements come faster than the record is written); every row
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_with_a_writer_running_is_not_refused() {
    let db = fresh_db("sl_kill").await;
    let receiver = Receiver::start().await;
    receiver.set_latency(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(300),
    );
    let config = attached(&db, "sl_kill", (free_port(), &receiver), "", true).await
        + "ordering = \"key\"\nmax_in_flight = 8\nbatch_size = 5\n";
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "sl_kill").await;

    let (client, connection) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .expect("the writer connects");
    tokio::spawn(connection);
    let written = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (written, stop) = (written.clone(), stop.clone());
        tokio::spawn(async move {
            let mut id = 0i64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                client
                    .execute("INSERT INTO public.orders VALUES ($1, 'writer')", &[&id])
                    .await
                    .expect("insert");
                written.store(id, Ordering::Relaxed);
            }
        })
    };
    for round in 1..=5 {
        let seen = new_ids(&receiver.accepted()).len();
        wait_until(WAIT, "deliveries before the kill", || async {
            new_ids(&receiver.accepted()).len() >= seen + 20
        })
        .await;
        walhook.kill9().await;
        walhook = Walhook::run(&config).spawn();
        walhook.wait_streaming(&db, "sl_kill").await;
        assert!(
            !walhook.stderr().contains("lost"),
            "round {round}: {}",
            walhook.stderr()
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let last = written.load(Ordering::Relaxed);
    wait_until(WAIT, "every written row delivered", || async {
        let mut ids = new_ids(&receiver.accepted());
        ids.sort_unstable();
        ids.dedup();
        ids == (1..=last).collect::<Vec<i64>>()
    })
    .await;
    let stderr = walhook.stop().await;
    assert!(!stderr.contains("lost"), "{stderr}");
}

/// With a small max_slot_wal_keep_size and the endpoint down, the server
/// invalidates the slot under a running walhook: it stops (exit 2) naming
/// the loss and the fix, a restart refuses the same way, and the slot is
/// left as it is (nothing dropped or created). On the exclusive cluster:
/// the setting is the whole server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_with_the_endpoint_down_stops_walhook_and_a_restart_refuses() {
    let exclusive = exclusive_cluster().await;
    let db = Db::create(exclusive.cluster(), "sl_invalid").await;
    db.psql("CREATE TABLE unpublished (pad text)").await;
    let receiver = Receiver::start().await;
    receiver.fail_next(1_000_000, 503);
    let config = attached(
        &db,
        "sl_invalid",
        (free_port(), &receiver),
        "retry = { max_attempts = 0, initial = \"50ms\", max = \"200ms\" }",
        false,
    )
    .await;
    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&db, "sl_invalid").await;
    db.psql("INSERT INTO public.orders VALUES (1, 'undeliverable')")
        .await;
    wait_until(WAIT, "the endpoint to refuse the batch", || async {
        receiver.arrivals() >= 1
    })
    .await;
    Db::existing(exclusive.cluster(), "postgres")
        .psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'; SELECT pg_reload_conf();")
        .await;
    wait_until(WAIT, "walhook to stop on the invalidated slot", || {
        let running = walhook.is_running();
        let db = db.clone();
        async move {
            if running {
                db.psql(
                    "INSERT INTO unpublished (pad) SELECT repeat('x', 500) FROM generate_series(1, 3000);
                     SELECT pg_switch_wal();
                     CHECKPOINT;",
                )
                .await;
            }
            !running
        }
    })
    .await;
    let status = walhook.wait_exit(WAIT).await;
    let stderr = walhook.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("replication slot \"sl_invalid\" is")
            && (stderr.contains("wal_status = lost") || stderr.contains("wal_removed"))
            && stderr.contains("can no longer be streamed")
            && stderr.contains("on_slot_lost"),
        "{stderr}"
    );

    let out = Walhook::run(&config).output().await;
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("replication slot \"sl_invalid\" is"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.psql("SELECT count(*) || ' ' || string_agg(wal_status, ',') FROM pg_replication_slots WHERE slot_name = 'sl_invalid'")
            .await,
        "1 lost",
        "the invalidated slot is left as it is, and no other is created"
    );
    check_refuses(&config, "can no longer be streamed").await;
}
