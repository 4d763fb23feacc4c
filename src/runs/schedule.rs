//! Scheduled runs: each `schedules` entry starts an asynchronous run at its
//! cron times.
//!
//! Rules, and why:
//! - Only while the source is streaming: the instance holding the slot is
//!   the active one, so a standby beside it never sends the same rows again.
//! - A run still going when the next time comes is not doubled: that time
//!   is skipped, logged and counted (`walhook_runs_total{outcome="skipped"}`).
//! - No catch-up: the next time is always computed from now, so times missed
//!   while walhook was down (or while a run went on) do not fire in a burst.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::manager::{Ask, RunManager};
use super::plan::Trigger;
use crate::config::Config;
use crate::control::{RunMode, RunReply};
use crate::source::{SourceState, SourceStatus};
use crate::telemetry::names;

/// Each schedule's name, cron text, next time and last run, for `/status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScheduleBoard(Arc<Mutex<Vec<Entry>>>);

#[derive(Debug, Clone)]
struct Entry {
    strategy: String,
    name: Arc<str>,
    cron: String,
    timezone: String,
    next: Option<DateTime<Utc>>,
    last_run: Option<i64>,
    skipped: u64,
}

impl ScheduleBoard {
    /// Every schedule of `config`, none fired yet.
    pub(crate) fn new(config: &Config) -> ScheduleBoard {
        let entries = config
            .strategies
            .iter()
            .flat_map(|strategy| {
                strategy.schedules.iter().map(|schedule| Entry {
                    strategy: strategy.name.clone(),
                    name: Arc::from(schedule.name()),
                    cron: schedule.cron.clone(),
                    timezone: schedule.timezone.clone().unwrap_or_else(|| "UTC".into()),
                    next: None,
                    last_run: None,
                    skipped: 0,
                })
            })
            .collect();
        ScheduleBoard(Arc::new(Mutex::new(entries)))
    }

    /// A reload applied `config`: its schedules, keeping the last run and
    /// skip count of those that stay.
    pub(crate) fn reset(&self, config: &Config) {
        let fresh = ScheduleBoard::new(config);
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = fresh.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for entry in &mut next {
            if let Some(old) = entries
                .iter()
                .find(|e| e.strategy == entry.strategy && e.name == entry.name)
            {
                entry.last_run = old.last_run;
                entry.skipped = old.skipped;
            }
        }
        *entries = next;
    }

    fn update(&self, strategy: &str, name: &str, change: impl FnOnce(&mut Entry)) {
        let mut entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries
            .iter_mut()
            .find(|e| e.strategy == strategy && &*e.name == name)
        {
            change(entry);
        }
    }

    /// `strategy`'s schedules as `/status` shows them.
    pub(crate) fn json_for(&self, strategy: &str) -> Vec<serde_json::Value> {
        let entries = self.0.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .filter(|e| e.strategy == strategy)
            .map(|e| {
                serde_json::json!({
                    "name": &*e.name,
                    "cron": e.cron,
                    "timezone": e.timezone,
                    "next": e.next.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    "last_run": e.last_run,
                    "skipped": e.skipped,
                })
            })
            .collect()
    }
}

/// The next time `cron` fires strictly after `after`, read in `tz`.
fn next_after(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Spawns one task per schedule of every strategy; they end on `stop`.
/// Schedules that do not parse were refused by config validation and are
/// skipped here with a warning.
pub(crate) fn spawn(
    manager: RunManager,
    board: ScheduleBoard,
    config: &Config,
    source: watch::Receiver<SourceStatus>,
    stop: CancellationToken,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for (i, strategy) in config.strategies.iter().enumerate() {
        for (j, schedule) in strategy.schedules.iter().enumerate() {
            let path = format!("strategies[{i}].schedules[{j}]");
            let (cron, tz) = match (schedule.parse_cron(), schedule.time_zone()) {
                (Ok(cron), Ok(tz)) => (cron, tz),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(schedule = %path, error = %e, "schedule ignored");
                    continue;
                }
            };
            let job = Job {
                manager: manager.clone(),
                strategy: strategy.name.clone(),
                name: Arc::from(schedule.name()),
                board: board.clone(),
                filter: schedule.filter.clone(),
                path,
                cron,
                tz,
            };
            tasks.spawn(job.run(source.clone(), stop.clone()));
        }
    }
    tasks
}

struct Job {
    manager: RunManager,
    strategy: String,
    name: Arc<str>,
    board: ScheduleBoard,
    filter: Option<String>,
    path: String,
    cron: croner::Cron,
    tz: Tz,
}

impl Job {
    async fn run(self, source: watch::Receiver<SourceStatus>, stop: CancellationToken) {
        let mut last_fire = Utc::now();
        let mut last_run: Option<i64> = None;
        loop {
            // From now, never from a time missed while down: no catch-up.
            let from = last_fire.max(Utc::now());
            let Some(next) = next_after(&self.cron, self.tz, from) else {
                tracing::warn!(schedule = %self.name, path = %self.path, strategy = %self.strategy, "the cron expression never fires again");
                return;
            };
            self.board
                .update(&self.strategy, &self.name, |e| e.next = Some(next));
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            last_fire = next;
            if source.borrow().state != SourceState::Streaming {
                tracing::debug!(schedule = %self.name, path = %self.path, strategy = %self.strategy, "not the active instance; scheduled run not started");
                continue;
            }
            if let Some(id) = last_run.filter(|id| self.manager.is_active(*id)) {
                metrics::counter!(names::RUNS_TOTAL, "strategy" => self.strategy.clone(), "trigger" => "schedule", "schedule" => self.name.to_string(), "outcome" => "skipped")
                    .increment(1);
                self.board
                    .update(&self.strategy, &self.name, |e| e.skipped += 1);
                tracing::warn!(schedule = %self.name, path = %self.path, strategy = %self.strategy, running = id, "the previous scheduled run is still going; this time is skipped");
                continue;
            }
            match self
                .manager
                .start(
                    &self.strategy,
                    RunMode::Async,
                    Ask {
                        filter: self.filter.clone(),
                        ..Ask::default()
                    },
                    Trigger::Schedule(self.name.clone()),
                )
                .await
            {
                Ok(RunReply::Started { id }) => {
                    self.board
                        .update(&self.strategy, &self.name, |e| e.last_run = Some(id));
                    last_run = Some(id);
                }
                Ok(RunReply::Completed(_)) => {}
                Err(e) => {
                    tracing::warn!(schedule = %self.name, path = %self.path, strategy = %self.strategy, error = %e, "scheduled run could not start")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    fn schedule(cron: &str, tz: Option<&str>) -> Schedule {
        Schedule {
            name: None,
            cron: cron.into(),
            filter: None,
            timezone: tz.map(str::to_string),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_fields_are_minutes_and_six_start_with_seconds() {
        let s = schedule("30 2 * * *", None);
        let next = next_after(
            &s.parse_cron().unwrap(),
            s.time_zone().unwrap(),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(next, Some(at("2026-01-01T02:30:00Z")));
        let s = schedule("*/2 * * * * *", None);
        let next = next_after(
            &s.parse_cron().unwrap(),
            s.time_zone().unwrap(),
            at("2026-01-01T00:00:01Z"),
        );
        assert_eq!(next, Some(at("2026-01-01T00:00:02Z")));
    }

    #[test]
    fn a_time_zone_moves_the_wall_clock() {
        let s = schedule("0 2 * * *", Some("Europe/Berlin"));
        let next = next_after(
            &s.parse_cron().unwrap(),
            s.time_zone().unwrap(),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            next,
            Some(at("2026-01-01T01:00:00Z")),
            "02:00 CET is 01:00 UTC"
        );
    }

    #[test]
    fn bad_cron_text_and_zones_are_named() {
        assert!(schedule("* * *", None)
            .parse_cron()
            .unwrap_err()
            .contains("has 3 fields"));
        assert!(schedule("61 * * * *", None).parse_cron().is_err());
        assert!(schedule("0 2 * * *", Some("Mars/Base"))
            .time_zone()
            .unwrap_err()
            .contains("unknown time zone"));
    }
}
