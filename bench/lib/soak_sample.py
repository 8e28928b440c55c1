#!/usr/bin/env python3
"""Samples a running syncasync instance every INTERVAL seconds until killed, one CSV row each:

    python3 bench/lib/soak_sample.py BASE_URL PID OUT.csv [INTERVAL] [DATABASE_URL]

Columns: elapsed seconds; the process's resident memory (MiB) and CPU seconds; /healthz status;
queue size; finished requests stored (from the request list's total); over the interval just
ended, POST /async answers per second and their p50/p99 latency, callbacks delivered per
second and their p50/p99 time to callback (from the /metrics histograms: interpolated within a
bucket); the database's size on disk (MiB); and the memory SQLite holds in the process (MiB, its
page caches: part of the resident memory, 0 on PostgreSQL).
"""
import csv
import os
import re
import sys
import time
import urllib.request

LINE = re.compile(r'^(\w+)(?:\{(.*)\})?\s+([0-9.eE+-]+|\+Inf|NaN)')


def metrics(base):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def buckets(m, name, **want):
    rows = [(float(l["le"]), v) for l, v in m.get(name + "_bucket", [])
            if all(l.get(k) == v2 for k, v2 in want.items())]
    merged = {}
    for le, v in rows:
        merged[le] = merged.get(le, 0) + v
    return sorted(merged.items())


def quantile(now, before, q):
    before = dict(before)
    delta = [(le, v - before.get(le, 0)) for le, v in now]
    if not delta or delta[-1][1] <= 0:
        return float("nan")
    rank, prev_le, prev_n = q * delta[-1][1], 0.0, 0.0
    for le, n in delta:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            span = n - prev_n
            frac = (rank - prev_n) / span if span > 0 else 1.0
            return (prev_le + (le - prev_le) * frac) * 1000
        prev_le, prev_n = le, n
    return float("nan")


def total(m, name, **want):
    return sum(v for l, v in m.get(name, []) if all(l.get(k) == v2 for k, v2 in want.items()))


def rss_and_cpu(pid):
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, cpu


def database_size(url):
    if url.startswith("sqlite:"):
        path = url.split("://", 1)[-1].split("?", 1)[0]
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)) / 2**20
    import subprocess
    out = subprocess.run(["psql", url, "-Atc", "SELECT pg_database_size(current_database())"],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0) / 2**20


def main():
    base, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    database = sys.argv[5] if len(sys.argv) > 5 else ""
    started = time.time()
    before = metrics(base)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["elapsed_s", "rss_mib", "cpu_s", "health", "queue_size", "stored",
                    "async_per_s", "async_p50_ms", "async_p99_ms", "delivered_per_s",
                    "callback_p50_ms", "callback_p99_ms", "database_mib", "engine_mib"])
        while True:
            time.sleep(interval)
            try:
                now = metrics(base)
                health = urllib.request.urlopen(base + "/healthz", timeout=10)
                import json
                report = json.load(health)
                stored = json.load(urllib.request.urlopen(base + "/requests?limit=1", timeout=10))["total"]
                rss, cpu = rss_and_cpu(pid)
            except Exception as err:  # the service stopping ends the sampling
                print(f"sampling stopped: {err}", file=sys.stderr)
                return
            acc = dict(method="POST", endpoint="/async")
            answered = total(now, "syncasync_http_request_duration_seconds_count", **acc) - \
                total(before, "syncasync_http_request_duration_seconds_count", **acc)
            delivered = total(now, "syncasync_callback_delivery_seconds_count") - \
                total(before, "syncasync_callback_delivery_seconds_count")
            req_now = buckets(now, "syncasync_http_request_duration_seconds", **acc)
            req_before = buckets(before, "syncasync_http_request_duration_seconds", **acc)
            cb_now = buckets(now, "syncasync_callback_delivery_seconds")
            cb_before = buckets(before, "syncasync_callback_delivery_seconds")
            w.writerow([round(time.time() - started), round(rss, 1), round(cpu, 1),
                        report["status"], report["queue_size"], stored,
                        round(answered / interval), round(quantile(req_now, req_before, 0.5), 2),
                        round(quantile(req_now, req_before, 0.99), 2), round(delivered / interval),
                        round(quantile(cb_now, cb_before, 0.5), 2),
                        round(quantile(cb_now, cb_before, 0.99), 2),
                        round(database_size(database), 1) if database else "",
                        round(total(now, "syncasync_db_engine_memory_bytes") / 2**20, 1)])
            f.flush()
            before = now


if __name__ == "__main__":
    main()
