-- When an async request's delivery ended (its last attempt, or it was given up): its
-- `completed_at` is when its work finished, as in the original. Rows finished before this
-- column existed have none; their `completed_at` was the end of delivery and is read as
-- such (`store::rows`), so the history is not rewritten on upgrade.
ALTER TABLE requests ADD COLUMN delivered_at INTEGER;
