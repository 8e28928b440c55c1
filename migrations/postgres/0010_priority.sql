-- Among due jobs a higher priority (-10 to 10, SPEC §11) is claimed first, each level worth
-- APP_PRIORITY_STEP_SECONDS of waiting. Claims read each level's due rows in due order, a
-- walk of the index per level present (at most 21, found with a seek each), and merge them:
-- priority leads both queue indexes.
ALTER TABLE requests ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0;
DROP INDEX requests_due;
CREATE INDEX requests_due ON requests (priority, next_attempt_at, destination, lease_expires_at)
    WHERE next_attempt_at IS NOT NULL;
DROP INDEX requests_destination_due;
CREATE INDEX requests_destination_due
    ON requests (destination, priority, next_attempt_at, lease_expires_at)
    WHERE next_attempt_at IS NOT NULL;
