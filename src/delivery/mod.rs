//! Delivery: one HTTP client per endpoint, auth, Standard Webhooks signing,
//! retries with backoff, dead letters. One batch in flight per strategy.

pub mod auth;
pub mod oauth2;
pub mod prepare;
pub mod security;
pub mod signing;
pub mod tls;
pub mod token;
