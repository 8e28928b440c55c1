#!/usr/bin/env bash
# pg_writes.sh: what one job costs PostgreSQL in writes. Starts the service (release build,
# default settings) on a fresh PostgreSQL database, drives one path of bench/floor.sh, and
# prints, per request the service accepted: transactions committed, rows inserted, updated
# (and how many of those updates were HOT, touching no index) and deleted per table, and the
# WAL written (records, full-page images, bytes). Every non-HOT update of a request row adds
# an entry to each of its indexes, so this is where PostgreSQL's CPU per job goes.
# All traffic stays on loopback.
#
#   bash bench/pg_writes.sh async-1000
#   bash bench/pg_writes.sh sync-1
#
# Env overrides: DURATION (10), CONNECTIONS (50), PG_ADMIN_URL, PG_EXTRA (as in floor.sh),
# HISTORY (0: finished requests to fill the database with first, by bench/lib/history.py).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly LIB="$ROOT/bench/lib"
readonly BIN="$ROOT/target/release/syncasync"

LOAD="${1:-}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
HISTORY="${HISTORY:-0}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_EXTRA="${PG_EXTRA:-}"

tmp_dir="$(mktemp -d)"
# shellcheck source=bench/lib/common.sh
source "$LIB/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT

case "$LOAD" in sync-[0-9]* | async-[0-9]*) ;; *) die "usage: pg_writes.sh sync-N|async-N" ;; esac
require_uint DURATION "$DURATION" 1
require_uint CONNECTIONS "$CONNECTIONS" 2
require_uint HISTORY "$HISTORY" 0
ensure_wrk

log "building the release binary"
cargo build --release --bin syncasync >&2

new_pg_database writes
port="$(free_port)"
url="http://127.0.0.1:$port"
env -u RUST_LOG APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$DATABASE_URL$PG_EXTRA" \
    APP_CALLBACK_BLOCK_PRIVATE_IPS=false "$BIN" serve >>"$tmp_dir/service.log" 2>&1 &
started_pids+=("$!")
wait_healthy "$url" service
if ((HISTORY > 0)); then
    log "filling the database with $HISTORY finished requests"
    python3 "$LIB/history.py" "$DATABASE_URL" "$HISTORY" >&2
fi

# One line per table (name ins upd hot_upd del), then the database's commits and the
# cluster's WAL (the machine's PostgreSQL is otherwise idle).
snapshot() {
    psql "$DATABASE_URL" -AtF' ' -c "SELECT pg_stat_force_next_flush()" >/dev/null
    psql "$DATABASE_URL" -AtF' ' <<'SQL'
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
 UNION ALL SELECT '_commits', xact_commit, 0, 0, 0 FROM pg_stat_database
  WHERE datname = current_database()
 UNION ALL SELECT '_wal', wal_records, wal_fpi, wal_bytes, 0 FROM pg_stat_wal;
SQL
}

# Stats reach the views when a backend's transaction ends (at most once a second): settle.
sleep 1.5
snapshot >"$tmp_dir/before"
log "driving $LOAD for ${DURATION}s"
case "$LOAD" in
    sync-*)
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$LIB/post_sync.lua" "$url/sync" \
            -- "${LOAD#sync-}" >"$tmp_dir/wrk.txt" 2>&1 || die "wrk failed"
        ;;
    async-*) ITERATIONS="${LOAD#async-}" run_load load >/dev/null ;;
esac
# The last jobs' deliveries, and every backend's stats, land.
sleep 3
snapshot >"$tmp_dir/after"

python3 - "$tmp_dir/before" "$tmp_dir/after" "$LOAD" "$HISTORY" <<'EOF'
import sys
before_file, after_file, load, history = sys.argv[1:]

def read(path):
    return {line.split()[0]: [int(v) for v in line.split()[1:]] for line in open(path)}

before, after = read(before_file), read(after_file)
delta = {k: [a - b for a, b in zip(after[k], before.get(k, [0] * 4))] for k in after}
jobs = delta.get("requests", [0])[0]
if jobs <= 0:
    sys.exit("no request was accepted")
print(f"`bash bench/pg_writes.sh {load}`, history {history}: {jobs:,} requests accepted.\n")
print("| per request | inserted | updated | of which HOT | deleted |")
print("|---|---|---|---|---|")
for name, (ins, upd, hot, dele) in sorted(delta.items()):
    if name.startswith("_") or not (ins or upd or dele):
        continue
    print(f"| {name} | {ins / jobs:.2f} | {upd / jobs:.2f} | {hot / jobs:.2f} | {dele / jobs:.2f} |")
commits = delta["_commits"][0]
records, fpi, wal_bytes = delta["_wal"][:3]
print(f"\ncommits {commits / jobs:.2f}, WAL records {records / jobs:.1f}, "
      f"full-page images {fpi / jobs:.2f}, WAL bytes {wal_bytes / jobs:,.0f} per request")
EOF
