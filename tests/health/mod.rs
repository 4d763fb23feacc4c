//! Health that tells the truth (issue 25): readiness is walhook's own
//! health and an endpoint outage is "degraded"; errors clear on recovery
//! with when; a lost GRANT on the state schema is an error; delivery errors
//! name the endpoint and its host and quote the start of the response
//! body; a connect timeout says so; a silent partition is seen within
//! `wal_sender_timeout` and a healed link is used at once; a reload reaches
//! a batch already failing and `/status` never shows it healthy meanwhile.

mod partition;
mod readiness;
mod reload;
