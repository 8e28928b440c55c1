-- What an operator decided about a destination (SPEC §11), read by every instance's
-- dispatcher every second: while `paused_at` is set no job of the destination is claimed;
-- `breaker_resets` counts the operator's breaker resets, so an instance that sees it change
-- resets its own breaker for the destination. A row with no pause may be deleted to make room,
-- those unchanged for ten seconds first (at most 1,000 destinations are paused).
CREATE TABLE destination_controls (
    destination TEXT PRIMARY KEY NOT NULL,
    paused_at TIMESTAMPTZ,
    breaker_resets BIGINT NOT NULL DEFAULT 0,
    changed_at TIMESTAMPTZ NOT NULL
);
