#!/usr/bin/env python3
"""The hottest CUDA lines of an `ncu --page source --csv --print-source cuda,sass` dump by warp-stall samples, with
the main stall reasons of each (scripts/ncu_source.sh). The dump holds one section per source file."""
import csv
import sys
from collections import defaultdict


def num(v):
    try:
        return float(str(v).replace(",", ""))
    except ValueError:
        return 0.0


agg = defaultdict(lambda: defaultdict(float))
text = {}
path = "?"
header = None
with open(sys.argv[1], newline="", errors="replace") as f:
    for row in csv.reader(f):
        if not row:
            continue
        if row[0] == "File Path":
            path = row[1].split("/")[-1]
            header = None
            continue
        if row[0] in ("Line No", "Address"):
            header = row
            continue
        if header is None or len(row) != len(header):
            continue
        key = (path, row[0])
        text[key] = row[1].strip()[:110]
        for name, v in zip(header, row):
            if name.startswith("stall_") and "Not Issued" not in name or name == "Warp Stall Sampling (All Samples)":
                agg[key][name] += num(v)
tot = sum(a["Warp Stall Sampling (All Samples)"] for a in agg.values()) or 1.0
print(f"total samples {tot:.0f}")
for key, a in sorted(agg.items(), key=lambda kv: -kv[1]["Warp Stall Sampling (All Samples)"])[:25]:
    s = a["Warp Stall Sampling (All Samples)"]
    if s <= 0:
        break
    top = sorted(((v, n[6:]) for n, v in a.items() if n.startswith("stall_")), reverse=True)[:3]
    reasons = " ".join(f"{n}:{100 * v / s:.0f}%" for v, n in top if v > 0)
    print(f"{100 * s / tot:5.1f}%  {key[0]}:{key[1]:>5}  {text[key]}  [{reasons}]")
