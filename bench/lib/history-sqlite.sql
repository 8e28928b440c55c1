-- A history of {n} finished requests for a migrated syncasync database ({last} = {n} - 1):
-- a third sync (completed, one in ten failed), the rest async (callback_success, one in
-- twenty callback_failed: half answered 503, half refused) with one delivery attempt each,
-- created evenly over the day before now, ids shaped and ordered as the service's UUIDv7,
-- callbacks spread over 50 hosts; each failure with its error, as the service writes them. Used by
-- bench/lib/history.py and tests/api/history.rs; the kept counts follow through the
-- schema's triggers.
WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < {last}),
     r AS (SELECT x, CAST(strftime('%s','now') AS INTEGER) * 1000 - 86400000
                     + x * 86400000 / {n} AS t FROM g)
INSERT INTO requests (id, mode, status, payload_hash, iterations, callback_url, destination,
                      callback_host, created_at, completed_at, input_hash, output_hash,
                      processing_time_ms, callback_attempts, callback_last_status,
                      callback_last_error, error)
SELECT printf('%08x-%04x-7%03x-8%03x-%012x', t / 65536, t % 65536, x % 4096, x % 4096, x),
       CASE WHEN x % 3 = 0 THEN 'sync' ELSE 'async' END,
       CASE WHEN x % 3 = 0 THEN (CASE WHEN x % 30 = 0 THEN 'failed' ELSE 'completed' END)
            ELSE (CASE WHEN x % 20 = 1 THEN 'callback_failed' ELSE 'callback_success' END) END,
       'feedfacefeedface', 1000,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80/cb' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'hooks' || (x % 50) || '.example' END,
       t, t + 5, 'in', 'out', 0.5, CASE WHEN x % 3 = 0 THEN 0 ELSE 1 END,
       CASE WHEN x % 3 = 0 THEN NULL WHEN x % 20 <> 1 THEN 200 WHEN x % 40 = 1 THEN 503 END,
       CASE WHEN x % 3 = 0 OR x % 20 <> 1 THEN NULL
            WHEN x % 40 = 1 THEN 'Max retries exceeded: HTTP 503'
            ELSE 'Max retries exceeded: connection error: error sending request: client error '
                 || '(Connect): tcp connect error: Connection refused (os error 111)' END,
       CASE WHEN x % 30 = 0 THEN 'the client disconnected before the work finished' END
FROM r;
INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms, status_code, error)
SELECT id, 1, created_at, 1.0, callback_last_status,
       substr(callback_last_error, length('Max retries exceeded: ') + 1)
FROM requests WHERE mode = 'async' AND status <> 'pending';
