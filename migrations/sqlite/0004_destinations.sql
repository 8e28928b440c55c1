-- Where an async request's callback goes (`scheme://host:port`): a claim takes no more jobs
-- of a destination than it has room for, and none of a destination whose breaker is open.
ALTER TABLE requests ADD COLUMN destination TEXT;
-- Claims walk due rows in due order and skip full destinations and live leases from the
-- index alone.
DROP INDEX requests_due;
CREATE INDEX requests_due ON requests (next_attempt_at, destination, lease_expires_at)
    WHERE next_attempt_at IS NOT NULL;
-- Why an attempt started well after it was due (the destination's breaker was open, …).
ALTER TABLE delivery_attempts ADD COLUMN note TEXT;
