//! The record gate: a position reaches a standby status only after it is
//! recorded (the state store's `slots` row), so what Postgres has confirmed
//! never runs ahead of what walhook recorded. That is what lets a start
//! tell the slot walhook fed from one dropped and created again: a slot
//! whose `confirmed_flush_lsn` is past the record was not fed by walhook,
//! and (recorded, confirmed] is what was lost.
//!
//! The source publishes what it wants to send ([`Wanted`]); a recorder
//! (`app/`, over the state store) writes it and publishes the position
//! recorded; the source's flush is capped at that. The cadence is the
//! recorder's ([`Cadence`]): at most one write in flight, at most one every
//! [`ACK_EVERY`] while acknowledged deliveries wait, and at most one every
//! [`FOLLOW_EVERY`] when the position only follows the server's WAL end
//! (nothing pending): the write makes WAL itself, so following it eagerly
//! would loop.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::lsn::Lsn;
use crate::pg::slot::{SlotIdentity, SlotLoss};

/// Least time between two writes while acknowledgements wait for them.
pub(crate) const ACK_EVERY: Duration = Duration::from_millis(20);
/// Least time between two writes that only follow the server's WAL end.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(10);

/// What the source wants recorded before it sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The slot, its cluster, and the flush position the source would send
    /// (`confirmed`); `None` until a session knows the server.
    pub(crate) identity: Option<SlotIdentity>,
    /// The part of that position made of acknowledged deliveries (the rest
    /// follows the server's WAL end).
    pub(crate) acked: Lsn,
    /// A loss being repaired (`on_slot_lost = "resync"`), recorded with it.
    pub(crate) loss: Option<SlotLoss>,
    /// Shutting down: record now, the last standby status waits for it.
    pub(crate) now: bool,
}

/// The source's side: publish what it wants, read what is recorded.
#[derive(Debug)]
pub(crate) struct Gate {
    wanted: watch::Sender<Wanted>,
    recorded: watch::Receiver<Lsn>,
}

/// The recorder's side.
#[derive(Debug)]
pub struct GateRecorder {
    pub(crate) wanted: watch::Receiver<Wanted>,
    pub(crate) recorded: watch::Sender<Lsn>,
}

/// A gate whose recorded position starts at `recorded` (the state store's,
/// or zero when nothing is recorded yet).
pub(crate) fn gate(recorded: Lsn) -> (Gate, GateRecorder) {
    let (wanted_tx, wanted_rx) = watch::channel(Wanted::default());
    let (recorded_tx, recorded_rx) = watch::channel(recorded);
    (
        Gate {
            wanted: wanted_tx,
            recorded: recorded_rx,
        },
        GateRecorder {
            wanted: wanted_rx,
            recorded: recorded_tx,
        },
    )
}

impl Gate {
    /// Publishes what the source would send (cheap when unchanged).
    pub(crate) fn want(&self, wanted: Wanted) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                *current = wanted;
            }
            changed
        });
    }

    /// The position recorded so far.
    pub(crate) fn recorded(&self) -> Lsn {
        *self.recorded.borrow()
    }

    /// The recorded position's channel (for the stream's `select!`).
    pub(crate) fn recorded_rx(&self) -> watch::Receiver<Lsn> {
        self.recorded.clone()
    }

    /// Asks for `wanted` to be recorded at once and waits (at most
    /// `limit`) until it is; returns the position recorded then.
    pub(crate) async fn flush(&mut self, mut wanted: Wanted, limit: Duration) -> Lsn {
        let target = wanted.identity.as_ref().map_or(Lsn::ZERO, |i| i.confirmed);
        wanted.now = true;
        self.want(wanted);
        let _ = tokio::time::timeout(limit, self.recorded.wait_for(|r| *r >= target)).await;
        self.recorded()
    }
}

/// When the recorder may write next.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cadence {
    last_write: Option<Instant>,
}

impl Cadence {
    /// When a write of `wanted` may start, given what is `recorded`;
    /// `None` when there is nothing to write.
    pub(crate) fn due(&self, wanted: &Wanted, recorded: &Recorded) -> Option<Instant> {
        let identity = wanted.identity.as_ref()?;
        let new_identity = recorded.identity.as_ref().is_none_or(|r| {
            r.slot != identity.slot
                || r.system_id != identity.system_id
                || r.timeline != identity.timeline
        });
        let new_loss = wanted.loss.is_some() && wanted.loss != recorded.loss;
        if !new_identity && !new_loss && identity.confirmed <= recorded.position() {
            return None;
        }
        let urgent = new_identity || new_loss || wanted.acked > recorded.position() || wanted.now;
        let Some(last) = self.last_write else {
            return Some(Instant::now());
        };
        if wanted.now {
            return Some(last);
        }
        Some(last + if urgent { ACK_EVERY } else { FOLLOW_EVERY })
    }

    /// A write starts now.
    pub(crate) fn started(&mut self, at: Instant) {
        self.last_write = Some(at);
    }
}

/// What the recorder has written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub(crate) identity: Option<SlotIdentity>,
    pub(crate) loss: Option<SlotLoss>,
}

impl Recorded {
    fn position(&self) -> Lsn {
        self.identity.as_ref().map_or(Lsn::ZERO, |i| i.confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(confirmed: u64, acked: u64) -> Wanted {
        Wanted {
            identity: Some(SlotIdentity {
                slot: "s".into(),
                system_id: "7".into(),
                timeline: 1,
                confirmed: Lsn(confirmed),
            }),
            acked: Lsn(acked),
            loss: None,
            now: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgements_are_recorded_within_20ms_and_following_every_10s() {
        let mut cadence = Cadence::default();
        let mut recorded = Recorded::default();
        // The first write (a new identity) is due at once.
        let t0 = Instant::now();
        assert_eq!(cadence.due(&wanted(100, 100), &recorded), Some(t0));
        cadence.started(t0);
        recorded.identity = wanted(100, 100).identity;
        assert_eq!(cadence.due(&wanted(100, 100), &recorded), None);
        // A delivery acknowledged: at most one write per 20 ms.
        assert_eq!(
            cadence.due(&wanted(200, 200), &recorded),
            Some(t0 + ACK_EVERY)
        );
        // Only following the WAL end (acked still 100): every 10 s.
        assert_eq!(
            cadence.due(&wanted(300, 100), &recorded),
            Some(t0 + FOLLOW_EVERY)
        );
        // Shutting down: at once after the last write, and only once.
        let mut last = wanted(300, 100);
        last.now = true;
        assert_eq!(cadence.due(&last, &recorded), Some(t0));
        recorded.identity = last.identity.clone();
        assert_eq!(cadence.due(&last, &recorded), None);
        // Another timeline (a failover) is written promptly.
        let mut promoted = wanted(100, 100);
        promoted.identity.as_mut().unwrap().timeline = 2;
        assert_eq!(cadence.due(&promoted, &recorded), Some(t0 + ACK_EVERY));
        // Nothing known yet: nothing to write.
        assert_eq!(cadence.due(&Wanted::default(), &recorded), None);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_waits_for_the_recorder() {
        let (mut gate, mut recorder) = gate(Lsn(5));
        assert_eq!(gate.recorded(), Lsn(5));
        let flushing =
            tokio::spawn(async move { gate.flush(wanted(50, 50), Duration::from_secs(2)).await });
        recorder.wanted.changed().await.unwrap();
        assert!(recorder.wanted.borrow().now);
        recorder.recorded.send_replace(Lsn(50));
        assert_eq!(flushing.await.unwrap(), Lsn(50));
    }
}
