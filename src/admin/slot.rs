//! `/status`'s `replication_slot` object: the slot as the one slot watcher
//! last read it (`pg_replication_slots`), so an operator sees its WAL
//! safety and confirmed position without querying the server.

use serde_json::{json, Value};

use crate::pg::slot::SlotWatch;

/// `null` before the first read; otherwise the slot's row (or
/// `"exists": false`), when it was read, and the watcher's last error.
pub(super) fn slot_json(watch: &SlotWatch) -> Value {
    let Some(read) = &watch.read else {
        return json!({ "read_at": null, "error": watch.error });
    };
    let mut doc = match &read.slot {
        None => json!({ "exists": false }),
        Some(row) => json!({
            "exists": true,
            "active": row.active,
            "active_pid": row.active_pid,
            "wal_status": row.wal_status,
            "safe_wal_size": row.safe_wal_size,
            "restart_lsn": row.restart_lsn.map(|l| l.to_string()),
            "confirmed_flush_lsn": row.confirmed_flush_lsn.map(|l| l.to_string()),
            "invalidation": row.invalidation(),
        }),
    };
    doc["keep_limit_bytes"] = json!(read.keep_limit_bytes);
    doc["system_identifier"] = json!(read.server.system_id);
    doc["timeline"] = json!(read.server.timeline);
    doc["read_at"] = json!(super::rfc3339(read.at));
    doc["error"] = json!(watch.error);
    doc
}
