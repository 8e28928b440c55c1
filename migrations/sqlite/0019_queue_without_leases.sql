-- The queue indexes hold the jobs no one has claimed.
--
-- They held every queued job, its lease's expiry in their key, so that a claim could pass
-- a leased job without reading the table. But a claim sets that expiry and every heartbeat
-- renews it, and SQLite rewrites a row's entry in each index whose columns an update sets:
-- a job's claim moved its entry in both indexes, each renewal again, and its end deleted
-- both. Holding only unleased jobs (`lease_token IS NULL`), the indexes lose a job's entries
-- at its claim, never see its renewals or its end, and take it back only if it is released
-- or waits for a retry.
--
-- A claim can then no longer take over a lease another owner let run out. On SQLite there
-- is no other owner: one process holds the database, and it hands back every lease of the
-- one before it when it starts; its own lapsed leases it hands back itself.
DROP INDEX requests_due;
CREATE INDEX requests_due ON requests (priority, next_attempt_at, destination, ordering_seq)
    WHERE next_attempt_at IS NOT NULL AND lease_token IS NULL;
DROP INDEX requests_destination_due;
CREATE INDEX requests_destination_due
    ON requests (destination, priority, next_attempt_at, ordering_seq)
    WHERE next_attempt_at IS NOT NULL AND lease_token IS NULL;
