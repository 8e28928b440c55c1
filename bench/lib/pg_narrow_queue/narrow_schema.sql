-- The narrow queue table of the what-if: due time, lease, priority and destination, and the
-- stored result until the attempt moves it to the request. Indexed as the request's queue
-- columns are; the result's write names no indexed column, so it can be HOT.
CREATE TABLE job_queue (
    id TEXT COLLATE "C" PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    priority SMALLINT NOT NULL DEFAULT 0,
    destination TEXT NOT NULL,
    lease_owner TEXT,
    lease_token TEXT,
    lease_expires_at TIMESTAMPTZ,
    input_hash TEXT,
    output_hash TEXT,
    processing_time_ms DOUBLE PRECISION,
    completed_at TIMESTAMPTZ
) WITH (fillfactor = 70);
CREATE INDEX job_queue_due ON job_queue (priority, next_attempt_at, destination, lease_expires_at);
CREATE INDEX job_queue_destination_due
    ON job_queue (destination, priority, next_attempt_at, lease_expires_at);
CREATE INDEX job_queue_lease_owner ON job_queue (lease_owner) WHERE lease_owner IS NOT NULL;
