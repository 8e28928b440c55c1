# shellcheck shell=bash
# Shared helpers of the benchmark scripts: logging, failing with the server log's tail,
# argument checks, float arithmetic, a free port, and wrk. Sourced, not run; the caller
# sets `server_log` (may be empty).

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    if [[ -n "$server_log" && -s "$server_log" ]]; then
        printf '[bench] last lines of the server log (%s):\n' "$server_log" >&2
        tail -n 20 "$server_log" | sed 's/^/    /' >&2
    fi
    exit 1
}

require_uint() {   # name value min
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (( 10#$2 < $3 )); then
        die "$1 must be an integer >= $3, got '$2'"
    fi
}

# Floating-point helpers (bash has none): calc FORMAT EXPR-over-a-b-c A [B [C]]
calc() { awk -v a="${3:-0}" -v b="${4:-0}" -v c="${5:-0}" "BEGIN { printf \"$1\", $2 }"; }

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    log "wrk not found: installing it with apt-get"
    local -a sudo=()
    if (( EUID != 0 )); then
        command -v sudo >/dev/null 2>&1 || die "wrk is missing and installing it needs root (or sudo)"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y wrk >&2; then
        log "apt-get install failed: running apt-get update and retrying"
        "${sudo[@]}" apt-get update >&2 || die "apt-get update failed"
        "${sudo[@]}" apt-get install -y wrk >&2 || die "apt-get install -y wrk failed"
    fi
    command -v wrk >/dev/null 2>&1 || die "wrk still not on PATH after installing it"
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
        return
    fi
    local p _
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 40000 ))
        if [[ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]]; then
            echo "$p"
            return
        fi
    done
    return 1
}

# wait_healthy BASE_URL [WHAT]: waits up to 10 s for GET /healthz to answer, or dies.
wait_healthy() {
    local _
    for _ in $(seq 1 100); do
        curl -fsS "$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "${2:-the service} at $1 did not answer GET /healthz within 10 s"
}

# stop_server PID: SIGTERM, up to 10 s for a graceful exit, then SIGKILL. PID may be empty.
stop_server() {
    local pid=$1 _
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# print_problems PROBLEM...: the summary's "Problems" list, if there are any.
print_problems() {
    (( $# > 0 )) || return 0
    echo
    echo "**Problems:**"
    printf -- '- %s\n' "$@"
}

# publish_summary SUMMARY RESULTS_FILE: prints the summary and replaces the results file
# (written beside it first, so a failed write never leaves half a file).
publish_summary() {
    cat "$1"
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp"
    mv "$2.tmp" "$2"
    log "summary written to ${2#"$ROOT"/}"
}

# Processes a script starts in the background (`started_pids+=("$!")`) and PostgreSQL
# databases it creates (`new_pg_database`), stopped and dropped by `stop_started` and
# `cleanup_on_exit` (install it with `trap cleanup_on_exit EXIT`), which also removes
# `tmp_dir` unless KEEP_TMP is set.
started_pids=()
created_databases=()

stop_started() {
    local pid
    for pid in "${started_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${started_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    started_pids=()
}

# new_pg_database SUFFIX: creates a database on PG_ADMIN_URL's server and sets DATABASE_URL to
# it (not in a $(…) subshell, so that cleanup_on_exit knows to drop it).
new_pg_database() {
    local name="syncasync_bench_$$_$1"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE \"$name\"" >/dev/null ||
        die "cannot create database $name (is PostgreSQL up?)"
    created_databases+=("$name")
    DATABASE_URL="$(python3 -c 'import sys, urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path="/"+sys.argv[2]).geturl())' "$PG_ADMIN_URL" "$name")"
}

cleanup_on_exit() {
    local rc=$? db
    trap - EXIT
    stop_started
    for db in "${created_databases[@]}"; do
        psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [[ -n "${KEEP_TMP:-}" ]]; then
        log "kept $tmp_dir"
    else
        rm -rf -- "$tmp_dir"
    fi
    exit "$rc"
}

# run_load NAME [loadgen flags…]: one closed-loop async loadgen run of $DURATION seconds with
# $CONNECTIONS connections and $ITERATIONS iterations against $url, from $BIN; its output
# in $tmp_dir/NAME.{json,txt}. Prints the callbacks delivered a second.
run_load() {
    local name="$1"
    shift
    "$BIN" loadgen --url "$url" --mode async --duration "${DURATION}s" -c "$CONNECTIONS" \
        --iterations "$ITERATIONS" --callback-port 0 --no-progress "$@" \
        --json "$tmp_dir/$name.json" >"$tmp_dir/$name.txt" || die "loadgen failed ($name)"
    python3 -c 'import json, sys
m = json.load(open(sys.argv[1]))["modes"][0]
print(round(m["callbacks"]["delivered_rps"]))' "$tmp_dir/$name.json"
}
