#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan + UBSan) and fuzz parse_safetensors.
# Usage: scripts/fuzz.sh [seconds=60] [extra libFuzzer flags...]
set -euo pipefail
SECONDS_TO_RUN=${1:-60}
shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${DSA_FUZZ_BUILD:-$ROOT/build-fuzz}
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DDSA_FUZZ=ON -DDSA_CUDA=OFF -DDSA_TESTS=OFF -DDSA_BENCH=OFF \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$BUILD" fuzz_safetensors
# New inputs go to a scratch corpus; the checked-in seeds in fuzz/corpus stay small and stable.
WORK="$BUILD/fuzz-corpus"
mkdir -p "$WORK" "$BUILD/fuzz-artifacts"
exec "$BUILD/fuzz/fuzz_safetensors" "$WORK" "$ROOT/fuzz/corpus" \
  -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -dict="$ROOT/fuzz/safetensors.dict" -artifact_prefix="$BUILD/fuzz-artifacts/" -print_final_stats=1 "$@"
