#!/usr/bin/env bash
# floor.sh: what the service adds to the work. Side by side in one run, the floor
# (bench/floor: the same wire format and work function with nothing else, no database) and
# syncasync with its default settings on SQLite and on PostgreSQL, each path run against
# each in turn, ROUNDS times alternating:
#
#   sync-1000   POST /sync iterations=1000, wrk, CONNECTIONS connections   (requests/s)
#   sync-1      POST /sync iterations=1                                     (requests/s)
#   async-1000  loadgen --mode async closed loop, iterations=1000           (delivered/s)
#
# and, on the async paths, two instances sharing one PostgreSQL database ("postgres2", the
# load spread over both): what a second instance costs in coordination is the CPU both
# spend per job over what one spends (the ratio printed as "coordination cost").
#
# For each run it also reads the server's CPU time (user + system, /proc) and PostgreSQL's
# (every postgres process), and prints per path: the median rate of each, the ratio to the
# floor, and the CPU each request costs (µs), the service's beyond the floor's. All traffic
# stays on loopback.
#
#   bash bench/floor.sh
#
# Writes bench/results/floor.md; progress goes to stderr.
#
# Env overrides: ROUNDS (3), DURATION (10), CONNECTIONS (50), BACKENDS ("sqlite postgres
# postgres2"),
# PATHS ("sync-1000 sync-1 async-1000"), PG_ADMIN_URL
# (postgres://postgres@127.0.0.1:5432/postgres), PG_EXTRA (appended to the service's
# PostgreSQL URL, e.g. "?sslmode=disable"; empty: what a plain postgres:// URL gives), RESULTS
# (the summary's file, bench/results/floor.md). The target postgres-notls (add it to
# BACKENDS) is postgres with TLS turned off, for what TLS on loopback costs side by side.
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly LIB="$ROOT/bench/lib"
RESULTS_FILE="${RESULTS:-$ROOT/bench/results/floor.md}"
readonly BIN="$ROOT/target/release/syncasync"
readonly FLOOR="$ROOT/bench/floor/target/release/syncasync-floor"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-50}"
BACKENDS="${BACKENDS:-sqlite postgres postgres2}"
PATHS="${PATHS:-sync-1000 sync-1 async-1000}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_EXTRA="${PG_EXTRA:-}"
ITERATIONS=1000 # run_load's

tmp_dir="$(mktemp -d)"
# shellcheck source=bench/lib/common.sh
source "$LIB/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT

require_uint ROUNDS "$ROUNDS" 1
require_uint DURATION "$DURATION" 1
require_uint CONNECTIONS "$CONNECTIONS" 2
ensure_wrk

# CPU seconds (user + system) processes PID… have used together.
cpu_of() {
    local pid
    for pid in "$@"; do cat "/proc/$pid/stat"; done |
        awk -v tck="$(getconf CLK_TCK)" '{ total += $14 + $15 } END { print total / tck }'
}

# CPU seconds every PostgreSQL process has used (0 without any).
pg_cpu() {
    local total=0 pid
    for pid in $(pgrep -x postgres || true); do
        total=$(calc "%.3f" "a + b" "$total" "$(cpu_of "$pid" 2>/dev/null || echo 0)")
    done
    echo "$total"
}

declare -A URL PID
# start_service NAME DATABASE_URL: one instance of the service; appends its URL and pid to
# URL[NAME] and PID[NAME] (a target may be several instances).
start_service() {
    local name="$1" database_url="$2" port
    port="$(free_port)"
    # Default settings, logs included: a line per request, to a file as a journal takes it.
    env -u RUST_LOG APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database_url" \
        APP_CALLBACK_BLOCK_PRIVATE_IPS=false \
        "$BIN" serve >>"$tmp_dir/$name.log" 2>&1 &
    started_pids+=("$!")
    URL[$name]="${URL[$name]:-}${URL[$name]:+ }http://127.0.0.1:$port"
    PID[$name]="${PID[$name]:-}${PID[$name]:+ }$!"
    wait_healthy "http://127.0.0.1:$port" "$name"
}

start_target() {   # NAME
    local name="$1" port
    case "$name" in
        floor)
            port="$(free_port)"
            "$FLOOR" "127.0.0.1:$port" >>"$tmp_dir/floor.log" 2>&1 &
            URL[$name]="http://127.0.0.1:$port"
            PID[$name]=$!
            started_pids+=("$!")
            wait_healthy "${URL[$name]}" "$name"
            ;;
        sqlite) start_service sqlite "sqlite://$tmp_dir/floor.db" ;;
        postgres)
            new_pg_database floor
            start_service postgres "$DATABASE_URL$PG_EXTRA"
            ;;
        postgres-notls)
            new_pg_database notls
            start_service postgres-notls "$DATABASE_URL?sslmode=disable"
            ;;
        postgres2)
            new_pg_database floor2
            start_service postgres2 "$DATABASE_URL$PG_EXTRA"
            start_service postgres2 "$DATABASE_URL$PG_EXTRA"
            ;;
        *) die "unknown target $name" ;;
    esac
}

# measure TARGET PATH ROUND: one run; appends "path target rate server_cpu pg_cpu count".
measure() {
    local target="$1" path="$2" round="$3" name="$1-$2-$3" url before pg_before rate count
    local -a urls pids
    read -ra urls <<<"${URL[$target]}"
    read -ra pids <<<"${PID[$target]}"
    url="${urls[0]}"
    before="$(cpu_of "${pids[@]}")"
    pg_before="$(pg_cpu)"
    case "$path" in
        sync-*)
            wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LIB/post_sync.lua" \
                "$url/sync" -- "${path#sync-}" >"$tmp_dir/$name.txt" 2>&1 || die "wrk failed ($name)"
            rate="$(awk -f "$LIB/wrk_parse.awk" "$tmp_dir/$name.txt" | sed -n 's/^rps=//p')"
            count="$(awk -f "$LIB/wrk_parse.awk" "$tmp_dir/$name.txt" | sed -n 's/^requests=//p')"
            grep -q "Non-2xx" "$tmp_dir/$name.txt" && die "answers other than 2xx ($name)"
            ;;
        async-*)
            local more=()
            for extra in "${urls[@]:1}"; do more+=(--url "$extra"); done
            url="$url" ITERATIONS="${path#async-}" run_load "$name" "${more[@]}" >/dev/null
            read -r rate count < <(python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))["modes"][0]["callbacks"]
print(m["delivered_rps"], m["received"])' "$tmp_dir/$name.json")
            ;;
    esac
    echo "$path $target $rate $(calc "%.3f" "a - b" "$(cpu_of "${pids[@]}")" "$before") \
$(calc "%.3f" "a - b" "$(pg_cpu)" "$pg_before") $count" >>"$tmp_dir/rows"
    log "$name: $rate/s"
}

log "building the release binaries"
cargo build --release --bin syncasync >&2
cargo build --release --manifest-path bench/floor/Cargo.toml >&2

targets=(floor)
for backend in $BACKENDS; do targets+=("$backend"); done
for target in "${targets[@]}"; do start_target "$target"; done

# Both give the same answer to the same work (SPEC §1's test vectors hold for both).
for target in "${targets[@]}"; do
    curl -fsS "${URL[$target]%% *}/sync" -H 'content-type: application/json' \
        -d '{"data":"hello","iterations":1000}' |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["result"]["output_hash"])'
done | sort -u | awk 'END { if (NR != 1) { print "the floor and the service disagree on the work"; exit 1 } }' ||
    die "the floor's work differs from the service's"

for round in $(seq 1 "$ROUNDS"); do
    for path in $PATHS; do
        for target in "${targets[@]}"; do
            # Two instances on two shared cores are slower than one: only their CPU per job
            # (coordination) is measured, on the async paths, where they share the queue.
            [[ "$target" == postgres2 && "$path" != async-* ]] && continue
            measure "$target" "$path" "$round"
        done
    done
done

python3 - "$tmp_dir/rows" "$RESULTS_FILE" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$PG_EXTRA" <<'EOF'
import statistics, sys
rows_file, out, rounds, duration, connections, pg_extra = sys.argv[1:]
runs = {}
for line in open(rows_file):
    path, target, rate, cpu, pg, count = line.split()
    runs.setdefault((path, target), []).append(
        (float(rate), float(cpu), float(pg), max(int(float(count)), 1)))

def median(values):
    return statistics.median(values)

paths = list(dict.fromkeys(p for p, _ in runs))
targets = [t for t in ("floor", "sqlite", "postgres", "postgres-notls", "postgres2")
           if any(t == k[1] for k in runs)]
lines = [
    "# What the service adds to the work: syncasync against the floor",
    "",
    f"`bash bench/floor.sh`: {rounds} rounds alternating, {duration} s each, {connections} "
    "connections (wrk for sync, loadgen's closed loop for async), default settings; the "
    "floor is bench/floor (no database, no logs; the service logs a line per request, "
    "its default). Medians of the rounds. CPU is the server process's "
    "user + system time per request (async: per delivered callback); PostgreSQL's is every "
    f"postgres process's. PostgreSQL URL suffix: `{pg_extra or '(none: a plain postgres:// URL)'}`.",
    "",
    "| path | floor /s | service | /s | ratio | floor CPU µs | service CPU µs | beyond the floor µs | PostgreSQL CPU µs |",
    "|---|---|---|---|---|---|---|---|---|",
]
for path in paths:
    floor = runs.get((path, "floor"))
    floor_rate = median([r for r, *_ in floor]) if floor else None
    floor_cpu = median([c / n * 1e6 for _, c, _, n in floor]) if floor else None
    for target in targets[1:]:
        mine = runs.get((path, target))
        if not mine:
            continue
        rate = median([r for r, *_ in mine])
        cpu = median([c / n * 1e6 for _, c, _, n in mine])
        pg = median([p / n * 1e6 for _, _, p, n in mine]) if target.startswith("postgres") else None
        lines.append(
            f"| {path} | {floor_rate:,.0f} | {target} | {rate:,.0f} | "
            f"{rate / floor_rate:.2f} | {floor_cpu:.0f} | {cpu:.0f} | {cpu - floor_cpu:.0f} | "
            f"{'' if pg is None else f'{pg:.0f}'} |")
if ("async-1000", "sqlite") in runs and ("async-1000", "postgres") in runs:
    sqlite = median([r for r, *_ in runs[("async-1000", "sqlite")]])
    postgres = median([r for r, *_ in runs[("async-1000", "postgres")]])
    lines += ["", f"PostgreSQL ÷ SQLite, async delivered/s: {postgres / sqlite:.2f}"]
for path in paths:
    one, two = runs.get((path, "postgres")), runs.get((path, "postgres2"))
    if one and two:
        per_job = lambda rows: median([c / n * 1e6 for _, c, _, n in rows])
        pg_per_job = lambda rows: median([p / n * 1e6 for _, _, p, n in rows])
        lines += ["", f"Coordination cost of a second instance ({path}, service CPU per job, "
                  f"two instances ÷ one): {per_job(two) / per_job(one):.2f}; PostgreSQL's CPU "
                  f"per job, two ÷ one: {pg_per_job(two) / pg_per_job(one):.2f}"]
lines += ["", "Each run (path, target, rate/s, server CPU s, PostgreSQL CPU s, requests):", "",
          "```"] + [l.rstrip() for l in open(rows_file)] + ["```", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
