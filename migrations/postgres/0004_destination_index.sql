-- Claims look at each destination's due jobs on their own when the first due rows belong to
-- destinations without room (full, or held by their breaker): an index per destination makes
-- that a seek per destination instead of a walk over the whole backlog of the full ones.
-- Rows queued before destinations were recorded get the empty destination, so every queued
-- row is reachable through it.
UPDATE requests SET destination = '' WHERE destination IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX requests_destination_due ON requests (destination, next_attempt_at, lease_expires_at)
    WHERE next_attempt_at IS NOT NULL;
