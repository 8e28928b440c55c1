#!/usr/bin/env bash
# async_batch.sh: async requests submitted one per POST /async against the same requests
# submitted BATCH per POST /async/batch, side by side in one run on one fresh SQLite
# instance each: accepted per second, delivered per second, time to callback.
#
#   bash bench/async_batch.sh
#
# One release build; `syncasync loadgen --mode async` with its own receiver; all traffic on
# 127.0.0.1. Prints a markdown summary on stdout and writes it to
# bench/results/async_batch.md; progress goes to stderr.
#
# Env overrides: REQUESTS (20000), CONNECTIONS (50, single submits), BATCH (100),
# BATCH_CONNECTIONS (4), ITERATIONS (1000).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/async_batch.md"
readonly BIN="$ROOT/target/release/syncasync"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"

REQUESTS="${REQUESTS:-20000}"
CONNECTIONS="${CONNECTIONS:-50}"
BATCH="${BATCH:-100}"
BATCH_CONNECTIONS="${BATCH_CONNECTIONS:-4}"
ITERATIONS="${ITERATIONS:-1000}"
for v in REQUESTS CONNECTIONS BATCH BATCH_CONNECTIONS ITERATIONS; do require_uint "$v" "${!v}" 1; done

tmp_dir="$(mktemp -d)"
server_pid=""
cleanup() {
    local rc=$?
    trap - EXIT
    stop_server "$server_pid"
    rm -rf -- "$tmp_dir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run NAME LOADGEN-FLAGS...: a fresh instance, one loadgen run, its JSON in $tmp_dir/NAME.json.
run() {
    local name=$1 port
    shift
    port="$(free_port)"
    server_log="$tmp_dir/$name.log"
    APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="sqlite://$tmp_dir/$name.db" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=$((REQUESTS * 2)) \
        RUST_LOG=warn "$BIN" serve >>"$server_log" 2>&1 &
    server_pid=$!
    wait_healthy "http://127.0.0.1:$port"
    log "$name: $REQUESTS requests ($*)"
    "$BIN" loadgen --url "http://127.0.0.1:$port" --mode async -n "$REQUESTS" \
        --iterations "$ITERATIONS" --callback-port 0 --callback-timeout 120s --no-progress \
        --json "$tmp_dir/$name.json" "$@" >"$tmp_dir/$name.txt" || die "loadgen failed ($name)"
    stop_server "$server_pid"
    server_pid=""
}

[[ -x "$BIN" ]] || { log "building the release binary"; cargo build --release --bin syncasync >&2; }

run single -c "$CONNECTIONS"
run batch -c "$BATCH_CONNECTIONS" --batch "$BATCH"

mkdir -p "$(dirname "$RESULTS_FILE")"
python3 - "$tmp_dir" "$REQUESTS" "$CONNECTIONS" "$BATCH" "$BATCH_CONNECTIONS" "$ITERATIONS" \
    "$(git rev-parse --short HEAD)" >"$RESULTS_FILE" <<'PY'
import json, os, sys, datetime
tmp, requests, conns, batch, bconns, iterations, commit = sys.argv[1:]
def load(name):
    mode = json.load(open(os.path.join(tmp, name + ".json")))["modes"][0]
    cb = mode["callbacks"]
    ttc = cb.get("time_to_callback_ms") or {}
    return mode, cb, ttc
print("## async_batch\n")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, nproc {os.cpu_count()}; "
      f"SQLite, default settings but APP_ASYNC_QUEUE_MAX_SIZE={2 * int(requests)}; `loadgen --mode async -n {requests} --iterations {iterations}`; "
      "service and load generator share the machine.\n")
print("| submitted | accepted | accepted/s | delivered/s | callbacks | time to callback p50 | p99 |")
print("|---|---|---|---|---|---|---|")
for name, label in (("single", f"one per POST /async, -c {conns}"), ("batch", f"{batch} per POST /async/batch, -c {bconns}")):
    mode, cb, ttc = load(name)
    print(f"| {label} | {mode['success']} | {mode['throughput_rps']:.0f} | {cb['delivered_rps'] or 0:.0f} | "
          f"{cb['received']}/{cb['expected']} | {ttc.get('p50', float('nan')):.1f} ms | {ttc.get('p99', float('nan')):.1f} ms |")
PY
cat "$RESULTS_FILE"
