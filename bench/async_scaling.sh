#!/usr/bin/env bash
# async_scaling.sh: end-to-end async throughput (accepted per second, delivered per second,
# time to callback, the service's CPU per request) with one instance on SQLite, one on
# PostgreSQL, and two on PostgreSQL, side by side in one run, next to the machine's compute
# bound; reports PostgreSQL ÷ SQLite (issue 12: >= 0.6) and two instances ÷ one (>= 1).
#
#   bash bench/async_scaling.sh
#
# One release build. Each scenario gets a fresh database (a SQLite file in a temp dir, or a
# new PostgreSQL database dropped at the end), its instances on free ports of 127.0.0.1 with
# default settings, and one closed-loop `syncasync loadgen --mode async` run of DURATION
# seconds whose own receiver takes the callbacks. All traffic stays on loopback. Prints a
# markdown summary on stdout and writes it to bench/results/async_scaling.md; progress goes
# to stderr.
#
# Env overrides: DURATION (20 s per scenario), CONNECTIONS (50), ITERATIONS (1000),
# WORKERS (APP_ASYNC_WORKER_COUNT; default: the service's), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable: TLS on a loopback socket
# protects nothing and would measure rustls, not the store), KEEP_TMP=1 (keep the logs and
# loadgen reports in the temp dir).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_DIR="$ROOT/bench/results"
readonly RESULTS_FILE="$RESULTS_DIR/async_scaling.md"
readonly BIN="$ROOT/target/release/syncasync"

DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
WORKERS="${WORKERS:-}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_instance DATABASE_URL LOG: starts one instance and sets INSTANCE_URL to its base
# URL. Not called in a $(…) subshell: the server must be a child of this shell, for
# stop_started to stop it.
start_instance() {
    local port
    port="$(free_port)"
    local -a settings=()
    [[ -z "$WORKERS" ]] || settings+=("APP_ASYNC_WORKER_COUNT=$WORKERS")
    # The queue bound is raised so that a backlog, if any, shows as time to callback rather
    # than as refusals.
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$1" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=10000000 RUST_LOG=warn \
        "${settings[@]}" "$BIN" serve >>"$2" 2>&1 &
    started_pids+=("$!")
    local _
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && { INSTANCE_URL="http://127.0.0.1:$port"; return; }
        sleep 0.1
    done
    tail -n 20 "$2" >&2
    die "an instance on port $port did not start"
}

# cpu_seconds PID...: user + system CPU seconds the processes have used so far
cpu_seconds() {
    local pid ticks=0
    for pid in "$@"; do ticks=$(( ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat") )); done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# scenario NAME INSTANCES DATABASE_URL: runs the load against INSTANCES instances sharing
# DATABASE_URL; leaves the loadgen JSON in $tmp_dir/NAME.json and the instances' CPU
# seconds over the run in $tmp_dir/NAME.cpu.
scenario() {
    local name="$1" count="$2" database="$3" urls=() i before after
    log "scenario $name: $count instance(s), ${DURATION} s"
    for ((i = 0; i < count; i++)); do
        start_instance "$database" "$tmp_dir/$name.log"
        urls+=(--url "$INSTANCE_URL")
    done
    before="$(cpu_seconds "${started_pids[@]}")"
    "$BIN" loadgen "${urls[@]}" --mode async --duration "${DURATION}s" -c "$CONNECTIONS" \
        --iterations "$ITERATIONS" --callback-port 0 --callback-timeout 120s --no-progress \
        --json "$tmp_dir/$name.json" >"$tmp_dir/$name.txt" || die "loadgen failed in scenario $name"
    after="$(cpu_seconds "${started_pids[@]}")"
    awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f\n", a - b }' >"$tmp_dir/$name.cpu"
    stop_started
}

command -v psql >/dev/null || die "psql is needed (PostgreSQL client)"
pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL is not answering on 127.0.0.1:5432"

log "building the release binary"
cargo build --release --bin syncasync >&2

log "single-core work rate: syncasync bench-work --iterations $ITERATIONS --seconds 5"
"$BIN" bench-work --iterations "$ITERATIONS" --seconds 5 >"$tmp_dir/work.json"

scenario sqlite-1 1 "sqlite://$tmp_dir/bench.db"
new_pg_database one
scenario postgres-1 1 "$DATABASE_URL"
new_pg_database two
scenario postgres-2 2 "$DATABASE_URL"

mkdir -p "$RESULTS_DIR"
python3 - "$tmp_dir" "$DURATION" "$CONNECTIONS" "$ITERATIONS" "${WORKERS:-default}" >"$RESULTS_FILE.tmp" <<'PY'
import json, os, subprocess, sys, datetime
tmp, duration, connections, iterations, workers = sys.argv[1:]
def load(name):
    with open(os.path.join(tmp, name + ".json")) as f:
        mode = json.load(f)["modes"][0]
    cb = mode["callbacks"]
    ttc = cb.get("time_to_callback_ms") or {}
    return {
        "accepted": mode["success"],
        "accepted_rps": mode["throughput_rps"],
        "received": cb["received"],
        "expected": cb["expected"],
        "delivered_rps": cb["delivered_rps"],
        "p50": ttc.get("p50", float("nan")),
        "p99": ttc.get("p99", float("nan")),
        "cpu_us": float(open(os.path.join(tmp, name + ".cpu")).read()) * 1e6 / max(cb["received"], 1),
    }
rows = {name: load(name) for name in ("sqlite-1", "postgres-1", "postgres-2")}
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "unknown"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("## async_scaling\n")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, nproc {os.cpu_count()}, {cpu}.")
work = json.load(open(os.path.join(tmp, "work.json")))
bound = work["units_per_second"] * os.cpu_count()
print(f"`loadgen --mode async --duration {duration}s -c {connections} --iterations {iterations}` (closed loop), "
      f"APP_ASYNC_WORKER_COUNT={workers}, other settings default; service instances, PostgreSQL and the load "
      f"generator share the machine. Compute bound: {work['units_per_second']:.0f} units/s on one core "
      f"× {os.cpu_count()} = **{bound:.0f}/s**. Service CPU: the instances' user + system time over the run "
      f"÷ callbacks delivered (PostgreSQL's own is not in it).\n")
print("| scenario | accepted/s | delivered/s | ÷ compute bound | callbacks | time to callback p50 | p99 | service CPU per request |")
print("|---|---|---|---|---|---|---|---|")
for name, r in rows.items():
    print(f"| {name} | {r['accepted_rps']:.0f} | {r['delivered_rps']:.0f} | {r['delivered_rps'] / bound:.2f} | "
          f"{r['received']}/{r['expected']} | {r['p50']:.1f} ms | {r['p99']:.1f} ms | {r['cpu_us']:.0f} µs |")
vs_sqlite = rows["postgres-1"]["delivered_rps"] / rows["sqlite-1"]["delivered_rps"]
scaling = rows["postgres-2"]["delivered_rps"] / rows["postgres-1"]["delivered_rps"]
print(f"\n**PostgreSQL ÷ SQLite** (delivered/s, one instance each): **{vs_sqlite:.2f}**; "
      f"**two instances ÷ one** on PostgreSQL: **{scaling:.2f}**")
PY
mv "$RESULTS_FILE.tmp" "$RESULTS_FILE"
cat "$RESULTS_FILE"
