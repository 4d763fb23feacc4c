//! Strategies against a real database: startup validation of tables,
//! columns, publication and replica identity; and real changes routed
//! through their filters. What changes under a running walhook (issue 29)
//! shares `scene`: pathological filters (`limits`), NULLs over many
//! strategies (`nulls`).

mod limits;
mod nulls;
mod scene;
mod schema;
mod stream;
mod text_json;
