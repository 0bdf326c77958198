#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan + UBSan) and fuzz each for a while, one after another.
# Usage: scripts/fuzz.sh [seconds per target = 60] [target ...]   (default: every target)
#   targets: safetensors config tokenizer_load tokenizer_encode chat_encoder output_parser token_ids
# New inputs go to a scratch corpus per target ($BUILD/fuzz-corpus/<target>); the checked-in seeds
# in fuzz/corpus/<target> stay small and stable. A crash leaves its input in $BUILD/fuzz-artifacts/
# and makes the script exit non-zero. Extra libFuzzer flags: DSA_FUZZ_FLAGS="-only_ascii=1 ...".
set -euo pipefail
SECONDS_TO_RUN=${1:-60}
shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${DSA_FUZZ_BUILD:-$ROOT/build-fuzz}
ALL=(safetensors config tokenizer_load tokenizer_encode chat_encoder output_parser token_ids)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DDSA_FUZZ=ON -DDSA_CUDA=OFF -DDSA_TESTS=OFF -DDSA_BENCH=OFF -DDSA_SERVER=OFF \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$BUILD" -j "${JOBS:-$(nproc)}" "${TARGETS[@]/#/fuzz_}" >/dev/null
mkdir -p "$BUILD/fuzz-artifacts"
status=0
for t in "${TARGETS[@]}"; do
  WORK="$BUILD/fuzz-corpus/$t"
  mkdir -p "$WORK"
  DICT=()
  [ -f "$ROOT/fuzz/$t.dict" ] && DICT=(-dict="$ROOT/fuzz/$t.dict")
  echo "== fuzz_$t for ${SECONDS_TO_RUN}s"
  if ! "$BUILD/fuzz/fuzz_$t" "$WORK" "$ROOT/fuzz/corpus/$t" -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -timeout=10 \
      -rss_limit_mb=2048 "${DICT[@]}" \
      -artifact_prefix="$BUILD/fuzz-artifacts/$t-" -print_final_stats=1 ${DSA_FUZZ_FLAGS:-} 2>"$BUILD/fuzz-$t.log"; then
    echo "fuzz_$t: FAILED (the input is in $BUILD/fuzz-artifacts/; the end of $BUILD/fuzz-$t.log:)"
    tail -40 "$BUILD/fuzz-$t.log"
    status=1
  fi
  # Runs, coverage (cov: edges, ft: features), corpus size.
  grep -E "^#[0-9]+.*DONE|^Done" "$BUILD/fuzz-$t.log" | tail -2 || true
  echo "   corpus: $(ls "$WORK" | wc -l) inputs"
done
exit $status
