-- The indexes that list requests by status hold finished requests only.
--
-- SQLite rewrites a row's entry in an index whenever an UPDATE sets a column the index names,
-- in its key or in its WHERE, whatever the values. An async job sets `status` three times on
-- its way (claimed, its result stored, its attempt recorded), and each moved its entry in both
-- status-keyed indexes: 12 of the 28 index entries a job changed. Keyed by status but holding
-- finished requests only, they are left alone by the moves between open statuses (SQLite
-- skips an index's entry when its WHERE holds for neither the old row nor the new), and gain
-- one entry when the request ends.
--
-- `unfinished` is 1 while a request is `pending`, `processing` or `callback_pending`, NULL
-- once it has ended. Only a request's insert, the write that ends it and the one that
-- reopens it (a redelivery) set it, never a move between open statuses. Requests in an open
-- status are listed from the unfinished requests' own indexes, by creation time: at most the
-- queue's bound and the sync requests in flight, checked there for their status.
ALTER TABLE requests ADD COLUMN unfinished INTEGER;
UPDATE requests SET unfinished = 1
    WHERE status IN ('pending', 'processing', 'callback_pending');
DROP INDEX requests_status_created_at;
DROP INDEX requests_callback_host_status;
CREATE INDEX requests_finished_status ON requests (status, created_at)
    WHERE unfinished IS NULL;
CREATE INDEX requests_callback_host_finished_status ON requests (callback_host, status, created_at)
    WHERE callback_host IS NOT NULL AND unfinished IS NULL;
CREATE INDEX requests_unfinished ON requests (created_at)
    WHERE unfinished IS NOT NULL;
CREATE INDEX requests_callback_host_unfinished ON requests (callback_host, created_at)
    WHERE callback_host IS NOT NULL AND unfinished IS NOT NULL;
