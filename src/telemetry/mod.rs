//! Metrics and logging setup. Metric names live in `names` so every stage
//! records under the names DESIGN.md promises and the tests can check them.
//!
//! The Prometheus recorder is installed once per process
//! ([`install_recorder`]) and rendered by the admin server's `/metrics`;
//! walhook runs no HTTP listener of the exporter's own, so there is one port.
//! Every metric is described once at start-up (`describe`), so a scrape
//! carries HELP text even before the first event. The gauges that mirror
//! the source's state are set by [`spawn_upkeep`] from the source's status
//! channel, so the source itself stays free of metrics code.

pub(crate) mod names;
mod slot;

pub use names::EVENTS_TOTAL;
pub(crate) use slot::spawn_slot_metrics;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::source::{SourceState, SourceStatus};

/// Upper bounds for histograms in seconds: 1 ms to 5 min.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds for records per batch: 1 to 10 000.
const RECORD_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 10000.0,
];
/// How often [`spawn_upkeep`] drains histogram buffers when nothing changes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Building the recorder or installing it globally failed (another
    /// recorder was installed first).
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(String),
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (histograms as buckets:
/// `SECONDS_BUCKETS` for `*_seconds`, `RECORD_BUCKETS` for
/// `walhook_batch_records`), describes every metric and sets `build_info`.
/// Later calls return the same handle, so tests and `run` may all call it.
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Two racing first calls: the loser's install fails; it then returns the
    // winner's handle.
    let result = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::BATCH_RECORDS.to_string()),
                &RECORD_BUCKETS,
            )
        })
        .map_err(|err| TelemetryError::Install(err.to_string()))?
        .install_recorder();
    let handle = match result {
        Ok(handle) => HANDLE.get_or_init(|| handle).clone(),
        Err(err) => match HANDLE.get() {
            Some(handle) => return Ok(handle.clone()),
            None => return Err(TelemetryError::Install(err.to_string())),
        },
    };
    describe();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// HELP text (and units) for every metric in [`names`], on the installed
/// recorder. [`install_recorder`] calls it; calling it again is harmless.
pub(crate) fn describe() {
    use names::*;
    describe_gauge!(
        SLOT_WAL_STATUS,
        "1 for the slot's wal_status (reserved, extended, unreserved, lost), 0 for the others."
    );
    describe_gauge!(
        SLOT_SAFE_WAL_BYTES,
        Unit::Bytes,
        "The slot's safe_wal_size: WAL the server may still write before the slot risks invalidation (absent while max_slot_wal_keep_size = -1)."
    );
    describe_gauge!(
        SLOT_WAL_KEEP_LIMIT_BYTES,
        Unit::Bytes,
        "max_slot_wal_keep_size in bytes (-1 = unlimited)."
    );
    describe_counter!(
        SLOT_LOSSES_TOTAL,
        "The recorded slot found lost (kind: missing, invalidated, replaced, other_cluster) and what walhook did (outcome: refused, resynced)."
    );
    describe_counter!(
        EVENTS_TOTAL,
        "Committed changes decoded from the replication stream, by table and operation."
    );
    describe_counter!(
        EVENTS_MATCHED_TOTAL,
        "Changes that passed a strategy's filter, by strategy and operation."
    );
    describe_counter!(
        EVENTS_FILTERED_TOTAL,
        "Changes a strategy's filter rejected (or failed on), by strategy and operation."
    );
    describe_counter!(
        FILTER_ERRORS_TOTAL,
        "Filter, mapping and group_by evaluations that failed, by strategy."
    );
    describe_counter!(
        FILTER_NULLS_TOTAL,
        "Evaluations a NULL made unknown (not matched, as SQL's WHERE; mapped values null), by strategy."
    );
    describe_counter!(
        BATCHES_TOTAL,
        "Batches finished, by strategy and outcome (delivered, dead_lettered)."
    );
    describe_counter!(
        DELIVERY_ATTEMPTS_TOTAL,
        "HTTP delivery attempts, by strategy and status class (2xx, 4xx, 5xx, error)."
    );
    describe_histogram!(
        DELIVERY_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one HTTP delivery attempt, by strategy."
    );
    describe_histogram!(
        BATCH_RECORDS,
        Unit::Count,
        "Records per delivered batch, by strategy."
    );
    describe_histogram!(
        COMMIT_TO_DELIVERY_SECONDS,
        Unit::Seconds,
        "Seconds from a transaction's commit to the 2xx that delivered it, by strategy."
    );
    describe_gauge!(
        QUEUE_RECORDS,
        Unit::Count,
        "Records queued or in flight, by strategy."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Batches stored as dead letters after their attempts ran out, by strategy."
    );
    describe_gauge!(
        REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "Bytes of WAL between the server's WAL end and the position walhook acknowledged."
    );
    describe_gauge!(
        ACKED_LSN,
        "The WAL position last acknowledged to Postgres (flush), as a number."
    );
    describe_gauge!(
        RECEIVED_LSN,
        "The highest WAL position received from Postgres, as a number."
    );
    describe_gauge!(
        STANDBY,
        "1 while another instance holds the replication slot and this one waits."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_counter!(
        CONFIG_RELOAD_TOTAL,
        "Configuration reloads (SIGHUP, POST /config/reload) by result: applied, unchanged, invalid, refused."
    );
    describe_counter!(
        RUNS_TOTAL,
        "On-demand and scheduled runs, by strategy, trigger and outcome."
    );
    describe_counter!(
        RUN_RECORDS_TOTAL,
        Unit::Count,
        "Records sent by on-demand and scheduled runs, by strategy."
    );
    describe_counter!(
        DELIVERY_DECISIONS_TOTAL,
        "What each delivery attempt's answer decided, by strategy, status class and decision \
         (delivered, retry, pause, dead_letter)."
    );
    describe_gauge!(
        IN_FLIGHT_BATCHES,
        Unit::Count,
        "Batches being sent (attempted or waiting to retry), by strategy."
    );
    describe_gauge!(
        STRATEGY_PAUSED,
        "1 while a strategy is paused, by strategy and reason (admin: the API; \
         endpoint_gone: its endpoint answered 410)."
    );
    describe_gauge!(
        ENDPOINT_UP,
        "0 while an endpoint's circuit breaker is open (it failed too often in a row), else 1."
    );
    describe_gauge!(
        BUFFER_BYTES,
        Unit::Bytes,
        "Bytes of changes held in memory between the replication stream and delivery."
    );
    describe_gauge!(
        BUFFER_LIMIT_BYTES,
        Unit::Bytes,
        "The memory budget for changes in flight ([source] max_buffer_bytes)."
    );
    describe_gauge!(
        PARKED_BATCHES,
        Unit::Count,
        "Batches parked in walhook.parked, by strategy: stored with their exact bytes and ids, \
         retried from there; the slot has moved past them."
    );
    describe_gauge!(
        PARKED_RECORDS,
        Unit::Count,
        "Records in parked batches, by strategy."
    );
    describe_gauge!(
        PARKED_BYTES,
        Unit::Bytes,
        "Bytes of parked batches' bodies, by strategy (bounded by max_parked_bytes)."
    );
    describe_gauge!(
        PARKED_LIMIT_BYTES,
        Unit::Bytes,
        "A strategy's max_parked_bytes."
    );
    describe_gauge!(
        PARKING_FULL,
        "1 while a strategy's parking bound is reached: a batch that should be parked waits \
         (holding its strategy and the slot) until parked work is delivered."
    );
    describe_gauge!(
        HEALTH,
        "1 for the instance's readiness (ready; degraded: streaming, but a strategy is failing, \
         parked, blocked or held; not_ready), 0 for the others: the same decision as /readyz."
    );
    describe_gauge!(
        STRATEGY_STATE,
        "1 for a strategy's state (running, parked, failing, blocked, held, paused), 0 for the \
         others: the same word as /status."
    );
    describe_counter!(
        STATE_ERRORS_TOTAL,
        "Writes to the state store that failed, by operation (parking a batch, storing a dead \
         letter, recording a batch's records, ...). /status shows the last one until a write succeeds."
    );
    describe_counter!(
        PARKED_TOTAL,
        "Batches parked, by strategy and reason (failing, behind, held)."
    );
}

/// On-demand triggers of runs that this process serves (`run-strategy`
/// from the command line is a process of its own and exposes no metrics);
/// schedules are registered by name.
const RUN_TRIGGERS: [&str; 2] = ["sync", "async"];
/// How runs end.
const RUN_OUTCOMES: [&str; 2] = ["succeeded", "failed"];

/// Registers a strategy's run counters at zero, so their series exist from
/// the start: `rate()` and `increase()` over them then see the first run
/// (a counter that appears at 1 counts as no increase), and dashboards and
/// alerts have a series to show before any run.
pub(crate) fn register_strategy(strategy: &str, schedules: &[&str]) {
    let on_demand = RUN_TRIGGERS.iter().map(|t| (*t, ""));
    let scheduled = schedules.iter().map(|name| ("schedule", *name));
    for (trigger, schedule) in on_demand.chain(scheduled) {
        for outcome in RUN_OUTCOMES {
            metrics::counter!(names::RUNS_TOTAL, "strategy" => strategy.to_string(), "trigger" => trigger, "schedule" => schedule.to_string(), "outcome" => outcome)
                .increment(0);
        }
    }
    metrics::counter!(names::RUN_RECORDS_TOTAL, "strategy" => strategy.to_string()).increment(0);
}

/// Shows `walhook_state_errors_total` at 0 for every operation before any error.
pub(crate) fn register_state_errors(operations: &[&'static str]) {
    for operation in operations {
        metrics::counter!(names::STATE_ERRORS_TOTAL, "operation" => *operation).increment(0);
    }
}

/// Shows `walhook_config_reload_total` at 0 for every result before any reload.
pub(crate) fn register_reloads() {
    for result in ["applied", "unchanged", "invalid", "refused"] {
        metrics::counter!(names::CONFIG_RELOAD_TOTAL, "result" => result).increment(0);
    }
}

/// Sets the source gauges from one status snapshot.
fn record_source_status(status: &SourceStatus) {
    let lag = status.server_wal_end.0.saturating_sub(status.acked_lsn.0);
    metrics::gauge!(names::REPLICATION_LAG_BYTES).set(lag as f64);
    metrics::gauge!(names::ACKED_LSN).set(status.acked_lsn.0 as f64);
    metrics::gauge!(names::RECEIVED_LSN).set(status.received_lsn.0 as f64);
    let standby = if status.state == SourceState::Standby {
        1.0
    } else {
        0.0
    };
    metrics::gauge!(names::STANDBY).set(standby);
}

/// Keeps the source gauges in step with `status` and drains the recorder's
/// histogram buffers every few seconds, until `shutdown`.
pub fn spawn_upkeep(
    handle: PrometheusHandle,
    mut status: watch::Receiver<SourceStatus>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut source_open = true;
        record_source_status(&status.borrow_and_update());
        loop {
            tokio::select! {
                biased;
                // Shutdown first, then status changes, then the timer.
                _ = shutdown.cancelled() => break,
                changed = status.changed(), if source_open => match changed {
                    Ok(()) => record_source_status(&status.borrow_and_update()),
                    // The source is gone; keep the last values.
                    Err(_) => source_open = false,
                },
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    #[test]
    fn every_metric_name_is_described() {
        let source = include_str!("mod.rs");
        // Split on the signature spelled in two parts, so that this test's
        // own text is not taken for the function.
        let describe = source
            .split(concat!("fn describe", "() {"))
            .nth(1)
            .and_then(|rest| rest.split("\n}\n").next())
            .expect("describe() body");
        let mut names = 0;
        for line in include_str!("names.rs").lines() {
            let Some(rest) = line
                .strip_prefix("pub const ")
                .or_else(|| line.strip_prefix("pub(crate) const "))
            else {
                continue;
            };
            let ident = rest.split(':').next().unwrap_or("").trim();
            assert!(
                describe.contains(&format!("{ident},")),
                "{ident} has no HELP text in describe()"
            );
            names += 1;
        }
        assert!(names >= 15, "only {names} metric names were found");
    }

    #[tokio::test]
    async fn scrape_has_help_for_source_gauges_and_build_info() {
        let handle = install_recorder().expect("recorder");
        assert!(install_recorder().is_ok(), "a second install is harmless");
        let (tx, rx) = watch::channel(SourceStatus::default());
        let shutdown = CancellationToken::new();
        let task = spawn_upkeep(handle.clone(), rx, shutdown.clone());
        tx.send_replace(SourceStatus {
            state: SourceState::Standby,
            received_lsn: Lsn(900),
            acked_lsn: Lsn(800),
            server_wal_end: Lsn(1000),
            last_error: None,
            ..Default::default()
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = handle.render();
            if text.contains("walhook_replication_lag_bytes 200") {
                assert!(text.contains("walhook_standby 1"), "{text}");
                assert!(text.contains("walhook_acked_lsn 800"), "{text}");
                assert!(text.contains("# HELP walhook_standby "), "{text}");
                assert!(text.contains("walhook_build_info{version=\""), "{text}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        task.await.expect("upkeep task");
    }
}
