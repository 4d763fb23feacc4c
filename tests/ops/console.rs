//! The web console at `/ui` in a real headless Chromium (through
//! chromedriver), over a real `walhook run`, PostgreSQL and receiver:
//! live counts, pause and resume, an async run with a filter, a dead letter
//! viewed and replayed, the token kept out of the page and its URLs, and
//! read-only mode without a token. The first test also writes the README's
//! screenshot (target/walhook-console.png, and `$WALHOOK_SCREENSHOT`).

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::walhook::admin_call;
use crate::support::{free_port, fresh_db, wait_until, Db, Receiver, Walhook, WAIT};

const TOKEN: &str = "console-admin-token-5f3a9c";

/// A walhook on `slot` with one strategy `items` (every insert, async runs
/// allowed) sending to `receiver`, and one batch attempt before a dead
/// letter; the admin token when `token`.
fn config(db: &Db, slot: &str, admin: u16, receiver: &Receiver, token: bool) -> String {
    let token = if token {
        format!("token = \"{TOKEN}\"\n")
    } else {
        String::new()
    };
    format!(
        "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n{token}\n\
         [endpoints.hook]\nurl = \"{}\"\n\
         retry = {{ max_attempts = 1, initial = \"50ms\", max = \"100ms\", on_exhausted = \"dead_letter\" }}\n\n\
         [[strategies]]\nname = \"items\"\ntable = \"items\"\nendpoint = \"hook\"\n\
         on_insert = \"true\"\nlinger = \"10ms\"\non_demand = {{ async = true }}\n",
        db.url(),
        receiver.url("/hook")
    )
}

/// `items` rows the receiver accepted, by `new.note`.
fn notes(receiver: &Receiver) -> Vec<String> {
    receiver
        .accepted_records()
        .iter()
        .filter_map(|r| r["new"]["note"].as_str().map(str::to_string))
        .collect()
}

/// The text of a strategy cell (`td:nth-child(n)` of the `items` row).
fn items_cell(n: usize) -> String {
    format!("#strategies tr[data-key=\"items\"] td:nth-child({n})")
}

async fn delivered_shown(browser: &Browser) -> u64 {
    browser
        .text(&items_cell(4))
        .await
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_counts_and_pauses_runs_and_replays_with_the_token() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = fresh_db("ops_console").await;
    db.psql("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    let admin = free_port();
    let mut walhook = Walhook::run(&config(&db, "ops_console", admin, &receiver, true)).spawn();
    walhook.wait_streaming(&db, "ops_console").await;

    browser.goto(&format!("http://127.0.0.1:{admin}/ui")).await;
    browser
        .wait_for(
            "the strategy items in the table",
            "return document.querySelector('#strategies tr[data-key=\"items\"]') !== null",
        )
        .await;
    assert!(
        browser
            .text("#readonly")
            .await
            .unwrap_or_default()
            .is_empty(),
        "not read-only"
    );
    assert!(
        browser
            .eval("return document.querySelector('#strategies button') === null")
            .await
            == true,
        "no commands before the token is entered"
    );
    let input = browser.find("#token-input").await;
    input.send_keys(TOKEN).await.expect("typing the token");
    browser
        .find("#token-form button[type=submit]")
        .await
        .click()
        .await
        .expect("submitting the token");

    // Live counts: the delivered count follows the rows as they are written.
    for batch in 0..3 {
        for i in 0..4 {
            let id = batch * 4 + i + 1;
            db.psql(&format!("INSERT INTO items VALUES ({id}, 'row {id}')"))
                .await;
        }
        let want = (batch + 1) * 4;
        let shown = poll_shown(&browser, want).await;
        assert!(
            shown >= want,
            "the console shows {shown} delivered, want {want}"
        );
    }
    assert_eq!(receiver.accepted_records().len(), 12);
    browser
        .wait_for(
            "the endpoint shown up with its last answer",
            "const r = document.querySelector('#endpoints tr[data-key=\"hook\"]'); \
             return r !== null && r.cells[2].textContent === 'up' && r.cells[4].textContent === '200'",
        )
        .await;

    // Pause: a row written now waits, and the page says paused; resume sends it.
    browser.click("Pause items").await;
    browser
        .wait_for(
            "the strategy shown paused",
            "return document.querySelector('#strategies tr[data-key=\"items\"]').dataset.state === 'paused'",
        )
        .await;
    db.psql("INSERT INTO items VALUES (100, 'while paused')")
        .await;
    browser
        .wait_for(
            "the paused strategy to show the waiting row",
            &format!(
                "return document.querySelector('{}').textContent === '1'",
                items_cell(5)
            ),
        )
        .await;
    assert!(!notes(&receiver).contains(&"while paused".to_string()));
    browser.click("Resume items").await;
    wait_until(WAIT, "the held row at the receiver", || async {
        notes(&receiver).contains(&"while paused".to_string())
    })
    .await;
    browser
        .wait_for(
            "the strategy shown running",
            "return document.querySelector('#strategies tr[data-key=\"items\"]').dataset.state === 'running'",
        )
        .await;

    // An async run with a filter, watched until it finishes.
    let before = receiver.accepted_records().len();
    browser
        .find("#run-filter")
        .await
        .send_keys("row.id > 8")
        .await
        .expect("typing the filter");
    browser
        .find("#run-form button[type=submit]")
        .await
        .click()
        .await
        .expect("starting the run");
    browser
        .wait_for(
            "the run to finish in the runs table",
            "const r = document.querySelector('#runs tbody tr[data-key]'); \
             return r !== null && r.dataset.state === 'succeeded'",
        )
        .await;
    let run_row = browser
        .text("#runs tbody tr[data-key]")
        .await
        .unwrap_or_default();
    assert!(run_row.contains("row.id > 8"), "{run_row}");
    // Rows 9 to 12 and 100 pass the filter.
    assert_eq!(
        browser
            .eval("return document.querySelector('#runs tbody tr[data-key]').dataset.delivered")
            .await,
        "5",
        "{run_row}"
    );
    // The page lists it from GET /runs, which shows it as GET /runs/{id} does.
    let (code, body) = admin_call(reqwest::Method::GET, admin, "/runs", TOKEN).await;
    assert_eq!(code, 200, "{body}");
    let runs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let (code, body) = admin_call(reqwest::Method::GET, admin, "/runs?limit=0", TOKEN).await;
    assert_eq!((code, body.as_str()), (400, "bad limit: use 1 to 100\n"));
    let run = &runs["runs"][0];
    assert_eq!(run["filter"], "row.id > 8", "{runs}");
    let id = run["id"].as_i64().expect("a run id");
    let (_, one) = admin_call(reqwest::Method::GET, admin, &format!("/runs/{id}"), TOKEN).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&one).expect("JSON"),
        *run,
        "GET /runs/{id}"
    );
    let read: Vec<i64> = receiver.accepted_records()[before..]
        .iter()
        .filter(|r| r["op"] == "read")
        .map(|r| r["new"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(read, [9, 10, 11, 12, 100], "the run's rows at the receiver");

    // A failed batch becomes a dead letter; the page shows it and its payload.
    // Its note carries markup: the page must show it as text.
    receiver.fail_next(1, 500);
    db.psql("INSERT INTO items VALUES (200, '<img id=\"injected\" src=x>dead then replayed')")
        .await;
    browser
        .wait_for(
            "a dead letter in the table",
            "return document.querySelector('#dead-letters tbody tr[data-key]') !== null",
        )
        .await;
    let id = browser
        .eval("return document.querySelector('#dead-letters tbody tr[data-key]').dataset.key")
        .await;
    let id = id.as_str().expect("a dead letter id").to_string();
    browser
        .wait_for(
            "the endpoint shown with the failed answer",
            "const r = document.querySelector('#endpoints tr[data-key=\"hook\"]'); \
             return r !== null && r.cells[4].textContent === '500'",
        )
        .await;
    write_screenshot(&browser).await;
    browser.click(&format!("View dead letter {id}")).await;
    browser
        .wait_for(
            "the payload shown",
            "return document.querySelector('#payload-body').textContent.includes('dead then replayed')",
        )
        .await;
    assert_eq!(
        browser
            .eval("return document.getElementById('injected') === null")
            .await,
        true,
        "a value became markup"
    );
    let replayed = |receiver: &Receiver| {
        notes(receiver)
            .iter()
            .any(|n| n.ends_with("dead then replayed"))
    };
    assert!(!replayed(&receiver));
    browser.click(&format!("Replay dead letter {id}")).await;
    wait_until(WAIT, "the replayed row at the receiver", || async {
        replayed(&receiver)
    })
    .await;
    browser
        .wait_for(
            "the replayed dead letter gone from the table",
            "return document.querySelector('#dead-letters tbody tr[data-key]') === null",
        )
        .await;
    assert_eq!(
        db.psql("SELECT count(*) FROM walhook.dead_letters")
            .await
            .trim(),
        "0"
    );

    // The token is in neither the page nor any URL the page requested.
    let source = browser.client().source().await.expect("the page source");
    assert!(!source.contains(TOKEN), "the token is in the page source");
    let urls = browser
        .eval(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))",
        )
        .await;
    let urls: Vec<String> = serde_json::from_value(urls).expect("a list of URLs");
    assert!(
        urls.iter().any(|u| u.contains("/dead-letters/")),
        "the page's requests are listed: {urls:?}"
    );
    for url in &urls {
        assert!(!url.contains(TOKEN), "the token is in a URL: {url}");
    }
    assert_eq!(
        browser
            .eval("return document.cookie + localStorage.length")
            .await,
        "0",
        "nothing kept beyond the tab"
    );
    browser.close().await;
    walhook.stop().await;
}

/// Polls the page until it shows at least `want` delivered; returns what it shows.
async fn poll_shown(browser: &Browser, want: u64) -> u64 {
    let shown = std::cell::Cell::new(0);
    crate::support::poll_until(WAIT, || async {
        shown.set(delivered_shown(browser).await);
        shown.get() >= want
    })
    .await;
    shown.get()
}

/// The console as the README shows it: target/walhook-console.png, and the
/// path in `WALHOOK_SCREENSHOT` when set.
async fn write_screenshot(browser: &Browser) {
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/target/walhook-console.png");
    std::fs::write(target, &png).expect("writing target/walhook-console.png");
    if let Some(path) = std::env::var_os("WALHOOK_SCREENSHOT") {
        std::fs::write(&path, &png).expect("writing $WALHOOK_SCREENSHOT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_console_is_read_only_and_the_api_refuses_commands() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = fresh_db("ops_console_ro").await;
    db.psql("CREATE TABLE items (id int PRIMARY KEY, note text)")
        .await;
    let receiver = Receiver::start().await;
    receiver.set_latency(Duration::from_millis(50), Duration::from_millis(300));
    let admin = free_port();
    let mut walhook = Walhook::run(&config(&db, "ops_console_ro", admin, &receiver, false)).spawn();
    walhook.wait_streaming(&db, "ops_console_ro").await;
    db.psql("INSERT INTO items VALUES (1, 'one')").await;

    browser.goto(&format!("http://127.0.0.1:{admin}/ui")).await;
    browser
        .wait_for(
            "the delivered row counted",
            &format!(
                "const c = document.querySelector('{}'); return c !== null && c.textContent === '1'",
                items_cell(4)
            ),
        )
        .await;
    let readonly = browser.text("#readonly").await.unwrap_or_default();
    assert!(readonly.contains("Read-only"), "{readonly:?}");
    assert_eq!(
        browser
            .eval(
                "return document.querySelectorAll('td button').length + \
                 document.querySelectorAll('#token-form:not([hidden]), #run-form:not([hidden])').length"
            )
            .await,
        0,
        "no command buttons and no token form"
    );
    for hidden in ["#run-form", "#runs", "#dead-letters"] {
        let shown = browser
            .find(hidden)
            .await
            .is_displayed()
            .await
            .expect("displayed?");
        assert!(!shown, "{hidden} is shown");
    }
    // The page's headers: scripts and styles from the server only, no
    // inline code, nothing cached.
    let response = reqwest::get(format!("http://127.0.0.1:{admin}/ui"))
        .await
        .expect("GET /ui");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let csp = header("content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let page = response.text().await.expect("the page");
    assert!(!page.contains("<script>"), "no inline script");

    // The configuration is there, and the API refuses what the page hides.
    let config = browser.text("#config").await.unwrap_or_default();
    assert!(config.contains("\"items\""), "{config}");
    for (method, path) in [
        (reqwest::Method::POST, "/strategies/items/pause"),
        (reqwest::Method::POST, "/strategies/items/runs?mode=async"),
        (reqwest::Method::GET, "/dead-letters"),
    ] {
        let (code, body) = admin_call(method, admin, path, "anything").await;
        assert_eq!(code, 403, "{path}: {body}");
    }
    browser.close().await;
    walhook.stop().await;
}
