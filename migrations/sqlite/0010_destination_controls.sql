-- What an operator decided about a destination (SPEC §11), read by the dispatcher every
-- second: while `paused_at` is set (Unix milliseconds, wall clock) no job of the destination
-- is claimed; `breaker_resets` counts the operator's breaker resets, so a process that sees
-- it change resets its own breaker for the destination. A row with no pause may be deleted to
-- make room, those unchanged for ten seconds first (at most 1,000 destinations are paused).
CREATE TABLE destination_controls (
    destination TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER,
    breaker_resets INTEGER NOT NULL DEFAULT 0,
    changed_at INTEGER NOT NULL
);
