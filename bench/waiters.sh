#!/usr/bin/env bash
# waiters.sh: what clients waiting on requests (`GET /requests/{id}` with `Prefer: wait=60`)
# cost the service: its CPU time over a fixed window with no waiter, then with WAITERS
# connections waiting on unfinished requests, on SQLite and on PostgreSQL, side by side in
# one run.
#
#   bash bench/waiters.sh
#
# One release build. Per backend: a fresh database, one instance on a free port of
# 127.0.0.1, REQUESTS async requests whose callbacks go to a receiver that never answers
# within the callback timeout (so they stay unfinished), then two windows of WINDOW seconds:
# idle (the service retrying those callbacks) and with the waiters connected, once they have
# settled (5 s after the last one connected). The service's
# CPU time is read from /proc/PID/stat (utime + stime), so the waiters' own process does not
# count. All traffic stays on loopback. Prints a markdown summary on stdout and writes it to
# bench/results/waiters.md; progress goes to stderr.
#
# Env overrides: WAITERS (10000), REQUESTS (100), WINDOW (10 seconds),
# PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/waiters.md"
readonly BIN="$ROOT/target/release/syncasync"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"

WAITERS="${WAITERS:-10000}"
REQUESTS="${REQUESTS:-100}"
WINDOW="${WINDOW:-10}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
require_uint WAITERS "$WAITERS" 1
require_uint REQUESTS "$REQUESTS" 1
require_uint WINDOW "$WINDOW" 1

# Every waiter is a connection, in the service and in the waiters' process (each has its own
# limit).
needed=$((WAITERS + 1024))
if (( $(ulimit -n) < needed )); then
    ulimit -n "$needed" 2>/dev/null || die "cannot raise the open-file limit to $needed (hard limit $(ulimit -Hn))"
fi

tmp_dir="$(mktemp -d)"
server_pid=""
receiver_pid=""
database=""

cleanup() {
    local rc=$?
    trap - EXIT
    stop_server "$server_pid"
    stop_server "$receiver_pid"
    if [[ -n "$database" ]]; then
        psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    rm -rf -- "$tmp_dir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpu_seconds() {   # utime + stime of PID, in seconds
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# measure BACKEND DATABASE_URL: prints "BACKEND IDLE_CPU WAITING_CPU ANSWERED".
measure() {
    local backend=$1 url=$2 port
    port="$(free_port)"
    server_log="$tmp_dir/$backend.log"
    APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$url" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_HTTP_MAX_CONNECTIONS=$((WAITERS + 1000)) \
        APP_CALLBACK_TIMEOUT_SECONDS=30 APP_JOB_LEASE_SECONDS=90 RUST_LOG=warn \
        "$BIN" serve >>"$server_log" 2>&1 &
    server_pid=$!
    wait_healthy "http://127.0.0.1:$port"

    log "$backend: $REQUESTS requests to a receiver that does not answer"
    python3 - "$port" "$receiver_port" "$REQUESTS" >"$tmp_dir/ids" <<'PY'
import json, sys, urllib.request
port, receiver, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    body = json.dumps({"data": f"waited on {i}", "iterations": 1000,
                       "callback_url": f"http://127.0.0.1:{receiver}/callback"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/async", body,
                                 {"content-type": "application/json"})
    print(json.load(urllib.request.urlopen(req))["request_id"])
PY
    sleep 2   # let the first attempts start
    local before after idle waiting
    before="$(cpu_seconds "$server_pid")"; sleep "$WINDOW"; after="$(cpu_seconds "$server_pid")"
    idle="$(calc '%.3f' 'b - a' "$before" "$after")"

    log "$backend: $WAITERS waiters connected for ${WINDOW}s"
    python3 - "$port" "$WAITERS" "$WINDOW" "$tmp_dir/ids" "$server_pid" >"$tmp_dir/$backend.cpu" <<'PY'
import asyncio, sys, os
port, n, window, ids_file, pid = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
ids = open(ids_file).read().split()
hz = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / hz
async def wait(i, ready):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /requests/{ids[i % len(ids)]} HTTP/1.1\r\nHost: bench\r\nPrefer: wait=60\r\n\r\n".encode())
    await w.drain()
    ready.append(1)
    head = await r.read(12)
    w.close()
    return head
async def main():
    ready = []
    tasks = [asyncio.create_task(wait(i, ready)) for i in range(n)]
    while len(ready) < n:
        await asyncio.sleep(0.1)
    # Every request read, answered with a first read of its record, and parked: on
    # PostgreSQL the first reads of 10000 waiters (and the one wake-up each gets when the
    # watch first sees their request) take a few seconds of pool time.
    await asyncio.sleep(5)
    before = cpu()
    await asyncio.sleep(window)
    after = cpu()
    early = sum(1 for t in tasks if t.done())
    print(f"{after - before:.3f} {early}")
    for t in tasks:
        t.cancel()
asyncio.run(main())
PY
    read -r waiting early <"$tmp_dir/$backend.cpu"
    stop_server "$server_pid"
    server_pid=""
    echo "$backend $idle $waiting $early"
}

[[ -x "$BIN" ]] || { log "building the release binary"; cargo build --release --bin syncasync >&2; }

receiver_port="$(free_port)"
"$BIN" receiver --host 127.0.0.1 --port "$receiver_port" --delay-ms 600000 >"$tmp_dir/receiver.log" 2>&1 &
receiver_pid=$!
sleep 0.5

rows=()
rows+=("$(measure sqlite "sqlite://$tmp_dir/bench.db")")
if pg_isready -q -h 127.0.0.1 -p 5432; then
    database="syncasync_bench_waiters_$$"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE \"$database\"" >/dev/null
    pg_url="$(python3 -c 'import sys, urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_ADMIN_URL" "$database")"
    rows+=("$(measure postgres "$pg_url")")
else
    log "PostgreSQL is not answering on 127.0.0.1:5432: SQLite only"
fi

mkdir -p "$(dirname "$RESULTS_FILE")"
{
    echo "## waiters"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD), nproc $(nproc)."
    echo "Service CPU time over ${WINDOW} s: idle with $REQUESTS unfinished requests (their callbacks hang), then with $WAITERS clients waiting on them (\`Prefer: wait=60\`)."
    echo
    echo "| backend | service CPU, idle | service CPU, $WAITERS waiters | waiters answered early |"
    echo "|---|---|---|---|"
    for row in "${rows[@]}"; do
        read -r backend idle waiting early <<<"$row"
        echo "| $backend | ${idle} s | ${waiting} s | $early |"
    done
    echo
    echo "(CPU time is counted in 10 ms clock ticks: 0.010 s is one tick.)"
} >"$RESULTS_FILE"
cat "$RESULTS_FILE"
