//! `walhook.runs`: one row per on-demand or scheduled run, written when it
//! starts, as its counts grow and when it ends; read by `GET /runs/{id}`.

use serde_json::Value;

use super::{StateError, StateStore};

impl StateStore {
    /// Records a run as `running` with `counts` and how it was asked for
    /// (`params`); returns its id.
    pub(crate) async fn insert_run(
        &self,
        strategy: &str,
        trigger: &str,
        filter: Option<&str>,
        counts: &Value,
        params: &Value,
    ) -> Result<i64, StateError> {
        const WHAT: &str = "recording a run in walhook.runs";
        let row = self
            .client()
            .await?
            .query_one(
                &*self.sql(
                    "INSERT INTO walhook.runs (strategy, trigger, filter, state, counts, params) \
                 VALUES ($1, $2, $3, 'running', $4::text::jsonb, $5::text::jsonb) RETURNING id",
                ),
                &[
                    &strategy,
                    &trigger,
                    &filter,
                    &counts.to_string(),
                    &params.to_string(),
                ],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        row.try_get(0).map_err(StateError::query(WHAT))
    }

    /// Writes a running run's counts.
    pub(crate) async fn update_run_counts(
        &self,
        id: i64,
        counts: &Value,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql("UPDATE walhook.runs SET counts = $2::text::jsonb WHERE id = $1"),
                &[&id, &counts.to_string()],
            )
            .await
            .map_err(StateError::query("updating a run's counts in walhook.runs"))?;
        Ok(())
    }

    /// Stores how far a run got (it resumes from here after a restart)
    /// and its counts.
    pub(crate) async fn record_run_progress(
        &self,
        id: i64,
        progress: &impl serde::Serialize,
        counts: &Value,
    ) -> Result<(), StateError> {
        let text = serde_json::to_string(progress).unwrap_or_default();
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "UPDATE walhook.runs SET progress = $2::text::jsonb, counts = $3::text::jsonb \
                     WHERE id = $1",
                ),
                &[&id, &text, &counts.to_string()],
            )
            .await
            .map_err(StateError::query(
                "storing a run's progress in walhook.runs",
            ))?;
        Ok(())
    }

    /// Sets a run's state (`running`, `paused`) while it goes on.
    pub(crate) async fn set_run_state(&self, id: i64, state: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "UPDATE walhook.runs SET state = $2 WHERE id = $1 AND finished_at IS NULL",
                ),
                &[&id, &state],
            )
            .await
            .map_err(StateError::query("recording a run's state in walhook.runs"))?;
        Ok(())
    }

    /// The runs still `running` or `paused` (to resume), oldest first.
    pub(crate) async fn unfinished_runs(&self) -> Result<Vec<Value>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                &*self.sql(&format!(
                    "SELECT {RUN_JSON} FROM walhook.runs \
                     WHERE finished_at IS NULL AND state IN ('running', 'paused') ORDER BY id"
                )),
                &[],
            )
            .await
            .map_err(StateError::query(READING))?;
        rows.iter().map(run_json).collect()
    }

    /// Whether `strategy` has a run with this trigger, in any state.
    pub(crate) async fn has_run(&self, strategy: &str, trigger: &str) -> Result<bool, StateError> {
        let row = self
            .client()
            .await?
            .query_one(
                &*self.sql(
                    "SELECT EXISTS (SELECT 1 FROM walhook.runs WHERE strategy = $1 AND trigger = $2)",
                ),
                &[&strategy, &trigger],
            )
            .await
            .map_err(StateError::query(READING))?;
        row.try_get(0).map_err(StateError::query(READING))
    }

    /// Records how a run ended: its state, final counts and error.
    pub(crate) async fn finish_run(
        &self,
        id: i64,
        state: &str,
        counts: &Value,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "UPDATE walhook.runs SET state = $2, counts = $3::text::jsonb, \
                 finished_at = clock_timestamp(), error = $4 WHERE id = $1",
                ),
                &[&id, &state, &counts.to_string(), &error],
            )
            .await
            .map_err(StateError::query(
                "recording a run's outcome in walhook.runs",
            ))?;
        Ok(())
    }

    /// A run's record as JSON (id, strategy, trigger, filter, state, counts,
    /// started_at, finished_at, error); `None` when there is no such id.
    pub(crate) async fn get_run(&self, id: i64) -> Result<Option<Value>, StateError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &*self.sql(&format!(
                    "SELECT {RUN_JSON} FROM walhook.runs WHERE id = $1"
                )),
                &[&id],
            )
            .await
            .map_err(StateError::query(READING))?;
        row.map(|row| run_json(&row)).transpose()
    }

    /// The latest `limit` runs (of `strategy`, if given), newest first, as
    /// [`StateStore::get_run`] shows each.
    pub(crate) async fn list_runs(
        &self,
        strategy: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Value>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                &*self.sql(&format!(
                    "SELECT {RUN_JSON} FROM walhook.runs \
                     WHERE $1::text IS NULL OR strategy = $1 ORDER BY id DESC LIMIT $2"
                )),
                &[&strategy, &limit],
            )
            .await
            .map_err(StateError::query(READING))?;
        rows.iter().map(run_json).collect()
    }
}

const READING: &str = "reading walhook.runs";

/// One `walhook.runs` row as JSON text.
const RUN_JSON: &str = "jsonb_build_object('id', id, 'strategy', strategy, 'trigger', trigger, \
     'filter', filter, 'state', state, 'counts', counts, 'started_at', started_at, \
     'finished_at', finished_at, 'error', error, 'params', params, 'progress', progress)::text";

fn run_json(row: &tokio_postgres::Row) -> Result<Value, StateError> {
    let text: &str = row.try_get(0).map_err(StateError::query(READING))?;
    serde_json::from_str(text).map_err(|e| StateError::Malformed {
        what: READING,
        source: e.into(),
    })
}
