#!/usr/bin/env bash
# async_isolation.sh: async delivery at full speed with default settings, and whether a hung
# receiver slows anyone else down (issue: no receiver can starve another).
#
#   bash bench/async_isolation.sh
#
# One release build, then, each on a fresh SQLite database with the service's default
# settings (only the queue bound is raised, see below):
# 1. compute bound: `syncasync bench-work --iterations 1000` on one thread × nproc, req/s;
# 2. clean: `loadgen --mode async -c 50 --iterations 1000` for DURATION s, its own receiver
#    taking the callbacks: delivered/s, and its ratio to the compute bound;
# 3. unsaturated: the same at a fixed rate of a third of the clean delivered/s: time to
#    callback p50/p99;
# 4. isolation, an A/B of the same load: twice `-c 45` of healthy requests while a second
#    loadgen sends a tenth of the clean rate whose callbacks go elsewhere: (A) to a healthy
#    `syncasync receiver`, (B) to one that never answers in time (`--delay-ms 600000`). The
#    only difference between A and B is whether that receiver hangs: healthy delivered/s of
#    B ÷ A is the isolation ratio.
# The queue bound is raised to 10^7 in every run: jobs waiting on the hung receiver count
# against it, and at the default (10000) they would fill it within seconds and turn the
# measurement into one of 503s.
#
# All traffic stays on loopback. Prints a markdown summary on stdout and writes it to
# bench/results/async_isolation.md; progress goes to stderr.
#
# Env overrides: DURATION (20), CONNECTIONS (50), ITERATIONS (1000), KEEP_TMP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/async_isolation.md"
readonly BIN="$ROOT/target/release/syncasync"
# shellcheck source=lib/common.sh
source "$ROOT/bench/lib/common.sh"

DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
require_uint DURATION "$DURATION" 5
require_uint CONNECTIONS "$CONNECTIONS" 10
require_uint ITERATIONS "$ITERATIONS" 1

tmp_dir="$(mktemp -d)"
server_log=""
server_pid=""
receiver_pid=""

cleanup() {
    local rc=$?
    trap - EXIT
    stop_server "$server_pid"
    stop_server "$receiver_pid"
    if [[ -n "${KEEP_TMP:-}" ]]; then log "kept $tmp_dir"; else rm -rf -- "$tmp_dir"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_server NAME: the service with its defaults on a fresh SQLite file; sets SERVER_URL.
start_server() {
    local port
    port="$(free_port)"
    server_log="$tmp_dir/$1.log"
    APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="sqlite://$tmp_dir/$1.db" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=10000000 RUST_LOG=warn \
        "$BIN" serve >>"$server_log" 2>&1 &
    server_pid=$!
    local _
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && { SERVER_URL="http://127.0.0.1:$port"; return; }
        sleep 0.1
    done
    die "the service did not start"
}

# loadgen NAME ARGS...: one async loadgen run against SERVER_URL, report in $tmp_dir/NAME.json.
loadgen() {
    local name=$1
    shift
    "$BIN" loadgen --url "$SERVER_URL" --mode async --iterations "$ITERATIONS" \
        --duration "${DURATION}s" --callback-port 0 --callback-timeout 60s --no-progress \
        --json "$tmp_dir/$name.json" "$@" >"$tmp_dir/$name.txt" || die "loadgen $name failed"
}

delivered_rps() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["modes"][0]["callbacks"]["delivered_rps"])' "$1"
}

log "building the release binary"
cargo build --release --bin syncasync >&2

log "compute bound: bench-work on one thread"
single="$("$BIN" bench-work --iterations "$ITERATIONS" --seconds 5 | python3 -c 'import json,sys; print(json.load(sys.stdin)["units_per_second"])')"
bound="$(calc '%.1f' 'a * b' "$single" "$(nproc)")"

log "clean: -c $CONNECTIONS for ${DURATION}s"
start_server clean
loadgen clean -c "$CONNECTIONS"
stop_server "$server_pid"; server_pid=""
clean_rps="$(delivered_rps "$tmp_dir/clean.json")"

rate="$(calc '%.0f' 'a / 3' "$clean_rps")"
log "unsaturated: $rate requests/s for ${DURATION}s"
start_server unsaturated
loadgen unsaturated -c "$CONNECTIONS" --rate "$rate"
stop_server "$server_pid"; server_pid=""

side_rate="$(calc '%.0f' 'a / 10' "$clean_rps")"
# side_run NAME RECEIVER_ARGS...: the service, a side receiver, a tenth of the clean rate to it
# (-c 5) and healthy load beside it (-c CONNECTIONS-5).
side_run() {
    local name=$1
    shift
    local side_port
    side_port="$(free_port)"
    "$BIN" receiver --port "$side_port" "$@" >"$tmp_dir/$name-receiver.log" 2>&1 &
    receiver_pid=$!
    start_server "$name"
    loadgen "$name-side" -c 5 --rate "$side_rate" --callback-url "http://127.0.0.1:$side_port/callback" &
    local side_pid=$!
    loadgen "$name" -c "$((CONNECTIONS - 5))"
    wait "$side_pid" || die "the $name side loadgen failed"
    curl -fsS "$SERVER_URL/metrics" >"$tmp_dir/$name-metrics.txt" || true
    stop_server "$server_pid"; server_pid=""
    stop_server "$receiver_pid"; receiver_pid=""
}
log "A: -c $((CONNECTIONS - 5)) healthy, plus $side_rate requests/s to a second, healthy receiver"
side_run paired
log "B: -c $((CONNECTIONS - 5)) healthy, plus $side_rate requests/s to a hung receiver"
side_run hung --delay-ms 600000

python3 - "$tmp_dir" "$bound" "$single" "$CONNECTIONS" "$ITERATIONS" "$DURATION" >"$tmp_dir/summary.md" <<'PY'
import json, os, subprocess, sys, datetime
tmp, bound, single, connections, iterations, duration = sys.argv[1:]
bound, single = float(bound), float(single)
def mode(name):
    with open(os.path.join(tmp, name + ".json")) as f:
        return json.load(f)["modes"][0]
def row(name):
    m = mode(name)
    cb = m.get("callbacks") or {}
    ttc = cb.get("time_to_callback_ms") or {}
    return m, cb, ttc
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("## async_isolation\n")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, nproc {os.cpu_count()}, {cpu}.")
print(f"SQLite, default settings (queue bound raised to 10^7); `loadgen --mode async --iterations {iterations}`, "
      f"{duration} s per run; the service, its receivers and the load generator share the machine.\n")
print(f"Compute bound: {single:.0f} units/s on one thread × {os.cpu_count()} = **{bound:.0f} req/s**.\n")
print("| run | accepted/s | delivered/s | ÷ compute bound | callbacks | time to callback p50 | p99 | 503s |")
print("|---|---|---|---|---|---|---|---|")
clean = None
for name, label in (("clean", f"clean, -c {connections}"), ("unsaturated", "unsaturated (a third of clean, open loop)"),
                    ("paired", f"A: healthy, -c {int(connections) - 5}, beside a healthy receiver"),
                    ("hung", f"B: healthy, -c {int(connections) - 5}, beside a hung receiver")):
    m, cb, ttc = row(name)
    if name == "clean":
        clean = cb["delivered_rps"]
    print(f"| {label} | {m['throughput_rps']:.0f} | {cb['delivered_rps']:.0f} | {cb['delivered_rps'] / bound:.2f} | "
          f"{cb['received']}/{cb['expected']} | {ttc.get('p50', float('nan')):.1f} ms | {ttc.get('p99', float('nan')):.1f} ms | {m.get('failed', 0)} |")
for name, label in (("paired-side", "A: the healthy side receiver's share (not awaited)"),
                    ("hung-side", "B: the hung receiver's share (not awaited)")):
    side = mode(name)
    print(f"| {label} | {side['throughput_rps']:.0f} | | | | | | {side.get('failed', 0)} |")
_, paired_cb, _ = row("paired")
_, hung_cb, _ = row("hung")
print(f"\n**Clean delivered/s ÷ compute bound: {clean / bound:.2f}**; "
      f"**healthy delivered/s beside a hung receiver ÷ beside a healthy one (B ÷ A): {hung_cb['delivered_rps'] / paired_cb['delivered_rps']:.2f}**.")
PY
publish_summary "$tmp_dir/summary.md" "$RESULTS_FILE"
