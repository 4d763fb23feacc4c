-- walhook teardown: drop the replication slot and the publication, and, when
-- asked, the state schema.
--
--   psql "postgres://admin@db/shop" -v ON_ERROR_STOP=1 \
--        -v slot=walhook -v publication=walhook [-v drop_state=1] \
--        -f sql/teardown.sql
--
-- Stop walhook first: an active slot cannot be dropped. Dropping the slot
-- lets the server recycle the WAL it was holding; changes not yet delivered
-- are then lost to walhook.
--
-- The state schema (dead letters, run history; -v state_schema=… when it is
-- not walhook) is kept unless -v drop_state=1 is given. Run it as an
-- administrator: the role walhook runs as owns neither the publication nor
-- the state schema (`walhook teardown --print-sql` prints the same for a
-- given config.toml).

\set ON_ERROR_STOP on
\if :{?slot}
\else
\set slot walhook
\endif
\if :{?publication}
\else
\set publication walhook
\endif

SELECT pg_drop_replication_slot(slot_name)
FROM pg_replication_slots
WHERE slot_name = :'slot' AND database = current_database();

SELECT format('DROP PUBLICATION IF EXISTS %I', :'publication')
\gexec

\if :{?state_schema}
\else
\set state_schema walhook
\endif

-- walhook's record of the slot: a slot dropped on purpose is not a lost one.
SELECT format('DELETE FROM %I.slots WHERE slot_name = %L', :'state_schema', :'slot')
WHERE to_regclass(format('%I.slots', :'state_schema')) IS NOT NULL
\gexec
\if :{?drop_state}
DROP SCHEMA IF EXISTS :"state_schema" CASCADE;
\endif
