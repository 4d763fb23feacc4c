-- walhook state schema.
--
-- walhook keeps a little state in its own schema: dead letters, parked
-- batches, on-demand/scheduled runs, paused and held strategies, and the boundaries of batches it has sent but
-- Postgres has not yet been told are delivered. By default the schema is
-- `walhook` in the source database; `[state] url` and `[state] schema` put it
-- elsewhere. Everything here is idempotent (CREATE ... IF NOT EXISTS):
-- running it again is harmless.
--
-- psql variables (sql/setup.sql sets them; `walhook setup` fills them in):
--   state_schema  the schema (default walhook)
--   state_role    optional: the role walhook connects as; it is granted
--                 exactly what it needs here (USAGE on the schema, SELECT,
--                 INSERT, UPDATE, DELETE on its tables, USAGE on their
--                 sequences), so it needs no CREATE anywhere.
--
-- Keep the schema out of the publication. walhook's own writes here must not
-- be streamed back to it (a FOR ALL TABLES publication would do that).

\if :{?state_schema}
\else
\set state_schema walhook
\endif

CREATE SCHEMA IF NOT EXISTS :"state_schema";

COMMENT ON SCHEMA :"state_schema" IS 'State of the walhook change-data-capture sidecar';

-- Batches that ran out of delivery attempts with on_exhausted = "dead_letter".
-- walhook moved on past them; replay one with POST /dead-letters/{id}/replay.
CREATE TABLE IF NOT EXISTS :"state_schema".dead_letters (
    id          bigserial   PRIMARY KEY,
    strategy    text        NOT NULL,   -- the [[strategies]] name
    batch_id    text        NOT NULL,   -- the webhook-id header / batch.id it was sent with
    first_lsn   pg_lsn      NOT NULL,   -- commit LSN of its first record
    last_lsn    pg_lsn      NOT NULL,   -- commit LSN of its last record
    payload     jsonb       NOT NULL,   -- the request body as JSON (exact bytes: body below)
    last_status integer,                -- HTTP status of the last attempt; NULL = no response
    last_error  text,                   -- why the last attempt failed (never a secret)
    attempts    integer     NOT NULL,   -- how many attempts were made
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The exact bytes of the request body as sent and signed (payload above is
-- its jsonb form, for queries: jsonb reorders keys and reparses numbers).
-- The API shows and a replay sends these bytes. NULL for dead letters stored
-- by versions before this column (payload is used then).
ALTER TABLE :"state_schema".dead_letters ADD COLUMN IF NOT EXISTS body bytea;

CREATE INDEX IF NOT EXISTS dead_letters_strategy_idx
    ON :"state_schema".dead_letters (strategy, id);

-- On-demand (admin API) and scheduled runs over a table's current rows.
CREATE TABLE IF NOT EXISTS :"state_schema".runs (
    id          bigserial   PRIMARY KEY,
    strategy    text        NOT NULL,   -- the [[strategies]] name
    trigger     text        NOT NULL,   -- what started it: on-demand (sync/async) or a schedule
    filter      text,                   -- the row filter expression used, if any
    state       text        NOT NULL,   -- running, paused, succeeded, failed, cancelled, refused
    counts      jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- rows read, records and batches sent
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,            -- NULL while running
    error       text                    -- why it failed, if it did
);

CREATE INDEX IF NOT EXISTS runs_strategy_idx
    ON :"state_schema".runs (strategy, id);

-- How a run was asked for (limit, start key, sync) and how far it got: the
-- last key of the last chunk whose records were delivered. A run walhook
-- did not finish (stopped, killed, failed over) resumes from there.
ALTER TABLE :"state_schema".runs ADD COLUMN IF NOT EXISTS params jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE :"state_schema".runs ADD COLUMN IF NOT EXISTS progress jsonb;

-- Batches sent (or being sent) but not yet confirmed by Postgres. After a
-- restart Postgres streams those changes again; walhook re-forms batches with
-- exactly these records, so a redelivered batch carries the same batch id
-- and webhook-id, and receivers can de-duplicate. Rows are deleted once the
-- slot's confirmed_flush_lsn passes last_lsn.
CREATE TABLE IF NOT EXISTS :"state_schema".batches (
    strategy        text        NOT NULL,  -- the [[strategies]] name
    batch_id        text        NOT NULL,  -- batch.id / webhook-id
    first_record_id text        NOT NULL,  -- records[0].id  ("<commit LSN>:<index>")
    last_record_id  text        NOT NULL,  -- the last records[].id
    last_lsn        pg_lsn      NOT NULL,  -- commit LSN of the last record
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strategy, batch_id)
);

-- Every record id when not a range (ordering = "key"). Added here, not
-- above, so a fresh database gets no "already exists, skipping" notice and
-- a schema made before ordering = "key" gets the column.
ALTER TABLE :"state_schema".batches ADD COLUMN IF NOT EXISTS records text;

-- Strategies paused through the admin API (POST /strategies/{name}/pause).
-- A pause outlives restarts and failover: every instance reads this table at
-- start, a standby again while it waits and when it takes over. Resume
-- deletes the row.
CREATE TABLE IF NOT EXISTS :"state_schema".pauses (
    strategy    text        PRIMARY KEY,  -- the [[strategies]] name
    paused_at   timestamptz NOT NULL DEFAULT now()
);

-- Parked batches (DESIGN.md "Parking"): a batch that kept failing, stored
-- with its exact body and ids, and the batches that must wait behind it to
-- keep the strategy's order (the later records of its keys under
-- ordering = "key", every later record under ordering = "commit"). The
-- slot is acknowledged past them; walhook retries them from here, in id
-- order per key, with the same backoff and webhook-id, and deletes each
-- row once delivered (or moves it to dead_letters when its retry policy
-- says so). A per-strategy byte bound (max_parked_bytes) makes walhook
-- block, never drop, when reached.
CREATE TABLE IF NOT EXISTS :"state_schema".parked (
    id                bigserial   PRIMARY KEY,  -- the order rows were parked in (and are delivered in, per key)
    strategy          text        NOT NULL,     -- the [[strategies]] name
    batch_id          text        NOT NULL,     -- batch.id / webhook-id
    first_lsn         pg_lsn      NOT NULL,     -- commit LSN of its first record
    last_lsn          pg_lsn      NOT NULL,     -- commit LSN of its last record
    records           text        NOT NULL,     -- every record id ("<commit LSN>:<index>", runs as "<lsn>:<first>-<last>")
    size              integer     NOT NULL,     -- how many records
    group_keys        bigint[]    NOT NULL,     -- the group keys it holds (ordering = "key"; one key under "commit")
    all_groups        boolean     NOT NULL,     -- it holds every group (a truncate)
    key_hash          bigint      NOT NULL,     -- which hashing made group_keys (another build reads them as all_groups)
    body              bytea       NOT NULL,     -- the exact request body (as sent and signed)
    first_commit_time bigint      NOT NULL,     -- commit time of its first record, microseconds since 1970
    reason            text        NOT NULL,     -- failing (it failed), behind (waits behind failing work), held
    attempts          integer     NOT NULL DEFAULT 0,  -- delivery attempts so far
    last_status       integer,                  -- HTTP status of the last attempt; NULL = no response
    last_error        text,                     -- why the last attempt failed (never a secret)
    last_attempt_at   timestamptz,              -- when it was last attempted
    parked_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS parked_strategy_idx
    ON :"state_schema".parked (strategy, id);

-- Strategies held (everything they get is parked until they are released),
-- e.g. while their table's schema changed. Like pauses, a hold outlives
-- restarts and failover.
CREATE TABLE IF NOT EXISTS :"state_schema".holds (
    strategy    text        PRIMARY KEY,  -- the [[strategies]] name
    reason      text        NOT NULL,     -- why it is held (shown in /status)
    held_at     timestamptz NOT NULL DEFAULT now()
);

-- The replication slot walhook streams from, as walhook recorded it: the
-- cluster (system identifier, timeline) and the last position walhook let
-- Postgres confirm. walhook writes confirmed_lsn before a standby status
-- carries a position, so Postgres never confirms more than is written here:
-- a slot of this name whose confirmed_flush_lsn is past confirmed_lsn was
-- dropped and created again, and what was committed in between is lost.
-- A slot recorded here that is missing, invalidated or replaced is never
-- recreated silently (README, "Slot loss"). `walhook teardown` deletes the
-- row. lost_* describe a loss being repaired (on_slot_lost = "resync")
-- until the backfills that repair it are under way.
CREATE TABLE IF NOT EXISTS :"state_schema".slots (
    slot_name     text        PRIMARY KEY,  -- source.slot
    system_id     text        NOT NULL,     -- the cluster's system identifier
    timeline      integer     NOT NULL,     -- its timeline when last recorded
    confirmed_lsn pg_lsn      NOT NULL,     -- the highest position walhook acknowledged
    lost_kind     text,                     -- missing, invalidated, replaced, other_cluster
    lost_after    pg_lsn,                   -- the lost range: (lost_after, lost_through]
    lost_through  pg_lsn,
    lost_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- What the role walhook runs as needs here, and nothing more. (ALL TABLES
-- and ALL SEQUENCES: the ones above, whatever this version adds.)
\if :{?state_role}
GRANT USAGE ON SCHEMA :"state_schema" TO :"state_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA :"state_schema" TO :"state_role";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA :"state_schema" TO :"state_role";
\endif
