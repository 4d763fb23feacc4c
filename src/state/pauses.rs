//! `walhook.pauses`: the strategies paused through the admin API, so that a
//! pause outlives a restart and a failover to the standby.

use super::{StateError, StateStore};

impl StateStore {
    /// Records `strategy` as paused (again: no change).
    pub(crate) async fn record_pause(&self, strategy: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "INSERT INTO walhook.pauses (strategy) VALUES ($1) \
                     ON CONFLICT (strategy) DO NOTHING",
                ),
                &[&strategy],
            )
            .await
            .map_err(StateError::query("recording a pause in walhook.pauses"))?;
        Ok(())
    }

    /// Forgets the pause of `strategy` (none: no change).
    pub(crate) async fn clear_pause(&self, strategy: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql("DELETE FROM walhook.pauses WHERE strategy = $1"),
                &[&strategy],
            )
            .await
            .map_err(StateError::query("removing a pause from walhook.pauses"))?;
        Ok(())
    }

    /// The paused strategies' names.
    pub(crate) async fn paused_strategies(&self) -> Result<Vec<String>, StateError> {
        const WHAT: &str = "reading walhook.pauses";
        let rows = self
            .client()
            .await?
            .query(&*self.sql("SELECT strategy FROM walhook.pauses"), &[])
            .await
            .map_err(StateError::query(WHAT))?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(StateError::query(WHAT)))
            .collect()
    }
}
