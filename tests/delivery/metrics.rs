//! The delivery metrics as Prometheus renders them, after a batch that
//! failed once and then was delivered. The recorder is walhook's one per
//! process (other tests record too; the strategy name here is this test's
//! own).

use std::time::Duration;

use walhook::lsn::Lsn;

use super::{rec, Setup};
use crate::support::{wait_until, Receiver, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_attempts_and_latencies_are_counted_per_strategy() {
    let handle = walhook::telemetry::install_recorder().expect("recorder");

    let rx = Receiver::start().await;
    rx.fail_next(1, 502);
    let w = Setup {
        name: "metered".into(),
        // The two records are one batch because it is full, never because
        // both arrived within linger (a loaded machine split them in two).
        batch_size: 2,
        linger: Duration::from_secs(3600),
        ..Setup::default()
    }
    .start(&rx.url("/hook"));
    w.send_tx(vec![rec(0x100, 0), rec(0x100, 1)], Lsn(0x200))
        .await;
    rx.wait_accepted_records(2, WAIT).await;
    wait_until(WAIT, "the checkpoint", || async {
        w.checkpoint.acked() == Lsn(0x200)
    })
    .await;
    w.stop().await;

    let text = handle.render();
    let has = |line: &str| text.lines().any(|l| l == line);
    for line in [
        r#"walhook_batches_total{strategy="metered",outcome="delivered"} 1"#,
        r#"walhook_batches_total{strategy="metered",outcome="dead_lettered"} 0"#,
        r#"walhook_delivery_attempts_total{strategy="metered",status_class="5xx"} 1"#,
        r#"walhook_delivery_attempts_total{strategy="metered",status_class="2xx"} 1"#,
        r#"walhook_dead_letters_total{strategy="metered"} 0"#,
        r#"walhook_queue_records{strategy="metered"} 0"#,
        r#"walhook_batch_records_sum{strategy="metered"} 2"#,
        r#"walhook_batch_records_count{strategy="metered"} 1"#,
        r#"walhook_delivery_duration_seconds_count{strategy="metered"} 2"#,
        r#"walhook_commit_to_delivery_seconds_count{strategy="metered"} 1"#,
    ] {
        assert!(has(line), "missing {line:?} in\n{text}");
    }
}
