#!/usr/bin/env bash
# Lean device call for kernel work (one device call; needs `scripts/gpu_check.sh --stage` here first
# and carry [".device"]):
#   scripts/gpu_dev.sh 'GTEST_FILTER' [dsa_gpu_bench args...]
# Builds only dsa_gpu_tests and dsa_gpu_bench (sm_90a SASS + compute_80 PTX), prints ptxas resource
# usage of the CUDA kernels, runs the filtered GPU tests, then the bench with the given args
# (nothing when no args). Logs under $OUT.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${DSA_DEVICE_DIR:-$ROOT/.device}   # helpers running from .wt/<name> point this at the repo's .device
OUT=${OUT:-$ROOT/out/gpu_dev}
mkdir -p "$OUT"
FILTER=${1:-'GpuOps.*'}; shift || true
S=$DEV/sysroot/usr
export PKG_CONFIG_PATH=$S/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
B=$ROOT/build-gpu
t0=$SECONDS
cmake -S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80-virtual;90a-real" \
  -DCMAKE_PREFIX_PATH="$S" -DDSA_GPU_SHARED_DIR="$DEV/shared" > "$OUT/build.log" 2>&1 \
  && ninja -C "$B" -j"$(nproc)" dsa_gpu_tests dsa_gpu_bench dsa_gpu_gemm_bench >> "$OUT/build.log" 2>&1
rc=$?
echo "== build rc=$rc in $((SECONDS - t0)) s"
if [[ $rc != 0 ]]; then tail -40 "$OUT/build.log"; exit 1; fi
cuobjdump -res-usage "$B/libdsa_lib.a" 2>&1 | grep -A1 "Function" | grep -v "^--" | paste - - \
  | sed -E 's/.*Function ([^ :]+).*REG:([0-9]+).*SHARED:([0-9]+).*/\1 REG:\2 SHARED:\3/' | grep -v "^$" > "$OUT/res_usage.txt"
echo "== $(wc -l < "$OUT/res_usage.txt") kernels (resource usage in res_usage.txt)"
t0=$SECONDS
timeout 200 "$B/tests/gpu/dsa_gpu_tests" --gtest_filter="$FILTER" > "$OUT/tests.log" 2>&1
echo "== tests rc=$? in $((SECONDS - t0)) s: $(grep -c '^\[       OK' "$OUT/tests.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests.log") failed lines"
grep -E "^\[  FAILED|Failure|Expected|Which is|error" "$OUT/tests.log" | head -30
if (( $# > 0 )); then
  t0=$SECONDS
  timeout 240 "$B/bench/gpu/dsa_gpu_bench" "$@" > "$OUT/bench.log" 2>&1
  echo "== bench rc=$? in $((SECONDS - t0)) s"
  grep -E "^\|" "$OUT/bench.log" | tail -40
fi
