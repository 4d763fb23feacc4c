//! When to send a standby status update, and which positions it carries.
//!
//! - write = the highest position received (XLogData or keepalive).
//! - flush = apply = what the consumer acknowledged through [`AckHandle`],
//!   clamped to the end of the last transaction actually handed downstream.
//!   When every handed transaction is acknowledged and the stream is between
//!   transactions, flush follows the latest keepalive's walEnd instead:
//!   everything before a keepalive has already been received, so a quiet or
//!   fully filtered database never pins WAL. flush never moves backwards.
//! - Timing: at once when a keepalive asks for a reply; at most `interval`
//!   apart (min(10 s, wal_sender_timeout/2)); and `coalesce` after the flush
//!   target advances, so a burst of acks costs one message.
//!
//! The clock is a parameter, so tests drive it by hand.
//!
//! [`AckHandle`]: super::AckHandle

use std::time::Duration;

use tokio::time::Instant;

use super::protocol::{Keepalive, StandbyStatus};
use crate::lsn::Lsn;

/// Least time between two statuses that report acknowledgements: a burst
/// of acks costs one 34-byte message (at most 200 a second), and the slot's
/// confirmed position trails the last delivery by at most this much.
const ACK_COALESCE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub(crate) struct Feedback {
    interval: Duration,
    coalesce: Duration,
    started: Instant,
    /// Highest position received.
    received: Lsn,
    /// walEnd of the latest keepalive of this session.
    keepalive_end: Lsn,
    /// Highest position the consumer acknowledged.
    acked: Lsn,
    /// End LSN of the last Commit handed downstream.
    handed_end: Lsn,
    /// The stream is between transactions and nothing waits for the channel.
    between_transactions: bool,
    /// The flush last reported (or the slot's confirmed position): a floor.
    sent_flush: Lsn,
    last_sent: Option<Instant>,
    reply_due: bool,
    /// The highest position recorded in the state store (the record gate):
    /// flush never passes it. Unlimited without a gate.
    recorded: Lsn,
}

impl Feedback {
    /// `floor` is the highest flush position already confirmed to the server.
    pub(crate) fn new(
        now: Instant,
        interval: Duration,
        floor: Lsn,
        handed_end: Lsn,
        acked: Lsn,
    ) -> Self {
        Feedback {
            interval,
            coalesce: ACK_COALESCE.min(interval),
            started: now,
            received: floor,
            keepalive_end: Lsn::ZERO,
            acked,
            handed_end,
            between_transactions: true,
            sent_flush: floor,
            last_sent: None,
            reply_due: false,
            recorded: Lsn(u64::MAX),
        }
    }

    /// The state store recorded `lsn`: flush may go up to it.
    pub(crate) fn set_recorded(&mut self, lsn: Lsn) {
        self.recorded = lsn;
    }

    /// An XLogData arrived (its header positions only feed `write`).
    pub(crate) fn on_xlogdata(&mut self, wal_end: Lsn) {
        self.received = self.received.max(wal_end);
    }

    pub(crate) fn on_keepalive(&mut self, keepalive: &Keepalive) {
        self.received = self.received.max(keepalive.wal_end);
        self.keepalive_end = self.keepalive_end.max(keepalive.wal_end);
        self.reply_due |= keepalive.reply_requested;
    }

    pub(crate) fn on_ack(&mut self, lsn: Lsn) {
        self.acked = self.acked.max(lsn);
    }

    /// A Commit ending at `end` went downstream.
    pub(crate) fn on_commit_handed(&mut self, end: Lsn) {
        self.handed_end = self.handed_end.max(end);
    }

    /// True while no transaction is open in the stream and no event waits
    /// for a channel slot.
    pub(crate) fn set_between_transactions(&mut self, between: bool) {
        self.between_transactions = between;
    }

    /// The newest keepalive walEnd of this session.
    pub(crate) fn server_wal_end(&self) -> Lsn {
        self.keepalive_end
    }

    pub(crate) fn received(&self) -> Lsn {
        self.received
    }

    /// True when everything handed downstream is acknowledged and the stream
    /// rests between transactions.
    fn is_idle(&self) -> bool {
        self.between_transactions && self.acked >= self.handed_end
    }

    /// The flush position walhook would report, before the record gate,
    /// and the part of it made of acknowledgements (the rest follows the
    /// server's WAL end).
    pub(crate) fn wanted(&self) -> (Lsn, Lsn) {
        let acked = self.acked.min(self.handed_end);
        let target = if self.is_idle() {
            acked.max(self.keepalive_end)
        } else {
            acked
        };
        (target.max(self.sent_flush), acked.max(self.sent_flush))
    }

    /// The flush position the next status will carry: what is wanted, up
    /// to what is recorded.
    fn flush_target(&self) -> Lsn {
        self.wanted().0.min(self.recorded).max(self.sent_flush)
    }

    /// When the next status is due (in the past = now).
    pub(crate) fn next_due(&self) -> Instant {
        let Some(last) = self.last_sent else {
            return self.started;
        };
        if self.reply_due {
            return last;
        }
        let periodic = last + self.interval;
        if self.flush_target() > self.sent_flush {
            periodic.min(last + self.coalesce)
        } else {
            periodic
        }
    }

    /// The flush position last reported to the server.
    pub(crate) fn sent_flush(&self) -> Lsn {
        self.sent_flush
    }

    /// Builds the status to send now and records it as sent.
    ///
    /// An answer to a reply request while the record gate holds flush
    /// below what is wanted carries flush = apply = 0 ("not known"), so the
    /// server's confirmed position stays put and its walsender falls back
    /// on `write`: a walsender that is shutting down waits for a client's
    /// flush (or, when it is invalid, its write) to reach everything it
    /// sent, and a gate that cannot record then (the state in the server
    /// going down) would otherwise hold the server's shutdown for ever.
    pub(crate) fn take_status(
        &mut self,
        now: Instant,
        client_time: i64,
        request_reply: bool,
    ) -> StandbyStatus {
        let flush = self.flush_target();
        let held = self.reply_due && flush == self.sent_flush && self.wanted().0 > flush;
        self.sent_flush = flush;
        self.last_sent = Some(now);
        self.reply_due = false;
        let reported = if held { Lsn::ZERO } else { flush };
        StandbyStatus {
            write: self.received.max(flush),
            flush: reported,
            apply: reported,
            client_time,
            reply_requested: request_reply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(2500);

    fn ka(end: u64, reply: bool) -> Keepalive {
        Keepalive {
            wal_end: Lsn(end),
            send_time: 0,
            reply_requested: reply,
        }
    }

    #[test]
    fn first_status_is_due_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(100), Lsn::ZERO, Lsn::ZERO);
        assert_eq!(f.next_due(), t0);
        let s = f.take_status(t0, 1, false);
        assert_eq!((s.write, s.flush, s.apply), (Lsn(100), Lsn(100), Lsn(100)));
        assert_eq!(f.next_due(), t0 + INTERVAL);
        f.on_xlogdata(Lsn(500));
        // Receiving data alone does not hurry the next status.
        assert_eq!(f.next_due(), t0 + INTERVAL);
        let s = f.take_status(t0 + INTERVAL, 2, false);
        assert_eq!((s.write, s.flush), (Lsn(500), Lsn(100)));
        assert_eq!(f.next_due(), t0 + INTERVAL * 2);
    }

    #[test]
    fn keepalive_with_reply_requested_is_answered_at_once() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(1), Lsn::ZERO, Lsn::ZERO);
        f.take_status(t0, 0, false);
        f.set_between_transactions(false);
        f.on_keepalive(&ka(900, true));
        assert!(f.next_due() <= t0);
        let s = f.take_status(t0 + Duration::from_millis(5), 0, false);
        assert_eq!(s.write, Lsn(900));
        // Not idle: flush stays.
        assert_eq!(s.flush, Lsn(1));
        assert_eq!(f.next_due(), t0 + Duration::from_millis(5) + INTERVAL);
    }

    #[test]
    fn acks_are_reported_promptly_and_coalesced() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(10), Lsn::ZERO, Lsn::ZERO);
        f.take_status(t0, 0, false);
        f.set_between_transactions(false);
        f.on_commit_handed(Lsn(200));
        f.on_commit_handed(Lsn(300));
        f.on_ack(Lsn(200));
        assert_eq!(f.next_due(), t0 + ACK_COALESCE);
        f.on_ack(Lsn(300));
        assert_eq!(f.next_due(), t0 + ACK_COALESCE);
        let s = f.take_status(t0 + ACK_COALESCE, 0, false);
        assert_eq!((s.flush, s.apply), (Lsn(300), Lsn(300)));
        assert_eq!(f.next_due(), t0 + ACK_COALESCE + INTERVAL);
    }

    #[test]
    fn flush_never_moves_backwards() {
        let t0 = Instant::now();
        // The slot already confirmed 1000; a late ack of 500 changes nothing.
        let mut f = Feedback::new(t0, INTERVAL, Lsn(1000), Lsn(500), Lsn::ZERO);
        f.set_between_transactions(false);
        f.on_ack(Lsn(500));
        assert_eq!(f.flush_target(), Lsn(1000));
        assert_eq!(f.take_status(t0, 0, false).flush, Lsn(1000));
        assert_eq!(f.next_due(), t0 + INTERVAL);
    }

    #[test]
    fn acks_beyond_what_was_handed_down_are_clamped() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(10), Lsn(50), Lsn::ZERO);
        f.set_between_transactions(false);
        f.on_ack(Lsn(9999));
        assert_eq!(f.flush_target(), Lsn(50));
    }

    #[test]
    fn idle_stream_follows_keepalive_wal_end() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(10), Lsn::ZERO, Lsn::ZERO);
        f.take_status(t0, 0, false);
        // Quiet database: only keepalives.
        f.on_keepalive(&ka(5000, false));
        assert!(f.is_idle());
        assert_eq!(f.flush_target(), Lsn(5000));
        assert_eq!(f.next_due(), t0 + ACK_COALESCE);
        f.take_status(t0 + ACK_COALESCE, 0, false);

        // A transaction is open in the stream: the keepalive may not be followed.
        f.set_between_transactions(false);
        f.on_keepalive(&ka(6000, false));
        assert_eq!(f.flush_target(), Lsn(5000));

        // It was handed down (ends at 7000) but not acked yet: still pinned.
        f.on_commit_handed(Lsn(7000));
        f.set_between_transactions(true);
        assert!(!f.is_idle());
        assert_eq!(f.flush_target(), Lsn(5000));

        // Acked: flush = the commit end, then the next keepalive's walEnd.
        f.on_ack(Lsn(7000));
        assert_eq!(f.flush_target(), Lsn(7000));
        f.on_keepalive(&ka(8000, false));
        assert_eq!(f.flush_target(), Lsn(8000));
    }

    #[test]
    fn flush_waits_for_the_record() {
        let t0 = Instant::now();
        let mut f = Feedback::new(t0, INTERVAL, Lsn(10), Lsn::ZERO, Lsn::ZERO);
        f.set_recorded(Lsn(10));
        f.take_status(t0, 0, false);
        f.set_between_transactions(false);
        f.on_commit_handed(Lsn(200));
        f.on_ack(Lsn(200));
        assert_eq!(f.wanted(), (Lsn(200), Lsn(200)));
        // Not recorded yet: not sent, and no status hurried for it.
        assert_eq!(f.flush_target(), Lsn(10));
        assert_eq!(f.next_due(), t0 + INTERVAL);
        f.set_recorded(Lsn(200));
        assert_eq!(f.flush_target(), Lsn(200));
        assert_eq!(f.next_due(), t0 + ACK_COALESCE);
        // Following the WAL end is wanted, not acknowledged.
        f.set_between_transactions(true);
        f.on_keepalive(&ka(900, false));
        assert_eq!(f.wanted(), (Lsn(900), Lsn(200)));
        let sent = f.take_status(t0 + ACK_COALESCE, 0, false);
        assert_eq!(sent.flush, Lsn(200));
        // A reply asked for while the gate holds flush: flush "not known",
        // write everything received (a walsender shutting down waits for it).
        f.on_keepalive(&ka(950, true));
        let reply = f.take_status(t0 + ACK_COALESCE * 2, 0, false);
        assert_eq!(
            (reply.write, reply.flush, reply.apply),
            (Lsn(950), Lsn::ZERO, Lsn::ZERO)
        );
        assert_eq!(f.sent_flush(), Lsn(200));
        f.set_recorded(Lsn(950));
        assert_eq!(f.take_status(t0 + INTERVAL, 0, false).flush, Lsn(950));
    }
}
