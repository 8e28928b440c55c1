-- The instance working on a sync request while it is `processing` (the owner it names itself
-- by in `instances`), so that another instance can fail the request, and free its
-- idempotency key, once that instance is gone, rather than an hour after it started. NULL on
-- rows written before, which the hour still covers. Read only by the cleanup's sweep, over
-- the `processing` sync rows: no index of its own.
ALTER TABLE requests ADD COLUMN sync_owner TEXT;
-- When the instance last marked itself alive (every second, for as long as it may have sync
-- requests under way, which can outlast its deliveries at shutdown). Apart from `seen_at`,
-- which says it shares the destinations' rate limits, and only while it delivers. A row
-- written by a mark alone has `seen_at` -infinity; a row is deleted once both are a minute
-- old.
ALTER TABLE instances ADD COLUMN alive_at TIMESTAMPTZ;
