#!/usr/bin/env python3
"""The hottest lines of an `ncu --page source --csv` dump by warp-stall samples (scripts/ncu_source.sh)."""
import csv
import sys

with open(sys.argv[1], newline="", errors="replace") as f:
    lines = [l for l in f if l.strip()]
start = next((i for i, l in enumerate(lines) if "Source" in l or "Address" in l), 0)
rows = list(csv.DictReader(lines[start:]))
if not rows:
    sys.exit("no rows")
cols = list(rows[0].keys())
print("columns:", cols)
samp = next((c for c in cols if "Sampling" in c and "All" in c), None) or next((c for c in cols if "Sampl" in c), None)
if samp is None:
    sys.exit("no sampling column")


def num(v):
    try:
        return float(str(v).replace(",", ""))
    except ValueError:
        return 0.0


tot = sum(num(r[samp]) for r in rows) or 1.0
src = next((c for c in cols if c in ("Source", "# Source")), cols[0])
print(f"total samples {tot:.0f} ({samp})")
for r in sorted(rows, key=lambda r: -num(r[samp]))[:30]:
    print(f"{100 * num(r[samp]) / tot:5.1f}%  {str(r.get(src, ''))[:150]}")
