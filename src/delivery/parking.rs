//! The handles of a strategy's parking: the byte bound of its parked work
//! ([`ParkBudget`], `max_parked_bytes`) and the switch that holds it
//! ([`HoldHandle`]: park everything it gets until released).
//!
//! The bound blocks, it never drops: a failing batch that does not fit is
//! not parked and keeps its strategy (and the slot) waiting as if parking
//! were off, a batch that must wait behind parked work waits for room. Room
//! comes back as parked rows are delivered or dead-lettered.

use std::sync::{Arc, Mutex};

use metrics::Gauge;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::state::{StateError, StateStore};
use crate::telemetry::names;

/// The bytes a strategy may park.
#[derive(Debug, Clone)]
pub(crate) struct ParkBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    limit: u64,
    used: Mutex<u64>,
    room: Notify,
    /// Batches that found no room since room was last given back.
    full: watch::Sender<bool>,
    full_gauge: Gauge,
}

impl ParkBudget {
    pub(crate) fn new(strategy: &str, limit: u64) -> ParkBudget {
        let full_gauge = metrics::gauge!(names::PARKING_FULL, "strategy" => strategy.to_string());
        full_gauge.set(0.0);
        metrics::gauge!(names::PARKED_LIMIT_BYTES, "strategy" => strategy.to_string())
            .set(limit as f64);
        ParkBudget(Arc::new(BudgetInner {
            limit,
            used: Mutex::new(0),
            room: Notify::new(),
            full: watch::channel(false).0,
            full_gauge,
        }))
    }

    fn used(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Takes `bytes` if they fit; otherwise the bound is reached (shown
    /// until room comes back).
    pub(crate) fn try_reserve(&self, bytes: u64) -> bool {
        let mut used = self.used();
        if *used + bytes <= self.0.limit {
            *used += bytes;
            return true;
        }
        drop(used);
        self.set_full(true);
        false
    }

    /// Takes `bytes`, waiting for room; `false` when `stop` came first.
    pub(crate) async fn reserve(&self, bytes: u64, stop: &CancellationToken) -> bool {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.try_reserve(bytes) {
                return true;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return false,
                _ = room => {}
            }
        }
    }

    /// Counts bytes parked before (found in the store at start).
    pub(crate) fn add(&self, bytes: u64) {
        *self.used() += bytes;
    }

    /// Gives back the bytes of a row that is gone (or was not stored).
    pub(crate) fn release(&self, bytes: u64) {
        let mut used = self.used();
        *used = used.saturating_sub(bytes);
        drop(used);
        self.set_full(false);
        self.0.room.notify_waiters();
    }

    pub(crate) fn subscribe_full(&self) -> watch::Receiver<bool> {
        self.0.full.subscribe()
    }

    fn set_full(&self, full: bool) {
        let before = self.0.full.send_replace(full);
        if before != full {
            self.0.full_gauge.set(if full { 1.0 } else { 0.0 });
        }
    }
}

/// Holds a strategy: while held, everything it gets is parked (nothing is
/// sent, parked work is not retried) and the slot moves on; releasing it
/// sends the parked work in order, then live records again. A hold is kept
/// in `walhook.holds`, so it outlives restarts and failover. See
/// `/work/notes/park-api.md`.
#[derive(Debug, Clone)]
pub struct HoldHandle(Arc<HoldInner>);

#[derive(Debug)]
struct HoldInner {
    strategy: String,
    reason: watch::Sender<Option<String>>,
    state: Option<StateStore>,
}

impl HoldHandle {
    pub(crate) fn new(strategy: &str, state: Option<StateStore>) -> HoldHandle {
        HoldHandle(Arc::new(HoldInner {
            strategy: strategy.to_string(),
            reason: watch::channel(None).0,
            state,
        }))
    }

    /// Holds the strategy for `reason` (kept first: a hold that would not
    /// survive a restart is refused).
    pub async fn hold(&self, reason: &str) -> Result<(), StateError> {
        if let Some(state) = &self.0.state {
            state.record_hold(&self.0.strategy, reason).await?;
        }
        self.set(Some(reason.to_string()));
        Ok(())
    }

    /// Releases the strategy: its parked work goes, in order, then live
    /// records again.
    pub async fn release(&self) -> Result<(), StateError> {
        if let Some(state) = &self.0.state {
            state.clear_hold(&self.0.strategy).await?;
        }
        self.set(None);
        Ok(())
    }

    /// Why it is held, if it is.
    pub fn reason(&self) -> Option<String> {
        self.0.reason.borrow().clone()
    }

    /// Sets the hold without storing it (a hold read from the store).
    pub(crate) fn set(&self, reason: Option<String>) {
        let changed = self.0.reason.send_if_modified(|r| {
            let changed = *r != reason;
            *r = reason.clone();
            changed
        });
        if changed {
            match &reason {
                Some(why) => {
                    tracing::warn!(strategy = %self.0.strategy, reason = %why, "strategy held: everything it gets is parked")
                }
                None => {
                    tracing::info!(strategy = %self.0.strategy, "strategy released: its parked work goes in order")
                }
            }
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.0.reason.subscribe()
    }
}
