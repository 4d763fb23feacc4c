//! Metrics and logging setup. Metric names live in [`names`] so every stage
//! records under the names DESIGN.md promises and the tests can check them.

pub mod names;
