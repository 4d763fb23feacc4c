//! Server text → JSON. (stub: being written)

use super::model::{Cell, RecordEvent, TypeKind};

/// Appends the JSON form of one cell.
pub fn write_cell_json(kind: &TypeKind, cell: &Cell, out: &mut Vec<u8>) {
    let _ = (kind, cell, out);
    unimplemented!("convert::write_cell_json")
}

impl RecordEvent {
    /// Appends this record's payload object (DESIGN.md "Payload": id, op,
    /// schema, table, lsn, xid, commit_time, new, old, unchanged_toast).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let _ = out;
        unimplemented!("RecordEvent::write_json")
    }

    /// The same object as a `serde_json::Value` (tests, the stdout sink).
    pub fn to_json_value(&self) -> serde_json::Value {
        let mut buf = Vec::new();
        self.write_json(&mut buf);
        serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
    }
}
