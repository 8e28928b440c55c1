-- Ordered delivery (SPEC §12): requests with the same `ordering_key` are delivered one at a
-- time, in acceptance order. `ordering_seq` (keyed requests only, from one sequence shared
-- by every instance) is that order, taken again when a request is redelivered. A keyed row
-- is claimable only while no queued row of its key has a smaller one, a seek in
-- `requests_ordering`.
ALTER TABLE requests ADD COLUMN ordering_key TEXT;
ALTER TABLE requests ADD COLUMN ordering_seq BIGINT;
CREATE SEQUENCE requests_ordering_seq;
CREATE INDEX requests_ordering ON requests (ordering_key, ordering_seq)
    WHERE next_attempt_at IS NOT NULL AND ordering_key IS NOT NULL;
-- A keyed request queued behind an earlier one of its key waits parked (due 9999-01-01,
-- past every claim's window) until the one before it ends; these are the parked ones' keys,
-- for the sweep that unparks a key nothing else did.
CREATE INDEX requests_parked ON requests (ordering_key)
    WHERE next_attempt_at = '9999-01-01 00:00:00+00';
-- The keyed requests a claim holds: a key's next waits while one of its requests is in
-- flight, whatever their numbers.
CREATE INDEX requests_ordering_claimed ON requests (ordering_key)
    WHERE lease_token IS NOT NULL AND ordering_key IS NOT NULL;
