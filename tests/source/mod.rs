//! The replication source against a real PostgreSQL: slot creation,
//! streaming, acknowledgements, standby, authentication, TLS, and what
//! happens when the server restarts or invalidates the slot.

mod connect;
mod late_database;
mod lost;
mod restart;
mod shutdown;
mod stream;
mod tls;
