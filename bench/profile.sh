#!/usr/bin/env bash
# profile.sh: where the CPU goes while one path of bench/floor.sh runs against the service.
# Starts the service (release build, default settings) on BACKEND, drives PATH with the
# same load as floor.sh, records every CPU with perf in the middle of the run, and prints
# the service's CPU per request by kind of thread (from /proc over the same 12 s), then flat
# profiles: by process, then for the service and for PostgreSQL by library and by symbol.
# All traffic stays on loopback.
#
#   bash bench/profile.sh sqlite sync-1
#   bash bench/profile.sh postgres async-1000
#
# PATH is sync-N (wrk, POST /sync iterations=N) or async-N (loadgen's closed loop).
# Env overrides: DURATION (20, the load's length, at least 20: the threads' CPU is read from
# 2 s to 6 s, perf records the next 12 s),
# CONNECTIONS (50), TOP (25 symbols), PG_ADMIN_URL, PG_EXTRA (as in floor.sh), SERVICE_LOG
# (the service's RUST_LOG: `info`, its default and floor.sh's, logs a line per request).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT="$PWD"
readonly LIB="$ROOT/bench/lib"
readonly BIN="$ROOT/target/release/syncasync"

BACKEND="${1:-}"
LOAD="${2:-}"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-50}"
readonly TICKS_SECONDS=4
TOP="${TOP:-25}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_EXTRA="${PG_EXTRA:-}"
SERVICE_LOG="${SERVICE_LOG:-info}"

tmp_dir="$(mktemp -d)"
# shellcheck source=bench/lib/common.sh
source "$LIB/common.sh"
trap cleanup_on_exit EXIT
trap 'exit 130' INT

case "$BACKEND" in sqlite | postgres) ;; *) die "usage: profile.sh sqlite|postgres sync-N|async-N" ;; esac
case "$LOAD" in sync-[0-9]* | async-[0-9]*) ;; *) die "usage: profile.sh sqlite|postgres sync-N|async-N" ;; esac
require_uint DURATION "$DURATION" 20
require_uint CONNECTIONS "$CONNECTIONS" 2
command -v perf >/dev/null || die "perf is not installed (Debian: linux-perf)"
ensure_wrk

log "building the release binary"
cargo build --release --bin syncasync >&2

port="$(free_port)"
url="http://127.0.0.1:$port"
if [[ "$BACKEND" == postgres ]]; then
    new_pg_database profile
    database_url="$DATABASE_URL$PG_EXTRA"
else
    database_url="sqlite://$tmp_dir/profile.db"
fi
env APP_HOST=127.0.0.1 APP_PORT="$port" APP_DATABASE_URL="$database_url" \
    APP_CALLBACK_BLOCK_PRIVATE_IPS=false RUST_LOG="$SERVICE_LOG" \
    "$BIN" serve >>"$tmp_dir/server.log" 2>&1 &
service_pid=$!
started_pids+=("$service_pid")
wait_healthy "$url" "$BACKEND"

case "$LOAD" in
    sync-*)
        wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$LIB/post_sync.lua" "$url/sync" -- \
            "${LOAD#sync-}" >"$tmp_dir/load.txt" 2>&1 &
        ;;
    async-*)
        (url="$url" ITERATIONS="${LOAD#async-}" DURATION="$DURATION" run_load profile >/dev/null) &
        ;;
esac
load_pid=$!

# The service's CPU time by kind of thread (its name less a trailing number), in clock ticks.
thread_ticks() {
    local task
    for task in /proc/"$service_pid"/task/*; do
        printf '%s %s\n' "$(sed 's/-[0-9]*$//' "$task/comm")" "$(awk '{print $14 + $15}' "$task/stat")"
    done | awk '{ticks[$1] += $2} END {for (kind in ticks) print kind, ticks[kind]}' | sort
}

# What the service has done so far, from its metrics: sync requests answered, or async
# callbacks delivered.
served() {
    case "$LOAD" in
        sync-*) curl -fsS "$url/metrics" | awk '/^syncasync_http_requests_total\{.*endpoint="\/sync"/ {n += $NF} END {print n + 0}' ;;
        async-*) curl -fsS "$url/metrics" | awk '/^syncasync_callback_delivery_seconds_count/ {n += $NF} END {print n + 0}' ;;
    esac
}

# The threads' CPU is read over 4 s before perf starts: its sampling adds about a fifth.
sleep 2
thread_ticks >"$tmp_dir/ticks.before"
served_before="$(served)"
sleep "$TICKS_SECONDS"
thread_ticks >"$tmp_dir/ticks.after"
served_after="$(served)"
log "recording 12 s"
perf record -a -F 499 -o "$tmp_dir/perf.data" -- sleep 12 2>"$tmp_dir/perf.log" >/dev/null
wait "$load_pid" || die "the load failed: $(cat "$tmp_dir/load.txt" 2>/dev/null)"
served=$((served_after - served_before))
((served > 0)) || die "the service served nothing in the $TICKS_SECONDS s measured"
echo "requests/s before perf: $((served / TICKS_SECONDS)) (async: callbacks delivered/s)"
echo "## The service's CPU per request by thread, µs (the $TICKS_SECONDS s before perf)"
join "$tmp_dir/ticks.before" "$tmp_dir/ticks.after" |
    awk -v hz="$(getconf CLK_TCK)" -v n="$served" '
        { us = ($3 - $2) * 1e6 / hz / n; total += us; if (us >= 0.05) printf "%-18s %7.1f\n", $1, us }
        END { printf "%-18s %7.1f\n", "total", total }'

report() { perf report -i "$tmp_dir/perf.data" --no-children --stdio --percent-limit 0.5 "$@" 2>/dev/null |
    grep -v '^#' | grep -v '^$' | grep -v '^ *|' | grep -v -- '---' | head -n "$TOP"; }
echo "## By process and thread (the service is pid $service_pid)"
report --sort pid,comm
echo "## The service, by library"
report --sort dso --pid "$service_pid"
echo "## The service, by symbol"
report --sort sym --pid "$service_pid"
if [[ "$BACKEND" == postgres ]]; then
    echo "## PostgreSQL, by library and symbol"
    report --sort dso,sym --comms postgres
fi
