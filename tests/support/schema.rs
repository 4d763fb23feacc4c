//! The published payload JSON Schema (schema/payload.schema.json), compiled
//! once per test binary with format assertions (date-time) on.

use std::sync::OnceLock;

use serde_json::Value;

/// Where the schema lives, relative to the repository.
pub(crate) const SCHEMA_PATH: &str = "schema/payload.schema.json";

static SCHEMA: OnceLock<(boon::Schemas, boon::SchemaIndex)> = OnceLock::new();

fn compiled() -> &'static (boon::Schemas, boon::SchemaIndex) {
    SCHEMA.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_PATH);
        let text = std::fs::read_to_string(&path).expect("reading the payload schema");
        let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
        let id = schema["$id"].as_str().expect("$id").to_string();
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.enable_format_assertions();
        compiler
            .add_resource(&id, schema)
            .expect("adding the schema");
        let index = compiler
            .compile(&id, &mut schemas)
            .unwrap_or_else(|e| panic!("compiling {SCHEMA_PATH}: {e:#}"));
        (schemas, index)
    })
}

/// Validates one payload (a request body) against the schema.
pub(crate) fn validate_payload(body: &Value) -> Result<(), String> {
    let (schemas, index) = compiled();
    schemas.validate(body, *index).map_err(|e| format!("{e:#}"))
}
