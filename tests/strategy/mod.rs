//! Strategies against a real database: startup validation of tables,
//! columns, publication and replica identity; and real changes routed
//! through their filters.

mod schema;
mod stream;
mod text_json;
