-- walhook setup: publication, replication slot and state schema.
--
-- Run it once per source database, as a superuser (or a role that may create
-- publications on the tables and has REPLICATION):
--
--   psql "postgres://admin@db/shop" -v ON_ERROR_STOP=1 \
--        -v tables='public.orders, public.order_items' \
--        -v slot=walhook -v publication=walhook -v role=walhook \
--        -f sql/setup.sql
--
-- Variables:
--   tables       required: the tables walhook streams, as SQL (schema.table, …)
--   slot         the logical replication slot (default walhook)
--   publication  the publication (default walhook)
--   role         optional: the role walhook connects as; it gets the state
--                schema and SELECT on the tables. Create it first, e.g.
--                CREATE ROLE walhook LOGIN REPLICATION PASSWORD '…';
--
-- It is safe to run again: existing objects are left as they are (an
-- existing publication is NOT altered; add tables with
-- ALTER PUBLICATION walhook ADD TABLE …).
--
-- The server needs wal_level = logical (postgresql.conf; restart required),
-- and max_replication_slots / max_wal_senders of at least 1 spare each.
-- Filters that read old.<column> for a column outside the primary key need
-- ALTER TABLE … REPLICA IDENTITY FULL on that table.

\set ON_ERROR_STOP on

\if :{?tables}
\else
DO $$ BEGIN
    RAISE EXCEPTION 'setup.sql needs the tables to publish: -v tables=''public.orders, public.items''';
END $$;
\endif
\if :{?slot}
\else
\set slot walhook
\endif
\if :{?publication}
\else
\set publication walhook
\endif

-- Refuse early with a clear message when logical decoding is off.
SELECT current_setting('wal_level') = 'logical' AS wal_level_ok \gset
\if :wal_level_ok
\else
DO $$ BEGIN
    RAISE EXCEPTION 'wal_level is %, walhook needs logical', current_setting('wal_level')
        USING HINT = 'Set wal_level = logical in postgresql.conf and restart the server.';
END $$;
\endif

-- The publication: which tables' changes the slot carries.
SELECT format('CREATE PUBLICATION %I FOR TABLE %s', :'publication', :'tables')
WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication')
\gexec

-- The state schema (dead letters, runs, batch boundaries).
\ir state.sql

\if :{?role}
ALTER SCHEMA walhook OWNER TO :"role";
SELECT format('ALTER TABLE walhook.%I OWNER TO %I', c.relname, :'role')
FROM pg_class c
WHERE c.relnamespace = 'walhook'::regnamespace AND c.relkind = 'r'  -- owned sequences follow their table
\gexec
SELECT format('GRANT SELECT ON TABLE %s TO %I', :'tables', :'role')
\gexec
\endif

-- The slot last: from here on, the server keeps WAL until walhook consumes it.
-- Drop it with teardown.sql when walhook is gone, or WAL piles up.
SELECT slot_name, lsn AS consistent_point
FROM pg_create_logical_replication_slot(:'slot', 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot');
