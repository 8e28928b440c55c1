-- How fast a destination's receiver takes callbacks (SPEC §12), beside the operator's other
-- controls. `rate_set` when an operator set the destination's own limit: `rate_per_second`
-- deliveries a second with bursts of `rate_burst`, or no limit at all when both are NULL;
-- otherwise the default (APP_CALLBACK_RATE_PER_DESTINATION) applies. `held_until` is the end
-- of a receiver's `Retry-After`: no instance claims a job of the destination before it. A row
-- whose hold is over and that has no other control may be deleted to make room.
ALTER TABLE destination_controls ADD COLUMN rate_set BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE destination_controls ADD COLUMN rate_per_second DOUBLE PRECISION;
ALTER TABLE destination_controls ADD COLUMN rate_burst INTEGER;
ALTER TABLE destination_controls ADD COLUMN held_until TIMESTAMPTZ;

-- The instances sharing the database, each seen when it last read the controls (every
-- second): a rate limit is shared out between those seen in the last few seconds. A row not
-- seen for a minute is deleted by the next instance to read.
CREATE TABLE instances (
    owner TEXT PRIMARY KEY NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL
);
