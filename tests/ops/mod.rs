//! Operating walhook: the admin server (health, readiness, status, metrics,
//! commands), `check`, `setup` and `teardown`, standby and takeover,
//! SIGTERM, dead-letter replay, pause and configuration reload through the
//! built binary.

mod admin;
mod admin_fuzz;
mod attach;
mod check_admin;
mod commands;
mod console;
mod deploy;
mod e2e;
mod first_hour;
mod least_privilege;
mod pauses;
mod reload;
mod replay;
mod slot_loss;
