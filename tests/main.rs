//! walhook's integration tests: one test binary, one module per area.
//!
//! They run walhook as a user does, against real PostgreSQL clusters the
//! harness starts itself (one shared by nearly every test, see
//! [`support::cluster`]) and real HTTP receivers on 127.0.0.1. Tests that
//! need no socket, process or database live beside the code as unit tests.
//!
//! All tests are threads of this one process, so none may rely on process
//! isolation: each uses its own database, slot, role and strategy names,
//! and whatever is process-wide (the metrics recorder, `pg_hba.conf`, the
//! server's settings) is shared or taken in turn through [`support`].

mod support;

mod cluster;
mod compat;
mod config;
mod delivery;
mod demo;
mod deploy;
mod health;
mod ops;
mod parking;
mod payload_schema;
mod pg;
mod pipeline;
mod replicas;
mod runs;
mod security;
mod source;
mod stdout;
mod strategy;
