//! The process-wide memory budget: bytes of changes between the replication
//! socket and the endpoint's 2xx (DESIGN.md "Delivery rules").
//!
//! Why a budget in bytes and not queue lengths: a queue of 10,000 items is
//! 2 MB of small rows and 2 GB of 200 KB rows. One number, shared by every
//! strategy, bounds what a backlog can cost whatever the row size.
//!
//! Only the source waits on it ([`Budget::wait_room`]): everything
//! downstream charges without waiting ([`Budget::charge`]), so a stage can
//! never wait on memory that only a later stage frees, and the budget cannot
//! deadlock. The source reads the next change only while the budget has room
//! for it, or when nothing at all is held (so a change larger than the whole
//! budget still goes through, alone); while it waits, its loop keeps sending
//! standby status, so the walsender does not time out.
//!
//! What is charged, and released when it is gone:
//! - a decoded change, from the source until the router has routed it
//!   ([`footprint`]: charged by the source, released by the router);
//! - each strategy's serialised record, from the router until its batch is
//!   delivered or dead-lettered (a [`Charge`] travels with the record into
//!   its batch and is dropped with the batch).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::Gauge;
use tokio::sync::Notify;

use crate::decode::{Cell, RecordEvent, SourceEvent};
use crate::telemetry::names;

/// Bytes counted for an event besides its cells (structs, vectors, the
/// channel slot).
const EVENT_OVERHEAD: usize = 256;
/// Bytes counted per cell besides its text.
const CELL_OVERHEAD: usize = 32;

/// A shared byte budget; cheap to clone.
#[derive(Clone)]
pub(crate) struct Budget(Arc<Inner>);

struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// Wakes the one waiter (the source) when bytes are released.
    released: Notify,
    gauge: Gauge,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.0.limit)
            .field("used", &self.used())
            .finish()
    }
}

impl Budget {
    /// A budget of `limit` bytes (`[source] max_buffer_bytes`).
    pub(crate) fn new(limit: usize) -> Budget {
        let gauge = metrics::gauge!(names::BUFFER_BYTES);
        gauge.set(0.0);
        metrics::gauge!(names::BUFFER_LIMIT_BYTES).set(limit as f64);
        Budget(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
            released: Notify::new(),
            gauge,
        }))
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// True when `bytes` more fit, or nothing is held at all.
    fn has_room(&self, bytes: usize) -> bool {
        let used = self.used();
        used == 0 || used.saturating_add(bytes) <= self.0.limit
    }

    /// Waits until `bytes` more fit (or nothing is held). Cancel-safe: it
    /// takes nothing, so call [`Budget::add`] once the bytes are handed on.
    pub(crate) async fn wait_room(&self, bytes: usize) {
        loop {
            let released = self.0.released.notified();
            if self.has_room(bytes) {
                return;
            }
            released.await;
        }
    }

    /// Counts `bytes` without a [`Charge`]: the source hands a decoded
    /// change downstream, the router gives the bytes back with
    /// [`Budget::release`] (both sides compute them with [`footprint`]).
    pub(crate) fn add(&self, bytes: usize) {
        self.0.used.fetch_add(bytes, Ordering::AcqRel);
        self.0.gauge.increment(bytes as f64);
    }

    /// Gives back bytes counted with [`Budget::add`].
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // Never below zero, whatever a caller does.
        let _ = self
            .0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(bytes))
            });
        self.0.gauge.decrement(bytes as f64);
        self.0.released.notify_one();
    }

    /// Counts `bytes` now, without waiting, until the returned charge is
    /// dropped.
    pub(crate) fn charge(&self, bytes: usize) -> Charge {
        self.add(bytes);
        Charge {
            budget: Some(self.clone()),
            bytes,
        }
    }
}

/// Bytes held against a [`Budget`] until dropped. The default holds
/// nothing (records of runs, tests).
#[derive(Debug, Default)]
pub(crate) struct Charge {
    budget: Option<Budget>,
    bytes: usize,
}

impl Charge {
    /// Takes over `other`'s bytes (a batch collects its records' charges).
    pub(crate) fn merge(&mut self, mut other: Charge) {
        if other.bytes == 0 {
            return;
        }
        match &self.budget {
            None => {
                self.budget = other.budget.take();
                self.bytes = std::mem::take(&mut other.bytes);
            }
            Some(mine)
                if other
                    .budget
                    .as_ref()
                    .is_some_and(|b| Arc::ptr_eq(&b.0, &mine.0)) =>
            {
                self.bytes += std::mem::take(&mut other.bytes);
            }
            // Another budget (never in one process): `other` releases its own.
            Some(_) => {}
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.bytes);
        }
    }
}

/// The bytes a decoded change is counted for while it travels from the
/// source to the router: its cells' text (slices of the received message)
/// and a fixed overhead. Begin, Commit and messages count nothing.
pub(crate) fn footprint(event: &SourceEvent) -> usize {
    match event {
        SourceEvent::Record(record) => record_footprint(record),
        _ => 0,
    }
}

/// [`footprint`] of a record.
pub(crate) fn record_footprint(record: &RecordEvent) -> usize {
    let tuple = |t: &Option<crate::decode::Tuple>| {
        t.as_ref().map_or(0, |t| {
            t.0.iter()
                .map(|cell| {
                    CELL_OVERHEAD
                        + match cell {
                            Cell::Text(b) | Cell::Binary(b) => b.len(),
                            Cell::Null | Cell::Unchanged => 0,
                        }
                })
                .sum()
        })
    };
    EVENT_OVERHEAD + tuple(&record.new) + tuple(&record.old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_until_released_and_a_charge_releases_when_dropped() {
        let budget = Budget::new(100);
        let a = budget.charge(60);
        budget.wait_room(40).await; // fits exactly
        let b = budget.charge(40);
        assert_eq!(budget.used(), 100);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_room(10).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room for 10 more");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the release")
            .unwrap();
        assert_eq!(budget.used(), 60);
        drop(a);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn one_change_larger_than_the_budget_goes_alone() {
        let budget = Budget::new(100);
        budget.wait_room(1000).await; // nothing held: it may go
        budget.add(1000);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.wait_room(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "nothing else while it is held");
        budget.release(1000);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn merged_charges_release_together() {
        let budget = Budget::new(1000);
        let mut batch = Charge::default();
        batch.merge(budget.charge(10));
        batch.merge(budget.charge(20));
        batch.merge(Charge::default());
        assert_eq!(batch.bytes(), 30);
        assert_eq!(budget.used(), 30);
        drop(batch);
        assert_eq!(budget.used(), 0);
        budget.release(5); // more than held: stays at zero
        assert_eq!(budget.used(), 0);
    }
}
