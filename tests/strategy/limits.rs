//! A pathological filter never kills walhook (issue 29): the 1.5 MB
//! filter (80,000 `new.id == N` terms joined by `||`, SIGABRT at load and
//! on reload before) and a 2,000-term chain nesting 2,000 levels deep are
//! config errors naming the field, at load (exit 2) and on reload, where
//! the running walhook keeps streaming.

use crate::support::{Walhook, WAIT};

use super::scene::Scene;

/// `n` terms `new.id == i` joined by `||`.
fn chain(n: usize) -> String {
    (0..n)
        .map(|i| format!("new.id == {i}"))
        .collect::<Vec<_>>()
        .join(" || ")
}

fn strategies(subject_filter: &str) -> String {
    format!(
        "[[strategies]]\nname = \"all\"\ntable = \"items\"\nendpoint = \"all\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\n\n\
         [[strategies]]\nname = \"subject\"\ntable = \"items\"\nendpoint = \"subject\"\n\
         on_insert = \"{subject_filter}\"\nlinger = \"10ms\"\n"
    )
}

async fn scene() -> Scene {
    Scene::new(
        "strategy_limits",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
        &["items"],
        &["all", "subject"],
        &strategies("new.id % 2 == 0"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pathological_filter_is_a_config_error_at_load_and_on_reload() {
    let scene = scene().await;
    let huge = chain(80_000);
    assert!(huge.len() > 1_400_000, "the issue's 1.5 MB filter");
    let deep = chain(2_000);
    for (filter, reason) in [
        (
            &huge,
            "bytes long; an expression may be at most 65536 bytes",
        ),
        (&deep, "levels deep; the limit is 256"),
    ] {
        let out = Walhook::run(&scene.config(&strategies(filter)))
            .output()
            .await;
        assert_eq!(out.code(), Some(2), "exit 2 at load:\n{}", out.stderr);
        assert!(
            out.stderr.contains("strategies[1].on_insert") && out.stderr.contains(reason),
            "the error names the field and the limit:\n{}",
            out.stderr
        );
        assert!(!out.stderr.contains("new.id == 1 "), "no expression text");
    }

    let walhook = scene.start(&strategies("new.id % 2 == 0")).await;
    let writer = scene.writer("INSERT INTO items VALUES ({n}, 'row')");
    writer.wait_more(20, "rows before the reloads").await;
    for filter in [&huge, &deep] {
        let (code, doc) = scene.reload(&walhook, &strategies(filter)).await;
        assert_eq!(code, 422, "{doc}");
        assert_eq!(doc["result"], "invalid", "{doc}");
        let error = doc["error"].as_str().unwrap_or_default();
        assert!(error.contains("strategies[1].on_insert"), "{doc}");
    }
    // Still streaming: rows committed after the refused reloads arrive.
    assert_eq!(scene.status().await["state"], "streaming");
    let after = writer.wait_more(50, "rows after the reloads").await;
    let written = writer.stop().await;
    assert!(written >= after);
    crate::support::wait_until(WAIT, "every row at /all and /subject", || async {
        scene.ids("all").len() as i64 >= written && scene.ids("subject").len() as i64 >= written / 2
    })
    .await;
    let mut all = scene.ids("all");
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=written).collect::<Vec<_>>(),
        "each row once at /all"
    );
    let subject = scene.ids("subject");
    assert_eq!(
        subject,
        (1..=written).filter(|n| n % 2 == 0).collect::<Vec<_>>(),
        "the running filter stayed in force, in commit order"
    );
    let end = scene.db.current_wal_lsn().await;
    scene.db.wait_confirmed(&scene.name, end).await;
    assert_eq!(
        scene
            .metric("walhook_config_reload_total", &["result=\"invalid\""])
            .await,
        2.0
    );
    walhook.stop().await;
}
