-- The same group with the queue's moving parts in a narrow table of their own: the request
-- row is written when accepted and when it ends; the claim and the result write the narrow
-- row, which the end deletes.
\set base random(1, 1000000000000)
BEGIN;
INSERT INTO requests (id, mode, status, payload_hash, data, iterations, callback_url, created_at,
                      destination, callback_host)
SELECT :base || '-' || g, 'async', 'pending', 'abcdef0123456789',
       convert_to(repeat('x', 32), 'UTF8'), 1000, 'http://127.0.0.1:9/callback', now(),
       'http://127.0.0.1:9', '127.0.0.1'
FROM generate_series(1, 20) g;
INSERT INTO job_queue (id, next_attempt_at, priority, destination)
SELECT :base || '-' || g, now(), 0, 'http://127.0.0.1:9' FROM generate_series(1, 20) g;
COMMIT;
UPDATE job_queue SET lease_owner = 'owner', lease_token = 'token-' || id,
       lease_expires_at = now() + interval '60 seconds'
WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g));
UPDATE job_queue SET input_hash = repeat('a', 64), output_hash = repeat('b', 64),
       processing_time_ms = 0.1, completed_at = now()
WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g))
  AND lease_token = 'token-' || id;
BEGIN;
UPDATE requests AS r SET status = 'callback_success', input_hash = q.input_hash,
       output_hash = q.output_hash, processing_time_ms = q.processing_time_ms,
       completed_at = q.completed_at, data = NULL, delivered_at = now(), callback_attempts = 1
FROM job_queue AS q
WHERE q.id = r.id AND q.id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g));
DELETE FROM job_queue WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g));
INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms, status_code, claimed_by)
SELECT :base || '-' || g, 1, now(), 1.0, 200, 'owner' FROM generate_series(1, 20) g;
COMMIT;
