#!/usr/bin/env bash
# pg_narrow_queue.sh: what PostgreSQL would spend on an async job if the queue's moving parts
# (due time, lease, the stored result) lived in a narrow table of their own, against the
# wide request row the service rewrites three times today (bench/results/pg-writes.md). A
# what-if of the writes alone, without the service: two databases migrated with the
# service's migrations, one given the narrow table (bench/lib/pg_narrow_queue/), and pgbench
# running each design's writes for groups of 20 jobs (one commit a write, as the service's
# group commits do), the two alternating. Prints jobs/s and PostgreSQL's CPU per job
# (its processes' CPU time, from /proc, over the middle of each run). Loopback only.
#
#   bash bench/pg_narrow_queue.sh
#
# Env: PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres), ROUNDS (3), DURATION (20),
# CLIENTS (4, pgbench's connections), HISTORY (0: finished requests written to both first).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly SCRIPTS="$ROOT/bench/lib/pg_narrow_queue"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-20}"
CLIENTS="${CLIENTS:-4}"
HISTORY="${HISTORY:-0}"

tmp_dir="$(mktemp -d)"
# shellcheck source=bench/lib/common.sh
source "$ROOT/bench/lib/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT

require_uint ROUNDS "$ROUNDS" 1
require_uint DURATION "$DURATION" 6
require_uint CLIENTS "$CLIENTS" 1
require_uint HISTORY "$HISTORY" 0
command -v pgbench >/dev/null || die "pgbench is not installed (Debian: postgresql-client)"

for design in wide narrow; do
    new_pg_database "$design"
    printf -v "DB_$design" '%s' "$DATABASE_URL"
    for migration in "$ROOT"/migrations/postgres/*.sql; do
        psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -f "$migration" >/dev/null
    done
    if ((HISTORY > 0)); then
        log "$design: writing $HISTORY finished requests"
        python3 "$ROOT/bench/lib/history.py" "$DATABASE_URL" "$HISTORY" >/dev/null
    fi
    if [[ "$design" == narrow ]]; then
        psql -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -f "$SCRIPTS/narrow_schema.sql" >/dev/null
    fi
    psql -q "$DATABASE_URL" -c "VACUUM ANALYZE" >/dev/null
done

# PostgreSQL's CPU so far, in clock ticks: every process of the server (its backends, the
# WAL writer, the checkpointer, autovacuum).
pg_ticks() {
    local stat sum=0
    for stat in /proc/[0-9]*/stat; do
        read -r -a fields <"$stat" 2>/dev/null || continue
        [[ "${fields[1]}" == "(postgres)" ]] && sum=$((sum + fields[13] + fields[14]))
    done
    echo "$sum"
}

hz="$(getconf CLK_TCK)"
run() {
    local design="$1" round="$2" db_var="DB_$1" before after
    pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" -f "$SCRIPTS/$design.sql" "${!db_var}" \
        >"$tmp_dir/$design-$round.txt" 2>&1 &
    local pid=$!
    sleep 2
    before="$(pg_ticks)"
    sleep "$((DURATION - 4))"
    after="$(pg_ticks)"
    wait "$pid" || die "pgbench failed ($design): $(tail -5 "$tmp_dir/$design-$round.txt")"
    local tps jobs cpu_us
    tps="$(awk '/^tps = / {print $3; exit}' "$tmp_dir/$design-$round.txt")"
    jobs="$(awk -v t="$tps" 'BEGIN { printf "%.0f", t * 20 }')"
    cpu_us="$(awk -v b="$before" -v a="$after" -v h="$hz" -v s="$((DURATION - 4))" -v j="$jobs" \
        'BEGIN { printf "%.1f", (a - b) * 1e6 / h / (s * j) }')"
    echo "$design $round $jobs $cpu_us" >>"$tmp_dir/runs"
    log "$design, round $round: $jobs jobs/s, PostgreSQL $cpu_us µs a job"
}

for round in $(seq 1 "$ROUNDS"); do
    if ((round % 2)); then order="wide narrow"; else order="narrow wide"; fi
    for design in $order; do run "$design" "$round"; done
done

python3 - "$tmp_dir/runs" "$ROUNDS" "$DURATION" "$CLIENTS" "$HISTORY" <<'PY'
import statistics, sys
path, rounds, duration, clients, history = sys.argv[1:]
runs = {}
for line in open(path):
    design, _, jobs, cpu = line.split()
    runs.setdefault(design, []).append((float(jobs), float(cpu)))
print(f"pgbench, {clients} clients, {rounds} rounds of {duration} s alternating, groups of 20 jobs, "
      f"{int(history):,} finished requests stored first; medians:\n")
print("| design | jobs/s (each run) | PostgreSQL CPU a job |")
print("|---|---|---|")
for design in ("wide", "narrow"):
    rs = runs[design]
    print(f"| {design} | {statistics.median(r[0] for r in rs):,.0f} ({', '.join(f'{r[0]:,.0f}' for r in rs)}) | "
          f"{statistics.median(r[1] for r in rs):.0f} µs |")
wide, narrow = runs["wide"], runs["narrow"]
print(f"\nnarrow ÷ wide: jobs/s {statistics.median(r[0] for r in narrow) / statistics.median(r[0] for r in wide):.2f}, "
      f"CPU a job {statistics.median(r[1] for r in narrow) / statistics.median(r[1] for r in wide):.2f}")
PY
