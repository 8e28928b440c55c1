#!/usr/bin/env bash
# soak.sh: a long run at a steady rate, on SQLite and on PostgreSQL, with a history that grows
# all along (retention raised), a receiver that fails a fifth of its callbacks at random and
# one that never answers in time beside the measured load: memory, latency and throughput
# must stay flat (issue 20).
#
#   bash bench/soak.sh                       # 30 minutes per backend
#   DURATION=300 BACKENDS=sqlite bash bench/soak.sh
#
# Per backend: a fresh database; the service with default settings but retention raised (the
# history grows: RATE × DURATION finished requests) and the queue bound raised (the hung
# receiver's backlog grows too, a few thousand jobs); `loadgen --mode async --rate RATE`
# whose own receiver takes the measured callbacks; a second loadgen sending SIDE_RATE
# requests per second to `syncasync receiver --fail-rate 0.2`, and a third HUNG_RATE to one
# with `--delay-ms 600000` (their callbacks are not awaited). bench/lib/soak_sample.py samples
# the service every 10 s; bench/lib/soak_plot.py draws bench/results/soak.png and the summary
# table. All traffic stays on loopback. Writes bench/results/soak.md (and the samples as
# bench/results/soak-BACKEND.csv); progress goes to stderr.
#
# HISTORY=N starts each run on a database already holding N finished requests (written by
# bench/lib/history.py after a first start has migrated it), so that what grows with the
# history (B-tree depth, the pages a write touches) is apart from what grows with time.
#
# Env overrides: DURATION (1800 s per backend), RATE (1000), SIDE_RATE (50), HUNG_RATE (2),
# ITERATIONS (1000), HISTORY (0), BACKENDS ("sqlite postgres"), FEATURES (cargo features of
# the service, e.g. jemalloc), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), KEEP_TMP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS="$ROOT/bench/results"
readonly BIN="$ROOT/target/release/syncasync"

DURATION="${DURATION:-1800}"
RATE="${RATE:-1000}"
SIDE_RATE="${SIDE_RATE:-50}"
HUNG_RATE="${HUNG_RATE:-2}"
ITERATIONS="${ITERATIONS:-1000}"
HISTORY="${HISTORY:-0}"
BACKENDS="${BACKENDS:-sqlite postgres}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() {
    local _
    for _ in $(seq 1 200); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.05; done
    die "$1 did not answer"
}

soak() {
    local backend="$1" database port service_pid side_port hung_port
    if [[ "$backend" == sqlite ]]; then
        database="sqlite://$tmp_dir/soak.db"
    else
        new_pg_database soak
        database="$DATABASE_URL"
    fi
    port="$(free_port)"; side_port="$(free_port)"; hung_port="$(free_port)"
    server_log="$tmp_dir/$backend.log"
    "$BIN" receiver --port "$side_port" --fail-rate 0.2 >/dev/null 2>&1 &
    started_pids+=("$!")
    "$BIN" receiver --port "$hung_port" --delay-ms 600000 >/dev/null 2>&1 &
    started_pids+=("$!")
    if (( HISTORY > 0 )); then
        log "$backend: migrating, then writing $HISTORY finished requests"
        env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database" RUST_LOG=warn \
            "$BIN" serve >>"$server_log" 2>&1 &
        service_pid=$!
        wait_for "http://127.0.0.1:$port/healthz"
        kill "$service_pid"; wait "$service_pid" || true
        python3 "$ROOT/bench/lib/history.py" "$database" "$HISTORY"
    fi
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=1000000 \
        APP_REQUEST_RETENTION_HOURS=100000 APP_MAX_STORED_REQUESTS=100000000 RUST_LOG=warn \
        "$BIN" serve >>"$server_log" 2>&1 &
    service_pid=$!
    started_pids+=("$service_pid")
    wait_for "http://127.0.0.1:$port/healthz"
    wait_for "http://127.0.0.1:$side_port/stats"
    log "$backend: ${DURATION} s at $RATE/s, $SIDE_RATE/s to a failing receiver, $HUNG_RATE/s to a hung one"
    python3 "$ROOT/bench/lib/soak_sample.py" "http://127.0.0.1:$port" "$service_pid" \
        "$tmp_dir/soak-$backend.csv" 10 "$database" &
    local sampler=$!
    "$BIN" loadgen --url "http://127.0.0.1:$port" --mode async --rate "$SIDE_RATE" \
        --duration "${DURATION}s" -c 20 --iterations "$ITERATIONS" --no-progress \
        --callback-url "http://127.0.0.1:$side_port/callback" >"$tmp_dir/side-$backend.txt" 2>&1 &
    local side=$!
    "$BIN" loadgen --url "http://127.0.0.1:$port" --mode async --rate "$HUNG_RATE" \
        --duration "${DURATION}s" -c 5 --iterations "$ITERATIONS" --no-progress \
        --callback-url "http://127.0.0.1:$hung_port/callback" >"$tmp_dir/hung-$backend.txt" 2>&1 &
    local hung=$!
    "$BIN" loadgen --url "http://127.0.0.1:$port" --mode async --rate "$RATE" \
        --duration "${DURATION}s" -c 200 --iterations "$ITERATIONS" --callback-port 0 \
        --callback-timeout 120s --no-progress --json "$tmp_dir/main-$backend.json" \
        >"$tmp_dir/main-$backend.txt" 2>&1 || die "the measured loadgen failed ($backend)"
    wait "$side" "$hung" || true
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    stop_started
    cp "$tmp_dir/soak-$backend.csv" "$RESULTS/soak-$backend.csv"
}

command -v psql >/dev/null || die "psql is needed (PostgreSQL client)"
python3 -c 'import matplotlib' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore matplotlib
log "building the release binary"
cargo build --release --bin syncasync ${FEATURES:+--features "$FEATURES"} >&2
mkdir -p "$RESULTS"

plots=()
for backend in $BACKENDS; do
    soak "$backend"
    plots+=("$backend=$RESULTS/soak-$backend.csv")
done

{
    echo "## soak"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD), nproc $(nproc)."
    echo "Per backend: ${DURATION} s of \`loadgen --mode async --rate $RATE --iterations $ITERATIONS\` (measured), beside"
    echo "$SIDE_RATE/s to a receiver failing a fifth of its callbacks at random and $HUNG_RATE/s to one that never"
    echo "answers in time; default settings but retention and the queue bound raised, so the history grows all"
    echo "along, from $HISTORY finished requests at the start. Sampled every 10 s (medians over the first and the last fifth of the run); plot: \`soak.png\`."
    echo
    python3 "$ROOT/bench/lib/soak_plot.py" "$RESULTS/soak.png" "${plots[@]}"
    echo
    for backend in $BACKENDS; do
        python3 - "$tmp_dir/main-$backend.json" "$backend" <<'PY'
import json, sys
mode = json.load(open(sys.argv[1]))["modes"][0]
cb = mode["callbacks"]
lat = mode.get("latency_ms") or {}
ttc = cb.get("time_to_callback_ms") or {}
print(f"{sys.argv[2]}: {mode['success']} accepted, {mode['failed']} failed; POST /async p50 {lat.get('p50', float('nan')):.1f} ms, "
      f"p99 {lat.get('p99', float('nan')):.1f} ms; callbacks {cb['received']}/{cb['expected']}, time to callback "
      f"p50 {ttc.get('p50', float('nan')):.1f} ms, p99 {ttc.get('p99', float('nan')):.1f} ms (whole run, the measured loadgen).")
PY
        echo
    done
} >"$RESULTS/soak.md"
cat "$RESULTS/soak.md"
