#!/usr/bin/env bash
# sync_throughput.sh: how close POST /sync gets to the machine's compute bound, and how fast
# GET /healthz answers while every core is busy hashing (SPEC §1, §3).
#
#   bash bench/sync_throughput.sh
#
# Prints a markdown summary on stdout and writes it to bench/results/sync_throughput.md;
# progress goes to stderr. Env overrides: see bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly LIB="$ROOT/bench/lib"
readonly RESULTS_DIR="$ROOT/bench/results"
readonly RESULTS_FILE="$RESULTS_DIR/sync_throughput.md"

DURATION="${DURATION:-20}"                           # s, each wrk run under load
CONNECTIONS="${CONNECTIONS:-50}"                     # wrk connections for POST /sync
THREADS="${THREADS:-2}"                              # wrk threads for POST /sync
WARMUP="${WARMUP:-3}"                                # s, warm-up before the measured run
WORK_SECONDS="${WORK_SECONDS:-5}"                    # s, single-core `bench-work` run
BASELINE_SECONDS="${BASELINE_SECONDS:-5}"            # s, GET /healthz with no load
SATURATION_ITERATIONS="${SATURATION_ITERATIONS:-100000}"
PORT="${PORT:-}"                                     # default: a free port on 127.0.0.1

readonly SYNC_ITERATIONS=1000                        # one "unit" of work
readonly HZ_THREADS=1 HZ_CONNECTIONS=4               # the GET /healthz probe
readonly RAMP=2                                      # s, saturation before the probe starts

server_pid=""
saturator_pid=""
wrk_pid=""
tmp_dir=""
server_log=""

# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"

cleanup() {
    local rc=$?
    trap - EXIT
    local pid
    for pid in "$wrk_pid" "$saturator_pid"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    stop_server "$server_pid"
    if [[ -n "$tmp_dir" ]]; then
        rm -rf -- "$tmp_dir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_wrk NAME WRK-ARGS...: runs wrk, keeps its output in $tmp_dir/NAME.txt
run_wrk() {
    local name=$1; shift
    local out="$tmp_dir/$name.txt"
    log "wrk $*"
    # In the background and waited for, so that a signal to this script ends the run at once.
    wrk "$@" >"$out" 2>&1 &
    wrk_pid=$!
    if ! wait "$wrk_pid"; then
        wrk_pid=""
        cat "$out" >&2
        die "wrk failed ($name)"
    fi
    wrk_pid=""
}

# parse_wrk NAME: fills R[NAME.key] from $tmp_dir/NAME.txt (keys: see lib/wrk_parse.awk)
declare -A R=()
parse_wrk() {
    local name=$1 file="$tmp_dir/$1.txt" k v
    while IFS='=' read -r k v; do
        R["$name.$k"]=$v
    done < <(awk -f "$LIB/wrk_parse.awk" "$file")
    for k in requests rps p50_ms p99_ms non2xx; do
        if [[ -z "${R[$name.$k]:-}" ]]; then
            cat "$file" >&2
            die "could not read '$k' from the wrk output of '$name'"
        fi
    done
    for k in connect read write timeout; do
        R["$name.sock_$k"]=${R["$name.sock_$k"]:-0}
    done
}

# check_run NAME LABEL: records what went wrong in a wrk run into PROBLEMS
PROBLEMS=()
check_run() {
    local name=$1 label=$2 k
    (( ${R[$name.requests]} > 0 )) || PROBLEMS+=("$label: no request completed")
    (( ${R[$name.non2xx]} == 0 )) || PROBLEMS+=("$label: ${R[$name.non2xx]} non-2xx responses")
    for k in connect read write timeout; do
        (( ${R[$name.sock_$k]} == 0 )) || PROBLEMS+=("$label: ${R[$name.sock_$k]} socket $k errors")
    done
}

# ---------------------------------------------------------------- checks and set-up

require_uint DURATION "$DURATION" $(( 2 * RAMP + 1 ))
require_uint CONNECTIONS "$CONNECTIONS" 1
require_uint THREADS "$THREADS" 1
require_uint WARMUP "$WARMUP" 0
require_uint WORK_SECONDS "$WORK_SECONDS" 1
require_uint BASELINE_SECONDS "$BASELINE_SECONDS" 1
require_uint SATURATION_ITERATIONS "$SATURATION_ITERATIONS" 1
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS) for wrk"
[[ -z "$PORT" ]] || require_uint PORT "$PORT" 1

for tool in cargo curl awk; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not on PATH"
done
ensure_wrk

tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/syncasync-bench.XXXXXX")"

log "building: cargo build --release --bin syncasync"
cargo build --release --bin syncasync >&2 || die "release build failed"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/syncasync"
[[ -x "$BIN" ]] || die "no binary at $BIN after the build"

# ---------------------------------------------------------------- compute bound

NPROC="$(nproc)"
log "single-core work rate: syncasync bench-work --iterations $SYNC_ITERATIONS --seconds $WORK_SECONDS"
work_out="$("$BIN" bench-work --iterations "$SYNC_ITERATIONS" --seconds "$WORK_SECONDS")" \
    || die "'syncasync bench-work' failed (the binary must have the hidden bench-work subcommand)"
work_line="$(printf '%s\n' "$work_out" | grep -v '^[[:space:]]*$' | tail -n 1)"
UNITS_PER_SECOND="$(printf '%s' "$work_line" \
    | sed -n 's/.*"units_per_second"[[:space:]]*:[[:space:]]*\([0-9][0-9.eE+-]*\).*/\1/p')"
work_iterations="$(printf '%s' "$work_line" \
    | sed -n 's/.*"iterations"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p')"
[[ -n "$UNITS_PER_SECOND" && "$work_iterations" == "$SYNC_ITERATIONS" ]] \
    || die "unexpected bench-work output (want {\"iterations\":$SYNC_ITERATIONS,\"units_per_second\":X}): $work_out"
awk -v x="$UNITS_PER_SECOND" 'BEGIN { exit !(x + 0 > 0) }' \
    || die "bench-work reported a non-positive units_per_second: $work_out"
COMPUTE_BOUND="$(calc '%.1f' 'a * b' "$UNITS_PER_SECOND" "$NPROC")"
log "single core: $(calc '%.1f' a "$UNITS_PER_SECOND") units/s; bound: $COMPUTE_BOUND req/s on $NPROC cores"

# ---------------------------------------------------------------- server

[[ -n "$PORT" ]] || PORT="$(free_port)" || die "could not find a free port"
BASE="http://127.0.0.1:$PORT"
server_log="$tmp_dir/server.log"
log "starting the server on $BASE (log: $server_log)"
APP_DATABASE_URL="sqlite://$tmp_dir/bench.db" APP_PORT="$PORT" APP_HOST=127.0.0.1 \
    "$BIN" serve >"$server_log" 2>&1 &
server_pid=$!

deadline=$(( SECONDS + 30 ))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/healthz" || true)" == 200 ]]; do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited during start-up"
    (( SECONDS < deadline )) || die "GET /healthz did not answer 200 within 30 s"
    sleep 0.2
done
log "server healthy"

# One correct answer before measuring anything (SPEC §1 test vector).
check_body="$(curl -s --max-time 10 -H 'Content-Type: application/json' \
    -d '{"data":"hello world","iterations":1000}' -w '\n%{http_code}' "$BASE/sync" || true)"
[[ "$(tail -n 1 <<<"$check_body")" == 200 \
    && "$check_body" =~ \"status\"[[:space:]]*:[[:space:]]*\"success\" \
    && "$check_body" == *fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744* ]] \
    || die "POST /sync did not return the expected result: $check_body"

# ---------------------------------------------------------------- scenario 1: POST /sync

sync_args=(-t"$THREADS" -c"$CONNECTIONS" --timeout 10s --latency -s "$LIB/post_sync.lua")
if (( WARMUP > 0 )); then
    log "warm-up: ${WARMUP} s"
    run_wrk warmup "${sync_args[@]}" -d"${WARMUP}s" "$BASE/sync" -- "$SYNC_ITERATIONS"
fi
log "POST /sync, iterations=$SYNC_ITERATIONS: ${DURATION} s"
run_wrk sync "${sync_args[@]}" -d"${DURATION}s" "$BASE/sync" -- "$SYNC_ITERATIONS"
parse_wrk sync
check_run sync "POST /sync"

# ---------------------------------------------------------------- scenario 2: GET /healthz

hz_args=(-t"$HZ_THREADS" -c"$HZ_CONNECTIONS" --timeout 10s --latency)
log "GET /healthz without load: ${BASELINE_SECONDS} s"
run_wrk healthz_idle "${hz_args[@]}" -d"${BASELINE_SECONDS}s" "$BASE/healthz"
parse_wrk healthz_idle
check_run healthz_idle "GET /healthz, no load"

hz_seconds=$(( DURATION - 2 * RAMP ))
log "saturating: POST /sync, iterations=$SATURATION_ITERATIONS, ${DURATION} s; GET /healthz after ${RAMP} s"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 60s --latency \
    -s "$LIB/post_sync.lua" "$BASE/sync" -- "$SATURATION_ITERATIONS" \
    >"$tmp_dir/saturation.txt" 2>&1 &
saturator_pid=$!
sleep "$RAMP"
run_wrk healthz_loaded "${hz_args[@]}" -d"${hz_seconds}s" "$BASE/healthz"
if ! wait "$saturator_pid"; then
    saturator_pid=""
    cat "$tmp_dir/saturation.txt" >&2
    die "wrk failed (saturation)"
fi
saturator_pid=""
parse_wrk healthz_loaded
check_run healthz_loaded "GET /healthz, saturated"
parse_wrk saturation
check_run saturation "POST /sync, iterations=$SATURATION_ITERATIONS"

# ---------------------------------------------------------------- summary

cpu_model="$(awk -F': *' '/^(model name|Model|Hardware|cpu model)[[:space:]]*:/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
cpu_model="${cpu_model:-unknown}"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
if [[ "$commit" != uncommitted && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi

ms() { awk -v x="${R[$1]}" 'BEGIN { printf (x < 1 ? "%.3f" : "%.2f"), x }'; }   # R key -> "12.34" 
ratio="$(calc '%.3f' 'a / b' "${R[sync.rps]}" "$COMPUTE_BOUND")"
sat_units="$(calc '%.1f' 'a * b / c' "${R[saturation.rps]}" "$SATURATION_ITERATIONS" "$SYNC_ITERATIONS")"
sat_ratio="$(calc '%.3f' 'a / b' "$sat_units" "$COMPUTE_BOUND")"

summary="$tmp_dir/summary.md"
{
    echo "## sync_throughput"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| machine | nproc $NPROC, $cpu_model |"
    echo "| commit | $commit |"
    echo "| single-core work | $(calc '%.1f' a "$UNITS_PER_SECOND") units/s (iterations=$SYNC_ITERATIONS, ${WORK_SECONDS} s) |"
    echo "| compute bound | $COMPUTE_BOUND req/s (single-core × nproc) |"
    echo "| **POST /sync** iterations=$SYNC_ITERATIONS | **${R[sync.rps]} req/s**, p50 $(ms sync.p50_ms) ms, p99 $(ms sync.p99_ms) ms, non-2xx ${R[sync.non2xx]} ($CONNECTIONS conns, $THREADS threads, ${DURATION} s) |"
    echo "| **ratio** req/s ÷ bound | **$ratio** |"
    echo "| GET /healthz, no load | p50 $(ms healthz_idle.p50_ms) ms, p99 $(ms healthz_idle.p99_ms) ms, ${R[healthz_idle.rps]} req/s ($HZ_CONNECTIONS conns, ${BASELINE_SECONDS} s) |"
    echo "| GET /healthz, saturated | p50 $(ms healthz_loaded.p50_ms) ms, p99 $(ms healthz_loaded.p99_ms) ms, ${R[healthz_loaded.rps]} req/s ($HZ_CONNECTIONS conns, ${hz_seconds} s) |"
    echo "| saturating load | POST /sync iterations=$SATURATION_ITERATIONS: ${R[saturation.rps]} req/s = $sat_units units/s ($sat_ratio of bound), p99 $(ms saturation.p99_ms) ms |"
    echo
    echo "wrk runs on the same machine as the server and takes CPU from it."
    print_problems "${PROBLEMS[@]}"
} >"$summary"

publish_summary "$summary" "$RESULTS_FILE"

if (( ${#PROBLEMS[@]} > 0 )); then
    die "the run had errors: ${PROBLEMS[*]}"
fi
