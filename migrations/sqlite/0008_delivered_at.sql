-- When an async request's delivery ended (its last attempt, or it was given up): its
-- `completed_at` is when its work finished, as in the original. Rows finished before this
-- column existed have none; their `completed_at` was the end of delivery and is read as
-- such (`store::rows`), so the history is not rewritten on upgrade.
ALTER TABLE requests ADD COLUMN delivered_at INTEGER;
-- A request still being delivered has its result but no `completed_at` (it was written at
-- the end of delivery). Its work finished before its first attempt started, or, without
-- one, by now: every later attempt's callback carries that time (the status index finds the
-- few such rows).
UPDATE requests SET completed_at = COALESCE(
        (SELECT min(a.started_at) FROM delivery_attempts AS a WHERE a.request_id = requests.id),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
    WHERE status = 'callback_pending' AND completed_at IS NULL;
