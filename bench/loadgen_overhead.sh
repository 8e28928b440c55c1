#!/usr/bin/env bash
# loadgen_overhead.sh: how much of wrk's request rate `syncasync loadgen` reaches on the same
# server (issue 4: target >= 0.8). A load generator shares the machine with the server it
# measures, so its own cost per request lowers what it can measure.
#
#   bash bench/loadgen_overhead.sh
#
# One release build, one server (SQLite in a temp dir, 127.0.0.1, a free port), then
# POST /sync {"data":"benchmark payload","iterations":1} with wrk and with the loadgen, the
# same connections, alternating: wrk, loadgen, wrk, loadgen. Prints a markdown summary on
# stdout and writes it to bench/results/loadgen_overhead.md; progress goes to stderr.
# Env overrides: see bench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly LIB="$ROOT/bench/lib"
readonly RESULTS_DIR="$ROOT/bench/results"
readonly RESULTS_FILE="$RESULTS_DIR/loadgen_overhead.md"

DURATION="${DURATION:-15}"          # s, each measured run
CONNECTIONS="${CONNECTIONS:-50}"    # wrk -c and loadgen -c
THREADS="${THREADS:-2}"             # wrk -t and loadgen --threads
ROUNDS="${ROUNDS:-2}"               # measured runs per tool, alternating
WARMUP="${WARMUP:-3}"               # s, one wrk warm-up before the first run
PORT="${PORT:-}"                    # default: a free port on 127.0.0.1

readonly ITERATIONS=1                 # the cheapest work: the tools' own costs show most
readonly DATA="benchmark payload"     # wrk's body (lib/post_sync.lua); loadgen gets its size
readonly TARGET_RATIO=0.8

server_pid=""
tool_pid=""
tmp_dir=""
server_log=""

# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"

cleanup() {
    local rc=$?
    trap - EXIT
    if [[ -n "$tool_pid" ]] && kill -0 "$tool_pid" 2>/dev/null; then
        kill "$tool_pid" 2>/dev/null || true
        wait "$tool_pid" 2>/dev/null || true
    fi
    stop_server "$server_pid"
    if [[ -n "$tmp_dir" ]]; then
        rm -rf -- "$tmp_dir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# cpu_ticks PID: user + system time of a process so far, in clock ticks
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
readonly TICKS_PER_SECOND="$(getconf CLK_TCK)"

# children_cpu: user + system seconds of this shell's finished children so far (bash's
# `times`, second line: "0m1.230s 0m2.340s"). Run in this shell, not in $(…): a subshell
# starts with no children.
children_cpu() {
    times >"$tmp_dir/times"
    awk 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] }
        printf "%.3f\n", t
    }' "$tmp_dir/times"
}

# measure NAME CMD...: runs CMD in the background (so a signal to this script ends it at
# once), waits for it, keeps its output in $tmp_dir/NAME.txt, and records the CPU time the
# tool and the server spent during the run in R[NAME.client_cpu_s] and R[NAME.server_cpu_s].
declare -A R=()
measure() {
    local name=$1; shift
    local out="$tmp_dir/$name.txt" server_before client_before
    log "$name: $*"
    server_before="$(cpu_ticks "$server_pid")"
    children_cpu >"$tmp_dir/cpu_before"
    "$@" >"$out" 2>&1 &
    tool_pid=$!
    if ! wait "$tool_pid"; then
        tool_pid=""
        cat "$out" >&2
        die "$name failed"
    fi
    tool_pid=""
    children_cpu >"$tmp_dir/cpu_after"
    client_before="$(cat "$tmp_dir/cpu_before")"
    R["$name.client_cpu_s"]="$(calc '%.3f' 'a - b' "$(cat "$tmp_dir/cpu_after")" "$client_before")"
    R["$name.server_cpu_s"]="$(calc '%.3f' '(a - b) / c' "$(cpu_ticks "$server_pid")" "$server_before" "$TICKS_PER_SECOND")"
}

# parse_wrk NAME: R[NAME.rps], R[NAME.requests], R[NAME.p50_ms], R[NAME.p99_ms], R[NAME.errors]
parse_wrk() {
    local name=$1 file="$tmp_dir/$1.txt" k v
    local -A W=()
    while IFS='=' read -r k v; do W["$k"]=$v; done < <(awk -f "$LIB/wrk_parse.awk" "$file")
    for k in requests rps p50_ms p99_ms non2xx; do
        [[ -n "${W[$k]:-}" ]] || { cat "$file" >&2; die "could not read '$k' from the wrk output of '$name'"; }
    done
    R["$name.rps"]=${W[rps]}
    R["$name.requests"]=${W[requests]}
    R["$name.p50_ms"]=${W[p50_ms]}
    R["$name.p99_ms"]=${W[p99_ms]}
    R["$name.errors"]=$(( W[non2xx] + ${W[sock_connect]:-0} + ${W[sock_read]:-0} + ${W[sock_write]:-0} + ${W[sock_timeout]:-0} ))
}

# parse_loadgen NAME: the same keys from the loadgen's --json report ($tmp_dir/NAME.json)
parse_loadgen() {
    local name=$1 file="$tmp_dir/$1.json" k v
    while IFS='=' read -r k v; do R["$name.$k"]=$v; done < <(python3 - "$file" <<'EOF'
import json, sys
mode = json.load(open(sys.argv[1]))["modes"][0]
latency = mode["latency_ms"] or {}
print(f"rps={mode['throughput_rps']:.2f}")
print(f"requests={mode['total']}")
print(f"p50_ms={latency.get('p50', 0):.3f}")
print(f"p99_ms={latency.get('p99', 0):.3f}")
print(f"errors={mode['failed']}")
EOF
)
    [[ -n "${R[$name.rps]:-}" ]] || { cat "$file" >&2; die "could not read the loadgen report of '$name'"; }
}

# ---------------------------------------------------------------- checks and set-up

require_uint DURATION "$DURATION" 1
require_uint CONNECTIONS "$CONNECTIONS" 1
require_uint THREADS "$THREADS" 1
require_uint ROUNDS "$ROUNDS" 1
require_uint WARMUP "$WARMUP" 0
(( CONNECTIONS >= THREADS )) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS) for wrk"
[[ -z "$PORT" ]] || require_uint PORT "$PORT" 1

for tool in cargo curl awk python3 getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is required but not on PATH"
done
ensure_wrk

tmp_dir="$(mktemp -d "${TMPDIR:-/tmp}/syncasync-bench.XXXXXX")"

log "building: cargo build --release --bin syncasync"
cargo build --release --bin syncasync >&2 || die "release build failed"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/syncasync"
[[ -x "$BIN" ]] || die "no binary at $BIN after the build"

# ---------------------------------------------------------------- server

[[ -n "$PORT" ]] || PORT="$(free_port)" || die "could not find a free port"
BASE="http://127.0.0.1:$PORT"
server_log="$tmp_dir/server.log"
log "starting the server on $BASE (log: $server_log)"
# Retention off for the run: at these rates the table passes APP_MAX_STORED_REQUESTS within
# seconds, and a cleanup pass deleting hundreds of thousands of rows mid-run would slow the
# one writer for whichever tool happened to be measuring.
APP_DATABASE_URL="sqlite://$tmp_dir/bench.db" APP_PORT="$PORT" APP_HOST=127.0.0.1 \
    APP_CLEANUP_INTERVAL_SECONDS=86400 \
    "$BIN" serve >"$server_log" 2>&1 &
server_pid=$!

deadline=$(( SECONDS + 30 ))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/healthz" || true)" == 200 ]]; do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited during start-up"
    (( SECONDS < deadline )) || die "GET /healthz did not answer 200 within 30 s"
    sleep 0.2
done
log "server healthy"

# ---------------------------------------------------------------- runs

wrk_args=(-t"$THREADS" -c"$CONNECTIONS" --timeout 10s --latency -s "$LIB/post_sync.lua")
loadgen_args=(loadgen --url "$BASE" --mode sync -c "$CONNECTIONS" --threads "$THREADS"
              --iterations "$ITERATIONS" --data-size "${#DATA}" --timeout 10s --no-progress)

if (( WARMUP > 0 )); then
    measure warmup wrk "${wrk_args[@]}" -d"${WARMUP}s" "$BASE/sync" -- "$ITERATIONS" "$DATA"
fi

RUNS=()
for round in $(seq 1 "$ROUNDS"); do
    measure "wrk$round" wrk "${wrk_args[@]}" -d"${DURATION}s" "$BASE/sync" -- "$ITERATIONS" "$DATA"
    parse_wrk "wrk$round"
    RUNS+=("wrk$round")
    measure "loadgen$round" "$BIN" "${loadgen_args[@]}" --duration "${DURATION}s" \
        --json "$tmp_dir/loadgen$round.json"
    parse_loadgen "loadgen$round"
    RUNS+=("loadgen$round")
done

# ---------------------------------------------------------------- summary

PROBLEMS=()
wrk_sum=0 loadgen_sum=0
for run in "${RUNS[@]}"; do
    (( ${R[$run.errors]} == 0 )) || PROBLEMS+=("$run: ${R[$run.errors]} failed requests")
    (( ${R[$run.requests]} > 0 )) || PROBLEMS+=("$run: no request completed")
    case "$run" in
        wrk*) wrk_sum="$(calc '%.2f' 'a + b' "$wrk_sum" "${R[$run.rps]}")" ;;
        *) loadgen_sum="$(calc '%.2f' 'a + b' "$loadgen_sum" "${R[$run.rps]}")" ;;
    esac
done
wrk_mean="$(calc '%.2f' 'a / b' "$wrk_sum" "$ROUNDS")"
loadgen_mean="$(calc '%.2f' 'a / b' "$loadgen_sum" "$ROUNDS")"
ratio="$(calc '%.3f' 'a / b' "$loadgen_mean" "$wrk_mean")"
verdict="$(awk -v r="$ratio" -v t="$TARGET_RATIO" 'BEGIN { print (r >= t ? "meets" : "MISSES") }')"

cpu_model="$(awk -F': *' '/^(model name|Model|Hardware|cpu model)[[:space:]]*:/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo uncommitted)"
if [[ "$commit" != uncommitted && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi
# µs of CPU per request: CPU seconds × 1e6 ÷ requests
per_request() { calc '%.1f' 'a * 1000000 / b' "${R[$1]}" "${R[$2.requests]}"; }

summary="$tmp_dir/summary.md"
{
    echo "## loadgen_overhead"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    echo "| machine | nproc $(nproc), ${cpu_model:-unknown} |"
    echo "| commit | $commit |"
    echo "| load | POST /sync \`{\"data\":\"$DATA\",\"iterations\":$ITERATIONS}\`, $CONNECTIONS connections, $THREADS threads, ${DURATION} s per run |"
    echo "| **wrk** mean | **$wrk_mean req/s** |"
    echo "| **loadgen** mean | **$loadgen_mean req/s** |"
    echo "| **ratio** loadgen ÷ wrk | **$ratio** ($verdict the $TARGET_RATIO target) |"
    echo
    echo "| run | tool | req/s | requests | p50 ms | p99 ms | failed | tool CPU µs/req | server CPU µs/req |"
    echo "|---|---|---|---|---|---|---|---|---|"
    n=0
    for run in "${RUNS[@]}"; do
        n=$(( n + 1 ))
        echo "| $n | ${run%%[0-9]*} | ${R[$run.rps]} | ${R[$run.requests]} | ${R[$run.p50_ms]} | ${R[$run.p99_ms]} | ${R[$run.errors]} | $(per_request "$run.client_cpu_s" "$run") | $(per_request "$run.server_cpu_s" "$run") |"
    done
    echo
    echo "Both tools run on the same machine as the server and take CPU from it; the tool that"
    echo "costs less per request leaves more to the server. The loadgen's latencies here are"
    echo "closed-loop, as wrk's are."
    print_problems "${PROBLEMS[@]}"
} >"$summary"

publish_summary "$summary" "$RESULTS_FILE"

if (( ${#PROBLEMS[@]} > 0 )); then
    die "the run had errors: ${PROBLEMS[*]}"
fi
