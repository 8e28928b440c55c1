#!/usr/bin/env bash
# history.sh: does speed depend on history? Async delivery, list pages, filters, the
# dashboard's overview and start-up, on an empty database and on databases holding a history
# of finished requests (default: one and five million), on SQLite and on PostgreSQL, with a
# dashboard tab open (its live stream read throughout), side by side in one run. Reports each
# history's delivered/s ÷ the empty database's (issue 20: >= 0.9).
#
#   bash bench/history.sh
#
# For each backend and size: a fresh database, migrated by a first start of the service, then
# filled straight in SQL (bench/lib/history.py: a third sync, the rest async with an attempt
# each, created over the last day), then the service started again with retention raised so
# that the history stays (start-up timed to its first healthy /healthz), the read paths timed
# (median of 5 curl calls each), and one closed-loop `syncasync loadgen --mode async` run of
# DURATION seconds. All traffic stays on loopback. Prints a markdown summary and writes it to
# bench/results/history.md; progress goes to stderr.
#
# Env overrides: SIZES ("0 1000000 5000000"), BACKENDS ("sqlite postgres"), DURATION (20),
# CONNECTIONS (50), ITERATIONS (1000), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), KEEP_TMP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/history.md"
readonly BIN="$ROOT/target/release/syncasync"

SIZES="${SIZES:-0 1000000 5000000}"
BACKENDS="${BACKENDS:-sqlite postgres}"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_instance DATABASE_URL LOG: starts the service, waits for /healthz, sets INSTANCE_URL
# and STARTUP_MS (spawn to first healthy answer).
start_instance() {
    local port started
    port="$(free_port)"
    server_log="$2"
    started="$(date +%s%N)"
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$1" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=10000000 \
        APP_REQUEST_RETENTION_HOURS=100000 APP_MAX_STORED_REQUESTS=100000000 RUST_LOG=warn \
        "$BIN" serve >>"$2" 2>&1 &
    started_pids+=("$!")
    local _
    for _ in $(seq 1 3000); do
        if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
            INSTANCE_URL="http://127.0.0.1:$port"
            STARTUP_MS=$(( ($(date +%s%N) - started) / 1000000 ))
            return
        fi
        sleep 0.02
    done
    die "the service on port $port did not start"
}

# median_ms PATH: the median of 5 GETs of PATH, in milliseconds
median_ms() {
    local i times=()
    for i in 1 2 3 4 5; do
        times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "$INSTANCE_URL$1")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk 'NR == 3 { printf "%.1f", $1 * 1000 }'
}

# run BACKEND SIZE: one row of the table, as JSON, into $tmp_dir/BACKEND-SIZE.json
run() {
    local backend="$1" size="$2" name="$1-$2" database fill_s stream_pid prefix
    log "$name: fresh database"
    if [[ "$backend" == sqlite ]]; then
        database="sqlite://$tmp_dir/$name.db"
    else
        new_pg_database "$size"
        database="$DATABASE_URL"
    fi
    start_instance "$database" "$tmp_dir/$name.log"
    stop_started
    log "$name: writing $size finished requests"
    local t0; t0="$(date +%s%N)"
    python3 "$ROOT/bench/lib/history.py" "$database" "$size"
    fill_s="$(calc '%.0f' 'a / 1e9' "$(( $(date +%s%N) - t0 ))")"
    start_instance "$database" "$tmp_dir/$name.log"
    log "$name: started in ${STARTUP_MS} ms; reading with a dashboard tab open"
    curl -sSN "$INSTANCE_URL/ui/api/stream" >/dev/null 2>&1 &
    stream_pid=$!
    sleep 2
    prefix="$(curl -fsS "$INSTANCE_URL/requests?limit=1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["requests"]; print(r[0]["id"][:8] if r else "0190")')"
    local from; from="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)"
    local list status host idp range overview last_status error error_rare
    list="$(median_ms '/requests')"
    status="$(median_ms '/requests?status=callback_failed')"
    host="$(median_ms '/requests?callback_host=hooks7.example')"
    idp="$(median_ms "/requests?id_prefix=$prefix")"
    range="$(median_ms "/requests?created_from=$from")"
    overview="$(median_ms '/ui/api/overview')"
    last_status="$(median_ms '/requests?last_status=503')"
    error="$(median_ms '/requests?error_contains=refused')"
    error_rare="$(median_ms '/requests?error_contains=no%20such%20error')"
    log "$name: async load, ${DURATION} s"
    "$BIN" loadgen --url "$INSTANCE_URL" --mode async --duration "${DURATION}s" -c "$CONNECTIONS" \
        --iterations "$ITERATIONS" --callback-port 0 --callback-timeout 120s --no-progress \
        --json "$tmp_dir/$name.load.json" >"$tmp_dir/$name.load.txt" || die "loadgen failed ($name)"
    kill "$stream_pid" 2>/dev/null || true
    wait "$stream_pid" 2>/dev/null || true
    stop_started
    python3 - "$tmp_dir/$name.load.json" >"$tmp_dir/$name.json" <<PY
import json, sys
mode = json.load(open(sys.argv[1]))["modes"][0]
cb = mode["callbacks"]
print(json.dumps({"backend": "$backend", "size": $size, "fill_s": $fill_s, "startup_ms": $STARTUP_MS,
    "list_ms": $list, "status_ms": $status, "host_ms": $host, "prefix_ms": $idp, "range_ms": $range,
    "overview_ms": $overview, "last_status_ms": $last_status, "error_ms": $error,
    "error_rare_ms": $error_rare, "delivered_rps": cb["delivered_rps"],
    "p99": (cb.get("time_to_callback_ms") or {}).get("p99", float("nan")),
    "received": cb["received"], "expected": cb["expected"]}))
PY
}

command -v psql >/dev/null || die "psql is needed (PostgreSQL client)"
log "building the release binary"
cargo build --release --bin syncasync >&2

for backend in $BACKENDS; do
    for size in $SIZES; do run "$backend" "$size"; done
done

mkdir -p "$(dirname "$RESULTS_FILE")"
python3 - "$tmp_dir" "$DURATION" "$CONNECTIONS" "$ITERATIONS" >"$RESULTS_FILE.tmp" <<'PY'
import datetime, glob, json, os, subprocess, sys
tmp, duration, connections, iterations = sys.argv[1:]
rows = [json.load(open(f)) for f in glob.glob(os.path.join(tmp, "*-*.json")) if not f.endswith(".load.json")]
rows.sort(key=lambda r: (r["backend"] != "sqlite", r["size"]))
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("## history\n")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, nproc {os.cpu_count()}, {cpu}.")
print(f"Each row: a fresh database holding the history, the service with default settings but "
      f"retention raised (the history stays), a dashboard tab's live stream open; read times are the "
      f"median of 5 `curl` calls (first page, 100 rows); then `loadgen --mode async --duration {duration}s "
      f"-c {connections} --iterations {iterations}` (closed loop). The service, the database and the load "
      f"generator share the machine.\n")
print("| backend | finished requests | start-up | list | status filter | host filter | id prefix | last hour | last status 503 | error text | error text, no match | overview | delivered/s | ÷ empty | time to callback p99 | callbacks |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
empty = {r["backend"]: r["delivered_rps"] for r in rows if r["size"] == 0}
for r in rows:
    base = empty.get(r["backend"])
    ratio = f"{r['delivered_rps'] / base:.2f}" if base else "n/a"
    print(f"| {r['backend']} | {r['size']:,} | {r['startup_ms']} ms | {r['list_ms']} ms | {r['status_ms']} ms | "
          f"{r['host_ms']} ms | {r['prefix_ms']} ms | {r['range_ms']} ms | {r['last_status_ms']} ms | "
          f"{r['error_ms']} ms | {r['error_rare_ms']} ms | {r['overview_ms']} ms | "
          f"{r['delivered_rps']:.0f} | {ratio} | {r['p99']:.1f} ms | {r['received']}/{r['expected']} |")
PY
mv "$RESULTS_FILE.tmp" "$RESULTS_FILE"
cat "$RESULTS_FILE"
