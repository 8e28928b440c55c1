# Parses the text report of `wrk --latency` into `key=value` lines, times in milliseconds:
#   requests=N rps=X p50_ms=X p75_ms=X p90_ms=X p99_ms=X non2xx=N
#   sock_connect=N sock_read=N sock_write=N sock_timeout=N
# A key wrk did not print (no --latency, no requests) is left out; the caller checks.
# Usage: awk -f wrk_parse.awk wrk-output.txt

# "2.86ms" -> 2.86 ; wrk's units are us, ms, s, m, h (see wrk's src/units.c).
function to_ms(v,    n, u) {
    if (!match(v, /^[0-9]+(\.[0-9]+)?/)) return ""
    n = substr(v, 1, RLENGTH) + 0
    u = substr(v, RLENGTH + 1)
    if (u == "us") return n / 1000
    if (u == "ms") return n
    if (u == "s")  return n * 1000
    if (u == "m")  return n * 60000
    if (u == "h")  return n * 3600000
    return ""
}

BEGIN { in_dist = 0; non2xx = 0 }

/^[[:space:]]*Latency Distribution/ { in_dist = 1; next }

in_dist && $1 ~ /^[0-9.]+%$/ {
    p = $1; sub(/%$/, "", p); p = p + 0
    ms = to_ms($2)
    if (ms != "") printf "p%d_ms=%.3f\n", p, ms
    next
}
in_dist { in_dist = 0 }

# "  6125 requests in 3.10s, 2.89MB read"
$2 == "requests" && $3 == "in" { printf "requests=%d\n", $1 }

# "  Non-2xx or 3xx responses: 9095"
/Non-2xx or 3xx responses:/ { non2xx = $NF + 0 }

# "  Socket errors: connect 0, read 12, write 0, timeout 3"
/Socket errors:/ {
    line = $0
    sub(/.*Socket errors:[[:space:]]*/, "", line)
    n = split(line, parts, /,[[:space:]]*/)
    for (i = 1; i <= n; i++) {
        split(parts[i], kv, /[[:space:]]+/)
        printf "sock_%s=%d\n", kv[1], kv[2]
    }
}

/^Requests\/sec:/ { printf "rps=%.2f\n", $2 }

END { printf "non2xx=%d\n", non2xx }
