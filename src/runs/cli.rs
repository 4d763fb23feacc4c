//! `walhook run-strategy NAME`: one run from a shell or a job (seeding a
//! receiver), and `walhook runs`: list, show, pause, resume, cancel.
//!
//! While a walhook streams the slot, a run must merge into its stream to
//! leave an exact copy, so `run-strategy` asks that walhook to run it
//! (`POST /strategies/NAME/backfill` on its admin API, with `[admin]
//! token`) and follows it there. With no walhook streaming, it runs here,
//! through a worker of its own: the changes committed meanwhile wait in the
//! slot and follow the run's records when walhook next streams.
//!
//! Progress goes to stderr, beside the logs: a bar on a terminal (indicatif),
//! else a `run progress` log line every few seconds, so it follows
//! `--log-format`, `NO_COLOR` and `WALHOOK_LOG` like every other line and a
//! file or journal gets no control sequences. The one-line summary of the
//! outcome goes to stdout, for scripts.

use crate::error_class::{Classify, ErrorClass};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_postgres::Client;

use super::manager::{Ask, RunManager};
use super::plan::{Counts, RunError};
use super::progress::Progress;
use super::reader::KeyText;
use crate::config::Config;
use crate::pg::{self, ConnectError};
use crate::prepare::{prepare, PrepareError, Prepared};
use crate::state::{StateError, StateStore};

/// How often a progress line is logged when there is no bar.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// How `run-strategy` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressDisplay {
    /// A bar redrawn in place on stderr (a terminal, text logs); `colour`
    /// unless `NO_COLOR`.
    Bar { colour: bool },
    /// `run progress` log lines (a pipe, a file, JSON logs).
    Lines,
}

/// What `run-strategy` was asked to do.
#[derive(Debug, Clone)]
pub struct RunStrategyOptions {
    /// The `[[strategies]]` name.
    pub strategy: String,
    /// Which rows (`row.<col>`, `new.<col>`); `None` = all.
    pub filter: Option<String>,
    /// At most this many records.
    pub limit: Option<u64>,
    /// Start at this primary key (its column texts).
    pub from: Option<KeyText>,
    /// A bar (falls back to lines when the terminal cannot draw one) or lines.
    pub display: ProgressDisplay,
}

/// Why `run-strategy` stopped (see `crate::error` for the exit codes).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No such strategy.
    #[error("no strategy named {name:?}; the configuration has {known:?}")]
    NoStrategy { name: String, known: Vec<String> },
    /// The source database cannot be reached.
    #[error("connecting to the source database: {0}")]
    Connect(#[source] ConnectError),
    /// The configuration does not compile or does not match the database,
    /// as `walhook run` would find (see [`crate::prepare`]).
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// `--filter` does not compile or names a column the table lacks.
    #[error("--filter: {0}")]
    Filter(String),
    /// `--from` is not a key.
    #[error("--from: {0}")]
    From(String),
    /// The state store cannot be reached or set up.
    #[error("the walhook state schema: {0}")]
    State(#[source] StateError),
    /// The run failed.
    #[error("run failed: {0}")]
    Run(#[source] RunError),
    /// The run ended, but records were dead-lettered.
    #[error("run {id}: {failed} records failed (dead-lettered)")]
    Failed { id: i64, failed: u64 },
    /// The run, started in the running walhook, ended without success.
    #[error("run {id} {state}: {error}")]
    Ended {
        id: i64,
        state: String,
        error: String,
    },
    /// The running walhook's admin API refused or failed.
    #[error("the admin API at {base}: {message}")]
    Api { base: String, message: String },
    /// Another walhook streams the slot, and its admin API is not here.
    #[error("a walhook streams from slot {slot} (walsender pid {pid}), but no walhook answers at {base}: start the run through that walhook's admin API (POST /strategies/NAME/backfill), or set [admin] listen to its address")]
    Elsewhere {
        slot: String,
        pid: i32,
        base: String,
    },
}

impl Classify for CliError {
    fn class(&self) -> ErrorClass {
        match self {
            CliError::NoStrategy { .. } | CliError::Filter(_) | CliError::From(_) => {
                ErrorClass::NeedsOperator
            }
            CliError::Connect(err) => err.class(),
            CliError::Prepare(err) => err.class(),
            CliError::State(err) => err.class(),
            // The run's own outcome, and another walhook's (README: exit 1).
            CliError::Run(_)
            | CliError::Failed { .. }
            | CliError::Ended { .. }
            | CliError::Api { .. }
            | CliError::Elsewhere { .. } => ErrorClass::Fatal,
        }
    }
}

/// The admin API of the walhook that streams the slot, as `-c` describes it.
#[derive(Debug, Clone)]
pub(crate) struct AdminApi {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminApi {
    /// `[admin] listen` (a wildcard address is reached on loopback) and `token`.
    pub(crate) fn for_config(config: &Config) -> AdminApi {
        let mut addr = config.admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        AdminApi {
            base: format!("http://{addr}"),
            token: config.admin.token.as_ref().map(|t| t.expose().to_string()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Whether a walhook answers here and streams `slot` (the active instance).
    async fn streams(&self, slot: &str) -> bool {
        let Ok(response) = self.http.get(format!("{}/status", self.base)).send().await else {
            return false;
        };
        let body = response.text().await.unwrap_or_default();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status["role"] == "active" && status["slot"] == slot
    }

    fn error(&self, message: impl Into<String>) -> CliError {
        CliError::Api {
            base: self.base.clone(),
            message: message.into(),
        }
    }

    /// `method path` with the token; the JSON answer of a 2xx.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<serde_json::Value, CliError> {
        let Some(token) = &self.token else {
            return Err(self.error(
                "[admin] token is not set, so the API's commands are disabled; set it in -c's file and in the running walhook's",
            ));
        };
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.error(format!("{}", e.without_url())))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(self.error(format!("{status}: {}", body.trim())));
        }
        serde_json::from_str(&body).map_err(|e| self.error(format!("not JSON: {e}")))
    }
}

/// What `walhook runs` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunsAction {
    /// The latest runs.
    List,
    Show(i64),
    Pause(i64),
    Resume(i64),
    Cancel(i64),
}

/// `walhook runs`: through the running walhook's admin API; prints its
/// JSON answer.
pub async fn runs_command(config: Config, action: RunsAction) -> Result<(), CliError> {
    let api = AdminApi::for_config(&config);
    let (method, path) = match action {
        RunsAction::List => (reqwest::Method::GET, "/runs?limit=100".to_string()),
        RunsAction::Show(id) => (reqwest::Method::GET, format!("/runs/{id}")),
        RunsAction::Pause(id) => (reqwest::Method::POST, format!("/runs/{id}/pause")),
        RunsAction::Resume(id) => (reqwest::Method::POST, format!("/runs/{id}/resume")),
        RunsAction::Cancel(id) => (reqwest::Method::DELETE, format!("/runs/{id}")),
    };
    let answer = api.call(method, &path).await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    let _ = out.flush();
    Ok(())
}

/// Starts the run in the walhook behind `api` and follows it to its end.
async fn run_there(api: &AdminApi, opts: RunStrategyOptions) -> Result<(), CliError> {
    let mut path = format!("/strategies/{}/backfill?", encode(&opts.strategy));
    if let Some(filter) = &opts.filter {
        path.push_str(&format!("filter={}&", encode(filter)));
    }
    if let Some(limit) = opts.limit {
        path.push_str(&format!("limit={limit}&"));
    }
    if let Some(from) = &opts.from {
        path.push_str(&format!(
            "from={}&",
            encode(&serde_json::to_string(from).unwrap_or_default())
        ));
    }
    let started = api.call(reqwest::Method::POST, &path).await?;
    let id = started["id"]
        .as_i64()
        .ok_or_else(|| api.error(format!("no run id in {started}")))?;
    tracing::info!(run = id, walhook = %api.base, "run started in the walhook that streams the slot");
    let shown = Shown::new(opts.display);
    let began = Instant::now();
    loop {
        let run = api
            .call(reqwest::Method::GET, &format!("/runs/{id}"))
            .await?;
        let counts: Counts = serde_json::from_value(run["counts"].clone()).unwrap_or_default();
        let state = run["state"].as_str().unwrap_or("running");
        let ended: Option<&'static str> = match state {
            "running" | "paused" => None,
            "succeeded" => Some("succeeded"),
            "cancelled" => Some("cancelled"),
            "refused" => Some("refused"),
            _ => Some("failed"),
        };
        shown.update(&Progress::new(id, counts, began.elapsed(), ended));
        if let Some(ended) = ended {
            shown.finish();
            return match ended {
                "succeeded" if counts.failed == 0 => Ok(()),
                "succeeded" => Err(CliError::Failed {
                    id,
                    failed: counts.failed,
                }),
                other => Err(CliError::Ended {
                    id,
                    state: other.to_string(),
                    error: run["error"].as_str().unwrap_or("").to_string(),
                }),
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The walsender pid when a walhook streams the slot.
async fn slot_streamed(client: &Client, slot: &str) -> Option<i32> {
    let slot = pg::slot::read(client, slot).await.ok()??;
    slot.active.then_some(slot.active_pid).flatten()
}

/// Runs the strategy once, printing progress; an error also when records
/// were dead-lettered.
pub async fn run_strategy(config: Config, opts: RunStrategyOptions) -> Result<(), CliError> {
    if !config.strategies.iter().any(|s| s.name == opts.strategy) {
        return Err(CliError::NoStrategy {
            name: opts.strategy,
            known: config.strategies.iter().map(|s| s.name.clone()).collect(),
        });
    }
    let api = AdminApi::for_config(&config);
    if api.streams(&config.source.slot).await {
        return run_there(&api, opts).await;
    }
    let client = pg::connect(config.source.url.expose(), "walhook-run")
        .await
        .map_err(CliError::Connect)?;
    if let Some(pid) = slot_streamed(&client, &config.source.slot).await {
        return Err(CliError::Elsewhere {
            slot: config.source.slot.clone(),
            pid,
            base: api.base,
        });
    }
    // What `walhook run` would build from this file, checked as it checks.
    let Prepared {
        strategies,
        endpoints,
    } = prepare(&config, &client).await?;
    drop(client);
    let url = config.source.url.expose().to_string();
    let state = StateStore::for_config(&config, "walhook-state")
        .await
        .map_err(CliError::State)?;
    state.ensure_schema().await.map_err(CliError::State)?;
    let manager = RunManager::new(Arc::new(config), strategies, endpoints, state, url);
    let shown = Arc::new(Shown::new(opts.display));
    let watcher = shown.clone();
    let result = manager
        .run_to_end(
            &opts.strategy,
            Ask {
                filter: opts.filter,
                limit: opts.limit,
                from: opts.from,
            },
            Arc::new(move |p: &Progress| watcher.update(p)),
        )
        .await;
    shown.finish();
    match result {
        Ok(summary) if summary.counts.failed == 0 => Ok(()),
        Ok(summary) => Err(CliError::Failed {
            id: summary.id,
            failed: summary.counts.failed,
        }),
        Err(RunError::Filter(e)) => Err(CliError::Filter(e)),
        Err(e) => Err(CliError::Run(e)),
    }
}

/// The bar being drawn, if any: log lines move it out of the way
/// ([`LogWriter`]). Process-wide, as stderr is.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    BAR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Where the CLI shows a run's progress.
#[derive(Debug)]
struct Shown {
    bar: Option<ProgressBar>,
    colour: bool,
    /// Lines: when the last one was logged.
    last_line: Mutex<Option<Instant>>,
    /// The run's last progress, once it ended.
    ended: Mutex<Option<Progress>>,
}

impl Shown {
    fn new(display: ProgressDisplay) -> Self {
        let ProgressDisplay::Bar { colour } = display else {
            return Shown {
                bar: None,
                colour: false,
                last_line: Mutex::new(None),
                ended: Mutex::new(None),
            };
        };
        // Hidden on a terminal that cannot draw it (TERM unset or dumb).
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(bar_style(false, colour));
        let bar = (!bar.is_hidden()).then_some(bar);
        if let Some(bar) = &bar {
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        }
        Shown {
            bar,
            colour,
            last_line: Mutex::new(None),
            ended: Mutex::new(None),
        }
    }

    fn update(&self, p: &Progress) {
        match &self.bar {
            Some(bar) => self.draw(bar, p),
            None => log_line(p, &self.last_line),
        }
        if p.ended.is_some() {
            // The bar stays as it ended; later log lines go below it.
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
            *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(*p);
        }
    }

    fn draw(&self, bar: &ProgressBar, p: &Progress) {
        if bar.prefix().is_empty() {
            // The first report: from now on the spinner turns.
            bar.set_prefix(p.id.to_string());
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        if bar.length().is_none() && p.counts.estimate.is_some() {
            bar.set_style(bar_style(true, self.colour));
        }
        bar.set_message(status(p));
        bar.update(|state| {
            // An estimate exceeded grows the bar; a run that succeeded fills it.
            let len = match (p.counts.estimate, p.ended) {
                (Some(_), Some("succeeded")) => Some(p.done),
                (Some(estimate), _) => Some(estimate.max(p.done)),
                (None, _) => None,
            };
            if let Some(len) = len {
                state.set_len(len);
            }
            state.set_pos(p.done);
        });
        match p.ended {
            Some("succeeded") => bar.finish(),
            Some(_) => bar.abandon(),
            None => {}
        }
    }

    /// Stops drawing (also when the run failed before it began) and prints
    /// the summary of a run that ended.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            if bar.prefix().is_empty() {
                // Refused before it began: no bar at all.
                bar.finish_and_clear();
            } else if !bar.is_finished() {
                bar.abandon();
            }
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        let Some(p) = *self.ended.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let c = &p.counts;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "run {} {}: {} read, {} sent, {} delivered, {} failed, {} in {}",
            p.id,
            p.ended.unwrap_or("ended"),
            crate::words::count(c.read, "row", "rows"),
            crate::words::count(c.sent, "record", "records"),
            c.delivered,
            c.failed,
            crate::words::count(c.batches, "batch", "batches"),
            crate::words::elapsed(p.elapsed)
        );
        let _ = out.flush();
    }
}

/// The bar's line: with a bar once the estimate is known, a count before.
fn bar_style(estimate: bool, colour: bool) -> ProgressStyle {
    let template = match (estimate, colour) {
        (true, true) => "{spinner:.green} run {prefix} [{bar:25.cyan/blue}] {pos}/{len} rows ({percent}%) · {msg}",
        (true, false) => "{spinner} run {prefix} [{bar:25}] {pos}/{len} rows ({percent}%) · {msg}",
        (false, true) => "{spinner:.green} run {prefix}: {pos} rows · {msg}",
        (false, false) => "{spinner} run {prefix}: {pos} rows · {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Delivered, failed, rate and time left (the same numbers as `GET /runs/{id}`).
fn status(p: &Progress) -> String {
    let mut text = format!(
        "{} delivered, {} failed",
        p.counts.delivered, p.counts.failed
    );
    if let Some(rate) = p.rate() {
        text.push_str(&format!(" · {rate:.0} rows/s"));
    }
    if let Some(eta) = p.eta() {
        let eta = Duration::from_secs(eta.as_secs());
        text.push_str(&format!(" · ETA {}", humantime::format_duration(eta)));
    }
    text
}

/// Logs `run progress` when the run begins reading and every
/// [`LINE_EVERY`] after (the end is logged by the run itself).
fn log_line(p: &Progress, last: &Mutex<Option<Instant>>) {
    if p.ended.is_some() {
        return;
    }
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < LINE_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    tracing::info!(
        run = p.id,
        rows = p.done,
        estimate = p.counts.estimate,
        percent = p.percent().map(|x| x.round() as u64),
        delivered = p.counts.delivered,
        failed = p.counts.failed,
        rows_per_second = p.rate().map(|r| r.round() as u64),
        eta_seconds = p.eta().map(|d| d.as_secs()),
        "run progress"
    );
}

/// Stderr for log lines: while a bar is drawn, it is cleared for the line
/// and drawn again below it. One per event; the line is written when dropped.
#[derive(Debug, Default)]
pub struct LogWriter {
    line: Vec<u8>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        let write = || {
            let mut err = std::io::stderr().lock();
            err.write_all(&line).and_then(|()| err.flush())
        };
        match active_bar() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::plan::Counts;

    fn hidden() -> (Shown, ProgressBar) {
        let bar = ProgressBar::hidden();
        let shown = Shown {
            bar: Some(bar.clone()),
            colour: false,
            last_line: Mutex::new(None),
            ended: Mutex::new(None),
        };
        (shown, bar)
    }

    fn progress(done: u64, estimate: Option<u64>, ended: Option<&'static str>) -> Progress {
        let counts = Counts {
            read: done,
            sent: done,
            delivered: done,
            estimate,
            ..Counts::default()
        };
        Progress::new(7, counts, Duration::from_secs(1), ended)
    }

    #[test]
    fn the_bar_grows_past_an_estimate_and_a_success_fills_it() {
        let (shown, bar) = hidden();
        shown.update(&progress(0, None, None));
        assert_eq!(bar.length(), None, "a count until the estimate is known");
        shown.update(&progress(40, Some(100), None));
        assert_eq!((bar.position(), bar.length()), (40, Some(100)));
        assert_eq!(bar.message(), "40 delivered, 0 failed · 40 rows/s · ETA 1s");
        shown.update(&progress(130, Some(100), None));
        assert_eq!((bar.position(), bar.length()), (130, Some(130)));
        shown.update(&progress(150, Some(100), Some("succeeded")));
        assert_eq!((bar.position(), bar.length()), (150, Some(150)));
        assert!(bar.is_finished());
    }

    #[test]
    fn a_success_short_of_the_estimate_is_a_full_bar_and_a_failure_stays_where_it_stopped() {
        let (shown, bar) = hidden();
        shown.update(&progress(60, Some(100), Some("succeeded")));
        assert_eq!((bar.position(), bar.length()), (60, Some(60)));
        let (shown, bar) = hidden();
        shown.update(&progress(60, Some(100), Some("cancelled")));
        assert_eq!((bar.position(), bar.length()), (60, Some(100)));
        assert!(bar.is_finished(), "abandoned");
    }
}
