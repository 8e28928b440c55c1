#!/usr/bin/env python3
"""Plots soak samples (bench/lib/soak_sample.py's CSV files) and summarises them:

    python3 bench/lib/soak_plot.py OUT.png NAME=FILE.csv [NAME=FILE.csv ...]

Draws memory, POST /async p99, time-to-callback p99, delivered/s and requests stored over
time, one line per NAME, and prints a markdown table: for each NAME, each measure's median
over the first and over the last fifth of the run, and their ratio.
"""
import csv
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("rss_mib", "resident memory (MiB)"),
    ("engine_mib", "of which SQLite's (MiB)"),
    ("async_p99_ms", "POST /async p99 (ms)"),
    ("callback_p99_ms", "time to callback p99 (ms)"),
    ("delivered_per_s", "callbacks delivered per s"),
    ("stored", "requests stored"),
]


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: (float(v) if k != "health" and v not in ("", "nan") else (v if k == "health" else float("nan")))
             for k, v in row.items()} for row in rows]


def main():
    out = sys.argv[1]
    runs = [arg.split("=", 1) for arg in sys.argv[2:]]
    data = {name: load(path) for name, path in runs}
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(10, 2.6 * len(PANELS)), sharex=True)
    for ax, (key, title) in zip(axes, PANELS):
        for name, rows in data.items():
            ax.plot([r["elapsed_s"] / 60 for r in rows], [r.get(key, float("nan")) for r in rows], label=name)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print("| run | measure | first fifth (median) | last fifth (median) | last ÷ first |")
    print("|---|---|---|---|---|")
    for name, rows in data.items():
        fifth = max(1, len(rows) // 5)
        for key, title in PANELS[:5]:
            def med(part):
                values = [r[key] for r in part if r.get(key, float("nan")) == r.get(key, float("nan"))]
                return statistics.median(values) if values else float("nan")
            first, last = med(rows[:fifth]), med(rows[-fifth:])
            ratio = last / first if first else float("nan")
            print(f"| {name} | {title} | {first:.1f} | {last:.1f} | {ratio:.2f} |")
        unhealthy = sum(1 for r in rows if r["health"] != "healthy")
        print(f"| {name} | samples not `healthy` | | {unhealthy} of {len(rows)} | |")


if __name__ == "__main__":
    main()
