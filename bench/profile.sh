#!/usr/bin/env bash
# profile.sh: where the CPU goes while one path of bench/floor.sh runs against the service.
# Starts the service (release build, default settings) on BACKEND, drives PATH with the
# same load as floor.sh, records every CPU with perf in the middle of the run, and prints
# flat profiles: by process, then for the service and for PostgreSQL by library and by
# symbol. All traffic stays on loopback.
#
#   bash bench/profile.sh sqlite sync-1
#   bash bench/profile.sh postgres async-1000
#
# PATH is sync-N (wrk, POST /sync iterations=N) or async-N (loadgen's closed loop).
# Env overrides: DURATION (20, the load's length; perf records the middle 12 s),
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
require_uint DURATION "$DURATION" 16
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
sleep $(((DURATION - 12) / 2))
log "recording 12 s"
perf record -a -F 499 -o "$tmp_dir/perf.data" -- sleep 12 2>"$tmp_dir/perf.log" >/dev/null
wait "$load_pid" || die "the load failed: $(cat "$tmp_dir/load.txt" 2>/dev/null)"
[[ -f "$tmp_dir/load.txt" ]] && awk -f "$LIB/wrk_parse.awk" "$tmp_dir/load.txt" | sed -n 's/^rps=/requests\/s: /p'

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
