#!/usr/bin/env python3
"""Writes a history of finished requests straight into a migrated syncasync database.

    python3 bench/lib/history.py DATABASE_URL N

The SQL is bench/lib/history-sqlite.sql or history-postgres.sql (see their heading; the
integration tests use the same). The database must have been migrated (start the service on
it once). SQLite goes through Python's sqlite3; PostgreSQL through psql.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def statements(backend, n):
    with open(os.path.join(HERE, f"history-{backend}.sql")) as f:
        return f.read().replace("{n}", str(n)).replace("{last}", str(n - 1))


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
        conn.executescript("BEGIN;" + statements("sqlite", n) + "COMMIT; ANALYZE;")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        sql = statements("postgres", n) + "VACUUM ANALYZE requests;\nVACUUM ANALYZE delivery_attempts;\n"
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"],
                       input=sql, text=True, check=True)


if __name__ == "__main__":
    main()
