-- One index for the leases where there were two: by owner, then claim token.
--
-- A claim sets a job's owner and token together and every write that ends a lease clears
-- both, so one index serves the heartbeat's renewal (by owner and token), its look for an
-- owner's expired leases and the release at shutdown (by owner). Each claim inserted an entry
-- into two indexes and each job's end deleted both: one entry each way is gone from the
-- writer's work on every job.
DROP INDEX requests_lease_token;
DROP INDEX requests_lease_owner;
CREATE INDEX requests_leases ON requests (lease_owner, lease_token)
    WHERE lease_owner IS NOT NULL;
