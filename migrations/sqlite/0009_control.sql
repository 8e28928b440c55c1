-- What a client may ask of an async request beyond the original's fields (SPEC §11), each
-- NULL when it did not: the time its work was scheduled for (`run_at`, Unix milliseconds on
-- the wall clock, as asked; the queue's due time is `next_attempt_at`), its own retry budget
-- and per-attempt timeout (never above the operator's settings), and, on a cancelled
-- request, whether a delivery attempt was in flight when it was cancelled (that attempt may
-- still land, and is audited).
ALTER TABLE requests ADD COLUMN run_at INTEGER;
ALTER TABLE requests ADD COLUMN max_retries INTEGER;
ALTER TABLE requests ADD COLUMN callback_timeout_ms INTEGER;
ALTER TABLE requests ADD COLUMN cancelled_in_flight INTEGER;
