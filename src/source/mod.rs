//! The replication source: a logical replication connection to Postgres
//! (pgoutput over CopyBoth), decoded into [`SourceEvent`]s on a bounded
//! channel, with standby status feedback driven by downstream acks.
//!
//! ```text
//!   Source::run ── reconnect loop (backoff; standby on 55006; fatal errors stop)
//!     └─ session: connect (TLS, auth) → IDENTIFY_SYSTEM → SHOW wal_sender_timeout
//!          → check publications and slot (create when allowed) → START_REPLICATION
//!          └─ stream loop: select! { shutdown, acks, status timer, channel permit, socket }
//! ```
//!
//! What is acknowledged: flush = apply = the highest LSN passed to
//! [`AckHandle::ack`] (a Commit's `end_lsn`), never more than what was handed
//! down, never backwards; while everything handed down is acknowledged and
//! the stream rests between transactions it follows the server's keepalive
//! walEnd, so filtered or quiet databases do not pin WAL. XLogData header
//! positions are never used as checkpoints.
//!
//! What may repeat: after a process restart, every transaction after the
//! slot's confirmed position. After an in-process reconnect, nothing: the
//! transactions already handed down are skipped, and one cut off half-way
//! resumes after its last handed-down change (see `resume`).
//!
//! The pure parts (frames, auth, copy messages, feedback timing, replay
//! filter) live in their own modules and are unit-tested with bytes and
//! values; `conn` and `stream` are the thin async shell. Connection strings
//! and TLS settings are shared with every SQL connection ([`crate::pg`]).

mod error;
mod feedback;
mod gate;
mod protocol;
mod resume;
mod wire;

mod conn;
mod stream;
mod watcher;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use error::{DbError, Disposition, SourceError};
pub use gate::GateRecorder;
pub(crate) use gate::{Cadence, Recorded};
pub use watcher::{CatalogQueryError, SlotWatchHandle, SlotWatcher};

use crate::budget::Budget;
use crate::config::{OnSlotLost, SourceConfig};
use crate::decode::SourceEvent;
use crate::lsn::Lsn;
use crate::pg::conninfo::{self, ConnInfo};
use crate::pg::slot::{
    self as pg_slot, LossKind, ServerIdentity, SlotIdentity, SlotLoss, SlotRow, Verdict,
};
use crate::state::StateStore;
use conn::ReplConn;
use error::sqlstate;
use gate::Gate;
use protocol::SystemInfo;
use stream::Memory;

/// How to reach the slot and what to stream.
#[derive(Clone)]
pub struct SourceOptions {
    /// libpq URL or key=value string; sslmode up to verify-full, sslrootcert.
    url: String,
    /// Logical replication slot (pgoutput).
    slot: String,
    /// Publications to stream (publication_names).
    pub publications: Vec<String>,
    /// application_name shown in pg_stat_replication (an `application_name`
    /// in the URL wins).
    pub application_name: String,
    /// Create the slot when it does not exist yet (never after this process
    /// has streamed from it).
    pub create_slot: bool,
    /// Create the slot with FAILOVER, and turn it on for an existing one
    /// (PostgreSQL 17+).
    pub failover: bool,
    /// Capacity for the event channel the caller creates (a hint for the caller).
    pub channel_capacity: usize,
    /// Ask for logical messages (`messages 'true'`, PostgreSQL 14+): on
    /// when a strategy selects messages.
    pub messages: bool,
    /// The memory budget: a change is read from the stream only when it
    /// has room for it (the router gives the bytes back once routed).
    pub(crate) budget: Option<Budget>,
    /// Where walhook records the slot (the state store's `slots` row):
    /// each session judges the slot found against it ([`pg_slot::judge`]).
    pub(crate) ledger: Option<StateStore>,
    /// What to do when the recorded slot is lost.
    pub(crate) on_slot_lost: OnSlotLost,
}

impl SourceOptions {
    /// Options with defaults: application_name `walhook`, create_slot on,
    /// channel capacity 1024.
    pub fn new(url: impl Into<String>, slot: impl Into<String>, publications: Vec<String>) -> Self {
        SourceOptions {
            url: url.into(),
            slot: slot.into(),
            publications,
            application_name: "walhook".into(),
            create_slot: true,
            failover: false,
            channel_capacity: 1024,
            messages: false,
            budget: None,
            ledger: None,
            on_slot_lost: OnSlotLost::Stop,
        }
    }

    /// The options of `walhook run`: `[source]`'s URL, slot and publication.
    pub(crate) fn from_config(source: &SourceConfig) -> Self {
        let mut opts = SourceOptions::new(
            source.url.expose(),
            source.slot.clone(),
            vec![source.publication.clone()],
        );
        opts.failover = source.failover;
        opts.on_slot_lost = source.on_slot_lost;
        opts
    }
}

impl fmt::Debug for SourceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceOptions")
            .field("url", &conninfo::redact(&self.url))
            .field("slot", &self.slot)
            .field("publications", &self.publications)
            .field("application_name", &self.application_name)
            .field("create_slot", &self.create_slot)
            .field("failover", &self.failover)
            .field("channel_capacity", &self.channel_capacity)
            .field("messages", &self.messages)
            .field("budget", &self.budget)
            .field("ledger", &self.ledger)
            .field("on_slot_lost", &self.on_slot_lost)
            .finish()
    }
}

/// Reports downstream durability to the source.
#[derive(Clone, Debug)]
pub struct AckHandle {
    acked: Arc<watch::Sender<Lsn>>,
}

impl AckHandle {
    /// Everything up to and including the transaction ending at `lsn`
    /// (a Commit's `end_lsn`) is durable downstream. Lower values than an
    /// earlier ack are ignored.
    pub fn ack(&self, lsn: Lsn) {
        self.acked.send_if_modified(|current| {
            if lsn > *current {
                *current = lsn;
                true
            } else {
                false
            }
        });
    }

    /// The highest LSN acknowledged so far.
    #[cfg(test)]
    fn acked(&self) -> Lsn {
        *self.acked.borrow()
    }
}

/// What the source is doing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SourceState {
    /// Connecting, checking the slot, or waiting to reconnect.
    Connecting,
    /// START_REPLICATION succeeded; changes flow.
    Streaming,
    /// Another connection holds the slot; retrying every second.
    Standby,
    /// Stopped on a fatal error (see `last_error`).
    Failed,
}

impl SourceState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Streaming => "streaming",
            SourceState::Standby => "standby",
            SourceState::Failed => "failed",
        }
    }
}

/// A snapshot for `/status`, `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub state: SourceState,
    /// Highest WAL position received (the status `write` field).
    pub received_lsn: Lsn,
    /// The flush position last confirmed to Postgres.
    pub acked_lsn: Lsn,
    /// The server's WAL end as last reported (for lag).
    pub server_wal_end: Lsn,
    /// The latest error, fatal or not (no secrets: errors never hold
    /// them); cleared once the stream runs again.
    pub last_error: Option<String>,
    /// When `last_error` was set.
    pub last_error_at: Option<SystemTime>,
    /// When streaming last cleared an error.
    pub recovered_at: Option<SystemTime>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            state: SourceState::Connecting,
            received_lsn: Lsn::ZERO,
            acked_lsn: Lsn::ZERO,
            server_wal_end: Lsn::ZERO,
            last_error: None,
            last_error_at: None,
            recovered_at: None,
        }
    }
}

impl SourceStatus {
    /// Shows `error` (and when it came, unless it is the one shown already).
    pub(crate) fn set_error(&mut self, error: String) {
        if self.last_error.as_deref() != Some(error.as_str()) {
            self.last_error_at = Some(SystemTime::now());
        }
        self.last_error = Some(error);
    }

    /// The stream runs again: the error is cleared, with when.
    fn recovered(&mut self) {
        if self.last_error.take().is_some() {
            self.recovered_at = Some(SystemTime::now());
        }
    }
}

/// Exponential backoff with jitter, 100 ms → 5 s.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The next delay: uniformly in [d/2, d], with d doubling up to max.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let low = d / 2;
        low + rand::rng().random_range(Duration::ZERO..=d - low)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A streaming session must last this long before backoff starts over.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Retry period while another connection holds the slot.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// The replication source stage.
pub struct Source {
    opts: SourceOptions,
    acks: watch::Receiver<Lsn>,
    status: watch::Sender<SourceStatus>,
    /// Where the first streaming session of this process started.
    resumed: watch::Sender<Option<Lsn>>,
    /// The connection [`Source::open_early`] is opening, for the first session.
    early: Option<JoinHandle<Result<Opened, SourceError>>>,
    /// The record gate, when a recorder writes the slot's record.
    gate: Option<Gate>,
    /// The latest loss of the slot found (refused or repaired).
    losses: watch::Sender<Option<LossReport>>,
}

/// A lost slot, as the source found it: refused (walhook stops with exit
/// code 2), or repaired with a new slot (`on_slot_lost = "resync"`; the
/// strategies must then be backfilled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossReport {
    pub(crate) loss: SlotLoss,
    pub(crate) repaired: bool,
}

/// A replication connection past IDENTIFY_SYSTEM and its settings, not yet
/// checking the slot or streaming.
struct Opened {
    conn: ReplConn,
    system: SystemInfo,
    wal_sender_timeout: Duration,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// The source, the handle downstream acknowledges through, and a status feed.
    pub fn new(opts: SourceOptions) -> (Source, AckHandle, watch::Receiver<SourceStatus>) {
        let (ack_tx, acks) = watch::channel(Lsn::ZERO);
        let (status, status_rx) = watch::channel(SourceStatus::default());
        (
            Source {
                opts,
                acks,
                status,
                resumed: watch::channel(None).0,
                early: None,
                gate: None,
                losses: watch::channel(None).0,
            },
            AckHandle {
                acked: Arc::new(ack_tx),
            },
            status_rx,
        )
    }

    /// Caps every flush position at what `recorder`'s other end has
    /// recorded (see `gate`); the recorded position starts at `recorded`.
    pub(crate) fn with_gate(&mut self, recorded: Lsn) -> GateRecorder {
        let (gate, recorder) = gate::gate(recorded);
        self.gate = Some(gate);
        recorder
    }

    /// Judges the slot found against walhook's record of it in `store`.
    pub(crate) fn set_ledger(&mut self, store: StateStore) {
        self.opts.ledger = Some(store);
    }

    /// The latest loss of the slot (`None` while there is none).
    pub(crate) fn losses(&self) -> watch::Receiver<Option<LossReport>> {
        self.losses.subscribe()
    }

    /// Where this process's stream started: the slot's confirmed position
    /// when it first streamed (`None` until then). Every transaction
    /// committed before it had been acknowledged, and is not streamed again.
    pub fn resumed_from(&self) -> watch::Receiver<Option<Lsn>> {
        self.resumed.subscribe()
    }

    /// Starts opening the replication connection (connect, authenticate,
    /// IDENTIFY_SYSTEM, SHOW wal_sender_timeout: nothing that changes the
    /// database) while the caller still prepares; [`Source::run`]'s first
    /// session then checks the publication and the slot on it and starts
    /// streaming. A failure here is that session's failure (retried or
    /// fatal as usual); invalid options are left for `run` to report.
    pub fn open_early(&mut self) {
        if self.early.is_some() {
            return;
        }
        let Ok(info) = self.validate() else {
            return;
        };
        let application_name = self.application_name(&info).to_string();
        self.early = Some(tokio::spawn(
            async move { open(&info, &application_name).await },
        ));
    }

    /// Streams until `shutdown` (Ok) or a fatal error. Transient failures
    /// reconnect with backoff and resume from the acknowledged position.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<SourceEvent>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let info = match self.validate() {
            Ok(info) => info,
            Err(e) => return Err(self.fail(e)),
        };
        let mut memory = Memory::default();
        let mut backoff = Backoff::default();
        let mut standby_since: Option<Instant> = None;
        loop {
            // A standby keeps its state while it retries, so it does not flap.
            if standby_since.is_none() {
                self.set_state(SourceState::Connecting);
            }
            let mut streaming_since = None;
            let result = self
                .session(
                    &info,
                    &mut memory,
                    &tx,
                    &shutdown,
                    &mut streaming_since,
                    &mut standby_since,
                )
                .await;
            let error = match result {
                Ok(()) => {
                    tracing::info!(slot = %self.opts.slot, "replication source stopped");
                    return Ok(());
                }
                Err(e) => e,
            };
            if streaming_since.is_some_and(|t| t.elapsed() >= STABLE_SESSION) {
                backoff.reset();
            }
            let delay = match error.disposition() {
                Disposition::Fatal => return Err(self.fail(error)),
                Disposition::Standby => {
                    if standby_since.is_none() {
                        tracing::info!(slot = %self.opts.slot, error = %error, "slot is held by another connection; waiting as a standby");
                        standby_since = Some(Instant::now());
                    } else {
                        tracing::debug!(slot = %self.opts.slot, "slot still held by another connection");
                    }
                    let text = error.to_string();
                    self.status.send_if_modified(|s| {
                        let changed = s.state != SourceState::Standby
                            || s.last_error.as_deref() != Some(text.as_str());
                        s.state = SourceState::Standby;
                        s.set_error(text);
                        changed
                    });
                    STANDBY_RETRY
                }
                Disposition::Transient => {
                    standby_since = None;
                    self.set_state(SourceState::Connecting);
                    let delay = backoff.next_delay();
                    tracing::warn!(slot = %self.opts.slot, error = %error, retry_in_ms = delay.as_millis() as u64, "replication connection failed; reconnecting");
                    self.status.send_modify(|s| s.set_error(error.to_string()));
                    delay
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Shows `error` in the status while the application waits for the
    /// database before the source runs (state `connecting`).
    pub(crate) fn report_waiting(&self, error: String) {
        self.status.send_modify(|s| {
            s.state = SourceState::Connecting;
            s.set_error(error);
        });
    }

    fn validate(&self) -> Result<ConnInfo, SourceError> {
        protocol::validate_slot_name(&self.opts.slot).map_err(SourceError::InvalidOptions)?;
        protocol::validate_publications(&self.opts.publications)
            .map_err(SourceError::InvalidOptions)?;
        Ok(conninfo::parse(&self.opts.url)?)
    }

    fn fail(&self, error: SourceError) -> SourceError {
        tracing::error!(slot = %self.opts.slot, error = %error, "replication source failed");
        self.status.send_modify(|s| {
            s.state = SourceState::Failed;
            s.set_error(error.to_string());
        });
        error
    }

    fn set_state(&self, state: SourceState) {
        self.status.send_if_modified(|s| {
            let changed = s.state != state;
            s.state = state;
            changed
        });
    }

    async fn session(
        &mut self,
        info: &ConnInfo,
        memory: &mut Memory,
        tx: &mpsc::Sender<SourceEvent>,
        shutdown: &CancellationToken,
        streaming_since: &mut Option<Instant>,
        standby_since: &mut Option<Instant>,
    ) -> Result<(), SourceError> {
        let prepared = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            prepared = self.prepare(info, memory) => prepared?,
        };
        let (conn, wal_sender_timeout) = prepared;
        *streaming_since = Some(Instant::now());
        if standby_since.take().is_some() {
            tracing::info!(slot = %self.opts.slot, "took over the replication slot");
        }
        tracing::info!(
            slot = %self.opts.slot,
            target = %conn.target(),
            tls = conn.tls,
            start = %memory.floor,
            "streaming"
        );
        self.status.send_modify(|s| {
            s.state = SourceState::Streaming;
            s.acked_lsn = s.acked_lsn.max(memory.floor);
            s.recovered();
        });
        let floor = memory.floor;
        self.resumed.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(floor);
            }
            first
        });
        stream::run(
            conn,
            memory,
            stream::Upstream {
                acks: &mut self.acks,
                gate: self.gate.as_mut(),
            },
            &self.status,
            wal_sender_timeout,
            stream::Downstream {
                tx,
                budget: self.opts.budget.as_ref(),
            },
            shutdown,
        )
        .await
    }

    /// The application_name the replication connection shows (one in the
    /// URL wins).
    fn application_name<'a>(&'a self, info: &'a ConnInfo) -> &'a str {
        info.application_name
            .as_deref()
            .unwrap_or(&self.opts.application_name)
    }

    /// Connects (or takes the connection [`Source::open_early`] opened),
    /// checks the slot, and starts replication.
    async fn prepare(
        &mut self,
        info: &ConnInfo,
        memory: &mut Memory,
    ) -> Result<(ReplConn, Duration), SourceError> {
        let opened = match self.early.take() {
            Some(early) => match early.await {
                Ok(opened) => opened?,
                // The task panicked: open the connection here instead.
                Err(_) => open(info, self.application_name(info)).await?,
            },
            None => open(info, self.application_name(info)).await?,
        };
        let Opened {
            mut conn,
            system,
            wal_sender_timeout,
        } = opened;
        let slot = &self.opts.slot;
        match &memory.system_id {
            Some(expected) if *expected != system.system_id => {
                return Err(SourceError::SystemChanged {
                    target: conn.target().to_string(),
                    expected: expected.clone(),
                    found: system.system_id,
                })
            }
            Some(_) => {}
            None => memory.system_id = Some(system.system_id.clone()),
        }
        let database = system.dbname.clone().unwrap_or_else(|| info.dbname.clone());

        let rows = conn
            .simple_query(
                "checking publications",
                &protocol::publications_query(&self.opts.publications),
            )
            .await?;
        for publication in &self.opts.publications {
            if !rows
                .rows
                .iter()
                .any(|r| r.first().and_then(|v| v.as_deref()) == Some(publication))
            {
                return Err(SourceError::PublicationMissing {
                    publication: publication.clone(),
                    database,
                });
            }
        }

        let rows = conn
            .simple_query("checking the replication slot", &pg_slot::row_sql(slot))
            .await?;
        let found = SlotRow::from_rows(&rows).map_err(|e| SourceError::Protocol {
            target: conn.target().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(row) = found.as_ref().filter(|r| r.invalidation().is_none()) {
            if let Some(reason) = row.unusable_reason(&database) {
                return Err(SourceError::SlotUnusable {
                    slot: slot.clone(),
                    reason,
                });
            }
        }
        let server = ServerIdentity {
            system_id: system.system_id.clone(),
            timeline: system.timeline,
        };
        // Held by another walsender (a standby's retry): nothing to judge,
        // START_REPLICATION says so.
        if found.as_ref().is_some_and(|r| r.active) && memory.identity.is_some() {
            return self.start(conn, memory, wal_sender_timeout).await;
        }
        // Read after the slot: whatever another instance acknowledged
        // meanwhile it recorded first (see `gate`).
        let recorded = match &self.opts.ledger {
            Some(store) => store
                .slot_record(slot)
                .await
                .map_err(SourceError::Record)?
                .map(|record| record.identity),
            None => memory.identity.clone().map(|mut id| {
                id.confirmed = memory.floor;
                id
            }),
        };
        let verdict = pg_slot::judge(
            slot,
            recorded.as_ref(),
            found.as_ref(),
            &server,
            system.xlog_pos,
            self.opts.ledger.is_some(),
        );
        let found_confirmed = found
            .as_ref()
            .and_then(|r| r.confirmed_flush_lsn)
            .unwrap_or(Lsn::ZERO);
        let start = match verdict {
            Verdict::Create => {
                if !self.opts.create_slot {
                    return Err(SourceError::SlotNotFound { slot: slot.clone() });
                }
                self.create_slot(&mut conn).await?
            }
            Verdict::Adopt => {
                self.alter_failover(&mut conn).await?;
                found_confirmed
            }
            Verdict::Recorded { timeline_was } => {
                if let Some(was) = timeline_was {
                    tracing::warn!(slot = %slot, timeline_was = was, timeline = server.timeline, "the server's timeline changed (a failover); the slot is the one walhook streamed from");
                }
                self.alter_failover(&mut conn).await?;
                found_confirmed
            }
            Verdict::Lost(mut loss) => {
                if self.opts.on_slot_lost == OnSlotLost::Stop {
                    tracing::error!(slot = %slot, lost_after = %loss.after, lost_through = %loss.through, kind = loss.kind.label(), "replication slot lost; refusing to recreate it");
                    self.losses.send_replace(Some(LossReport {
                        loss: loss.clone(),
                        repaired: false,
                    }));
                    return Err(SourceError::SlotLost(Box::new(loss)));
                }
                let usable = found.as_ref().is_some_and(|r| r.invalidation().is_none());
                let start = match loss.kind {
                    // The slot there is usable: stream from it, backfill the gap.
                    LossKind::Replaced | LossKind::OtherCluster { .. } if usable => found_confirmed,
                    _ => {
                        if found.is_some() {
                            conn.simple_query(
                                "DROP_REPLICATION_SLOT",
                                &pg_slot::drop_command(slot),
                            )
                            .await?;
                            tracing::info!(slot = %slot, "dropped the invalidated replication slot");
                        }
                        self.create_slot(&mut conn).await?
                    }
                };
                loss.through = loss.through.max(start);
                tracing::warn!(slot = %slot, lost_after = %loss.after, lost_through = %loss.through, kind = loss.kind.label(), "replication slot lost; streaming from a new slot and backfilling every strategy (on_slot_lost = \"resync\")");
                self.losses.send_replace(Some(LossReport {
                    loss: loss.clone(),
                    repaired: true,
                }));
                memory.loss = Some(loss);
                start
            }
        };
        memory.floor = memory.floor.max(start);
        memory.identity = Some(SlotIdentity {
            slot: slot.clone(),
            system_id: server.system_id,
            timeline: server.timeline,
            confirmed: start,
        });

        self.start(conn, memory, wal_sender_timeout).await
    }

    /// START_REPLICATION from `memory.floor`.
    async fn start(
        &self,
        mut conn: ReplConn,
        memory: &Memory,
        wal_sender_timeout: Duration,
    ) -> Result<(ReplConn, Duration), SourceError> {
        let slot = &self.opts.slot;
        let start = protocol::start_replication(
            slot,
            memory.floor,
            &self.opts.publications,
            self.opts.messages,
        );
        match conn.start_copy_both(&start).await {
            Ok(()) => Ok((conn, wal_sender_timeout)),
            Err(SourceError::Server { error, .. }) if error.code == sqlstate::OBJECT_IN_USE => {
                Err(SourceError::SlotActive {
                    slot: slot.clone(),
                    error,
                })
            }
            Err(e) => Err(e),
        }
    }
}

impl Source {
    /// Creates the slot; returns its consistent point.
    async fn create_slot(&self, conn: &mut ReplConn) -> Result<Lsn, SourceError> {
        let slot = &self.opts.slot;
        let rows = conn
            .simple_query(
                "CREATE_REPLICATION_SLOT",
                &pg_slot::create_command(slot, self.opts.failover),
            )
            .await?;
        let consistent = rows
            .get(0, "consistent_point")
            .and_then(|l| l.parse::<Lsn>().ok())
            .unwrap_or(Lsn::ZERO);
        tracing::info!(slot = %slot, consistent_point = %consistent, "created replication slot");
        Ok(consistent)
    }

    /// With `failover = true`, makes the slot a failover slot (idempotent:
    /// a synced or failover slot stays so).
    async fn alter_failover(&self, conn: &mut ReplConn) -> Result<(), SourceError> {
        if self.opts.failover {
            conn.simple_query(
                "ALTER_REPLICATION_SLOT",
                &pg_slot::alter_failover_command(&self.opts.slot),
            )
            .await?;
        }
        Ok(())
    }
}

/// Connects and reads what the stream needs of the server: its identity
/// and `wal_sender_timeout`.
async fn open(info: &ConnInfo, application_name: &str) -> Result<Opened, SourceError> {
    let mut conn = ReplConn::connect(info, application_name).await?;
    let rows = conn
        .simple_query("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM")
        .await?;
    let system = SystemInfo::from_rows(&rows).map_err(|e| protocol_error(conn.target(), e))?;
    let rows = conn
        .simple_query("SHOW wal_sender_timeout", "SHOW wal_sender_timeout")
        .await?;
    let shown = rows.rows.first().and_then(|r| r.first()).cloned().flatten();
    let wal_sender_timeout = match shown.as_deref().and_then(protocol::parse_pg_duration) {
        Some(d) => d,
        None => {
            tracing::warn!(value = ?shown, "cannot read wal_sender_timeout; assuming 60s");
            Duration::from_secs(60)
        }
    };
    Ok(Opened {
        conn,
        system,
        wal_sender_timeout,
    })
}

fn protocol_error(target: &str, e: protocol::WireError) -> SourceError {
    SourceError::Protocol {
        target: target.to_string(),
        reason: e.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_debug_hides_the_password() {
        let opts = SourceOptions::new("postgres://u:topsecret@h/db", "s", vec!["p".into()]);
        let text = format!("{opts:?}");
        assert!(!text.contains("topsecret"), "{text}");
        assert!(text.contains("u:***@h/db"), "{text}");
    }

    #[test]
    fn acks_only_move_forward() {
        let (_source, acks, _status) = Source::new(SourceOptions::new(
            "postgres://u@h/db",
            "s",
            vec!["p".into()],
        ));
        acks.ack(Lsn(10));
        acks.ack(Lsn(5));
        assert_eq!(acks.acked(), Lsn(10));
        acks.clone().ack(Lsn(20));
        assert_eq!(acks.acked(), Lsn(20));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(5));
        }
        assert!(last >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn invalid_options_fail_fast_with_state_failed() {
        let (source, _acks, status) = Source::new(SourceOptions::new(
            "postgres://u@h/db",
            "Bad-Slot",
            vec!["p".into()],
        ));
        let (tx, _rx) = mpsc::channel(1);
        let err = source.run(tx, CancellationToken::new()).await.unwrap_err();
        assert!(err.to_string().contains("Bad-Slot"), "{err}");
        assert_eq!(status.borrow().state, SourceState::Failed);
    }
}
