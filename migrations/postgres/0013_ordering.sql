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
