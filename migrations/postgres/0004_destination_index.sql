-- Claims look at each destination's due jobs on their own when the first due rows belong to
-- destinations without room (full, or held by their breaker): an index per destination makes
-- that a seek per destination instead of a walk over the whole backlog of the full ones.
-- Rows recorded before destinations were get theirs from their callback URL when the store
-- opens (in Rust, which parses URLs as claims and the dispatcher do).
CREATE INDEX requests_destination_due ON requests (destination, next_attempt_at, lease_expires_at)
    WHERE next_attempt_at IS NOT NULL;
