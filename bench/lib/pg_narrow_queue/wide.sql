-- One group of 20 async jobs as the service writes them today, each write its own commit:
-- accepted, claimed, result stored, attempt recorded (the wide row rewritten three times).
\set base random(1, 1000000000000)
INSERT INTO requests (id, mode, status, payload_hash, data, iterations, callback_url, created_at,
                      next_attempt_at, destination, callback_host)
SELECT :base || '-' || g, 'async', 'pending', 'abcdef0123456789',
       convert_to(repeat('x', 32), 'UTF8'), 1000, 'http://127.0.0.1:9/callback', now(), now(),
       'http://127.0.0.1:9', '127.0.0.1'
FROM generate_series(1, 20) g;
UPDATE requests SET status = 'processing', lease_owner = 'owner', lease_token = 'token-' || id,
       lease_expires_at = now() + interval '60 seconds', unrecorded_claims = unrecorded_claims + 1
WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g));
UPDATE requests SET status = 'callback_pending', input_hash = repeat('a', 64),
       output_hash = repeat('b', 64), processing_time_ms = 0.1, completed_at = now(), data = NULL
WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g))
  AND lease_token = 'token-' || id;
WITH done AS (
    UPDATE requests SET status = 'callback_success', delivered_at = now(), next_attempt_at = NULL,
           lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
           callback_attempts = 1, unrecorded_claims = 0
    WHERE id = ANY (ARRAY(SELECT :base || '-' || g FROM generate_series(1, 20) g))
    RETURNING id)
INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms, status_code, claimed_by)
SELECT id, 1, now(), 1.0, 200, 'owner' FROM done;
