#!/usr/bin/env bash
# Checks wrk_parse.awk against captured wrk outputs (testdata/*.txt -> *.expected),
# with every awk found (gawk, mawk, the default awk).
#   bash bench/lib/test_wrk_parse.sh
set -euo pipefail
cd "$(dirname "$0")"

passed=0 failed=0
for awk_bin in awk gawk mawk; do
    command -v "$awk_bin" >/dev/null 2>&1 || continue
    for input in testdata/*.txt; do
        expected="${input%.txt}.expected"
        if diff -u "$expected" <("$awk_bin" -f wrk_parse.awk "$input"); then
            passed=$((passed + 1))
        else
            echo "FAIL: $awk_bin on $input" >&2
            failed=$((failed + 1))
        fi
    done
done
echo "$passed passed, $failed failed"
(( failed == 0 ))
