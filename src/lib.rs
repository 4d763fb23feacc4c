//! walhook: PostgreSQL logical replication → filtered, batched, signed webhooks.
//!
//! ```text
//!  Postgres walsender
//!    │  CopyBoth stream (XLogData, keepalives)         ▲ standby status (flush = acked LSN)
//!    ▼                                                 │
//!  source/     replication connection, slot, feedback timer ─────┐
//!    ▼  pgoutput bytes                                           │
//!  decode/     pgoutput → RecordEvent (values stay server text)   │
//!    ▼  SourceEvent (committed, in commit order)                 │
//!  strategy/   per strategy: op filter (evalexpr) → mapping      │
//!    ▼  per-strategy bounded queue                               │
//!  batch/      order per group (commit / key), size / bytes / linger
//!    ▼  Batch ×max_in_flight                                     │
//!  delivery/   HTTP, auth, signing, retry, 410 pause, breaker,    │
//!    │         rate limit, dead letters (state/)                 │
//!    ▼  completions, in any order                                │
//!  checkpoint/ ordered finaliser per strategy, min over          │
//!              strategies → acked LSN ───────────────────────────┘
//!  budget.rs   one byte budget from the socket to the 2xx: the source
//!              stops reading while it is used up
//! ```
//!
//! Invariants:
//! - A WAL position is acknowledged to Postgres only after every strategy has
//!   delivered, dead-lettered or durably parked (`walhook.parked`, retried
//!   from there) every change committed before it. A crash therefore loses
//!   nothing; it can only repeat.
//! - What may repeat: changes delivered but not yet confirmed by Postgres
//!   when the process died. Every record keeps its id (`<commit LSN>:<index>`);
//!   each batch's records are stored before its first attempt and re-formed
//!   exactly after a restart (forgotten only behind the slot's
//!   `confirmed_flush_lsn`), so a repeat has the same batch id.
//! - Within a strategy, records arrive in commit order (`ordering =
//!   "commit"`), or in commit order per group key with up to `max_in_flight`
//!   batches at once (`"key"`); batches completing out of order release the
//!   acknowledged position only over a contiguous prefix.
//! - Backpressure blocks, it never drops: a full queue or a used-up memory
//!   budget stops reading the socket, while the feedback timer keeps the
//!   walsender from timing out.
//! - When nothing is pending, the acknowledged position follows the server's
//!   WAL end, so quiet or filtered tables never pin WAL.
//!
//! The tree:
//!
//! - The stages, in the order above: `source/` (replication connection,
//!   slot, standby feedback, resuming after a reconnect), `decode/`
//!   (pgoutput parser, relation cache, server text → JSON values),
//!   `strategy/` (expressions, compiled strategies, the router loop, checks
//!   against the live schema), `batch/` (the queue contract, the dispatcher:
//!   order per group and batch boundaries, the one payload writer),
//!   `delivery/` (endpoints built from the configuration in `endpoints.rs`,
//!   the sender, auth and OAuth2, signing, TLS, retry decisions, endpoint
//!   protection, the per-strategy worker, one batch's attempts, parking,
//!   the worker's handles, replay),
//!   `checkpoint/` (the acked position, the ordered finaliser, the slot's
//!   confirmed position), `budget.rs` (the process-wide byte budget).
//! - Homes the stages share: `pg/` (connection strings, TLS, SQL
//!   connections, quoting, error descriptions, catalog queries), `state/`
//!   (the one store for walhook's own schema: dead letters, parked
//!   batches, batch boundaries, runs, pauses, holds), `config/` (the file as data: parsing, `${VAR}`
//!   interpolation, validation; it imports no other module), `telemetry/`
//!   (metric names, the recorder), `lsn.rs`, `timestamp.rs` (Postgres
//!   times, the one RFC 3339 formatter), `replica_identity.rs`,
//!   `error_class.rs` (transient / needs the operator / fatal, answered
//!   beside each error enum), `prepare.rs` (a configuration compiled and
//!   checked against the live schema: startup, reload, `run-strategy`).
//! - Beside the pipeline: `health.rs` (the one decision of each status
//!   word and of readiness, read by the API, the console and the metrics),
//!   `control.rs` (the operator's commands as the domain sees them: the
//!   `Control` trait, run requests and replies, `ControlError`),
//!   `admin/` (the HTTP API over them: metrics, health, status,
//!   commands, dead letters), `runs/` (on-demand and scheduled runs over a
//!   table snapshot, `walhook run-strategy`), `ops/` (`check`, `setup`,
//!   `teardown`), `reload/` (configuration reload: the plan of a change,
//!   the requests; `app/` applies it to the running stages).
//! - The commands' entry points: `app/` (`walhook run`: builds the stages,
//!   connects them, stops them in order, applies reloads), `stdout_sink.rs` (`run
//!   --stdout`), `receive.rs` (`walhook receive`; its receiver is also the
//!   demo's), `demo.rs`, and `error.rs` (the error `main` prints, with the
//!   one mapping to exit codes 0/1/2/3).
//! - `cluster.rs`: throwaway PostgreSQL clusters, for the demo and the tests
//!   only.
//!
//! No module imports a module that imports it back; `decode/` and
//! `config/` import only the leaves, `pg/` only those and `config/`, and
//! `runs/` and `delivery/` never `admin/`, `app/` or `cluster` (checked on
//! the source by `layers_tests.rs`). Public items are only
//! what `main.rs`, the integration tests, the benchmarks and the examples
//! use; everything else is `pub(crate)` or private (the `unreachable_pub`
//! lint in Cargo.toml reports a `pub` nothing outside can reach).

pub mod admin;
pub mod app;
pub(crate) mod backfill;
pub mod batch;
pub(crate) mod budget;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod control;
pub mod decode;
pub mod delivery;
pub mod demo;
pub mod error;
pub mod error_class;
pub(crate) mod health;
pub mod lsn;
pub mod ops;
pub mod pg;
pub mod prepare;
pub mod receive;
pub mod reload;
pub(crate) mod replica_identity;
pub mod runs;
pub mod source;
pub mod state;
pub mod stdout_sink;
pub mod strategy;
pub mod telemetry;
pub(crate) mod timestamp;
pub(crate) mod words;

#[cfg(test)]
mod layers_tests;
