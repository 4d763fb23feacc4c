//! No needless duplicates after an in-process reconnect.
//!
//! After a reconnect the server resends every transaction whose commit is
//! not confirmed, including ones already handed downstream (not yet acked)
//! and possibly one that was cut off half-way (Begin and k changes went
//! down, then the connection dropped). [`Handed`] remembers what went
//! downstream across sessions; a per-session [`ReplayFilter`] then drops
//! transactions committed at or before the last one handed down, and for the
//! interrupted one drops its Begin and first k events, so downstream sees
//! that transaction continue as if nothing happened. Decoding is
//! deterministic, so the k dropped events are the ones already sent (record
//! ids are `commit_lsn:index`).

use crate::decode::SourceEvent;
use crate::lsn::Lsn;

use super::error::SourceError;

/// What went downstream, across reconnects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Handed {
    /// Commit LSN of the last transaction handed down completely.
    last_commit: Option<Lsn>,
    /// Its end LSN.
    pub(crate) last_end: Lsn,
    /// A transaction whose Begin went down but whose Commit did not.
    open: Option<OpenTxn>,
    /// LSN of the last non-transactional message handed down.
    last_message: Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenTxn {
    commit_lsn: Lsn,
    /// Events (records, transactional messages) handed down after Begin.
    events: u32,
}

impl Handed {
    /// Records an event that was just handed downstream.
    pub(crate) fn record(&mut self, event: &SourceEvent) {
        match event {
            SourceEvent::Begin { commit_lsn, .. } => {
                self.open = Some(OpenTxn {
                    commit_lsn: *commit_lsn,
                    events: 0,
                });
            }
            SourceEvent::Commit {
                commit_lsn,
                end_lsn,
            } => {
                self.last_commit = Some(*commit_lsn);
                self.last_end = *end_lsn;
                self.open = None;
            }
            SourceEvent::Message {
                transactional: false,
                lsn,
                ..
            } => self.last_message = self.last_message.max(*lsn),
            SourceEvent::Record(_) | SourceEvent::Message { .. } => {
                if let Some(open) = &mut self.open {
                    open.events = open.events.saturating_add(1);
                }
            }
        }
    }
}

/// What to do with the events of the current transaction of this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InTxn {
    /// Hand everything down.
    Forward,
    /// Already delivered in full: drop through Commit.
    SkipAll,
    /// Interrupted earlier: drop this many events, then forward.
    SkipFirst(u32),
}

/// Per-session filter over decoded events.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReplayFilter {
    txn: Option<InTxn>,
}

impl ReplayFilter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// True between Begin and Commit of the stream (skipped ones included).
    pub(crate) fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Whether `event` should go downstream, given what already went.
    pub(crate) fn admit(
        &mut self,
        handed: &Handed,
        event: &SourceEvent,
    ) -> Result<bool, SourceError> {
        match event {
            SourceEvent::Begin { commit_lsn, .. } => {
                let state = match handed.open {
                    Some(open) if open.commit_lsn == *commit_lsn => InTxn::SkipFirst(open.events),
                    _ if handed.last_commit.is_some_and(|last| *commit_lsn <= last) => {
                        InTxn::SkipAll
                    }
                    Some(open) => {
                        return Err(SourceError::ResumeGap {
                            commit_lsn: open.commit_lsn,
                            next: *commit_lsn,
                        })
                    }
                    None => InTxn::Forward,
                };
                self.txn = Some(state);
                // The Begin of an interrupted transaction already went down.
                Ok(state == InTxn::Forward)
            }
            SourceEvent::Commit { .. } => {
                let state = self.txn.take();
                Ok(state != Some(InTxn::SkipAll))
            }
            SourceEvent::Message {
                transactional: false,
                lsn,
                ..
            } => Ok(*lsn > handed.last_message),
            SourceEvent::Record(_) | SourceEvent::Message { .. } => match &mut self.txn {
                Some(InTxn::SkipAll) => Ok(false),
                Some(InTxn::SkipFirst(n)) if *n > 0 => {
                    *n -= 1;
                    Ok(false)
                }
                _ => Ok(true),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn begin(c: u64) -> SourceEvent {
        SourceEvent::Begin {
            xid: 1,
            commit_lsn: Lsn(c),
            commit_time: 0,
        }
    }
    fn commit(c: u64) -> SourceEvent {
        SourceEvent::Commit {
            commit_lsn: Lsn(c),
            end_lsn: Lsn(c + 8),
        }
    }
    /// A transactional message stands in for a record (same counting rule).
    fn change(lsn: u64) -> SourceEvent {
        SourceEvent::Message {
            transactional: true,
            lsn: Lsn(lsn),
            index: 0,
            prefix: "p".into(),
            content: Bytes::new(),
        }
    }

    /// Runs `stream` through a new session filter, recording what passes.
    fn session(handed: &mut Handed, stream: &[SourceEvent]) -> Vec<String> {
        let mut f = ReplayFilter::new();
        let mut out = Vec::new();
        for ev in stream {
            if f.admit(handed, ev).unwrap() {
                handed.record(ev);
                out.push(match ev {
                    SourceEvent::Begin { commit_lsn, .. } => format!("B{}", commit_lsn.0),
                    SourceEvent::Commit { commit_lsn, .. } => format!("C{}", commit_lsn.0),
                    SourceEvent::Message { lsn, .. } => format!("m{}", lsn.0),
                    SourceEvent::Record(_) => "r".into(),
                });
            }
        }
        out
    }

    #[test]
    fn first_session_forwards_everything() {
        let mut h = Handed::default();
        let out = session(&mut h, &[begin(100), change(1), commit(100)]);
        assert_eq!(out, ["B100", "m1", "C100"]);
        assert_eq!(h.last_commit, Some(Lsn(100)));
        assert_eq!(h.last_end, Lsn(108));
        assert_eq!(h.open, None);
    }

    #[test]
    fn replayed_complete_transactions_are_dropped() {
        let mut h = Handed::default();
        session(
            &mut h,
            &[begin(100), change(1), commit(100), begin(200), commit(200)],
        );
        // Reconnect: the server resends both (not acked), then a new one.
        let out = session(
            &mut h,
            &[
                begin(100),
                change(1),
                commit(100),
                begin(200),
                commit(200),
                begin(300),
                change(3),
                commit(300),
            ],
        );
        assert_eq!(out, ["B300", "m3", "C300"]);
    }

    #[test]
    fn interrupted_transaction_continues_where_it_stopped() {
        let mut h = Handed::default();
        // The connection drops after Begin and two changes.
        let first = session(&mut h, &[begin(100), change(1), change(2)]);
        assert_eq!(first, ["B100", "m1", "m2"]);
        assert_eq!(
            h.open,
            Some(OpenTxn {
                commit_lsn: Lsn(100),
                events: 2
            })
        );
        let second = session(
            &mut h,
            &[begin(100), change(1), change(2), change(3), commit(100)],
        );
        assert_eq!(second, ["m3", "C100"]);
        assert_eq!(h.open, None);
        assert_eq!(h.last_commit, Some(Lsn(100)));
    }

    #[test]
    fn a_missing_interrupted_transaction_is_an_error() {
        let mut h = Handed::default();
        session(&mut h, &[begin(100), change(1)]);
        let mut f = ReplayFilter::new();
        let err = f.admit(&h, &begin(200)).unwrap_err();
        assert!(matches!(err, SourceError::ResumeGap { .. }));
    }

    #[test]
    fn non_transactional_messages_are_not_repeated() {
        let mut h = Handed::default();
        let msg = |lsn| SourceEvent::Message {
            transactional: false,
            lsn: Lsn(lsn),
            index: 0,
            prefix: "hb".into(),
            content: Bytes::new(),
        };
        assert_eq!(session(&mut h, &[msg(50)]), ["m50"]);
        assert_eq!(session(&mut h, &[msg(50), msg(60)]), ["m60"]);
    }

    #[test]
    fn filter_tracks_transaction_boundaries() {
        let h = Handed::default();
        let mut f = ReplayFilter::new();
        assert!(!f.in_transaction());
        f.admit(&h, &begin(1)).unwrap();
        assert!(f.in_transaction());
        f.admit(&h, &commit(1)).unwrap();
        assert!(!f.in_transaction());
    }
}
