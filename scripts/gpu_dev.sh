#!/usr/bin/env bash
# Lean device call for kernel work (one device call; needs `scripts/gpu_check.sh --stage` here first
# and carry [".device"]):
#   scripts/gpu_dev.sh 'GTEST_FILTER' [dsa_gpu_bench args...]
# Builds through `gpu_check.sh --stages build` (same configuration, ptxas usage in its logs), runs the
# filtered GPU tests, then the bench with the given args (nothing when no args).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FILTER=${1:-'GpuOps.*'}; shift || true
OUT=${OUT:-$ROOT/out/gpu_dev}
mkdir -p "$OUT"
OUT=$OUT bash "$ROOT/scripts/gpu_check.sh" --stages build | tail -4 || exit 1
B=$ROOT/build-gpu
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
