//! `/status`'s `replication_slot` object: the slot as the one slot watcher
//! last read it (`pg_replication_slots`), so an operator sees its WAL
//! safety and confirmed position without querying the server.

use serde_json::{json, Value};

use crate::pg::slot::SlotWatch;
use crate::source::LossReport;

/// The slot's row (or `"exists": false`) as last read, when it was read,
/// the watcher's last error, and `loss` (null unless the recorded slot was
/// lost: what happened, the lost range, and whether walhook replaced it).
pub(super) fn slot_json(watch: &SlotWatch, loss: Option<&LossReport>) -> Value {
    let loss = loss.map(|report| {
        json!({
            "kind": report.loss.kind.label(),
            "lost_after": report.loss.after.to_string(),
            "lost_through": report.loss.through.to_string(),
            "repaired": report.repaired,
            "message": report.loss.to_string(),
        })
    });
    let Some(read) = &watch.read else {
        return json!({ "read_at": null, "error": watch.error, "loss": loss });
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
    doc["loss"] = json!(loss);
    doc
}
