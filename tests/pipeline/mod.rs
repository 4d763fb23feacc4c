//! `walhook run` end to end with real receivers: filters, strategies,
//! mappings, batching and order, retries, dead letters, kill -9, many
//! batches in flight, endpoint protection and the memory budget.

mod batching;
mod concurrency;
mod e2e;
mod filters;
mod retry;
