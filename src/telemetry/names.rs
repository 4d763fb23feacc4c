//! Every metric walhook exposes (prefix `walhook_`). Labels stay
//! low-cardinality: never a key, a value or a URL.

/// Counter `{table, op}`: committed changes decoded.
pub const EVENTS_TOTAL: &str = "walhook_events_total";
/// Counter `{strategy, op}`: changes that passed a strategy's filter for
/// their operation.
pub(crate) const EVENTS_MATCHED_TOTAL: &str = "walhook_events_matched_total";
/// Counter `{strategy, op}`: changes a strategy's filter for their operation
/// rejected (or failed on); operations without a filter are not counted.
pub(crate) const EVENTS_FILTERED_TOTAL: &str = "walhook_events_filtered_total";
/// Counter `{strategy}`: filter, mapping and `group_by` evaluations that
/// failed (text compared with a number, a value the server did not send).
pub(crate) const FILTER_ERRORS_TOTAL: &str = "walhook_filter_errors_total";
/// Counter `{strategy}`: evaluations made unknown by a NULL (SQL's
/// `WHERE`: not matched; mapped values null). Expected, not failures.
pub(crate) const FILTER_NULLS_TOTAL: &str = "walhook_filter_nulls_total";
/// Counter `{strategy, outcome}`: batches by outcome (delivered, dead_lettered).
pub(crate) const BATCHES_TOTAL: &str = "walhook_batches_total";
/// Counter `{strategy, status_class}`: HTTP attempts (2xx, 4xx, 5xx, error).
pub(crate) const DELIVERY_ATTEMPTS_TOTAL: &str = "walhook_delivery_attempts_total";
/// Histogram `{strategy}`: seconds per attempt.
pub(crate) const DELIVERY_DURATION_SECONDS: &str = "walhook_delivery_duration_seconds";
/// Histogram `{strategy}`: records per delivered batch.
pub(crate) const BATCH_RECORDS: &str = "walhook_batch_records";
/// Histogram `{strategy}`: seconds from a transaction's commit to the 2xx.
pub(crate) const COMMIT_TO_DELIVERY_SECONDS: &str = "walhook_commit_to_delivery_seconds";
/// Gauge `{strategy}`: records queued or in flight.
pub(crate) const QUEUE_RECORDS: &str = "walhook_queue_records";
/// Counter `{strategy}`: batches stored as dead letters.
pub(crate) const DEAD_LETTERS_TOTAL: &str = "walhook_dead_letters_total";
/// Gauge: server WAL end minus the acked LSN, in bytes.
pub(crate) const REPLICATION_LAG_BYTES: &str = "walhook_replication_lag_bytes";
/// Gauge: the acked LSN (as a number).
pub(crate) const ACKED_LSN: &str = "walhook_acked_lsn";
/// Gauge: the highest LSN received.
pub(crate) const RECEIVED_LSN: &str = "walhook_received_lsn";
/// Gauge `{status}`: 1 for the slot's `wal_status` (reserved, extended,
/// unreserved, lost), 0 for the others.
pub(crate) const SLOT_WAL_STATUS: &str = "walhook_slot_wal_status";
/// Gauge: the slot's `safe_wal_size`: bytes of WAL the server may still
/// write before the slot risks invalidation (absent while unlimited).
pub(crate) const SLOT_SAFE_WAL_BYTES: &str = "walhook_slot_safe_wal_bytes";
/// Gauge: `max_slot_wal_keep_size` in bytes (-1 = unlimited).
pub(crate) const SLOT_WAL_KEEP_LIMIT_BYTES: &str = "walhook_slot_wal_keep_limit_bytes";
/// Counter `{kind, outcome}`: the recorded slot was found lost (kind
/// missing, invalidated, replaced, other_cluster), and walhook refused or
/// resynced (`on_slot_lost`).
pub(crate) const SLOT_LOSSES_TOTAL: &str = "walhook_slot_losses_total";
/// Gauge: 1 while another instance holds the slot.
pub(crate) const STANDBY: &str = "walhook_standby";
/// Gauge `{version}`: always 1.
pub(crate) const BUILD_INFO: &str = "walhook_build_info";
/// Counter `{strategy, trigger, outcome}`: on-demand and scheduled runs.
pub(crate) const RUNS_TOTAL: &str = "walhook_runs_total";
/// Counter `{strategy}`: records sent by runs.
pub(crate) const RUN_RECORDS_TOTAL: &str = "walhook_run_records_total";
/// Counter `{strategy, status_class, decision}`: what each attempt's answer
/// decided (delivered, retry, pause, dead_letter).
pub(crate) const DELIVERY_DECISIONS_TOTAL: &str = "walhook_delivery_decisions_total";
/// Gauge `{strategy}`: batches in flight.
pub(crate) const IN_FLIGHT_BATCHES: &str = "walhook_in_flight_batches";
/// Gauge `{strategy, reason}`: 1 while paused (reason admin or endpoint_gone).
pub(crate) const STRATEGY_PAUSED: &str = "walhook_strategy_paused";
/// Gauge `{endpoint}`: 0 while the endpoint's circuit breaker is open.
pub(crate) const ENDPOINT_UP: &str = "walhook_endpoint_up";
/// Gauge: bytes held against the memory budget.
pub(crate) const BUFFER_BYTES: &str = "walhook_buffer_bytes";
/// Gauge: the memory budget (`[source] max_buffer_bytes`).
pub(crate) const BUFFER_LIMIT_BYTES: &str = "walhook_buffer_limit_bytes";
/// Counter `{result}`: configuration reloads (applied, unchanged, invalid, refused).
pub(crate) const CONFIG_RELOAD_TOTAL: &str = "walhook_config_reload_total";
/// Gauge `{strategy}`: batches parked in `walhook.parked` (waiting to be
/// delivered from the store; the slot has moved past them).
pub(crate) const PARKED_BATCHES: &str = "walhook_parked_batches";
/// Gauge `{strategy}`: records in parked batches.
pub(crate) const PARKED_RECORDS: &str = "walhook_parked_records";
/// Gauge `{strategy}`: bytes of parked batches' bodies.
pub(crate) const PARKED_BYTES: &str = "walhook_parked_bytes";
/// Gauge `{strategy}`: `max_parked_bytes`.
pub(crate) const PARKED_LIMIT_BYTES: &str = "walhook_parked_limit_bytes";
/// Gauge `{strategy}`: 1 while the parking bound is reached (a batch that
/// should be parked waits, holding its strategy and the slot).
pub(crate) const PARKING_FULL: &str = "walhook_parking_full";
/// Counter `{strategy, reason}`: batches parked (failing: it kept failing;
/// behind: it had to follow parked work; held: its strategy was held).
pub(crate) const PARKED_TOTAL: &str = "walhook_parked_total";
/// Counter `{operation}`: writes to the state store that failed (parking,
/// dead letters, batch records, the delivery log).
pub(crate) const STATE_ERRORS_TOTAL: &str = "walhook_state_errors_total";
/// Gauge `{state}`: 1 for the instance's readiness (`ready`, `degraded`:
/// streaming but a strategy is failing, parked, blocked or held;
/// `not_ready`), 0 for the others; the same decision as `/readyz`.
pub(crate) const HEALTH: &str = "walhook_health";
/// Gauge `{strategy, state}`: 1 for the strategy's state (`running`,
/// `parked`, `failing`, `blocked`, `held`, `paused`), 0 for the others;
/// the same word as `/status`.
pub(crate) const STRATEGY_STATE: &str = "walhook_strategy_state";
