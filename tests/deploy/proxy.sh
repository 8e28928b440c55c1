#!/usr/bin/env bash
# Runs deploy/nginx.conf as written in front of the service, with a self-signed certificate
# and free loopback ports substituted, and checks through TLS: a sync request, an async
# request and its record, a relative redirect, the dashboard, and the live stream arriving
# unbuffered.
#
#   bash tests/deploy/proxy.sh target/debug/syncasync
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="$(realpath "$1")"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
service_port="$(free_port)"
tls_port="$(free_port)"

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=syncasync.test" \
    -addext "subjectAltName=DNS:syncasync.test" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

APP_HOST=127.0.0.1 APP_PORT="$service_port" APP_DATABASE_URL="sqlite://$work/requests.db" \
    RUST_LOG=warn "$binary" serve 2>"$work/service.log" &
pids+=($!)

# The server block as shipped, with this run's ports, certificate and names.
sed -e "s|server 127.0.0.1:8000;|server 127.0.0.1:$service_port;|" \
    -e "s|listen 443 ssl;|listen 127.0.0.1:$tls_port ssl;|" \
    -e "s|server_name syncasync.example.com;|server_name syncasync.test;|" \
    -e "s|/etc/ssl/certs/syncasync.pem|$work/cert.pem|" \
    -e "s|/etc/ssl/private/syncasync.key|$work/key.pem|" \
    deploy/nginx.conf > "$work/server.conf"
cat > "$work/nginx.conf" <<CONF
daemon on;
pid $work/nginx.pid;
error_log $work/error.log warn;
events {}
http {
    access_log off;
    client_body_temp_path $work/body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/server.conf;
}
CONF
nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"

curl_tls() {
    curl -sS --cacert "$work/cert.pem" --resolve "syncasync.test:$tls_port:127.0.0.1" "$@"
}
base="https://syncasync.test:$tls_port"
for _ in $(seq 1 100); do
    curl_tls -f "$base/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

fail() { echo "proxy check failed: $*"; cat "$work/error.log" "$work/service.log" || true; exit 1; }

sync="$(curl_tls "$base/sync" -H 'content-type: application/json' -d '{"data":"hello world","iterations":1000}')"
echo "$sync" | grep -q '"output_hash":"fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744"' ||
    fail "sync through TLS: $sync"

id="$(curl_tls "$base/async" -H 'content-type: application/json' \
        -d '{"data":"x","callback_url":"https://hooks.example.com/h"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["request_id"])')"
record="$(curl_tls "$base/requests/$id")"
echo "$record" | grep -q "\"id\":\"$id\"" || fail "the async record through TLS: $record"

location="$(curl_tls -o /dev/null -w '%{redirect_url}' -X POST "$base/sync/" \
              -H 'content-type: application/json' -d '{"data":"x"}')"
[ "$location" = "$base/sync" ] || fail "a redirect stays on the proxy's address: $location"

curl_tls -f "$base/ui" | grep -q '<title>' || fail "the dashboard through TLS"

# The live stream: its first event must arrive well before the stream ends (unbuffered).
first_event="$(curl_tls -N --max-time 3 "$base/ui/api/stream" 2>/dev/null | head -c 200 || true)"
echo "$first_event" | grep -q '^event:\|^data:\|^:' || fail "no live event through the proxy: $first_event"

# And the service asks any proxy not to buffer its streams, whatever the proxy's settings.
headers="$(curl -s -D - -o /dev/null --max-time 2 "http://127.0.0.1:$service_port/ui/api/stream" || true)"
echo "$headers" | grep -qi '^x-accel-buffering: no' || fail "the stream does not ask for no buffering: $headers"

echo "deploy/nginx.conf: sync, async, redirect, dashboard and live stream work through TLS"
