#!/usr/bin/env python3
"""Writes a history of finished requests straight into a migrated syncasync database.

    python3 bench/lib/history.py DATABASE_URL N

N finished requests (a third sync, completed or failed; the rest async, callback_success or
callback_failed, each with one delivery attempt), created evenly over the day before now,
with ids shaped and ordered as the service's UUIDv7 ids, their callbacks spread over 50
hosts. The database must have been migrated (start the service on it once). The kept counts
follow through the schema's triggers. SQLite goes through Python's sqlite3; PostgreSQL
through psql.
"""
import subprocess
import sys

SQLITE = """
WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < {last}),
     r AS (SELECT x, CAST(strftime('%s','now') AS INTEGER) * 1000 - 86400000
                     + x * 86400000 / {n} AS t FROM g)
INSERT INTO requests (id, mode, status, payload_hash, iterations, callback_url, destination,
                      callback_host, created_at, completed_at, input_hash, output_hash,
                      processing_time_ms, callback_attempts)
SELECT printf('%08x-%04x-7%03x-8%03x-%012x', t / 65536, t % 65536, x % 4096, x % 4096, x),
       CASE WHEN x % 3 = 0 THEN 'sync' ELSE 'async' END,
       CASE WHEN x % 3 = 0 THEN (CASE WHEN x % 30 = 0 THEN 'failed' ELSE 'completed' END)
            ELSE (CASE WHEN x % 20 = 1 THEN 'callback_failed' ELSE 'callback_success' END) END,
       'feedfacefeedface', 1000,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80/cb' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'hooks' || (x % 50) || '.example' END,
       t, t + 5, 'in', 'out', 0.5, CASE WHEN x % 3 = 0 THEN 0 ELSE 1 END
FROM r;
INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms, status_code)
SELECT id, 1, created_at, 1.0, 200 FROM requests WHERE mode = 'async' AND status <> 'pending';
"""

POSTGRES = """
WITH r AS (SELECT x, (extract(epoch FROM now()) * 1000)::bigint - 86400000
                     + x * 86400000 / {n} AS t
           FROM generate_series(0::bigint, {last}) AS x)
INSERT INTO requests (id, mode, status, payload_hash, iterations, callback_url, destination,
                      callback_host, created_at, completed_at, input_hash, output_hash,
                      processing_time_ms, callback_attempts)
SELECT lpad(to_hex(t / 65536), 8, '0') || '-' || lpad(to_hex(t % 65536), 4, '0')
       || '-7' || lpad(to_hex(x % 4096), 3, '0') || '-8' || lpad(to_hex(x % 4096), 3, '0')
       || '-' || lpad(to_hex(x), 12, '0'),
       CASE WHEN x % 3 = 0 THEN 'sync' ELSE 'async' END,
       CASE WHEN x % 3 = 0 THEN (CASE WHEN x % 30 = 0 THEN 'failed' ELSE 'completed' END)
            ELSE (CASE WHEN x % 20 = 1 THEN 'callback_failed' ELSE 'callback_success' END) END,
       'feedfacefeedface', 1000,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80/cb' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'http://hooks' || (x % 50) || '.example:80' END,
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'hooks' || (x % 50) || '.example' END,
       to_timestamp(t / 1000.0), to_timestamp((t + 5) / 1000.0),
       'in', 'out', 0.5, CASE WHEN x % 3 = 0 THEN 0 ELSE 1 END
FROM r;
INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms, status_code)
SELECT id, 1, created_at, 1.0, 200 FROM requests WHERE mode = 'async' AND status <> 'pending';
VACUUM ANALYZE requests;
VACUUM ANALYZE delivery_attempts;
"""


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    url, n = sys.argv[1], int(sys.argv[2])
    if n <= 0:
        return
    if url.startswith("sqlite:"):
        import sqlite3
        path = url.split("://", 1)[-1].split("?", 1)[0]
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript("BEGIN;" + SQLITE.format(n=n, last=n - 1) + "COMMIT; ANALYZE;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                       input=POSTGRES.format(n=n, last=n - 1), text=True, check=True)


if __name__ == "__main__":
    main()
