//! One streaming session: CopyBoth frames in, decoded events out, standby
//! status back, in a single biased `select!` loop.
//!
//! Backpressure: while a decoded event waits for a channel slot, or for
//! room in the memory budget, the loop stops reading the socket, but
//! acknowledgements and the status timer keep running, so the walsender
//! never times out behind a slow consumer.

use std::collections::VecDeque;
use std::time::Duration;

use postgres_protocol::message::backend::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::conn::ReplConn;
use super::error::SourceError;
use super::feedback::Feedback;
use super::gate::{Gate, Wanted};
use super::protocol::{self, CopyMessage};
use super::resume::{Handed, ReplayFilter};
use super::wire::{self, Frame};
use super::SourceStatus;
use crate::budget::{footprint, Budget};
use crate::decode::{Decoder, SourceEvent};
use crate::lsn::Lsn;
use crate::pg::slot::{SlotIdentity, SlotLoss};
use crate::timestamp::pg_now_micros;

/// How long to wait for the server to confirm the end of the stream.
const FINISH_WAIT: Duration = Duration::from_secs(2);
/// How long the last standby status waits for its position to be recorded.
const FINAL_RECORD_WAIT: Duration = Duration::from_secs(2);
/// Received positions reach `/status` and the metrics at most this late,
/// also while no acknowledgement moves (a paused strategy), without a
/// status update per message.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// What outlives a connection.
#[derive(Debug, Default)]
pub(super) struct Memory {
    handed: Handed,
    /// The flush position last confirmed to the server: a floor for later ones.
    pub(crate) floor: Lsn,
    /// The cluster's system identifier, to notice a different server.
    pub(crate) system_id: Option<String>,
    /// The slot streamed from: recorded at start, then as judged by each
    /// session (its `confirmed` is where that session started).
    pub(crate) identity: Option<SlotIdentity>,
    /// A loss being repaired, recorded with the slot.
    pub(crate) loss: Option<SlotLoss>,
}

/// Per-connection streaming state.
struct Session<'a> {
    conn: ReplConn,
    memory: &'a mut Memory,
    status: &'a watch::Sender<SourceStatus>,
    feedback: Feedback,
    decoder: Decoder,
    decoded: Vec<SourceEvent>,
    pending: VecDeque<SourceEvent>,
    filter: ReplayFilter,
    /// Latest non-zero XLogData start, for error messages.
    position: Lsn,
    /// The received and server positions last put in the status, and when.
    published: (Lsn, Lsn),
    published_at: Instant,
}

/// Where decoded events go: the channel, after the memory budget has room.
#[derive(Debug, Clone, Copy)]
pub(super) struct Downstream<'a> {
    pub(super) tx: &'a mpsc::Sender<SourceEvent>,
    pub(super) budget: Option<&'a Budget>,
}

/// What decides the flush position: downstream's acknowledgements, and
/// the record gate (when a recorder writes the slot's record).
#[derive(Debug)]
pub(super) struct Upstream<'a> {
    pub(super) acks: &'a mut watch::Receiver<Lsn>,
    pub(super) gate: Option<&'a mut Gate>,
}

/// Publishes what the feedback would send to the record gate, when it
/// changed since `last` (the positions only: nothing is cloned per event).
fn want(gate: &Gate, memory: &Memory, feedback: &Feedback, last: &mut (Lsn, Lsn), now: bool) {
    let wanted = feedback.wanted();
    if wanted == *last && !now {
        return;
    }
    *last = wanted;
    gate.want(wanted_of(memory, wanted, now));
}

fn wanted_of(memory: &Memory, (target, acked): (Lsn, Lsn), now: bool) -> Wanted {
    Wanted {
        identity: memory.identity.clone().map(|mut id| {
            id.confirmed = target;
            id
        }),
        acked,
        loss: memory.loss.clone(),
        now,
    }
}

/// Streams until shutdown (Ok) or an error.
pub(super) async fn run(
    conn: ReplConn,
    memory: &mut Memory,
    upstream: Upstream<'_>,
    status: &watch::Sender<SourceStatus>,
    wal_sender_timeout: Duration,
    downstream: Downstream<'_>,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    let Downstream { tx, budget } = downstream;
    let Upstream { acks, mut gate } = upstream;
    let mut recorded = gate.as_ref().map(|g| g.recorded_rx());
    let mut last_wanted = (Lsn::ZERO, Lsn::ZERO);
    let now = Instant::now();
    let interval = protocol::feedback_interval(wal_sender_timeout);
    let silence = protocol::silence_limit(wal_sender_timeout);
    conn.set_user_timeout(protocol::user_timeout(wal_sender_timeout));
    let acked = *acks.borrow_and_update();
    let feedback = Feedback::new(now, interval, memory.floor, memory.handed.last_end, acked);
    let mut s = Session {
        conn,
        memory,
        status,
        feedback,
        decoder: Decoder::new(),
        decoded: Vec::new(),
        pending: VecDeque::new(),
        filter: ReplayFilter::new(),
        position: Lsn::ZERO,
        published: (Lsn::ZERO, Lsn::ZERO),
        published_at: now,
    };
    if let Some(lsn) = recorded.as_mut().map(|r| *r.borrow_and_update()) {
        s.feedback.set_recorded(lsn);
    }
    let mut last_heard = now;
    let mut acks_open = true;

    loop {
        // Work through frames already buffered, unless downstream is full:
        // then the socket is left alone until a slot frees up.
        while s.pending.is_empty() {
            let Some(frame) = s.conn.try_frame()? else {
                break;
            };
            s.on_frame(frame)?;
        }
        let reading = s.pending.is_empty();
        s.feedback
            .set_between_transactions(reading && !s.filter.in_transaction());
        if let Some(gate) = gate.as_deref() {
            want(gate, s.memory, &s.feedback, &mut last_wanted, false);
        }
        let status_due = s.feedback.next_due();
        let publish_due = s.unpublished().then_some(s.published_at + PUBLISH_EVERY);

        tokio::select! {
            biased;
            // 1. Shutdown: report the final position, end the stream.
            _ = shutdown.cancelled() => {
                s.feedback.on_ack(*acks.borrow_and_update());
                if let Some(gate) = gate.as_deref_mut() {
                    // The last status carries what is recorded by then.
                    let wanted = wanted_of(s.memory, s.feedback.wanted(), true);
                    s.feedback.set_recorded(gate.flush(wanted, FINAL_RECORD_WAIT).await);
                }
                if let Err(error) = s.send_status(false).await {
                    tracing::warn!(error = %error, "the last standby status was not sent; the slot's confirmed position stays where it was (what follows it is delivered again after a restart)");
                }
                s.conn.finish(FINISH_WAIT).await;
                return Ok(());
            }
            // 2. Acknowledgements from downstream, and their record.
            changed = acks.changed(), if acks_open => match changed {
                Ok(()) => s.feedback.on_ack(*acks.borrow_and_update()),
                // Every AckHandle is gone: flush can only follow keepalives now.
                Err(_) => acks_open = false,
            },
            Some(lsn) = recorded_changed(&mut recorded) => s.feedback.set_recorded(lsn),
            // 3. Deadlines: the standby status, and a server gone silent.
            _ = sleep_until(status_due) => {
                // Ask for an answer when the server has been quiet, to notice a dead peer.
                let ask = Instant::now().saturating_duration_since(last_heard) >= interval;
                s.send_status(ask).await?;
            }
            _ = sleep_until(publish_due.unwrap_or(status_due)), if publish_due.is_some() => {
                s.publish_positions();
            }
            _ = sleep_until(last_heard + silence), if reading => {
                return Err(SourceError::Silent {
                    target: s.conn.target().to_string(),
                    secs: silence.as_secs(),
                });
            }
            // 4. Hand the next decoded event downstream, once the memory
            //    budget has room for it and the channel a slot.
            permit = reserve(tx, budget, s.pending.front().map_or(0, footprint)), if !reading => {
                let permit = permit.map_err(|_| SourceError::DownstreamClosed)?;
                if let Some(event) = s.pending.pop_front() {
                    if let Some(budget) = budget {
                        budget.add(footprint(&event));
                    }
                    s.memory.handed.record(&event);
                    if let SourceEvent::Commit { end_lsn, .. } = &event {
                        s.feedback.on_commit_handed(*end_lsn);
                    }
                    permit.send(event);
                }
                if s.pending.is_empty() {
                    // Reading resumes: time spent blocked is not server silence.
                    last_heard = last_heard.max(Instant::now());
                }
            }
            // 5. More bytes from the server.
            read = s.conn.fill(), if reading => {
                read?;
                last_heard = Instant::now();
            }
        }
    }
}

/// The next position the record gate recorded; pending for ever without
/// a gate (or once its recorder is gone: flush then stays where it is).
async fn recorded_changed(recorded: &mut Option<watch::Receiver<Lsn>>) -> Option<Lsn> {
    match recorded {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// A channel slot for an event of `bytes`, after the budget has room for it.
async fn reserve<'a>(
    tx: &'a mpsc::Sender<SourceEvent>,
    budget: Option<&Budget>,
    bytes: usize,
) -> Result<mpsc::Permit<'a, SourceEvent>, mpsc::error::SendError<()>> {
    if let Some(budget) = budget {
        budget.wait_room(bytes).await;
    }
    tx.reserve().await
}

impl Session<'_> {
    fn on_frame(&mut self, frame: Frame) -> Result<(), SourceError> {
        let message = match frame {
            Frame::Message(message) => message,
            Frame::CopyBoth => return Err(self.protocol("a second CopyBothResponse")),
        };
        match message {
            Message::CopyData(body) => match protocol::parse_copy_data(body.into_bytes()) {
                Ok(CopyMessage::XLogData(x)) => {
                    self.feedback.on_xlogdata(x.wal_end);
                    if x.start != Lsn::ZERO {
                        self.position = x.start;
                    }
                    let position = self.position;
                    self.decoder
                        .decode(x.data, &mut self.decoded)
                        .map_err(|source| SourceError::Decode {
                            lsn: position,
                            source,
                        })?;
                    for event in self.decoded.drain(..) {
                        if self.filter.admit(&self.memory.handed, &event)? {
                            self.pending.push_back(event);
                        }
                    }
                    Ok(())
                }
                Ok(CopyMessage::Keepalive(k)) => {
                    self.feedback.on_keepalive(&k);
                    Ok(())
                }
                Err(e) => Err(self.protocol(&e.0)),
            },
            Message::ErrorResponse(body) => {
                let error = wire::db_error(body.fields()).map_err(|e| self.protocol(&e.0))?;
                Err(SourceError::Server {
                    context: "replication stream".into(),
                    target: self.conn.target().to_string(),
                    error: Box::new(error),
                })
            }
            // The server ended the stream: a walsender stopping for a smart
            // or fast shutdown sends CommandComplete (after CopyDone on some
            // versions), a timeline change CopyDone. Either way: reconnect.
            Message::CopyDone | Message::CommandComplete(_) | Message::ReadyForQuery(_) => {
                Err(SourceError::Ended {
                    target: self.conn.target().to_string(),
                })
            }
            Message::NoticeResponse(body) => {
                if let Ok(notice) = wire::db_error(body.fields()) {
                    tracing::info!(sqlstate = %notice.code, message = %notice.message, "server notice");
                }
                Ok(())
            }
            Message::ParameterStatus(_) => Ok(()),
            _ => Err(self.protocol("unexpected message while streaming")),
        }
    }

    async fn send_status(&mut self, request_reply: bool) -> Result<(), SourceError> {
        let status = self
            .feedback
            .take_status(Instant::now(), pg_now_micros(), request_reply);
        self.conn.send_status(&status).await?;
        let flush = self.feedback.sent_flush();
        self.memory.floor = self.memory.floor.max(flush);
        tracing::trace!(write = %status.write, flush = %status.flush, "standby status sent");
        let (received, wal_end) = self.positions();
        self.status.send_if_modified(|s| {
            let before = (s.received_lsn, s.acked_lsn, s.server_wal_end);
            s.received_lsn = received;
            s.acked_lsn = flush;
            s.server_wal_end = wal_end;
            before != (s.received_lsn, s.acked_lsn, s.server_wal_end)
        });
        self.published = (received, wal_end);
        self.published_at = Instant::now();
        Ok(())
    }

    /// The highest position received and the server's WAL end (never below it).
    fn positions(&self) -> (Lsn, Lsn) {
        let received = self.feedback.received();
        (received, self.feedback.server_wal_end().max(received))
    }

    /// Received positions moved since the status last showed them.
    fn unpublished(&self) -> bool {
        self.positions() != self.published
    }

    /// Shows the received positions in the status (the acknowledged one
    /// moves with the standby status).
    fn publish_positions(&mut self) {
        let (received, wal_end) = self.positions();
        self.status.send_if_modified(|s| {
            let before = (s.received_lsn, s.server_wal_end);
            s.received_lsn = received;
            s.server_wal_end = wal_end;
            before != (s.received_lsn, s.server_wal_end)
        });
        self.published = (received, wal_end);
        self.published_at = Instant::now();
    }

    fn protocol(&self, reason: &str) -> SourceError {
        SourceError::Protocol {
            target: self.conn.target().to_string(),
            reason: reason.to_string(),
        }
    }
}
