#!/usr/bin/env bash
# ordering.sh: what ordered delivery costs. A claim takes a keyed job only when no queued job
# of its key was accepted before it (a seek per keyed row it looks at), so keyed traffic pays
# a probe per job, and a key stuck behind a failing first request leaves its backlog at the
# head of the queue for every claim to pass. Side by side in one run, per backend:
# async delivered/s unkeyed and with every request keyed (KEYS keys, round robin), twice each
# alternating; then, last, unkeyed with one key's BACKLOG jobs stuck at the head of the queue
# (its first request goes to a loopback port nothing listens on, so the key never moves).
#
#   bash bench/ordering.sh
#
# Per backend: one service (private addresses allowed, the queue bound raised);
# `loadgen --mode async` closed loop for DURATION seconds, its own receiver taking the
# callbacks. All traffic stays on loopback. Prints a markdown table and writes it to
# bench/results/ordering.md; progress goes to stderr.
#
# Env overrides: BACKENDS ("sqlite postgres"), DURATION (15), CONNECTIONS (50),
# ITERATIONS (1000), KEYS (1000), BACKLOG (10000), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/ordering.md"
readonly BIN="$ROOT/target/release/syncasync"

BACKENDS="${BACKENDS:-sqlite postgres}"
DURATION="${DURATION:-15}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
KEYS="${KEYS:-1000}"
BACKLOG="${BACKLOG:-10000}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

require_uint DURATION "$DURATION" 1
require_uint KEYS "$KEYS" 1
require_uint BACKLOG "$BACKLOG" 1000

# The stuck key's destination: a loopback port nothing listens on.
dead_port="$(free_port)"

queue_stuck_key() {
    python3 - "$url" "http://127.0.0.1:$dead_port/hook" "$BACKLOG" <<'PY'
import json, sys, urllib.request
url, callback, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for start in range(0, n, 1000):
    items = [{"data": f"stuck {i}", "callback_url": callback, "ordering_key": "stuck"}
             for i in range(start, min(n, start + 1000))]
    request = urllib.request.Request(url + "/async/batch", data=json.dumps({"requests": items}).encode(),
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request).read()
PY
}

bench_backend() {
    local backend="$1" database port round
    if [[ "$backend" == sqlite ]]; then
        database="sqlite://$tmp_dir/ordering.db"
    else
        new_pg_database ordering
        database="$DATABASE_URL"
    fi
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    server_log="$tmp_dir/$backend.log"
    # The stuck key's first request retries for the whole run (a long backoff, many retries).
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=1000000 \
        APP_CALLBACK_MAX_RETRIES=100 RUST_LOG=warn \
        "$BIN" serve >>"$server_log" 2>&1 &
    started_pids+=("$!")
    wait_healthy "$url" "$backend"
    for round in 1 2; do
        log "$backend round $round: unkeyed"
        echo "$backend plain $(run_load "$backend-plain-$round")" >>"$tmp_dir/rows"
        log "$backend round $round: every request keyed ($KEYS keys)"
        echo "$backend keyed $(run_load "$backend-keyed-$round" --ordering-keys "$KEYS")" >>"$tmp_dir/rows"
    done
    log "$backend: one key's $BACKLOG jobs stuck at the head of the queue"
    queue_stuck_key
    for round in 1 2; do
        echo "$backend stuck $(run_load "$backend-stuck-$round")" >>"$tmp_dir/rows"
    done
    stop_started
}

log "building the release binary"
cargo build --release --bin syncasync >&2
for backend in $BACKENDS; do
    bench_backend "$backend"
done

python3 - "$tmp_dir/rows" "$DURATION" "$CONNECTIONS" "$KEYS" "$BACKLOG" >"$RESULTS_FILE" <<'PY'
import subprocess, sys, statistics
rows_file, duration, connections, keys, backlog = sys.argv[1:]
rows = [line.split() for line in open(rows_file)]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("## ordered delivery\n")
print(f"Commit {commit}. Per backend, on one service: `loadgen --mode async -c {connections} --duration {duration}s`,")
print(f"delivered/s unkeyed, with every request keyed (`--ordering-keys {keys}`), and unkeyed with one key's")
print(f"{backlog} jobs stuck at the head of the queue (its first request's receiver is down; run last);")
print("two runs each, mean of the two.\n")
print("| backend | unkeyed | keyed | ÷ | stuck key's backlog in front | ÷ |")
print("|---|---|---|---|---|---|")
for backend in dict.fromkeys(r[0] for r in rows):
    mean = lambda case: statistics.mean(int(r[2]) for r in rows if r[0] == backend and r[1] == case)
    plain, keyed, stuck = mean("plain"), mean("keyed"), mean("stuck")
    print(f"| {backend} | {plain:.0f} | {keyed:.0f} | {keyed / plain:.2f} | {stuck:.0f} | {stuck / plain:.2f} |")
PY
cat "$RESULTS_FILE"
