-- The instance (lease owner) that made each attempt, so the audit shows who worked a job.
ALTER TABLE delivery_attempts ADD COLUMN claimed_by TEXT;
