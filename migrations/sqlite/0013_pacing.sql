-- How fast a destination's receiver takes callbacks (SPEC §12), beside the operator's other
-- controls. `rate_set` = 1 when an operator set the destination's own limit: `rate_per_second`
-- deliveries a second with bursts of `rate_burst`, or no limit at all when both are NULL;
-- with `rate_set` = 0 the default (APP_CALLBACK_RATE_PER_DESTINATION) applies.
-- `held_until` (Unix milliseconds, wall clock) is the end of a receiver's `Retry-After`: no
-- job of the destination is claimed before it. A row whose hold is over and that has no
-- other control may be deleted to make room.
ALTER TABLE destination_controls ADD COLUMN rate_set INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destination_controls ADD COLUMN rate_per_second REAL;
ALTER TABLE destination_controls ADD COLUMN rate_burst INTEGER;
ALTER TABLE destination_controls ADD COLUMN held_until INTEGER;
