#!/usr/bin/env python3
"""Summarise `ncu --metrics gpu__time_duration.sum --csv` output: per kernel and grid, launches and mean
duration, in launch order of first appearance (scripts/gpu_check.sh --stages profile)."""
import csv
import sys
from collections import OrderedDict

rows = OrderedDict()
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0][:60]
    key = (name, r.get("Grid Size", ""), r.get("Block Size", ""))
    v = float(r["Metric Value"].replace(",", ""))
    unit = r.get("Metric Unit", "ns")
    us = v / 1e3 if unit in ("ns", "nsecond") else v * 1e3 if unit in ("ms", "msecond") else v
    n, tot = rows.get(key, (0, 0.0))
    rows[key] = (n + 1, tot + us)
print(f"{'kernel':60s} {'grid':>16s} {'block':>12s} {'n':>5s} {'mean us':>9s}")
for (name, grid, block), (n, tot) in rows.items():
    print(f"{name:60s} {grid:>16s} {block:>12s} {n:5d} {tot / n:9.2f}")
