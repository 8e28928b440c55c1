-- Every request, sync and async. Unfinished async requests are also the job queue: a row
-- is due when `next_attempt_at` has passed and nobody holds an unexpired lease on it.
CREATE TABLE requests (
    id                   TEXT PRIMARY KEY,
    mode                 TEXT NOT NULL CHECK (mode IN ('sync', 'async')),
    status               TEXT NOT NULL,
    payload_hash         TEXT NOT NULL,
    -- The async input, kept only until the work result is stored.
    data                 TEXT,
    iterations           INTEGER NOT NULL,
    callback_url         TEXT,
    created_at           TIMESTAMPTZ NOT NULL,
    completed_at         TIMESTAMPTZ,
    input_hash           TEXT,
    output_hash          TEXT,
    processing_time_ms   DOUBLE PRECISION,
    callback_attempts    INTEGER NOT NULL DEFAULT 0,
    callback_last_error  TEXT,
    -- Attempts that had been made when the current round of delivery began (redelivery starts
    -- a new round with a fresh retry budget).
    round_start_attempts INTEGER NOT NULL DEFAULT 0,
    -- Queue fields: NULL once the request is finished.
    next_attempt_at      TIMESTAMPTZ,
    lease_owner          TEXT,
    lease_expires_at     TIMESTAMPTZ
);

-- Newest first, optionally filtered by mode or status (GET /requests).
CREATE INDEX requests_created_at ON requests (created_at);
CREATE INDEX requests_mode_created_at ON requests (mode, created_at);
CREATE INDEX requests_status_created_at ON requests (status, created_at);
-- The queue: only unfinished async rows are in it, so claiming never scans finished ones.
CREATE INDEX requests_due ON requests (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
-- Heartbeats and releases find an instance's leases without a scan.
CREATE INDEX requests_lease_owner ON requests (lease_owner) WHERE lease_owner IS NOT NULL;

-- The audit of every callback delivery attempt. `claimed_by` names the instance that made
-- it, so overlapping attempts by two instances would show.
CREATE TABLE delivery_attempts (
    request_id    TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    duration_ms   DOUBLE PRECISION NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,
    claimed_by    TEXT,
    PRIMARY KEY (request_id, attempt)
);
