#!/usr/bin/env bash
# ab.sh: two builds of the service side by side, so that a change to a hot path is judged by
# a ratio measured in one run, not by numbers from different days. For each backend, each
# build gets a database of its own holding a history of HISTORY finished requests (written as
# history.sh writes it, by that build's own checkout: each build's schema); then the builds
# take turns, ROUNDS runs each, in the order A B B A (so that neither always follows the
# other, nor inherits its vacuum or checkpoint), each run a closed-loop `loadgen --mode async`
# by build B's loadgen (or, with LOAD=sync, wrk's `POST /sync`). Prints each run, each
# build's median rate (callbacks delivered/s, or sync requests answered/s) and its p99 (time
# to callback, or latency), and B ÷ A; writes the summary to bench/results/ab.md. All traffic
# stays on loopback.
#
#   BIN_A=/tmp/old-target/release/syncasync A_ROOT=/tmp/old bash bench/ab.sh
#
# Env: BIN_A (required), A_ROOT (required: the checkout BIN_A was built from, whose
# bench/lib/history.py writes A's history in A's schema), BIN_B
# (target/release/syncasync, built if missing), LABEL_A, LABEL_B (the builds' names in the
# summary; default their checkouts' short commits), BACKENDS ("sqlite postgres"), HISTORY
# (1000000; 0 for an empty database), ROUNDS (3), DURATION (15), CONNECTIONS (50),
# ITERATIONS (1000), LOAD (async, or sync), PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable),
# B_SQL (statements run on B's databases once their history is written: a what-if schema for
# the same binary, e.g. BIN_A=target/release/syncasync A_ROOT=. B_SQL='DROP INDEX …'),
# KEEP_TMP=1.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly RESULTS_FILE="$ROOT/bench/results/ab.md"

BIN_A="${BIN_A:-}"
A_ROOT="${A_ROOT:-}"
BIN_B="${BIN_B:-$ROOT/target/release/syncasync}"
BACKENDS="${BACKENDS:-sqlite postgres}"
HISTORY="${HISTORY:-1000000}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-15}"
CONNECTIONS="${CONNECTIONS:-50}"
ITERATIONS="${ITERATIONS:-1000}"
LOAD="${LOAD:-async}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
B_SQL="${B_SQL:-}"

tmp_dir="$(mktemp -d)"
server_log=""
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[[ -n "$BIN_A" && -x "$BIN_A" ]] || die "BIN_A must name the baseline build's syncasync binary"
[[ -n "$A_ROOT" && -f "$A_ROOT/bench/lib/history.py" ]] ||
    die "A_ROOT must name the checkout BIN_A was built from (one holding bench/lib/history.py)"
require_uint HISTORY "$HISTORY" 0
require_uint ROUNDS "$ROUNDS" 1
require_uint DURATION "$DURATION" 1
require_uint CONNECTIONS "$CONNECTIONS" 1
require_uint ITERATIONS "$ITERATIONS" 1
case "$LOAD" in async) ;; sync) ensure_wrk ;; *) die "LOAD must be async or sync, not '$LOAD'" ;; esac
if [[ "$BIN_B" == "$ROOT/target/release/syncasync" ]]; then
    log "building the release binary (B)"
    cargo build --release --bin syncasync >&2
fi
[[ -x "$BIN_B" ]] || die "BIN_B ($BIN_B) is not an executable"
LABEL_A="${LABEL_A:-$(git -C "$A_ROOT" rev-parse --short HEAD 2>/dev/null || echo A)}"
LABEL_B="${LABEL_B:-$(git rev-parse --short HEAD 2>/dev/null || echo B)}"

# start BIN DATABASE_URL LOG: starts a build on loopback, waits until healthy, sets URL.
start() {
    local port
    port="$(free_port)"
    server_log="$3"
    env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$2" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false APP_ASYNC_QUEUE_MAX_SIZE=10000000 \
        APP_REQUEST_RETENTION_HOURS=100000 APP_MAX_STORED_REQUESTS=100000000 RUST_LOG=warn \
        "$1" serve >>"$3" 2>&1 &
    started_pids+=("$!")
    URL="http://127.0.0.1:$port"
    wait_healthy "$URL" "$1"
}

# prepare BUILD BIN ROOT BACKEND: a database for one build, migrated by it and filled with
# the history by its checkout's script; sets DB_<BUILD>_<BACKEND>.
prepare() {
    local build="$1" bin="$2" root="$3" backend="$4" database
    if [[ "$backend" == sqlite ]]; then
        database="sqlite://$tmp_dir/$build-$backend.db"
    else
        new_pg_database "$build"
        database="$DATABASE_URL"
    fi
    start "$bin" "$database" "$tmp_dir/$build-$backend.log"
    stop_started
    log "$build ($backend): writing $HISTORY finished requests"
    python3 "$root/bench/lib/history.py" "$database" "$HISTORY"
    if [[ "$build" == B && -n "$B_SQL" ]]; then
        log "B ($backend): $B_SQL"
        if [[ "$backend" == sqlite ]]; then
            sqlite3 "${database#sqlite://}" "$B_SQL"
        else
            psql -q -v ON_ERROR_STOP=1 "$database" -c "$B_SQL"
        fi
    fi
    printf -v "DB_${build}_${backend}" '%s' "$database"
}

# run BUILD BIN BACKEND ROUND: one closed-loop run; its rate, p99 (ms) and whether every
# callback came (1 or 0), on one line, into $tmp_dir.
run() {
    local build="$1" bin="$2" backend="$3" round="$4" db_var="DB_${1}_${3}"
    local out="$tmp_dir/$backend-$round-$build"
    start "$bin" "${!db_var}" "$tmp_dir/$build-$backend.log"
    if [[ "$LOAD" == sync ]]; then
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$ROOT/bench/lib/post_sync.lua" \
            "$URL/sync" -- "$ITERATIONS" >"$out.txt" 2>&1 || die "wrk failed ($build, $backend, round $round)"
        python3 - "$out.txt" >"$out.run" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
value, unit = re.search(r"\n\s+99%\s+([\d.]+)(us|ms|s)\b", text).groups()
p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
failed = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rate, p99, 0 if failed else 1)
PY
    else
        "$BIN_B" loadgen --url "$URL" --mode async --duration "${DURATION}s" -c "$CONNECTIONS" \
            --iterations "$ITERATIONS" --callback-port 0 --callback-timeout 120s --no-progress \
            --json "$out.json" >/dev/null || die "loadgen failed ($build, $backend, round $round)"
        python3 - "$out.json" >"$out.run" <<'PY'
import json, sys
cb = json.load(open(sys.argv[1]))["modes"][0]["callbacks"]
p99 = (cb.get("time_to_callback_ms") or {}).get("p99", float("nan"))
print(cb["delivered_rps"], p99, int(cb["received"] == cb["expected"]))
PY
    fi
    stop_started
    log "    $backend-$round-$build: $(awk '{printf "%.0f/s, p99 %.1f ms%s", $1, $2, ($3 ? "" : ", INCOMPLETE")}' "$out.run")"
}

for backend in $BACKENDS; do
    prepare A "$BIN_A" "$A_ROOT" "$backend"
    prepare B "$BIN_B" "$ROOT" "$backend"
    for round in $(seq 1 "$ROUNDS"); do
        log "$backend, round $round of $ROUNDS"
        if (( round % 2 )); then
            run A "$BIN_A" "$backend" "$round"
            run B "$BIN_B" "$backend" "$round"
        else
            run B "$BIN_B" "$backend" "$round"
            run A "$BIN_A" "$backend" "$round"
        fi
    done
done

B_SQL="$B_SQL" python3 - "$tmp_dir" "$LABEL_A" "$LABEL_B" "$HISTORY" "$DURATION" "$CONNECTIONS" "$ITERATIONS" "$LOAD" \
    >"$tmp_dir/summary.md" <<'PY'
import datetime, glob, os, statistics, sys
tmp, label_a, label_b, history, duration, connections, iterations, load = sys.argv[1:]
runs = {}
for path in sorted(glob.glob(os.path.join(tmp, "*-*-*.run")), key=lambda p: int(os.path.basename(p).split("-")[1])):
    backend, _, build = os.path.basename(path)[:-4].split("-")
    rate, p99, complete = open(path).read().split()
    runs.setdefault((backend, build), []).append((float(rate), float(p99), complete == "1"))
if load == "sync":
    how = f"wrk, {connections} connections, `POST /sync` iterations={iterations}, {duration} s"
    rate, p99, every = "answered/s", "latency p99", "every answer 200"
else:
    how = (f"`loadgen --mode async --duration {duration}s -c {connections} --iterations {iterations}` "
           "(closed loop, B's loadgen)")
    rate, p99, every = "delivered/s", "callback p99", "every callback"
print("## ab\n")
print(f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}: A = {label_a}, B = {label_b}, "
      f"each on a database holding {int(history):,} finished requests; runs in the order A B B A …; each "
      f"{how}. Medians of the runs.\n")
if os.environ.get("B_SQL"):
    print(f"B's databases then ran `{os.environ['B_SQL']}`.\n")
print(f"| backend | A {rate} | B {rate} | B ÷ A | A {p99} | B {p99} | {every} |")
print("|---|---|---|---|---|---|---|")
for backend in sorted({b for b, _ in runs}, key=lambda b: b != "sqlite"):
    a, b = runs.get((backend, "A"), []), runs.get((backend, "B"), [])
    if not a or not b:
        continue
    med = lambda rs, i: statistics.median(r[i] for r in rs)
    complete = all(r[2] for r in a + b)
    print(f"| {backend} | {med(a, 0):.0f} ({', '.join(f'{r[0]:.0f}' for r in a)}) | "
          f"{med(b, 0):.0f} ({', '.join(f'{r[0]:.0f}' for r in b)}) | {med(b, 0) / med(a, 0):.2f} | "
          f"{med(a, 1):.1f} ms | {med(b, 1):.1f} ms | {'yes' if complete else 'no'} |")
PY
publish_summary "$tmp_dir/summary.md" "$RESULTS_FILE"
