-- Every request, sync and async. Unfinished async requests are also the job queue: a row
-- is due when `next_attempt_at` has passed and nobody holds an unexpired lease on it.
CREATE TABLE requests (
    id                  TEXT PRIMARY KEY,
    mode                TEXT NOT NULL CHECK (mode IN ('sync', 'async')),
    status              TEXT NOT NULL,
    payload_hash        TEXT NOT NULL,
    -- The async input, kept only until the work result is stored.
    data                TEXT,
    iterations          INTEGER NOT NULL,
    callback_url        TEXT,
    created_at          INTEGER NOT NULL, -- Unix milliseconds, UTC
    completed_at        INTEGER,
    input_hash          TEXT,
    output_hash         TEXT,
    processing_time_ms  REAL,
    callback_attempts   INTEGER NOT NULL DEFAULT 0,
    callback_last_error TEXT,
    -- Attempts that had been made when the current round of delivery began (redelivery starts
    -- a new round with a fresh retry budget).
    round_start_attempts INTEGER NOT NULL DEFAULT 0,
    -- Queue fields: NULL once the request is finished.
    next_attempt_at     INTEGER,
    lease_owner         TEXT,
    lease_expires_at    INTEGER
);

-- Newest first, optionally filtered by mode or status (GET /requests).
CREATE INDEX requests_created_at ON requests (created_at);
CREATE INDEX requests_mode_created_at ON requests (mode, created_at);
CREATE INDEX requests_status_created_at ON requests (status, created_at);
-- The queue: only unfinished async rows are in it, so claiming never scans finished ones.
CREATE INDEX requests_due ON requests (next_attempt_at) WHERE next_attempt_at IS NOT NULL;

-- The audit of every callback delivery attempt.
CREATE TABLE delivery_attempts (
    request_id    TEXT NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   REAL NOT NULL,
    status_code   INTEGER,
    error         TEXT,
    response_body TEXT,
    PRIMARY KEY (request_id, attempt)
) WITHOUT ROWID;
