#!/usr/bin/env bash
# Nsight Compute source-level profile of one kernel launch: where its warps stall, per SASS line (with the CUDA
# line from -lineinfo). Usage: scripts/ncu_source.sh OUTDIR NAME KERNEL_REGEX SKIP -- BENCH ARGS...
#   e.g. scripts/ncu_source.sh $OUT pv 'mqa_pv_kernel' 11 -- build-gpu/bench/gpu/dsa_gpu_bench --only layer --batches 1 --ctxs 131072
# Writes OUTDIR/NAME.ncu-rep, OUTDIR/NAME.src.csv (source page) and OUTDIR/NAME.top.txt (the 30 hottest lines).
set -uo pipefail
out=$1 name=$2 re=$3 skip=$4
shift 5
ncu --clock-control none --set full --import-source yes -k "regex:$re" -s "$skip" -c 1 -f -o "$out/$name" "$@" > "$out/$name.log" 2>&1
ncu -i "$out/$name.ncu-rep" --page source --csv --print-source cuda,sass > "$out/$name.src.csv" 2>> "$out/$name.log" \
  || ncu -i "$out/$name.ncu-rep" --page source --csv > "$out/$name.src.csv" 2>> "$out/$name.log"
python3 "$(dirname "$0")/ncu_hot_lines.py" "$out/$name.src.csv" > "$out/$name.top.txt" 2>&1
ncu -i "$out/$name.ncu-rep" --page details --section WarpStateStats --section SpeedOfLight >> "$out/$name.top.txt" 2>&1
