//! `walhook.slots`: the slot walhook streams from, as it recorded it (see
//! `sql/state.sql`): read at start to judge the slot found
//! ([`crate::pg::slot::judge`]), written before each standby status carries
//! a new position, deleted by `walhook teardown`.

use super::{StateError, StateStore};
use crate::lsn::Lsn;
use crate::pg::slot::{LossKind, SlotIdentity, SlotLoss};
use crate::pg::{quote_ident, quote_literal};

/// A loss being repaired, as recorded (`lost_*` columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordedLoss {
    pub(crate) kind: String,
    pub(crate) after: Lsn,
    pub(crate) through: Lsn,
}

impl RecordedLoss {
    /// The loss as the source reports it.
    pub(crate) fn to_loss(&self, slot: &str) -> SlotLoss {
        SlotLoss {
            slot: slot.to_string(),
            kind: LossKind::from_label(&self.kind),
            after: self.after,
            through: self.through,
        }
    }

    pub(crate) fn of(loss: &SlotLoss) -> Self {
        RecordedLoss {
            kind: loss.kind.label().to_string(),
            after: loss.after,
            through: loss.through,
        }
    }
}

/// One row of `walhook.slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRecord {
    pub(crate) identity: SlotIdentity,
    /// Set from a repair's start until its backfills are under way.
    pub(crate) loss: Option<RecordedLoss>,
}

fn parse_lsn(text: Option<String>, what: &'static str) -> Result<Option<Lsn>, StateError> {
    text.map(|t| {
        t.parse().map_err(|e| StateError::Malformed {
            what,
            source: Box::new(e),
        })
    })
    .transpose()
}

impl StateStore {
    /// What walhook recorded of `slot`; `None` before it first streamed.
    pub(crate) async fn slot_record(&self, slot: &str) -> Result<Option<SlotRecord>, StateError> {
        const WHAT: &str = "reading walhook.slots";
        let row = self
            .client()
            .await?
            .query_opt(
                &*self.sql(
                    "SELECT system_id, timeline, confirmed_lsn::text, lost_kind, \
                     lost_after::text, lost_through::text FROM walhook.slots WHERE slot_name = $1",
                ),
                &[&slot],
            )
            .await
            .map_err(StateError::query(WHAT))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |i| {
            row.try_get::<_, Option<String>>(i)
                .map_err(StateError::query(WHAT))
        };
        let timeline: i32 = row.try_get(1).map_err(StateError::query(WHAT))?;
        let confirmed = parse_lsn(get(2)?, WHAT)?.unwrap_or(Lsn::ZERO);
        let loss = match (
            get(3)?,
            parse_lsn(get(4)?, WHAT)?,
            parse_lsn(get(5)?, WHAT)?,
        ) {
            (Some(kind), Some(after), Some(through)) => Some(RecordedLoss {
                kind,
                after,
                through,
            }),
            _ => None,
        };
        Ok(Some(SlotRecord {
            identity: SlotIdentity {
                slot: slot.to_string(),
                system_id: get(0)?.unwrap_or_default(),
                timeline: u32::try_from(timeline).unwrap_or(0),
                confirmed,
            },
            loss,
        }))
    }

    /// Records that walhook is about to let Postgres confirm
    /// `identity.confirmed` on that slot (and, with `loss`, that a loss is
    /// being repaired). Never lowers the recorded position of the same
    /// cluster: an instance taking over may acknowledge less than the one
    /// before it recorded.
    pub(crate) async fn record_slot(
        &self,
        identity: &SlotIdentity,
        loss: Option<&RecordedLoss>,
    ) -> Result<(), StateError> {
        self.client()
            .await?
            .batch_execute(&record_sql(&self.inner.schema, identity, loss))
            .await
            .map_err(StateError::query("recording the slot in walhook.slots"))
    }

    /// The repair of `slot`'s loss is under way (its backfills are
    /// recorded): forget the loss. (The resync backfills call it, see
    /// `app/resync.rs`.)
    #[allow(dead_code)] // until the consistent backfills (issue 24) exist
    pub(crate) async fn clear_slot_loss(&self, slot: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                &*self.sql(
                    "UPDATE walhook.slots SET lost_kind = NULL, lost_after = NULL, \
                     lost_through = NULL, lost_at = NULL, updated_at = now() WHERE slot_name = $1",
                ),
                &[&slot],
            )
            .await
            .map_err(StateError::query("clearing a slot loss in walhook.slots"))?;
        Ok(())
    }
}

/// The statement of [`StateStore::record_slot`] with its values written in
/// (one text for the state store and for the slot watcher's connection,
/// which speaks only the simple query protocol).
pub(crate) fn record_sql(
    schema: &str,
    identity: &SlotIdentity,
    loss: Option<&RecordedLoss>,
) -> String {
    let text = |v: Option<String>| v.map_or("NULL".to_string(), |v| quote_literal(&v));
    let (kind, after, through) = match loss {
        Some(l) => (
            text(Some(l.kind.clone())),
            text(Some(l.after.to_string())),
            text(Some(l.through.to_string())),
        ),
        None => ("NULL".into(), "NULL".into(), "NULL".into()),
    };
    let lost_at = if loss.is_some() { "now()" } else { "NULL" };
    format!(
        "INSERT INTO {schema}.slots AS s (slot_name, system_id, timeline, confirmed_lsn, \
             lost_kind, lost_after, lost_through, lost_at) \
         VALUES ({slot}, {system}, {timeline}, {confirmed}::pg_lsn, {kind}, {after}::pg_lsn, \
             {through}::pg_lsn, {lost_at}) \
         ON CONFLICT (slot_name) DO UPDATE SET \
             confirmed_lsn = CASE WHEN s.system_id = EXCLUDED.system_id \
                 THEN greatest(s.confirmed_lsn, EXCLUDED.confirmed_lsn) \
                 ELSE EXCLUDED.confirmed_lsn END, \
             system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline, \
             lost_kind = coalesce(EXCLUDED.lost_kind, s.lost_kind), \
             lost_after = coalesce(EXCLUDED.lost_after, s.lost_after), \
             lost_through = coalesce(EXCLUDED.lost_through, s.lost_through), \
             lost_at = coalesce(EXCLUDED.lost_at, s.lost_at), \
             updated_at = now()",
        schema = quote_ident(schema),
        slot = quote_literal(&identity.slot),
        system = quote_literal(&identity.system_id),
        timeline = identity.timeline,
        confirmed = quote_literal(&identity.confirmed.to_string()),
    )
}

/// SQL that forgets `slot`'s record in `schema` when the table is there
/// (`walhook teardown` and its `--print-sql`): a slot dropped on purpose is
/// not a lost one.
pub(crate) fn forget_sql(schema: &str, slot: &str) -> String {
    format!(
        "DELETE FROM {}.slots WHERE slot_name = {}",
        quote_ident(schema),
        quote_literal(slot)
    )
}

/// [`forget_sql`] for a script run with psql: a no-op where the table is
/// not there.
pub(crate) fn forget_script_sql(schema: &str, slot: &str) -> String {
    format!(
        "DO $walhook$ BEGIN IF to_regclass({}) IS NOT NULL THEN {}; END IF; END $walhook$;",
        quote_literal(&format!("{}.slots", quote_ident(schema))),
        forget_sql(schema, slot)
    )
}
