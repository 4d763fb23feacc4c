//! A real headless Chromium, driven through chromedriver (WebDriver) with
//! fantoccini, for the console's browser tests.
//!
//! The test starts chromedriver itself on a free port, and chromedriver
//! starts Chromium with a fresh profile and the flags that keep it off the
//! network (without them it waits for the network on a closed machine).
//! One browser runs at a time: the machine is small and Chromium is not.
//!
//! Without Chromium or chromedriver (Debian packages `chromium` and
//! `chromium-driver`) [`Browser::start`] says why and returns `None`, so
//! README's `cargo test` works on a machine with only Rust and PostgreSQL;
//! with `WALHOOK_REQUIRE_CHROMIUM=1` (set by `.ci/run`) it fails instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

use super::{free_port, poll_until, WAIT};

/// Chromium's flags: headless, and nothing that reaches for the network.
const CHROMIUM_FLAGS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--window-size=1280,1300",
];

/// One browser at a time.
static TURN: Mutex<()> = Mutex::const_new(());

/// A Chromium session.
pub(crate) struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// The first of `names` that is an executable file, looked up in `PATH`
/// unless it is a path.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        if name.contains('/') {
            return Path::new(name).is_file().then(|| PathBuf::from(name));
        }
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (after saying
    /// why) when they are not installed and not required.
    pub(crate) async fn start() -> Option<Browser> {
        let required = std::env::var("WALHOOK_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = find(&["chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "the browser tests need Chromium and chromedriver \
                       (Debian: apt-get install chromium chromium-driver)";
            assert!(
                !required,
                "{why}; WALHOOK_REQUIRE_CHROMIUM=1 makes them required"
            );
            eprintln!("skipped: {why}");
            return None;
        };
        let turn = TURN.lock().await;
        let port = free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let ready = poll_until(WAIT, || async {
            let Ok(response) = reqwest::get(format!("{base}/status")).await else {
                return false;
            };
            let body = response.text().await.unwrap_or_default();
            let doc: Value = serde_json::from_str(&body).unwrap_or_default();
            doc["value"]["ready"] == true
        })
        .await;
        assert!(ready, "chromedriver on port {port} did not become ready");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&base)
            .await
            .expect("a Chromium session through chromedriver");
        Some(Browser {
            client,
            driver,
            _profile: profile,
            _turn: turn,
        })
    }

    /// The WebDriver session.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url`.
    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("loading the page");
    }

    /// The element at `css`; panics when there is none.
    pub(crate) async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// The text of the element at `css`, `None` while there is none.
    pub(crate) async fn text(&self, css: &str) -> Option<String> {
        let el = self.client.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok()
    }

    /// Polls the page until `script` returns `true`; panics naming `what`
    /// (with the page's text) after [`WAIT`].
    pub(crate) async fn wait_for(&self, what: &str, script: &str) {
        let done = poll_until(WAIT, || async {
            matches!(
                self.client.execute(script, Vec::new()).await,
                Ok(Value::Bool(true))
            )
        })
        .await;
        if !done {
            let text = self.text("body").await.unwrap_or_default();
            panic!("timed out after {WAIT:?} waiting for {what}; the page shows:\n{text}");
        }
    }

    /// Clicks the button whose `aria-label` is `label`, once it is there.
    pub(crate) async fn click(&self, label: &str) {
        let css = format!("button[aria-label=\"{label}\"]");
        self.wait_for(
            &format!("a button {label:?}"),
            &format!("return document.querySelector('{css}') !== null"),
        )
        .await;
        self.find(&css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {label}: {e}"));
    }

    /// A PNG of the window.
    pub(crate) async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), self.client.clone().close()).await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `close`: stop chromedriver's process
        // group (Chromium with it).
        if let Some(pid) = self.driver.id() {
            // SAFETY: kill(2) on the process group of a child we spawned.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}
