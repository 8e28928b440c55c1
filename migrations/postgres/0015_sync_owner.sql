-- The instance working on a sync request while it is `processing` (the owner it names itself
-- by in `instances`), so that another instance can fail the request, and free its
-- idempotency key, once that instance is gone, rather than an hour after it started. NULL on
-- rows written before, which the hour still covers. Read only by the cleanup's sweep, over
-- the `processing` sync rows: no index of its own.
ALTER TABLE requests ADD COLUMN sync_owner TEXT;
