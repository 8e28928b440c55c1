#!/usr/bin/env bash
# Fuzzes the running service from its own OpenAPI document with schemathesis: no 500s, no
# response that breaks the document (status, content type, headers, body schema), no crash.
#
# The service and schemathesis run inside a new network namespace whose only interface is
# loopback: generated callback URLs point anywhere, and there they can reach nothing.
#
# Usage: tests/fuzz/schemathesis.sh [BINARY] (default target/debug/syncasync);
# EXAMPLES (default 40) sets examples per operation.
set -euo pipefail
cd "$(dirname "$0")/../.."

binary="${1:-target/debug/syncasync}"
examples="${EXAMPLES:-40}"
[ -x "$binary" ] || { echo "fuzz: $binary not found; build it first (cargo build)" >&2; exit 2; }
command -v schemathesis >/dev/null || { echo "fuzz: schemathesis not installed (pip install schemathesis)" >&2; exit 2; }

if [ "${SYNCASYNC_FUZZ_IN_NETNS:-}" != 1 ]; then
    # Re-run this script in a private network namespace.
    exec unshare --net env SYNCASYNC_FUZZ_IN_NETNS=1 bash "$0" "$@"
fi
ip link set lo up

work="$(mktemp -d)"
server_pid=""
receiver_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null && wait "$receiver_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=18765
# Both tokens set (to one value, sent on every request): schemathesis then also checks that
# every operation the document marks as protected refuses a request without its token.
# Scheduled work at most 30 s ahead: a request's wait (up to 60 s) then ends within the run's
# response-time limit even when the request waits for its schedule (hooks.py knows the bound).
# Loopback callbacks are allowed, as the README's Try it allows them: the document's examples
# send theirs to a local `syncasync receiver` (127.0.0.1:8001), which answers them, so that
# the requests schemathesis follows up on end at once instead of waiting on a breaker.
"$binary" receiver --port 8001 >"$work/receiver.log" 2>&1 &
receiver_pid=$!
APP_HOST=127.0.0.1 APP_PORT=$port APP_DATABASE_URL="sqlite://$work/fuzz.db" \
    APP_ADMIN_TOKEN=fuzz-token APP_API_TOKEN=fuzz-token APP_CALLBACK_TIMEOUT_SECONDS=1 APP_CALLBACK_MAX_RETRIES=0 \
    APP_CALLBACK_ALLOWED_HOSTS=127.0.0.1 \
    APP_MAX_SCHEDULE_DELAY_SECONDS=30 \
    RUST_LOG=warn "$binary" serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$work/server.log"; echo "fuzz: the service did not start" >&2; exit 1; }

# The document needs the API token like the rest of the API, and schemathesis sends its
# --header with the test requests only: the document is fetched here and read from a file.
curl -fsS -H "Authorization: Bearer fuzz-token" "http://127.0.0.1:$port/openapi.json" >"$work/openapi.json" ||
    { echo "fuzz: cannot read /openapi.json with the API token" >&2; exit 1; }

status=0
# The binary is CI's debug build, whose work function runs ~25x slower than a release build:
# iterations near the maximum take seconds (about 4 s alone, 10 s beside another), so the
# time limits are for a hung service, not a performance check.
# hooks.py and schemathesis.toml keep idempotency keys unique and waits short (see there).
fuzz() {
    SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$PWD/tests/fuzz${PYTHONPATH:+:$PYTHONPATH}" \
    schemathesis --config-file tests/fuzz/schemathesis.toml run "$work/openapi.json" --url "http://127.0.0.1:$port" \
        --max-examples "$examples" --seed 20261127 --generation-deterministic \
        --header "Authorization: Bearer fuzz-token" \
        --request-timeout 60 --max-response-time 45 --workers 2 \
        --suppress-health-check too_slow \
        --no-color 2>&1 | tee "$work/fuzz.log"
    return "${PIPESTATUS[0]}"
}
fuzz || status=$?
# CPython 3.11's parser can fail inside hypothesis itself when two worker threads describe a
# strategy at once ("AST constructor recursion depth mismatch", a crash of the tool, not a
# finding about the service): then, and only then, the run is made once more.
if [ "$status" -ne 0 ] && grep -q "SystemError: AST constructor recursion depth mismatch" "$work/fuzz.log"; then
    echo "fuzz: schemathesis itself crashed (CPython AST recursion bug); running it again" >&2
    status=0
    fuzz || status=$?
fi

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "fuzz: the service died during the run" >&2
    cat "$work/server.log" >&2
    exit 1
fi
if grep -q "panicked" "$work/server.log"; then
    echo "fuzz: the service panicked" >&2
    grep -A5 "panicked" "$work/server.log" >&2
    exit 1
fi
exit "$status"
