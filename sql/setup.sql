-- walhook setup: publication, replication slot and state schema.
--
-- Run it once per source database, as an administrator (a superuser, or a
-- role that may create publications on the tables and has REPLICATION):
--
--   psql "postgres://admin@db/shop" -v ON_ERROR_STOP=1 \
--        -v tables='public.orders, public.order_items' \
--        -v slot=walhook -v publication=walhook -v role=walhook \
--        -f sql/setup.sql
--
-- Variables:
--   tables        required: the tables walhook streams, as SQL (schema.table, …)
--   slot          the logical replication slot (default walhook)
--   publication   the publication (default walhook)
--   role          optional: the role walhook connects as. It gets SELECT on
--                 the tables and exactly what it needs in the state schema
--                 (USAGE; SELECT, INSERT, UPDATE, DELETE on its tables), so
--                 it needs no CREATE on the database and owns nothing.
--                 Create it first: CREATE ROLE walhook LOGIN REPLICATION PASSWORD '…';
--   state_schema  the state schema (default walhook; [state] schema)
--
-- It is safe to run again: existing objects are kept; tables the
-- publication does not carry yet are added to it (a partitioned table
-- counts as carried when its partitions are).
--
-- It refuses, before changing anything, a table without a primary key (or
-- with REPLICA IDENTITY NOTHING): once published with its updates and
-- deletes, the application's own UPDATE and DELETE on it would fail. The
-- error names the three ways out.
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
\if :{?role}
\set state_role :role
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

-- The tables, one per row, for the checks below.
CREATE TEMPORARY TABLE walhook_setup_tables AS
SELECT to_regclass(trim(name)) AS rel, trim(name) AS name
FROM unnest(string_to_array(:'tables', ',')) AS name;

-- Refuse tables whose UPDATE and DELETE a publication that carries them
-- with its updates and deletes would make fail (every partition counts).
SELECT string_agg(quote_ident(n.nspname) || '.' || quote_ident(c.relname), ', '
                  ORDER BY n.nspname, c.relname) AS no_identity
FROM walhook_setup_tables t
CROSS JOIN LATERAL (SELECT t.rel AS relid UNION SELECT relid FROM pg_partition_tree(t.rel)) AS tree
JOIN pg_class c ON c.oid = tree.relid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS
        (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
  AND NOT EXISTS (SELECT 1 FROM pg_publication
                  WHERE pubname = :'publication' AND NOT pubupdate AND NOT pubdelete)
\gset
\if :{?no_identity}
SELECT format('DO $walhook$ BEGIN RAISE EXCEPTION %L USING HINT = %L; END $walhook$',
              'walhook setup refused, nothing was changed: ' || :'no_identity'
              || ' without a replica identity (no primary key, or REPLICA IDENTITY NOTHING);'
              || ' in a publication that publishes updates and deletes, the application''s'
              || ' UPDATE and DELETE on them would fail',
              'Choose one per table: (1) ALTER TABLE … ADD PRIMARY KEY (…); (2) ALTER TABLE …'
              || ' REPLICA IDENTITY FULL; (3) if only the inserts of these tables are needed,'
              || ' follow them with a second walhook, its own slot and its own publication'
              || ' created WITH (publish = ''insert''). Not on this publication: publish applies'
              || ' to every table of a publication, so every other strategy on it would stop'
              || ' receiving updates and deletes.')
\gexec
\endif

-- The publication: which tables' changes the slot carries. A partitioned
-- table's changes arrive under its own name (publish_via_partition_root).
SELECT format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish_via_partition_root = true)',
              :'publication', :'tables')
WHERE NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = :'publication')
\gexec

-- Tables an existing publication does not carry yet (neither the table,
-- nor its partitions, nor a partitioned parent).
SELECT format('ALTER PUBLICATION %I ADD TABLE %s', :'publication', COALESCE(t.rel::text, t.name))
FROM walhook_setup_tables t
WHERE NOT EXISTS (
    SELECT 1 FROM pg_get_publication_tables(:'publication') AS p
    WHERE p.relid IN (SELECT t.rel UNION SELECT relid FROM pg_partition_tree(t.rel)
                      UNION SELECT relid FROM pg_partition_ancestors(t.rel)))
\gexec

\if :{?role}
SELECT format('GRANT SELECT ON TABLE %s TO %I', :'tables', :'role')
\gexec
\endif

-- The state schema (dead letters, runs, batch boundaries), and the grants
-- to the role walhook runs as.
\ir state.sql

-- The slot last: from here on, the server keeps WAL until walhook consumes it.
-- Drop it with teardown.sql when walhook is gone, or WAL piles up.
SELECT slot_name, lsn AS consistent_point
FROM pg_create_logical_replication_slot(:'slot', 'pgoutput')
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = :'slot');
