//! `walhook run` end to end with real receivers: filters, strategies,
//! mappings, batching and order, retries, dead letters, kill -9.

mod batching;
mod e2e;
mod filters;
mod retry;
