#!/usr/bin/env bash
# GPU check of the CUDA backend, in one device call.
#
#   scripts/gpu_check.sh --stage     here (no GPU): copy what the device machine lacks into .device/
#                                    (git-ignored): the dsa-mini model, the dev data, and a small
#                                    sysroot with GoogleTest, nlohmann_json, PCRE2 and Google
#                                    Benchmark headers/libraries. Then call the device tool with
#                                    carry [".device"].
#   scripts/gpu_check.sh [--quick] [--no-ppl] [--no-sanitizer]
#                                    on the device: build with CUDA (80-virtual;90a-real, all cores),
#                                    run the GPU tests (native, then the compute_80 PTX path forced
#                                    with CUDA_FORCE_PTX_JIT=1), compute-sanitizer memcheck/racecheck
#                                    on the kernel tests, the benchmarks, dsa-mini perplexity on the
#                                    GPU; logs under $OUT; a short table at the end.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=$ROOT/.device

if [[ "${1:-}" == "--stage" ]]; then
  SHARED=${DSA_SHARED:-$ROOT/../shared}
  mkdir -p "$DEV/shared/models" "$DEV/shared/data"
  rm -rf "$DEV/shared/models/dsa-mini" "$DEV/shared/data/dev"
  cp -r "$SHARED/models/dsa-mini" "$DEV/shared/models/"
  cp -r "$SHARED/data/dev" "$DEV/shared/data/"
  chmod -R u+w "$DEV/shared"
  S=$DEV/sysroot/usr
  A=lib/x86_64-linux-gnu
  rm -rf "$DEV/sysroot"
  mkdir -p "$S/include" "$S/$A/cmake" "$S/$A/pkgconfig" "$S/share/cmake"
  cp -r /usr/include/gtest /usr/include/gmock /usr/include/nlohmann /usr/include/benchmark /usr/include/pcre2.h "$S/include/"
  cp /usr/$A/libgtest.a /usr/$A/libgtest_main.a /usr/$A/libgmock.a /usr/$A/libgmock_main.a /usr/$A/libpcre2-8.a "$S/$A/"
  cp -P /usr/$A/libbenchmark.so* /usr/$A/libbenchmark_main.a "$S/$A/"
  cp -r /usr/$A/cmake/GTest /usr/$A/cmake/benchmark "$S/$A/cmake/"
  cp -r /usr/share/cmake/nlohmann_json "$S/share/cmake/"
  # PCRE2 through pkg-config, relocated to the sysroot; only the static library is there.
  cat > "$S/$A/pkgconfig/libpcre2-8.pc" <<PC
prefix=\${pcfiledir}/../../..
libdir=\${prefix}/$A
includedir=\${prefix}/include
Name: libpcre2-8
Description: PCRE2 (staged for the device build)
Version: 10.42
Libs: -L\${libdir} -lpcre2-8
Cflags: -I\${includedir}
PC
  du -sh "$DEV"
  exit 0
fi

QUICK=0; PPL=1; SAN=1
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --no-ppl) PPL=0 ;;
    --no-sanitizer) SAN=0 ;;
  esac
done
OUT=${OUT:-$ROOT/out/gpu_check}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET_S:-570}   # stop starting optional stages after this many seconds
declare -a SUMMARY
note() { SUMMARY+=("$1"); echo "== $1"; }
left() { echo $((BUDGET - SECONDS)); }

GPU=$(nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total,driver_version --format=csv,noheader 2>&1)
echo "$GPU"
S=$DEV/sysroot/usr
export PKG_CONFIG_PATH=$S/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
B=$ROOT/build-gpu
t0=$SECONDS
cmake -S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80-virtual;90a-real" \
  -DCMAKE_PREFIX_PATH="$S" -DDSA_GPU_SHARED_DIR="$DEV/shared" > "$OUT/build.log" 2>&1 \
  && ninja -C "$B" -j"$(nproc)" dsa_gpu_tests dsa_gpu_bench dsa >> "$OUT/build.log" 2>&1
rc=$?
note "build: rc=$rc in $((SECONDS - t0)) s"
if [[ $rc == 0 ]] && command -v cuobjdump > /dev/null; then
  { echo "== resource usage"; cuobjdump -res-usage "$B/libdsa_lib.a" 2>&1 | grep -A1 "Function" | grep -v "^--"; } >> "$OUT/build.log"
  note "SASS sm_90a: $(cuobjdump -sass "$B/libdsa_lib.a" 2>/dev/null | grep -c HMMA) HMMA instructions in libdsa_lib"
fi
if [[ $rc != 0 ]]; then
  tail -60 "$OUT/build.log"
  printf '%s\n' "${SUMMARY[@]}"
  exit 1
fi
T=$B/tests/gpu/dsa_gpu_tests

t0=$SECONDS
timeout 240 "$T" > "$OUT/tests.log" 2>&1
rc=$?
note "gpu tests (sm_90a SASS): rc=$rc in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/tests.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests.log") failed lines"
grep -E "^\[  FAILED|Failure|error|\[ (prefill|decode|ppl)" "$OUT/tests.log" | head -40

if (( $(left) > 200 )); then
  t0=$SECONDS
  CUDA_FORCE_PTX_JIT=1 DSA_CUDA_INDEXER_EXACT=1 timeout 120 "$T" --gtest_filter='GpuOps.*' > "$OUT/tests_ptx.log" 2>&1
  rc=$?
  note "gpu op tests, compute_80 PTX forced (CUDA_FORCE_PTX_JIT=1) + exact CUDA-core indexer: rc=$rc in $((SECONDS - t0)) s; $(grep -c '^\[  FAILED' "$OUT/tests_ptx.log") failed lines"
fi

if (( $(left) > 200 )); then
  t0=$SECONDS
  DSA_CUDA_MQA_SIMPLE=1 timeout 60 "$T" --gtest_filter='GpuOps.AttentionMqa*:GpuModel.Greedy*' >> "$OUT/tests_ptx.log" 2>&1
  rc=$?
  note "decode attention on the CUDA-core kernel (DSA_CUDA_MQA_SIMPLE=1): rc=$rc in $((SECONDS - t0)) s"
fi

if [[ $SAN == 1 ]] && (( $(left) > 200 )); then
  t0=$SECONDS
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
    --gtest_filter='GpuOps.*-GpuOps.InvalidInputsRaiseErrors' > "$OUT/sanitizer.log" 2>&1
  rc=$?
  note "compute-sanitizer memcheck (GpuOps): rc=$rc in $((SECONDS - t0)) s; $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer.log")"
  if (( $(left) > 180 )); then
    t0=$SECONDS
    timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 "$T" \
      --gtest_filter='GpuOps.AttentionMqa*:GpuOps.Topk*:GpuOps.IndexerCache*:GpuOps.Linears*' > "$OUT/racecheck.tmp" 2>&1
    rc=$?
    note "compute-sanitizer racecheck (MQA, top-k, indexer, GEMM): rc=$rc in $((SECONDS - t0)) s; $(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/racecheck.tmp")"
    cat "$OUT/racecheck.tmp" >> "$OUT/sanitizer.log"; rm -f "$OUT/racecheck.tmp"
  fi
fi

if (( $(left) > 60 )); then
  t0=$SECONDS
  BQ=""; [[ $QUICK == 1 ]] && BQ=--quick
  timeout $(( $(left) > 240 ? 200 : $(left) - 40 )) "$B/bench/gpu/dsa_gpu_bench" $BQ --md "$OUT/bench.md" > "$OUT/bench.log" 2>&1
  note "bench: rc=$? in $((SECONDS - t0)) s"
fi

if (( $(left) > 90 )); then  # end-to-end decode step latency on dsa-mini (dsa bench: DSA vs dense)
  for bs in 1 8; do
    t0=$SECONDS
    timeout 60 "$B/dsa" bench -m "$DEV/shared/models/dsa-mini" --device cuda --ctx 8000 --steps 16 --batch $bs > "$OUT/e2e.tmp" 2>&1
    note "dsa bench (dsa-mini, cuda, ctx 8000, batch $bs): rc=$? in $((SECONDS - t0)) s: $(grep -v '^\s*$' "$OUT/e2e.tmp" | tail -3 | tr '\n' ';')"
    cat "$OUT/e2e.tmp" >> "$OUT/bench.log"; rm -f "$OUT/e2e.tmp"
  done
fi

if [[ $PPL == 1 ]] && (( $(left) > 90 )); then
  for att in ${PPL_MODES:-dense sparse}; do
    (( $(left) > 60 )) || break
    t0=$SECONDS
    timeout $(( $(left) - 30 )) "$B/dsa" perplexity -m "$DEV/shared/models/dsa-mini" --device cuda --attention $att \
      --manifest "$DEV/shared/data/dev/MANIFEST.txt" --ctx 8192 > "$OUT/ppl.tmp" 2>&1
    note "dsa-mini ppl ctx 8192 on cuda, $att: rc=$? in $((SECONDS - t0)) s: $(grep -m1 '^perplexity' "$OUT/ppl.tmp")"
    cat "$OUT/ppl.tmp" >> "$OUT/ppl.log"; rm -f "$OUT/ppl.tmp"
  done
fi

echo
echo "================ summary ================"
{ echo "$GPU"; printf '%s\n' "${SUMMARY[@]}"; } | tee "$OUT/summary.txt"
[[ -f $OUT/bench.md ]] && cat "$OUT/bench.md"
