-- What keeps every hot statement independent of how many finished requests are stored.

-- Ids compare byte by byte, whatever the database's default collation: an `id_prefix` filter
-- is then a range of the primary key, walked newest first (ids are UUIDv7, which sort by
-- creation time). Equality, and so every lookup by id, is unchanged.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_request_id_fkey;
ALTER TABLE requests ALTER COLUMN id TYPE TEXT COLLATE "C";
ALTER TABLE delivery_attempts ALTER COLUMN request_id TYPE TEXT COLLATE "C";
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_request_id_fkey
    FOREIGN KEY (request_id) REFERENCES requests (id) ON DELETE CASCADE;

-- The host of an async request's callback, lower-case, without the port (`destination` is
-- `scheme://host:port`): the `callback_host` list filter is an index seek on it, newest
-- first, instead of a pattern matched against every row. Sync requests have none, and are
-- left out of the index.
ALTER TABLE requests ADD COLUMN callback_host TEXT;
UPDATE requests SET callback_host = substring(destination FROM '^[a-z]+://(.*):[0-9]+$')
    WHERE destination IS NOT NULL;
CREATE INDEX requests_callback_host ON requests (callback_host, created_at, id)
    WHERE callback_host IS NOT NULL;
-- With a status too (the operator's "what failed to reach this host"): the walk reads only
-- the host's requests in that status, however many others the host has.
CREATE INDEX requests_callback_host_status ON requests (callback_host, status, created_at, id)
    WHERE callback_host IS NOT NULL;

-- A list page is ordered by creation time, then id. With the id in each list index the index
-- gives the whole order and a page reads only the rows it returns; without it PostgreSQL
-- walks the creation-time index and checks each row's status or mode (every row of the
-- history, for a status few requests have).
DROP INDEX requests_created_at;
CREATE INDEX requests_created_at ON requests (created_at, id);
DROP INDEX requests_mode_created_at;
CREATE INDEX requests_mode_created_at ON requests (mode, created_at, id);
DROP INDEX requests_status_created_at;
CREATE INDEX requests_status_created_at ON requests (status, created_at, id);

-- The number of requests in each mode and status, kept by the triggers below with every
-- insert, status change and delete, whichever instance makes it: the dashboard, `/healthz`,
-- the queue bound and the `total` of a list filtered by mode and status read a few rows here
-- instead of counting the table. Each connection adds to the rows of its own shard (its
-- backend's pid modulo 32), so concurrent transactions seldom wait on one another's counts;
-- a shard's count may go below zero (a row counted in by one shard and out by another), and
-- only the sum over shards means anything.
CREATE TABLE request_counts (
    mode   TEXT NOT NULL,
    status TEXT NOT NULL,
    shard  INTEGER NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (mode, status, shard)
);

-- One statement's changes to the counts, from its transition tables: one row per mode and
-- status whose count changed, in key order, so that two statements lock count rows in the
-- same order and cannot deadlock on them.
CREATE FUNCTION request_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO request_counts (mode, status, shard, n)
            SELECT mode, status, pg_backend_pid() % 32, count(*)
            FROM new_rows GROUP BY mode, status ORDER BY mode, status
        ON CONFLICT (mode, status, shard) DO UPDATE SET n = request_counts.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO request_counts (mode, status, shard, n)
            SELECT mode, status, pg_backend_pid() % 32, -count(*)
            FROM old_rows GROUP BY mode, status ORDER BY mode, status
        ON CONFLICT (mode, status, shard) DO UPDATE SET n = request_counts.n + excluded.n;
    ELSE
        INSERT INTO request_counts (mode, status, shard, n)
            SELECT mode, status, pg_backend_pid() % 32, sum(delta)
            FROM (SELECT mode, status, 1 AS delta FROM new_rows
                  UNION ALL
                  SELECT mode, status, -1 FROM old_rows) AS changes
            GROUP BY mode, status HAVING sum(delta) <> 0 ORDER BY mode, status
        ON CONFLICT (mode, status, shard) DO UPDATE SET n = request_counts.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

-- Created before the counts are taken: creating a trigger locks the table against writes
-- until this migration commits, so no change can fall between the count and the triggers.
CREATE TRIGGER requests_counted_insert AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_add();
CREATE TRIGGER requests_counted_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_add();
CREATE TRIGGER requests_counted_delete AFTER DELETE ON requests
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION request_counts_add();

INSERT INTO request_counts (mode, status, shard, n)
    SELECT mode, status, 0, count(*) FROM requests GROUP BY mode, status;

-- A queue table: every job changes its row three or four times and retention deletes in
-- bulk, so dead rows pile up fast. Vacuum it after 2% of its rows changed (PostgreSQL's
-- default waits for 20%: on a table of millions, a backlog of hundreds of thousands of dead
-- rows that every index scan steps over), and analyse it as often, so that plans follow
-- the queue's size.
ALTER TABLE requests SET (autovacuum_vacuum_scale_factor = 0.02,
                          autovacuum_analyze_scale_factor = 0.02);
ALTER TABLE delivery_attempts SET (autovacuum_vacuum_scale_factor = 0.02);

-- A row `/healthz` rewrites while writes have been failing (a read-only server, a full
-- disk): does the database take writes again?
CREATE TABLE write_probe (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL);
