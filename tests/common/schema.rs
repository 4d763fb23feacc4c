//! The published payload JSON Schema (schema/payload.schema.json), compiled
//! once per test binary, for tests that check real deliveries against it.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::Value;

static SCHEMA: OnceLock<(boon::Schemas, boon::SchemaIndex)> = OnceLock::new();

fn compiled() -> &'static (boon::Schemas, boon::SchemaIndex) {
    SCHEMA.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/payload.schema.json");
        let text = std::fs::read_to_string(path).expect("reading the payload schema");
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
            .unwrap_or_else(|e| panic!("compiling the payload schema: {e:#}"));
        (schemas, index)
    })
}

/// Validates one delivered request body against the payload schema.
pub fn validate_payload(body: &Value) -> Result<(), String> {
    let (schemas, index) = compiled();
    schemas.validate(body, *index).map_err(|e| format!("{e:#}"))
}
