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
//!  batch/      size / bytes / linger                             │
//!    ▼  Batch                                                    │
//!  delivery/   HTTP, auth, signing, retry, dead letters          │
//!    ▼  delivered through commit LSN X                           │
//!  checkpoint/ min over strategies → acked LSN ──────────────────┘
//! ```
//!
//! Beside the stages: `pg/` holds what every part needs to talk to Postgres
//! (connection strings, TLS, SQL connections, quoting, shared catalog
//! queries), and `state/` is the one store for walhook's own schema (dead
//! letters, batch boundaries, runs).
//!
//! Invariants:
//! - A WAL position is acknowledged to Postgres only after every strategy has
//!   delivered (or dead-lettered) every change committed before it. A crash
//!   therefore loses nothing; it can only repeat.
//! - What may repeat: changes delivered but not yet acknowledged when the
//!   process died. Every record keeps its id (`<commit LSN>:<index>`), and
//!   batch ids derive from record ids, so receivers de-duplicate.
//! - Within a strategy, records arrive in commit order.
//! - Backpressure blocks, it never drops: a full queue stops reading the
//!   socket, while the feedback timer keeps the walsender from timing out.
//! - When nothing is pending, the acknowledged position follows the server's
//!   WAL end, so quiet or filtered tables never pin WAL.

pub mod admin;
pub mod app;
pub mod batch;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod delivery;
pub mod demo;
pub mod error;
pub mod lsn;
pub mod ops;
pub mod pg;
pub mod receive;
pub mod runs;
pub mod source;
pub mod state;
pub mod stdout_sink;
pub mod strategy;
pub mod telemetry;
pub(crate) mod timestamp;
