-- What keeps every hot statement independent of how many finished requests are stored.

-- Heartbeats renew leases by claim token; releases and recovery find an instance's leases by
-- owner. Only jobs being delivered have either, so the indexes stay as small as the work in
-- flight, and neither statement walks the history.
CREATE INDEX requests_lease_token ON requests (lease_token) WHERE lease_token IS NOT NULL;
CREATE INDEX requests_lease_owner ON requests (lease_owner) WHERE lease_owner IS NOT NULL;

-- The number of requests in each mode and status, kept by the triggers below with every
-- insert, status change and delete, whoever makes it: the dashboard, `/healthz` and the
-- `total` of a list filtered by mode and status read a few rows here instead of counting the
-- table.
CREATE TABLE request_counts (
    mode   TEXT NOT NULL,
    status TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (mode, status)
) WITHOUT ROWID;

INSERT INTO request_counts (mode, status, n)
    SELECT mode, status, count(*) FROM requests GROUP BY mode, status;

CREATE TRIGGER requests_counted_insert AFTER INSERT ON requests
BEGIN
    INSERT INTO request_counts (mode, status, n) VALUES (NEW.mode, NEW.status, 1)
        ON CONFLICT (mode, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER requests_counted_update AFTER UPDATE OF mode, status ON requests
    WHEN OLD.mode IS NOT NEW.mode OR OLD.status IS NOT NEW.status
BEGIN
    UPDATE request_counts SET n = n - 1 WHERE mode = OLD.mode AND status = OLD.status;
    INSERT INTO request_counts (mode, status, n) VALUES (NEW.mode, NEW.status, 1)
        ON CONFLICT (mode, status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER requests_counted_delete AFTER DELETE ON requests
BEGIN
    UPDATE request_counts SET n = n - 1 WHERE mode = OLD.mode AND status = OLD.status;
END;

-- The host of an async request's callback, lower-case, without the port (`destination` is
-- `scheme://host:port`): the `callback_host` list filter is an index seek on it, newest
-- first, instead of a pattern matched against every row. Sync requests have none, and are
-- left out of the index.
ALTER TABLE requests ADD COLUMN callback_host TEXT;
UPDATE requests
    SET callback_host = rtrim(rtrim(substr(destination, instr(destination, '://') + 3),
                                    '0123456789'), ':')
    WHERE destination IS NOT NULL;
CREATE INDEX requests_callback_host ON requests (callback_host, created_at)
    WHERE callback_host IS NOT NULL;
-- With a status too (the operator's "what failed to reach this host"): the walk reads only
-- the host's requests in that status, however many others the host has.
CREATE INDEX requests_callback_host_status ON requests (callback_host, status, created_at)
    WHERE callback_host IS NOT NULL;

-- A table `/healthz` writes to and empties again while writes have been failing: does the
-- database take a batch's worth of writes again?
CREATE TABLE write_probe (id INTEGER PRIMARY KEY, filler BLOB);

-- The queue's clock (Unix ms) as the writer last stamped it, every second: a process that
-- opens the database goes on from it if the wall clock is behind it, so a wall clock set back
-- while the service was down does not postpone the queued jobs by the size of the step.
CREATE TABLE queue_clock (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);
