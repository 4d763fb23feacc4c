//! Failover slots (PostgreSQL 17+): walhook streams from the primary with
//! `failover = true`; the standby synchronises the slot
//! (`sync_replication_slots`); the primary dies (`-m immediate`), the
//! standby is promoted, and walhook, given both hosts with
//! `target_session_attrs=read-write`, resumes there: every committed row
//! arrives at least once, none is missing.

use walhook::cluster::{ClusterOptions, StopMode};

use super::Pair;
use crate::support::{free_port, poll_until, Receiver, Walhook, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_promotion_walhook_resumes_on_the_new_primary_and_nothing_is_missing() {
    let pair = Pair::start(
        17,
        ClusterOptions::default(),
        ClusterOptions::default().setting("sync_replication_slots", "on"),
    )
    .await;
    let (primary, standby) = (pair.primary_db(), pair.standby_db());
    primary
        .psql(
            "CREATE TABLE orders (id int PRIMARY KEY, amount numeric);
             CREATE PUBLICATION failover FOR TABLE orders;",
        )
        .await;

    let hook = Receiver::start().await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write&connect_timeout=2",
        pair.primary.port(),
        pair.standby.port()
    );
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"failover\"\npublication = \"failover\"\nfailover = true\n\n\
         [admin]\nlisten = \"127.0.0.1:{}\"\n\n[endpoints.hook]\nurl = \"{}\"\n\n\
         [[strategies]]\nname = \"orders\"\ntable = \"public.orders\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\n",
        free_port(),
        hook.url("/hook"),
    );

    // check: one finding per missing setting, each with its fix.
    let check = || async {
        Walhook::command(&["check", "--no-network", "-c", "config.toml"])
            .config(&config)
            .output()
            .await
            .stdout
    };
    let standby_host = format!("127.0.0.1:{}", pair.standby.port());
    let ok_line = format!(
        "ok    failover: standby {standby_host} keeps slot failover: sync_replication_slots and \
         hot_standby_feedback on, primary_slot_name standby_phys, dbname in primary_conninfo"
    );
    let stdout = check().await;
    assert!(stdout.contains(&ok_line), "{stdout}");
    let failover: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warn  failover"))
        .collect();
    assert_eq!(failover.len(), 1, "{stdout}");
    assert!(
        failover[0].ends_with(
            "— fix: ALTER SYSTEM SET synchronized_standby_slots = 'standby_phys'; SELECT pg_reload_conf(); -- on the primary"
        ),
        "{stdout}"
    );
    standby
        .psql("ALTER SYSTEM SET hot_standby_feedback = off; SELECT pg_reload_conf();")
        .await;
    let stdout = check().await;
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        errors,
        [format!(
            "error failover: standby {standby_host}: hot_standby_feedback is off, which slot synchronisation needs — fix: ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf(); -- on the standby"
        )],
        "{stdout}"
    );
    standby
        .psql("ALTER SYSTEM RESET hot_standby_feedback; SELECT pg_reload_conf();")
        .await;
    primary
        .psql("ALTER SYSTEM SET synchronized_standby_slots = 'standby_phys'; SELECT pg_reload_conf();")
        .await;
    let stdout = check().await;
    assert!(
        stdout.contains(&ok_line)
            && !stdout
                .lines()
                .any(|l| l.contains(" failover: ") && !l.starts_with("ok")),
        "{stdout}"
    );

    let mut walhook = Walhook::run(&config).spawn();
    walhook.wait_streaming(&primary, "failover").await;
    assert_eq!(
        primary
            .psql("SELECT failover FROM pg_replication_slots WHERE slot_name = 'failover'")
            .await,
        "t",
        "the slot was created with FAILOVER"
    );

    primary
        .psql("INSERT INTO orders SELECT g, g FROM generate_series(1, 50) g")
        .await;
    let written = primary.current_wal_lsn().await;
    // The standby has every committed row and a synchronised slot.
    let synced = poll_until(WAIT, || async {
        standby
            .psql(&format!(
                "SELECT pg_last_wal_replay_lsn() >= '{written}'
                        AND EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'failover'
                                    AND synced AND NOT temporary)"
            ))
            .await
            == "t"
    })
    .await;
    assert!(
        synced,
        "the standby synchronised the slot:\n{}",
        walhook.stderr()
    );

    let promoted = pair.standby;
    tokio::task::spawn_blocking(move || {
        pair.primary
            .shut_down(StopMode::Immediate)
            .expect("stop the primary");
        promoted.promote().expect("promote the standby");
    })
    .await
    .expect("failover task");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()").await, "f");

    let resumed = poll_until(WAIT, || async { standby.is_streaming("failover").await }).await;
    assert!(
        resumed,
        "walhook streams from the new primary:\n{}",
        walhook.stderr()
    );
    standby
        .psql("INSERT INTO orders SELECT g, g FROM generate_series(51, 100) g")
        .await;
    let all = poll_until(WAIT, || async {
        let mut ids: Vec<i64> = hook
            .accepted_records()
            .iter()
            .filter_map(|r| r["new"]["id"].as_i64())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids == (1..=100).collect::<Vec<i64>>()
    })
    .await;
    assert!(
        all,
        "every row 1..=100 delivered at least once:\n{}",
        walhook.stderr()
    );
    walhook.stop().await;
    pair.destroy();
}
