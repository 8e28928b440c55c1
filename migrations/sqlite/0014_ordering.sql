-- Ordered delivery (SPEC §12): requests with the same `ordering_key` are delivered one at a
-- time, in acceptance order. `ordering_seq` (keyed requests only) is that order: one more
-- than the largest of the key's queued requests when accepted (or redelivered). A keyed row
-- is claimable only while no queued row of its key has a smaller one, a seek in
-- `requests_ordering`. Both queue indexes carry `ordering_seq`, so a claim passes an unkeyed
-- row (NULL there) without reading the table.
ALTER TABLE requests ADD COLUMN ordering_key TEXT;
ALTER TABLE requests ADD COLUMN ordering_seq INTEGER;
DROP INDEX requests_due;
CREATE INDEX requests_due
    ON requests (priority, next_attempt_at, destination, lease_expires_at, ordering_seq)
    WHERE next_attempt_at IS NOT NULL;
DROP INDEX requests_destination_due;
CREATE INDEX requests_destination_due
    ON requests (destination, priority, next_attempt_at, lease_expires_at, ordering_seq)
    WHERE next_attempt_at IS NOT NULL;
CREATE INDEX requests_ordering ON requests (ordering_key, ordering_seq)
    WHERE next_attempt_at IS NOT NULL AND ordering_key IS NOT NULL;
-- A keyed request queued behind an earlier one of its key waits parked (due 9999-01-01,
-- past every claim's window) until the one before it ends; these are the parked ones' keys,
-- for the sweep that unparks a key nothing else did.
CREATE INDEX requests_parked ON requests (ordering_key) WHERE next_attempt_at = 253370764800000;
-- The keyed requests a claim holds: a key's next waits while one of its requests is in
-- flight, whatever their numbers.
CREATE INDEX requests_ordering_claimed ON requests (ordering_key)
    WHERE lease_token IS NOT NULL AND ordering_key IS NOT NULL;
