-- Each claim of a job gets a token of its own; every later write of the job names it, so a
-- worker whose lease ran out can never overwrite the outcome of a later claim.
ALTER TABLE requests ADD COLUMN lease_token TEXT;
-- Claims since an outcome was last recorded: bounds how often a job can be delivered without
-- its outcome ever being recorded.
ALTER TABLE requests ADD COLUMN unrecorded_claims INTEGER NOT NULL DEFAULT 0;
-- Why a request failed when no callback attempt says it (a sync request whose client hung up).
ALTER TABLE requests ADD COLUMN error TEXT;
