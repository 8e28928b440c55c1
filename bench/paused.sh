#!/usr/bin/env bash
# paused.sh: what paused destinations cost the others. Every claim carries the paused
# destinations (each has no room), so an operator's 1,000 pauses, and a paused destination's
# backlog at the head of the queue, must not slow the deliveries that go on. Side by side in
# one run, per backend: async delivered/s with nothing paused and with 1,000 idle
# destinations paused (twice each, alternating), then with one paused destination holding
# BACKLOG queued jobs at the head of the queue (twice, last: it cannot be taken back quickly).
#
#   bash bench/paused.sh
#
# Per backend: one service (admin token set, private addresses allowed, the queue bound
# raised); the cases alternate on it: `loadgen --mode async` closed loop for DURATION
# seconds, its own receiver taking the callbacks. Pauses go through
# `POST /destinations/{key}/pause` and are undone with `/resume`; the backlog is queued in
# batches, after its destination (a loopback port nothing listens on) is paused. All traffic stays on loopback. Prints a markdown table and writes
# it to bench/results/paused.md; progress goes to stderr.
#
# Env overrides: BACKENDS ("sqlite postgres"), DURATION (15), CONNECTIONS (50),
# ITERATIONS (1000), PAUSED (1000), BACKLOG (20000), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/paused.md"
readonly BIN="$ROOT/target/release/syncasync"
readonly TOKEN="paused-bench-token"

BACKENDS="${BACKENDS:-sqlite postgres}"
DURATION="${DURATION:-15}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
PAUSED="${PAUSED:-1000}"
BACKLOG="${BACKLOG:-20000}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

require_uint DURATION "$DURATION" 1
require_uint PAUSED "$PAUSED" 1
require_uint BACKLOG "$BACKLOG" 1000

admin() {   # METHOD PATH
    curl -fsS -X "$1" -H "authorization: Bearer $TOKEN" "$url$2" >/dev/null
}

# The key of a destination `scheme://host:port` (host names and ports need no escaping).
key_of() { local d="${1//:/%3A}"; echo "${d//\//%2F}"; }

pause_idle() {   # pause or resume
    local n
    for n in $(seq 1 "$PAUSED"); do
        admin POST "/destinations/$(key_of "http://idle-$n.example:80")/$1"
    done
}

# The backlog's destination: a loopback port nothing listens on.
backlog_port="$(free_port)"
backlog_destination="http://127.0.0.1:$backlog_port"

queue_backlog() {
    python3 - "$url" "$backlog_destination/hook" "$BACKLOG" <<'PY'
import json, sys, urllib.request
url, callback, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for start in range(0, n, 1000):
    items = [{"data": f"held {i}", "callback_url": callback} for i in range(start, min(n, start + 1000))]
    request = urllib.request.Request(url + "/async/batch", data=json.dumps({"requests": items}).encode(),
                                     headers={"content-type": "application/json"})
    urllib.request.urlopen(request).read()
PY
}

bench_backend() {
    local backend="$1" database port round
    if [[ "$backend" == sqlite ]]; then
        database="sqlite://$tmp_dir/paused.db"
    else
        new_pg_database paused
        database="$DATABASE_URL"
    fi
    port="$(free_port)"
    url="http://127.0.0.1:$port"
    server_log="$tmp_dir/$backend.log"
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database" APP_ADMIN_TOKEN="$TOKEN" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=1000000 RUST_LOG=warn \
        "$BIN" serve >>"$server_log" 2>&1 &
    started_pids+=("$!")
    wait_healthy "$url" "$backend"
    for round in 1 2; do
        log "$backend round $round: nothing paused"
        echo "$backend none $(run_load "$backend-none-$round")" >>"$tmp_dir/rows"
        log "$backend round $round: $PAUSED idle destinations paused"
        pause_idle pause
        echo "$backend idle $(run_load "$backend-idle-$round")" >>"$tmp_dir/rows"
        pause_idle resume
    done
    # Last, as it cannot be taken back quickly: a backlog queued for a paused destination.
    log "$backend: one paused destination holding $BACKLOG jobs"
    admin POST "/destinations/$(key_of "$backlog_destination")/pause"
    queue_backlog
    for round in 1 2; do
        echo "$backend backlog $(run_load "$backend-backlog-$round")" >>"$tmp_dir/rows"
    done
    stop_started
}

log "building the release binary"
cargo build --release --bin syncasync >&2
for backend in $BACKENDS; do
    bench_backend "$backend"
done

python3 - "$tmp_dir/rows" "$DURATION" "$CONNECTIONS" "$PAUSED" "$BACKLOG" >"$RESULTS_FILE" <<'PY'
import subprocess, sys, statistics
rows_file, duration, connections, paused, backlog = sys.argv[1:]
rows = [line.split() for line in open(rows_file)]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("## paused destinations\n")
print(f"Commit {commit}. Per backend, on one service: `loadgen --mode async -c {connections} --duration {duration}s`,")
print(f"delivered/s with nothing paused, with {paused} idle destinations paused, and with one paused destination")
print(f"holding {backlog} queued jobs at the head of the queue (run last, on the database the first four runs")
print("filled); two runs each, mean of the two.\n")
print("| backend | nothing paused | idle paused | ÷ | paused backlog | ÷ |")
print("|---|---|---|---|---|---|")
for backend in dict.fromkeys(r[0] for r in rows):
    mean = lambda case: statistics.mean(int(r[2]) for r in rows if r[0] == backend and r[1] == case)
    none, idle, held = mean("none"), mean("idle"), mean("backlog")
    print(f"| {backend} | {none:.0f} | {idle:.0f} | {idle / none:.2f} | {held:.0f} | {held / none:.2f} |")
PY
cat "$RESULTS_FILE"
