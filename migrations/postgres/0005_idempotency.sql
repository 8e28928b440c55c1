-- Idempotency-Key (draft-ietf-httpapi-idempotency-key-header): the key a request was created
-- with and a fingerprint of what it asked for (mode, data, iterations, callback URL). The
-- unique index makes a key create at most one request, whichever instance or connection
-- sees it first; a key lives as long as its request is stored (retention).
ALTER TABLE requests ADD COLUMN idempotency_key TEXT;
ALTER TABLE requests ADD COLUMN idempotency_fingerprint TEXT;
CREATE UNIQUE INDEX requests_idempotency_key ON requests (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
