//! Pausing, resuming and cancelling a run through the admin API and the
//! console, and a run that outlives a restart: a paused one stays paused,
//! a running one goes on from its last delivered chunk.

use serde_json::Value;

use super::copy::{copy_of, differences, Scene, Writer};
use super::{call, wait_finished, TOKEN};
use crate::support::browser::Browser;
use crate::support::{poll_until, wait_until, Walhook, WAIT};

/// Chunks of 500 rows, at most 2,000 rows a second: a run over 20,000 rows
/// lasts about ten seconds, long enough to be caught part-way.
const SLOW: &str = "backfill = { chunk_size = 500, max_rows_per_second = 2000 }";

async fn get(scene: &Scene, id: i64) -> Value {
    let (status, body) = call("GET", &scene.admin, &format!("/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

async fn wait_state(scene: &Scene, id: i64, state: &str) -> Value {
    let seen = std::cell::RefCell::new(Value::Null);
    wait_until(WAIT, &format!("run {id} {state}"), || async {
        let run = get(scene, id).await;
        let ok = run["state"] == state;
        *seen.borrow_mut() = run;
        ok
    })
    .await;
    seen.into_inner()
}

async fn start_run(scene: &Scene) -> i64 {
    let (status, body) = call("POST", &scene.admin, "/strategies/copy/runs?mode=async").await;
    assert_eq!(status, 202, "{body}");
    serde_json::from_str::<Value>(&body).expect("JSON")["id"]
        .as_i64()
        .expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pauses_stays_paused_across_a_restart_resumes_and_the_copy_is_exact() {
    let scene = Scene::new("runs_pause", 20_000, SLOW).await;
    let walhook = scene.start().await;
    let id = start_run(&scene).await;
    wait_until(WAIT, "the run part-way", || async {
        get(&scene, id).await["counts"]["delivered"]
            .as_u64()
            .unwrap_or(0)
            >= 1000
    })
    .await;
    let (status, body) = call("POST", &scene.admin, &format!("/runs/{id}/pause")).await;
    assert_eq!(status, 200, "{body}");
    let paused = wait_state(&scene, id, "paused").await;
    let read = paused["counts"]["read"].as_u64().expect("read");
    assert!(read < 20_000, "paused part-way: {paused}");
    // Writes go on while it is paused; walhook restarts (SIGTERM).
    scene
        .db
        .psql("UPDATE public.accounts SET balance = -1 WHERE id % 7 = 0; DELETE FROM public.accounts WHERE id % 11 = 0;")
        .await;
    walhook.stop().await;
    assert_eq!(
        scene
            .db
            .psql(&format!("SELECT state FROM walhook.runs WHERE id = {id}"))
            .await
            .trim(),
        "paused",
        "a paused run stays paused when walhook stops"
    );
    let walhook = scene.start().await;
    let after_restart = wait_state(&scene, id, "paused").await;
    assert_eq!(
        after_restart["counts"]["read"].as_u64(),
        Some(read),
        "nothing read while paused: {after_restart}"
    );
    // Resuming a run that is not paused here, or an unknown one, is refused.
    let (status, _) = call("POST", &scene.admin, "/runs/999999/resume").await;
    assert_eq!(status, 404);
    let (status, body) = call("POST", &scene.admin, &format!("/runs/{id}/resume")).await;
    assert_eq!(status, 200, "{body}");
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());
    scene.caught_up().await;
    let (stale, back, missing) = differences(&copy_of(&scene.hook), &scene.table().await);
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "the copy equals the table"
    );

    // A run that is running when walhook stops goes on after the restart.
    let id = start_run(&scene).await;
    wait_until(WAIT, "the second run part-way", || async {
        get(&scene, id).await["counts"]["delivered"]
            .as_u64()
            .unwrap_or(0)
            >= 1000
    })
    .await;
    walhook.stop().await;
    let walhook = scene.start().await;
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "succeeded", "{run}\n{}", walhook.stderr());

    // Cancel: the run ends cancelled, and cannot be paused after.
    let id = start_run(&scene).await;
    let (status, body) = call("DELETE", &scene.admin, &format!("/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    let run = wait_finished(&scene.admin, id).await;
    assert_eq!(run["state"], "cancelled", "{run}");
    let (status, _) = call("POST", &scene.admin, &format!("/runs/{id}/pause")).await;
    assert_eq!(status, 409, "a finished run cannot be paused");
    walhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pauses_resumes_and_cancels_runs() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let scene = Scene::new("runs_console", 20_000, SLOW).await;
    let walhook = scene.start().await;
    browser.goto(&format!("{}/ui", scene.admin)).await;
    let input = browser.find("#token-input").await;
    input.send_keys(TOKEN).await.expect("typing the token");
    browser
        .find("#token-form button[type=submit]")
        .await
        .click()
        .await
        .expect("submitting the token");
    let id = start_run(&scene).await;
    let row = format!("#runs tbody tr[data-key=\"{id}\"]");
    browser
        .wait_for(
            "the run shown running",
            &format!("const r = document.querySelector('{row}'); return r !== null && r.dataset.state === 'running'"),
        )
        .await;
    browser.click(&format!("Pause run {id}")).await;
    browser
        .wait_for(
            "the run shown paused",
            &format!("return document.querySelector('{row}').dataset.state === 'paused'"),
        )
        .await;
    assert_eq!(get(&scene, id).await["state"], "paused");
    browser.click(&format!("Resume run {id}")).await;
    browser
        .wait_for(
            "the run shown running again",
            &format!("return document.querySelector('{row}').dataset.state === 'running'"),
        )
        .await;
    browser.click(&format!("Cancel run {id}")).await;
    browser
        .wait_for(
            "the run shown cancelled",
            &format!("return document.querySelector('{row}').dataset.state === 'cancelled'"),
        )
        .await;
    assert_eq!(wait_finished(&scene.admin, id).await["state"], "cancelled");
    browser.close().await;
    walhook.stop().await;
}

/// `walhook runs -c config.toml ARGS` until it exits: (exit code, stdout, stderr).
async fn runs_cli(scene: &Scene, args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = ["runs", "-c", "config.toml"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let out = Walhook::command(&args).config(&scene.config).output().await;
    (out.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// `walhook run-strategy` while a walhook streams the slot: the run is
/// started in that walhook (merged into its stream) and followed there;
/// `walhook runs` lists, pauses, resumes it; the copy ends exact under a writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_strategy_beside_a_running_walhook_runs_there_and_walhook_runs_controls_it() {
    let scene = Scene::new("runs_cli_there", 20_000, SLOW).await;
    let walhook = scene.start().await;
    let writer = Writer::start(&scene.db, 20_000, 3_000).await;
    let mut cli = Walhook::command(&["run-strategy", "copy", "-c", "config.toml"])
        .config(&scene.config)
        .spawn();
    let id = std::cell::Cell::new(0);
    let listed = poll_until(WAIT, || async {
        let (code, stdout, _) = runs_cli(&scene, &[]).await;
        let list: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let found = list["runs"].as_array().and_then(|runs| {
            runs.iter()
                .find(|r| r["trigger"] == "cli" && r["state"] == "running")
                .and_then(|r| r["id"].as_i64())
        });
        if let Some(found) = found {
            id.set(found);
        }
        code == 0 && found.is_some()
    })
    .await;
    assert!(
        listed,
        "the CLI's run listed by walhook runs; the CLI said:\n{}{}\nwalhook:\n{}",
        cli.stdout(),
        cli.stderr(),
        walhook.stderr()
    );
    let id = id.get().to_string();
    let (code, stdout, stderr) = runs_cli(&scene, &["pause", &id]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_until(WAIT, "the run paused", || async {
        let (_, stdout, _) = runs_cli(&scene, &["show", &id]).await;
        serde_json::from_str::<Value>(&stdout).is_ok_and(|r| r["state"] == "paused")
    })
    .await;
    let (code, stdout, stderr) = runs_cli(&scene, &["resume", &id]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let status = cli.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}{}", cli.stdout(), cli.stderr());
    assert!(
        cli.stdout().contains(&format!("run {id} succeeded")),
        "{}",
        cli.stdout()
    );
    assert_eq!(writer.finish().await, 3_000);
    scene.caught_up().await;
    let (stale, back, missing) = differences(&copy_of(&scene.hook), &scene.table().await);
    assert_eq!(
        (stale, back, missing),
        (0, 0, 0),
        "the copy equals the table"
    );
    let (code, _, stderr) = runs_cli(&scene, &["cancel", "999999"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no run 999999"), "{stderr}");
    walhook.stop().await;
}
