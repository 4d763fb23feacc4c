//! The acknowledged position: the commit LSN below which every strategy has
//! delivered, dead-lettered or durably parked everything it was given.
//!
//! Why this shape: the router tells the checkpoint about every transaction
//! end it has seen, and each strategy reports how far its deliveries reach.
//! A strategy that has delivered everything it was queued does not hold the
//! slot back, so filtered-out changes and quiet strategies count as done at
//! once, and no per-transaction marker has to travel through idle queues.
//!
//! `acked = min over strategies of (caught up ? seen_end : delivered_through)`
//! where a strategy is caught up when `delivered_through >= queued_through`.
//!
//! Within a strategy, batches may complete out of order (`max_in_flight`);
//! its `delivered_through` comes from its ordered [`Finaliser`], which only
//! moves over a contiguous prefix of finished records. What Postgres itself
//! has confirmed (the slot's `confirmed_flush_lsn`) is read back by the one
//! slot watcher (`source::SlotWatchHandle::confirmed`): an acknowledgement
//! walhook decided on may not have reached the server yet, and a process
//! killed in between restarts from what the server has, so stored batch
//! boundaries are forgotten only behind what the server reports.
//!
//! A configuration reload adds and removes strategies: an added one starts
//! caught up at the routed position (it holds nothing until it is queued
//! something); a removed one is forgotten only once it is caught up, so what
//! it was given still holds the slot until delivered. Indices are never
//! reused.

mod finaliser;

use std::sync::Mutex;

pub(crate) use finaliser::Finaliser;

use crate::lsn::Lsn;

/// Per-strategy positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StrategyPosition {
    /// End LSN of the last transaction with records queued to this strategy.
    pub queued_through: Lsn,
    /// End LSN of the last transaction whose records this strategy has all
    /// delivered, dead-lettered or parked.
    delivered_through: Lsn,
}

impl StrategyPosition {
    fn caught_up(&self) -> bool {
        self.delivered_through >= self.queued_through
    }
}

#[derive(Debug)]
struct State {
    seen_end: Lsn,
    /// By index; `None` once removed.
    strategies: Vec<Option<StrategyPosition>>,
    acked: Lsn,
}

/// Shared between the router (queued, seen) and the strategy workers (delivered).
pub struct Checkpoint {
    state: Mutex<State>,
    on_advance: Box<dyn Fn(Lsn) + Send + Sync>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// `strategies` positions start at `start` (the slot's confirmed position);
    /// `on_advance` is called with each new acked LSN (feed it to the source's
    /// `AckHandle::ack`). It is called with the lock held: keep it cheap.
    pub fn new(
        strategies: usize,
        start: Lsn,
        on_advance: impl Fn(Lsn) + Send + Sync + 'static,
    ) -> Self {
        Checkpoint {
            state: Mutex::new(State {
                seen_end: start,
                strategies: vec![
                    Some(StrategyPosition {
                        queued_through: start,
                        delivered_through: start,
                    });
                    strategies
                ],
                acked: start,
            }),
            on_advance: Box::new(on_advance),
        }
    }

    /// The router queued records of the transaction ending at `end_lsn` to
    /// `strategy`. Call it before (or while) queueing that transaction's end.
    pub fn queued(&self, strategy: usize, end_lsn: Lsn) {
        self.update(|state| {
            if let Some(Some(pos)) = state.strategies.get_mut(strategy) {
                pos.queued_through = pos.queued_through.max(end_lsn);
            }
        });
    }

    /// The router has routed the whole transaction ending at `end_lsn`
    /// (after any `queued` calls for it).
    pub fn seen(&self, end_lsn: Lsn) {
        self.update(|state| state.seen_end = state.seen_end.max(end_lsn));
    }

    /// `strategy` delivered, dead-lettered or parked every record of
    /// transactions ending at or before `end_lsn`.
    pub fn delivered(&self, strategy: usize, end_lsn: Lsn) {
        self.update(|state| {
            if let Some(Some(pos)) = state.strategies.get_mut(strategy) {
                pos.delivered_through = pos.delivered_through.max(end_lsn);
            }
        });
    }

    /// How far `strategy` is done: the routed position while it has
    /// delivered everything it was queued, else its delivered position;
    /// `None` once removed.
    pub(crate) fn done_through(&self, strategy: usize) -> Option<Lsn> {
        let state = self.lock();
        let pos = state.strategies.get(strategy).copied().flatten()?;
        Some(if pos.caught_up() {
            state.seen_end
        } else {
            pos.delivered_through
        })
    }

    /// A new strategy (a reload added it), caught up at the routed
    /// position; returns its index.
    pub fn add(&self) -> usize {
        let mut state = self.lock();
        let seen = state.seen_end;
        state.strategies.push(Some(StrategyPosition {
            queued_through: seen,
            delivered_through: seen,
        }));
        state.strategies.len() - 1
    }

    /// Forgets `strategy` if it has delivered everything it was queued;
    /// true when it is (or was already) gone. One that is behind keeps
    /// holding the position.
    pub fn remove(&self, strategy: usize) -> bool {
        let mut removed = false;
        self.update(|state| {
            if let Some(slot) = state.strategies.get_mut(strategy) {
                if slot.is_none_or(|pos| pos.caught_up()) {
                    *slot = None;
                    removed = true;
                }
            }
        });
        removed
    }

    /// The last transaction end the router has routed.
    pub fn seen_end(&self) -> Lsn {
        self.lock().seen_end
    }

    /// The position acknowledged so far.
    pub fn acked(&self) -> Lsn {
        self.lock().acked
    }

    /// A strategy's positions: what the router queued to it and what it
    /// delivered.
    pub fn position(&self, strategy: usize) -> Option<StrategyPosition> {
        self.lock().strategies.get(strategy).copied().flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the positions torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        change(&mut state);
        let seen = state.seen_end;
        let candidate = state
            .strategies
            .iter()
            .flatten()
            .map(|pos| {
                if pos.caught_up() {
                    seen
                } else {
                    pos.delivered_through
                }
            })
            .min()
            .unwrap_or(seen);
        if candidate > state.acked {
            state.acked = candidate;
            (self.on_advance)(candidate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn recorder() -> (Arc<Mutex<Vec<u64>>>, impl Fn(Lsn) + Send + Sync) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |lsn: Lsn| sink.lock().unwrap().push(lsn.0))
    }

    #[test]
    fn filtered_transactions_advance_at_once() {
        let (acks, f) = recorder();
        let cp = Checkpoint::new(2, Lsn(10), f);
        cp.seen(Lsn(20));
        cp.seen(Lsn(30));
        assert_eq!(cp.acked(), Lsn(30));
        assert_eq!(*acks.lock().unwrap(), vec![20, 30]);
    }

    #[test]
    fn an_undelivered_strategy_holds_the_position() {
        let (_, f) = recorder();
        let cp = Checkpoint::new(2, Lsn(10), f);
        cp.queued(1, Lsn(20));
        cp.seen(Lsn(20));
        cp.seen(Lsn(30));
        assert_eq!(cp.acked(), Lsn(10), "strategy 1 has not delivered txn 20");
        cp.delivered(1, Lsn(20));
        assert_eq!(
            cp.acked(),
            Lsn(30),
            "caught up: follows what the router saw"
        );
    }

    #[test]
    fn partial_delivery_acks_only_what_is_delivered() {
        let (_, f) = recorder();
        let cp = Checkpoint::new(1, Lsn(0), f);
        cp.queued(0, Lsn(20));
        cp.seen(Lsn(20));
        cp.queued(0, Lsn(40));
        cp.seen(Lsn(40));
        cp.delivered(0, Lsn(20));
        assert_eq!(cp.acked(), Lsn(20));
        cp.delivered(0, Lsn(40));
        assert_eq!(cp.acked(), Lsn(40));
    }

    #[test]
    fn never_moves_backwards() {
        let (acks, f) = recorder();
        let cp = Checkpoint::new(1, Lsn(50), f);
        cp.seen(Lsn(40));
        cp.delivered(0, Lsn(30));
        assert_eq!(cp.acked(), Lsn(50));
        assert!(acks.lock().unwrap().is_empty());
    }

    #[test]
    fn added_strategies_start_caught_up_and_removed_ones_hold_until_delivered() {
        let (_, f) = recorder();
        let cp = Checkpoint::new(1, Lsn(10), f);
        cp.queued(0, Lsn(20));
        cp.seen(Lsn(20));
        let added = cp.add();
        assert_eq!(added, 1);
        assert_eq!(cp.position(1).map(|p| p.queued_through), Some(Lsn(20)));
        cp.queued(1, Lsn(30));
        cp.seen(Lsn(30));
        assert!(!cp.remove(0), "strategy 0 has not delivered txn 20");
        assert_eq!(cp.acked(), Lsn(10));
        cp.delivered(0, Lsn(20));
        assert!(cp.remove(0));
        assert_eq!(cp.position(0), None);
        assert_eq!(cp.acked(), Lsn(20), "strategy 1 holds txn 30");
        cp.delivered(1, Lsn(30));
        assert_eq!(cp.acked(), Lsn(30));
        assert_eq!(cp.add(), 2, "indices are not reused");
    }

    #[test]
    fn no_strategies_follows_the_router() {
        let (_, f) = recorder();
        let cp = Checkpoint::new(0, Lsn(1), f);
        cp.seen(Lsn(9));
        assert_eq!(cp.acked(), Lsn(9));
    }
}
