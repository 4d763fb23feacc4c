//! Health, decided in one place: the word for each strategy and for the
//! instance. `/status`, `/readyz`, `/activez`, the console and the metrics
//! (`walhook_health`, `walhook_strategy_state`) all read these functions,
//! so they cannot disagree.
//!
//! Health is computed from state, not from the last event seen: a strategy
//! is failing from its first failed attempt until a success (not only
//! while it waits to retry), parked while it has parked work, blocked while
//! the parking bound keeps a batch from being parked.
//!
//! Readiness is walhook's own health: the replication stream and the state
//! store. A failing, parked, blocked or held strategy (an endpoint outage)
//! makes the instance *degraded*, which is still ready: the orchestrator
//! must not take a streaming pod out of service because a receiver is
//! down. A state-store write that fails makes it not ready (parking, dead
//! letters and stable ids depend on it).

use std::fmt;

use crate::delivery::{DeliveryState, StrategyStatus as WorkerStatus};
use crate::source::{SourceState, SourceStatus};
use crate::telemetry::names;

/// What a strategy is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StrategyState {
    /// Delivering (or idle), nothing parked.
    #[default]
    Running,
    /// Parked work is being delivered from the store; nothing fails now.
    Parked,
    /// A batch failed and has not been delivered since.
    Failing,
    /// The parking bound is reached: a batch waits, holding the strategy
    /// and the slot.
    Blocked,
    /// Held: everything it gets is parked until released.
    Held,
    /// Paused (the admin API or a 410): it queues and holds the slot.
    Paused,
}

impl StrategyState {
    /// Every state, for metrics.
    pub(crate) const ALL: [StrategyState; 6] = [
        StrategyState::Running,
        StrategyState::Parked,
        StrategyState::Failing,
        StrategyState::Blocked,
        StrategyState::Held,
        StrategyState::Paused,
    ];

    /// The lower-case name used in JSON, the console and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyState::Running => "running",
            StrategyState::Parked => "parked",
            StrategyState::Failing => "failing",
            StrategyState::Blocked => "blocked",
            StrategyState::Held => "held",
            StrategyState::Paused => "paused",
        }
    }

    /// True only for `running`: nothing fails, waits or is parked.
    pub fn is_healthy(self) -> bool {
        self == StrategyState::Running
    }

    /// A strategy's state with a worker of its own that a reload replaced
    /// and that still drains (`other`): paused and held stay what they are
    /// (the operator's doing), otherwise the worse of the two.
    pub(crate) fn with_draining(self, other: StrategyState) -> StrategyState {
        let rank = |s: StrategyState| match s {
            StrategyState::Running => 0,
            StrategyState::Parked => 1,
            StrategyState::Failing => 2,
            StrategyState::Blocked => 3,
            StrategyState::Paused | StrategyState::Held => 4,
        };
        match self {
            StrategyState::Paused | StrategyState::Held => self,
            _ if rank(other) > rank(self) && rank(other) < 4 => other,
            _ => self,
        }
    }
}

impl fmt::Display for StrategyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The word for one worker's status: paused wins, then held, blocked,
/// failing, parked, running.
pub(crate) fn worker_state(w: &WorkerStatus) -> StrategyState {
    if w.paused {
        StrategyState::Paused
    } else if w.held.is_some() {
        StrategyState::Held
    } else if w.park_full {
        StrategyState::Blocked
    } else if matches!(w.state, DeliveryState::Retrying | DeliveryState::Blocked) {
        StrategyState::Failing
    } else if w.parked_batches > 0 {
        StrategyState::Parked
    } else {
        StrategyState::Running
    }
}

/// What the instance's health rests on, per strategy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StrategyHealth<'a> {
    pub(crate) name: &'a str,
    pub(crate) state: StrategyState,
    pub(crate) last_error: Option<&'a str>,
    pub(crate) parked_batches: u64,
    pub(crate) state_error: Option<&'a str>,
    /// It has a worker a reload replaced that still drains.
    pub(crate) draining: bool,
}

/// The instance's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Streaming (or a healthy standby), every strategy running.
    Ready,
    /// Streaming, but a strategy is not running (an endpoint outage,
    /// parked work, a hold): still ready.
    Degraded,
    /// Not streaming, or the state store cannot be written.
    NotReady,
}

impl Readiness {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Degraded => "degraded",
            Readiness::NotReady => "not_ready",
        }
    }
}

/// The instance's health: readiness, the text `/readyz` answers, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    pub(crate) readiness: Readiness,
    /// This instance streams from the slot (`/activez`).
    pub(crate) active: bool,
    /// `/readyz`'s body: `ready`, `ready: standby`, `ready: degraded: …`,
    /// `connecting…`, `failed: …`, `not ready: …`.
    pub(crate) text: String,
    /// Each reason it is not plainly ready.
    pub(crate) reasons: Vec<String>,
}

/// The one decision (see the module doc).
pub(crate) fn instance(source: &SourceStatus, strategies: &[StrategyHealth<'_>]) -> Health {
    let not_ready = |text: String| Health {
        readiness: Readiness::NotReady,
        active: false,
        reasons: vec![text.clone()],
        text,
    };
    match source.state {
        SourceState::Streaming => {}
        SourceState::Standby => {
            return Health {
                readiness: Readiness::Ready,
                active: false,
                text: "ready: standby".into(),
                reasons: Vec::new(),
            }
        }
        SourceState::Connecting => {
            return not_ready(match &source.last_error {
                Some(why) => format!("connecting: {why}"),
                None => "connecting".to_string(),
            })
        }
        SourceState::Failed => {
            let why = source.last_error.as_deref().unwrap_or("source stopped");
            return not_ready(format!("failed: {why}"));
        }
    }
    let store: Vec<String> = strategies
        .iter()
        .filter_map(|s| {
            s.state_error
                .map(|e| format!("state store: strategy {}: {e}", s.name))
        })
        .collect();
    if !store.is_empty() {
        return Health {
            readiness: Readiness::NotReady,
            active: true,
            text: format!("not ready: {}", store.join("; ")),
            reasons: store,
        };
    }
    let degraded: Vec<String> = strategies
        .iter()
        .filter(|s| !s.state.is_healthy() || s.draining)
        .map(|s| {
            let mut why = format!("strategy {} {}", s.name, s.state);
            if s.parked_batches > 0 {
                why.push_str(&format!(" ({} batches parked)", s.parked_batches));
            }
            if s.draining {
                why.push_str(" (a replaced worker still drains)");
            }
            if let Some(error) = s.last_error.filter(|_| s.state == StrategyState::Failing) {
                why.push_str(": ");
                why.push_str(error);
            }
            why
        })
        .collect();
    if degraded.is_empty() {
        Health {
            readiness: Readiness::Ready,
            active: true,
            text: "ready".into(),
            reasons: Vec::new(),
        }
    } else {
        Health {
            readiness: Readiness::Degraded,
            active: true,
            text: format!("ready: degraded: {}", degraded.join("; ")),
            reasons: degraded,
        }
    }
}

/// Sets `walhook_health{state}` and `walhook_strategy_state{strategy,
/// state}` (1 for the current word, 0 for the others) from the decision.
pub(crate) fn record(health: &Health, strategies: &[StrategyHealth<'_>]) {
    for r in [Readiness::Ready, Readiness::Degraded, Readiness::NotReady] {
        let on = if r == health.readiness { 1.0 } else { 0.0 };
        metrics::gauge!(names::HEALTH, "state" => r.as_str()).set(on);
    }
    for s in strategies {
        for state in StrategyState::ALL {
            let on = if state == s.state { 1.0 } else { 0.0 };
            metrics::gauge!(names::STRATEGY_STATE, "strategy" => s.name.to_string(), "state" => state.as_str())
                .set(on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(state: StrategyState) -> StrategyHealth<'static> {
        StrategyHealth {
            name: "orders",
            state,
            last_error: Some("endpoint hook (127.0.0.1:9): HTTP 503"),
            parked_batches: 0,
            state_error: None,
            draining: false,
        }
    }

    #[test]
    fn an_endpoint_outage_is_degraded_and_ready_the_state_store_is_not() {
        let mut source = SourceStatus::default();
        assert_eq!(instance(&source, &[]).text, "connecting");
        source.state = SourceState::Standby;
        let standby = instance(&source, &[]);
        assert_eq!(
            (standby.readiness, standby.active),
            (Readiness::Ready, false)
        );
        assert_eq!(standby.text, "ready: standby");
        source.state = SourceState::Failed;
        source.last_error = Some("slot dropped".into());
        assert_eq!(instance(&source, &[]).text, "failed: slot dropped");
        assert_eq!(instance(&source, &[]).readiness, Readiness::NotReady);

        source.state = SourceState::Streaming;
        let ok = instance(&source, &[strategy(StrategyState::Running)]);
        assert_eq!(
            (ok.readiness, ok.text.as_str()),
            (Readiness::Ready, "ready")
        );
        let failing = instance(&source, &[strategy(StrategyState::Failing)]);
        assert_eq!(failing.readiness, Readiness::Degraded);
        assert_eq!(
            failing.text,
            "ready: degraded: strategy orders failing: endpoint hook (127.0.0.1:9): HTTP 503"
        );
        let parked = StrategyHealth {
            parked_batches: 3,
            ..strategy(StrategyState::Parked)
        };
        assert_eq!(
            instance(&source, &[parked]).text,
            "ready: degraded: strategy orders parked (3 batches parked)"
        );
        let draining = StrategyHealth {
            draining: true,
            ..strategy(StrategyState::Running)
        };
        assert_eq!(
            instance(&source, &[draining]).readiness,
            Readiness::Degraded
        );
        let store = StrategyHealth {
            state_error: Some("permission denied for table batches"),
            ..strategy(StrategyState::Running)
        };
        let broken = instance(&source, &[store]);
        assert_eq!(
            (broken.readiness, broken.active),
            (Readiness::NotReady, true)
        );
        assert_eq!(
            broken.text,
            "not ready: state store: strategy orders: permission denied for table batches"
        );
    }

    #[test]
    fn a_workers_word_paused_first_then_held_blocked_failing_parked() {
        let mut w = WorkerStatus::default();
        assert_eq!(worker_state(&w), StrategyState::Running);
        w.parked_batches = 1;
        assert_eq!(worker_state(&w), StrategyState::Parked);
        w.state = DeliveryState::Retrying;
        assert_eq!(worker_state(&w), StrategyState::Failing);
        w.park_full = true;
        assert_eq!(worker_state(&w), StrategyState::Blocked);
        w.held = Some("schema change".into());
        assert_eq!(worker_state(&w), StrategyState::Held);
        w.paused = true;
        assert_eq!(worker_state(&w), StrategyState::Paused);
        assert_eq!(
            StrategyState::Running.with_draining(StrategyState::Failing),
            StrategyState::Failing
        );
        assert_eq!(
            StrategyState::Paused.with_draining(StrategyState::Failing),
            StrategyState::Paused
        );
        assert_eq!(
            StrategyState::Blocked.with_draining(StrategyState::Parked),
            StrategyState::Blocked
        );
    }
}
