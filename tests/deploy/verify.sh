#!/usr/bin/env bash
# Checks deploy/syncasync.service with `systemd-analyze verify`, its ExecStart pointed at the
# binary given (the unit names /usr/local/bin/syncasync, which CI does not install).
#
#   bash tests/deploy/verify.sh target/debug/syncasync
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="$(realpath "$1")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed "s|^ExecStart=/usr/local/bin/syncasync|ExecStart=$binary|" deploy/syncasync.service \
    > "$work/syncasync.service"
# Any warning fails the check: verify prints them and still exits 0 for some.
output="$(systemd-analyze verify "$work/syncasync.service" 2>&1)" || { echo "$output"; exit 1; }
if [ -n "$output" ]; then
    echo "$output"
    exit 1
fi
echo "deploy/syncasync.service: systemd-analyze verify passed"
