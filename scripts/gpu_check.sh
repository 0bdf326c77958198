#!/usr/bin/env bash
# GPU check of the CUDA backend, in one device call.
#
#   scripts/gpu_check.sh --stage     here (no GPU): copy what the device machine lacks into .device/
#                                    (git-ignored): the dsa-mini model, the dev and warm-up data, and a small
#                                    sysroot with GoogleTest, nlohmann_json, PCRE2, Google Benchmark and
#                                    Debian's cpp-httplib (library + the headers it includes, for dsa serve). Then
#                                    call the device tool with carry [".device"].
#   scripts/gpu_check.sh [--stages LIST|all] [--quick]
#                                    on the device, stages in this order (default: build,tests,ptx,bench,e2e,
#                                    which fits one device call; sanitizer, ppl and real take a second one):
#     build      CUDA build (80-virtual;90a-real, all cores) + ptxas resource usage
#     tests      every GPU test (op tests vs the CPU backend, MLA/indexer/GEMM suites, dsa-mini end to end)
#     ptx        op tests again on the compute_80 PTX (CUDA_FORCE_PTX_JIT=1) + exact indexer, and the
#                dsa-mini greedy test with graphs off / on the CUDA-core attention kernel
#     sanitizer  compute-sanitizer memcheck, synccheck and racecheck over the kernel tests
#     bench      dsa_gpu_bench (per kernel, per-layer decode dense vs DSA) + prefill bench (+ GEMM bench)
#     e2e        dsa bench on dsa-mini (batch 1/8, graphs on/off) and an op profile of a decode step
#     ppl        dsa-mini dev-set perplexity at context 8192 on the GPU, dense and DSA
#                (PPL_MODES="dense sparse:fast ...": attention[:numerics])
#     profile    (not in the default list) Nsight Compute: per-kernel durations of the batch-1 decode chains and
#                full sections of the MLA decode and indexer score kernels (ncu_*.txt in the log archive)
#     gemm       (not in the default list) dsa_gpu_gemm_bench --quick alone (ours, cuBLASLt block-scaled, cuBLASLt plain FP8)
#     train      (not in the default list) indexer training on CUDA: the GpuTrain tests (CUDA vs CPU loss and gradients,
#                dsa-mini train-indexer cuda vs cpu, resume) and the bench: train-indexer on dsa-mini, one 8192-token
#                dense-stage window per step, 3 steps, TF32 and exact fp32, with the per-phase times (~2 min)
#     runtime    (not in the default list) the batched engine's throughput: dsa bench --requests on dsa-mini and
#                the real-scale preset (RUNTIME_CASES="model:in:out:concurrency[:requests[:tags]] ...", model mini|real, tags fast,replay;
#                RUNTIME_EXTRA: more dsa bench options, e.g. --numerics fast)
#     serve      (not in the default list) dsa serve on the device with scripts/serve_load.py on loopback (streaming
#                /v1/completions, token-id prompts, ignore_eos) against dsa bench --requests with the same engine options:
#                output tok/s of both and the server's overhead, TTFT/TPOT p50/p99 (SERVE_CASES="model:in:out:c[:n] ...",
#                model mini|real, n default 4c; default C = 1/8/32/128 on both models at 1K in / 256 out, ~2 min;
#                SERVE_EXTRA: more engine options for both, e.g. --numerics fast; SERVE_SERVER_EXTRA: dsa serve options,
#                e.g. --no-dispatch-thread; then dsa bench again with --client-rtt = the client's turnaround p50 (the
#                schedule the server ran; SERVE_RTT_BENCH=0: not), and both sides' step split (decode-only/mixed steps,
#                forward/sample/host/between ms, the stepping thread's involuntary context switches); the client runs
#                under SCHED_BATCH (chrt -b 0; SERVE_CLIENT_POLICY=normal: not); a dry run here on
#                the CPU: GPU_CHECK_BUILD_DIR=build-x SERVE_DEVICE=cpu SERVE_CASES=mini:64:16:2:4 scripts/gpu_check.sh --stages serve)
#     cost       (not in the default list) `dsa cost` inputs: GEMM, decode (batch 128) and prefill per-layer times per
#                token into cost.csv, and the table (cost.md); the PNG is drawn where gnuplot is (dsa cost --png)
#     trainrun   (not in the default list) issue 14's result: train-indexer stage 1 from a random indexer on all of warmup/
#                (TRAINRUN_STEPS, default 750, 8192-token windows, --backbone-form mqa), optionally stage 2
#                (TRAINRUN_SPARSE_STEPS), then dsa eval on dev (TRAINRUN_CTXS, TRAINRUN_WINDOWS windows) of the shipped
#                and the trained checkpoints (TRAINRUN_WINDOWS 8K-windows' worth of tokens at each context);
#                needs the whole warm-up set staged; TRAINRUN_DENSE_INDEXER=FILE: stage 1's result from an earlier call
#                (its trainrun_dense_indexer.safetensors, carried in .device/extra/) instead of training it again
#     real       real-scale model (v32-real-attn: 7168 hidden, 128 heads, 64x128 indexer, k 2048), made
#                on the device; 128K-token prefill then decode, dense vs DSA, with memory and speed
#   Logs under $OUT; the floors table and one summary at the end. GPU_CHECK_BUDGET_S (default 570) stops
#   optional stages from starting when the call would run out of time.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${DSA_DEVICE_DIR:-$ROOT/.device}

if [[ "${1:-}" == "--stage" ]]; then
  SHARED=${DSA_SHARED:-$ROOT/../shared}
  mkdir -p "$DEV/shared/models" "$DEV/shared/data"
  rm -rf "$DEV/shared/models/dsa-mini" "$DEV/shared/data/dev" "$DEV/shared/data/warmup"
  cp -r "$SHARED/models/dsa-mini" "$DEV/shared/models/"
  cp -r "$SHARED/data/dev" "$DEV/shared/data/"
  cp -r "$SHARED/data/warmup" "$DEV/shared/data/"  # 4.7 MB; the train stage's bench reads its first 20 files
  head -20 "$SHARED/data/warmup/MANIFEST.txt" > "$DEV/shared/data/warmup/MANIFEST.bench.txt"
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
  # cpp-httplib for dsa serve, Debian's package as it is: its header declares, libcpp-httplib.so implements,
  # built with OpenSSL, zlib and brotli. Staged: the library, brotli's (small), and the headers httplib.h
  # includes under its compile definitions; libssl/libcrypto/libz are taken from the device image (the
  # serve stage checks with ldd that nothing is missing). No copy of the library's source is kept here.
  cp /usr/include/httplib.h "$S/include/"
  cp -r /usr/include/openssl /usr/include/brotli /usr/include/zlib.h /usr/include/zconf.h "$S/include/"
  mkdir -p "$S/include/x86_64-linux-gnu" && cp -r /usr/include/x86_64-linux-gnu/openssl "$S/include/x86_64-linux-gnu/"
  cp -P /usr/$A/libcpp-httplib.so* "$S/$A/"
  for l in libbrotlicommon libbrotlidec libbrotlienc; do cp -L /usr/$A/$l.so.1 "$S/$A/"; ln -sf $l.so.1 "$S/$A/$l.so"; done
  cat > "$S/$A/pkgconfig/cpp-httplib.pc" <<PC
prefix=\${pcfiledir}/../../..
includedir=\${prefix}/include
libdir=\${prefix}/$A
Name: cpp-httplib
Description: Debian's cpp-httplib (staged for the device build; OpenSSL and zlib from the device image)
Version: 0.11.4
Libs: -L\${libdir} -lcpp-httplib -Wl,-rpath,\${libdir} -Wl,-rpath-link,\${libdir}:/usr/lib/x86_64-linux-gnu -pthread
Cflags: -I\${includedir} -I\${includedir}/x86_64-linux-gnu -DCPPHTTPLIB_OPENSSL_SUPPORT -DCPPHTTPLIB_ZLIB_SUPPORT -DCPPHTTPLIB_BROTLI_SUPPORT
PC
  # The device tool carries at most 64 MiB: the model and texts travel as one gzip archive (55 -> 42 MB),
  # unpacked on the device. Extra files (e.g. a trained indexer for the trainrun stage) go in $DEV/extra/.
  tar -C "$DEV" -czf "$DEV/shared.tar.gz" shared && rm -rf "$DEV/shared"
  du -sh "$DEV"
  exit 0
fi

# Default: the one-call check (build, every GPU test, the PTX path, the benchmarks and the floors table:
# ~500 s on an H200). The rest: `--stages build,sanitizer,ppl` (~450 s) and `--stages build,real` (~250 s); `all` = every stage.
STAGES=build,tests,ptx,bench,e2e
QUICK=0
while (( $# )); do
  case $1 in
    --stages) STAGES=$2; shift ;;
    --quick) QUICK=1 ;;
  esac
  shift
done
[[ $STAGES == all ]] && STAGES=build,tests,ptx,sanitizer,bench,e2e,ppl,real
has() { [[ ",$STAGES," == *",$1,"* ]]; }
OUT=${OUT:-$ROOT/out/gpu_check}
mkdir -p "$OUT"
# The device tool returns few files: the logs go to one archive at exit; summary and tables stay apart.
FINAL_OUT=$OUT
OUT=$FINAL_OUT/logs
mkdir -p "$OUT"
trap 'tar -C "$FINAL_OUT" -czf "$FINAL_OUT/logs.tar.gz" logs 2>/dev/null && rm -rf "$OUT"' EXIT
BUDGET=${GPU_CHECK_BUDGET_S:-570}   # stop starting optional stages after this many seconds
declare -a SUMMARY
note() { SUMMARY+=("$1"); echo "== $1"; }
left() { echo $((BUDGET - SECONDS)); }

if [[ -f $DEV/shared.tar.gz && ! -d $DEV/shared ]]; then tar -C "$DEV" -xzf "$DEV/shared.tar.gz" || exit 1; fi
GPU=$(nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total,driver_version --format=csv,noheader 2>&1)
echo "$GPU"
note "stages $STAGES (the device copy's .git is not the tree's: record the commit on the calling side)"
S=$DEV/sysroot/usr
export PKG_CONFIG_PATH=$S/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
B=${GPU_CHECK_BUILD_DIR:-$ROOT/build-gpu}  # another build dir: dry runs of a stage off the device
T=$B/tests/gpu/dsa_gpu_tests
MINI=$DEV/shared/models/dsa-mini

if has build; then
  t0=$SECONDS
  cmake -S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80-virtual;90a-real" \
    -DCMAKE_PREFIX_PATH="$S" -DDSA_GPU_SHARED_DIR="$DEV/shared" > "$OUT/build.log" 2>&1 \
    && ninja -C "$B" -j"$(nproc)" dsa_gpu_tests dsa_gpu_bench dsa_gpu_prefill_bench dsa >> "$OUT/build.log" 2>&1 \
    && { ! ninja -C "$B" -t targets all 2>/dev/null | grep -q '^dsa_gpu_gemm_bench:' || ninja -C "$B" dsa_gpu_gemm_bench >> "$OUT/build.log" 2>&1; }
  rc=$?
  note "build: rc=$rc in $((SECONDS - t0)) s"
  if [[ $rc != 0 ]]; then
    tail -60 "$OUT/build.log"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
  fi
  if command -v cuobjdump > /dev/null; then
    cuobjdump -res-usage "$B/libdsa_lib.a" 2>&1 | grep -A1 "Function" | grep -v "^--" | paste - - \
      | sed -E 's/.*Function ([^ :]+).*REG:([0-9]+).*SHARED:([0-9]+).*/\1 REG:\2 SHARED:\3/' > "$OUT/res_usage.txt"
    note "SASS sm_90a: $(cuobjdump -sass "$B/libdsa_lib.a" 2>/dev/null | grep -c HMMA) HMMA instructions in libdsa_lib; ptxas usage of $(wc -l < "$OUT/res_usage.txt") kernels in res_usage.txt"
  fi
fi

if has tests || has ppl || has runtime; then
  # The sm_90a block-scaled FP8 wgmma GEMM first, alone and bounded: a pipeline fault there hangs (or, with the
  # mbarrier timeout, traps) and would take the whole call. If it fails, fast numerics runs without it.
  t0=$SECONDS
  timeout 90 "$T" --gtest_filter='GpuGemm.Fp8BlockScaledSm90*' > "$OUT/tests_fp8_wgmma.log" 2>&1
  rc=$?
  note "FP8 block-scaled wgmma GEMM test alone: rc=$rc in $((SECONDS - t0)) s; $(grep -E '^\[ (wgmma|fp8)|worst|ratio' "$OUT/tests_fp8_wgmma.log" | tail -2 | tr '\n' ' ')"
  if [[ $rc != 0 ]]; then
    export DSA_CUDA_FP8_WGMMA=0
    note "   -> DSA_CUDA_FP8_WGMMA=0 for the rest of this call"
    tail -20 "$OUT/tests_fp8_wgmma.log"
  fi
fi

if has tests; then
  t0=$SECONDS
  timeout 300 "$T" --gtest_filter="${TESTS_FILTER:-*}" > "$OUT/tests.log" 2>&1  # TESTS_FILTER: a subset
  rc=$?
  note "gpu tests (sm_90a SASS): rc=$rc in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/tests.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests.log") failed lines"
  grep -E "^\[  FAILED|Failure|\[ (prefill|decode|ppl|greedy|graphs)" "$OUT/tests.log" | head -40
  # Programmatic dependent launch is on by default on sm_90: the decode chain's tests once more with plain launches.
  t0=$SECONDS
  DSA_CUDA_PDL=0 timeout 120 "$T" --gtest_filter='GpuMla.SparseShapes:GpuMla.DenseShapes:GpuOps.AttentionMqa*:GpuIndexer.ScoresAndTopkRaggedBatch:GpuIndexer.LongContextDecodeExact:GpuModel.LogitsMatch*:GpuContext.DescribeNamesTheDeviceAndEveryGroup' > "$OUT/tests_pdl.log" 2>&1
  note "decode chain with plain launches (DSA_CUDA_PDL=0): rc=$? in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/tests_pdl.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests_pdl.log") failed lines; $(grep -m1 '^launch: ' "$OUT/tests_pdl.log")"
fi

if has ptx && (( $(left) > 150 )); then
  t0=$SECONDS
  CUDA_FORCE_PTX_JIT=1 DSA_CUDA_INDEXER_EXACT=1 timeout 200 "$T" --gtest_filter='GpuOps.*:GpuMla.*:GpuIndexer.*:GpuGemm.*:GpuContext.*' > "$OUT/tests_ptx.log" 2>&1
  rc=$?
  note "op tests on the compute_80 PTX (CUDA_FORCE_PTX_JIT=1) + exact CUDA-core indexer: rc=$rc in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/tests_ptx.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests_ptx.log") failed lines; $(grep -m1 '^probes: ' "$OUT/tests_ptx.log"); $(grep -m1 '^indexer: ' "$OUT/tests_ptx.log")"
  t0=$SECONDS
  DSA_CUDA_INDEXER_WGMMA=0 timeout 100 "$T" --gtest_filter='GpuIndexer.*:GpuOps.Indexer*:GpuModel.LogitsMatch*:GpuContext.DescribeNamesTheDeviceAndEveryGroup' > "$OUT/tests_portable.log" 2>&1
  note "indexer on the portable mma.sync kernel (DSA_CUDA_INDEXER_WGMMA=0), sm_90a SASS: rc=$? in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/tests_portable.log") ok, $(grep -c '^\[  FAILED' "$OUT/tests_portable.log") failed lines; $(grep -m1 '^indexer: ' "$OUT/tests_portable.log")"
  t0=$SECONDS  # the portable indexer kernel (the default on sm_80/86/89) from the compute_80 PTX as well
  CUDA_FORCE_PTX_JIT=1 timeout 100 "$T" --gtest_filter='GpuIndexer.ScoresAndTopk*:GpuIndexer.TopkExactTies*:GpuOps.Indexer*' >> "$OUT/tests_portable.log" 2>&1
  note "portable indexer from the compute_80 PTX (CUDA_FORCE_PTX_JIT=1): rc=$? in $((SECONDS - t0)) s"
  t0=$SECONDS
  DSA_CUDA_MQA_SIMPLE=1 timeout 60 "$T" --gtest_filter='GpuOps.AttentionMqa*:GpuModel.Greedy*:GpuContext.DescribeNamesTheDeviceAndEveryGroup' > "$OUT/tests_simple.tmp" 2>&1
  note "decode on the CUDA-core attention kernel: rc=$? in $((SECONDS - t0)) s; $(grep -m1 '^mla decode: ' "$OUT/tests_simple.tmp")"
  cat "$OUT/tests_simple.tmp" >> "$OUT/tests_portable.log"; rm -f "$OUT/tests_simple.tmp"
fi

if has sanitizer && (( $(left) > 300 )); then
  t0=$SECONDS
  timeout 170 compute-sanitizer --tool memcheck --error-exitcode 9 "$T" \
    --gtest_filter='GpuOps.*:GpuMla.DenseShapes:GpuMla.OneCandidate*:GpuIndexer.ScoresAndTopkRaggedBatch:GpuIndexer.TopkExactTiesAroundK:GpuIndexer.TiledPrefillPairs:GpuGemm.Fp8StridedOutput:GpuGemm.Fp8GroupedMatchesReference:GpuGemm.LinearF32Gemv:GpuIndexer.LongContextDecodeExact-GpuOps.InvalidInputsRaiseErrors' > "$OUT/sanitizer.log" 2>&1
  rc=$?
  note "compute-sanitizer memcheck (op tests): rc=$rc in $((SECONDS - t0)) s; $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer.log")"
  t0=$SECONDS  # barrier usage (named barriers of the wgmma MLA kernel, cluster barriers of the top-k)
  timeout 90 compute-sanitizer --tool synccheck --error-exitcode 9 "$T" \
    --gtest_filter='GpuMla.DenseShapes:GpuIndexer.LongContextDecodeExact:GpuOps.AttentionMqaTwoSequences' > "$OUT/synccheck.tmp" 2>&1
  note "compute-sanitizer synccheck (MLA wgmma producers/consumer, cluster top-k): rc=$? in $((SECONDS - t0)) s; $(grep -m1 'ERROR SUMMARY' "$OUT/synccheck.tmp")"
  cat "$OUT/synccheck.tmp" >> "$OUT/sanitizer.log"; rm -f "$OUT/synccheck.tmp"
  if (( $(left) > 230 )); then  # racecheck takes ~200 s over these tests (the top-k ones: ~60 s)
    t0=$SECONDS
    timeout 220 compute-sanitizer --tool racecheck --error-exitcode 9 "$T" \
      --gtest_filter="${RACECHECK_FILTER:-GpuOps.AttentionMqa*:GpuOps.Topk*:GpuOps.IndexerCache*:GpuMla.DenseShapes:GpuIndexer.TopkExactTiesAroundK:GpuGemm.Fp8StridedOutput}" > "$OUT/racecheck.tmp" 2>&1
    rc=$?
    note "compute-sanitizer racecheck (MQA, MLA, top-k, indexer, GEMM): rc=$rc in $((SECONDS - t0)) s; $(grep -m1 'RACECHECK SUMMARY\|ERROR SUMMARY' "$OUT/racecheck.tmp")"
    cat "$OUT/racecheck.tmp" >> "$OUT/sanitizer.log"; rm -f "$OUT/racecheck.tmp"
  fi
fi

if has bench && (( $(left) > 60 )); then
  t0=$SECONDS
  BQ=""; [[ $QUICK == 1 ]] && BQ=--quick
  timeout $(( $(left) > 260 ? 220 : $(left) - 40 )) "$B/bench/gpu/dsa_gpu_bench" $BQ --md "$OUT/bench.md" > "$OUT/bench.log" 2>&1
  note "dsa_gpu_bench: rc=$? in $((SECONDS - t0)) s"
  if [[ ${BENCH_EXTRA:-1} == 1 ]] && (( $(left) > 60 )); then  # BENCH_EXTRA=0: kernel/layer bench only
    t0=$SECONDS
    timeout 90 "$B/bench/gpu/dsa_gpu_prefill_bench" --md "$OUT/prefill.md" > "$OUT/prefill.log" 2>&1
    note "dsa_gpu_prefill_bench: rc=$? in $((SECONDS - t0)) s"
  fi
  if [[ ${BENCH_EXTRA:-1} == 1 && -x $B/bench/gpu/dsa_gpu_gemm_bench ]] && (( $(left) > 60 )); then
    t0=$SECONDS
    timeout 60 "$B/bench/gpu/dsa_gpu_gemm_bench" --md "$OUT/gemm.md" > "$OUT/gemm_bench.log" 2>&1
    note "dsa_gpu_gemm_bench: rc=$? in $((SECONDS - t0)) s"
  fi
fi

if has e2e && (( $(left) > 60 )); then  # end-to-end decode step latency on dsa-mini (dsa bench: DSA vs dense)
  for cfg in "1 1" "1 0" "8 1"; do
    set -- $cfg
    t0=$SECONDS
    DSA_CUDA_GRAPHS=$2 timeout 60 "$B/dsa" bench -m "$MINI" --device cuda --ctx 8000 --steps 32 --batch $1 > "$OUT/e2e.tmp" 2>&1
    rc=$?
    g=off; [[ $2 == 1 ]] && g=on
    note "dsa bench (dsa-mini, cuda, ctx 8000, batch $1, graphs $g): rc=$rc in $((SECONDS - t0)) s: $(grep -E 'ms/step|faster|SLOWER' "$OUT/e2e.tmp" | sed 's/  */ /g' | tr '\n' ';')"
    cat "$OUT/e2e.tmp" >> "$OUT/e2e.log"; rm -f "$OUT/e2e.tmp"
  done
  DSA_PROFILE_OPS=1 timeout 60 "$B/dsa" bench -m "$MINI" --device cuda --ctx 8000 --steps 16 --batch 1 > "$OUT/profile.log" 2>&1
  note "op profile of dsa-mini decode (batch 1, each op synchronised): rc=$? — see profile.log"
fi

if has ppl && (( $(left) > 90 )); then
  for pm in ${PPL_MODES:-dense sparse}; do  # attention[:numerics], e.g. "sparse sparse:fast"
    IFS=: read -r att num <<< "$pm"
    num=${num:-reference}
    (( $(left) > 60 )) || break
    t0=$SECONDS
    timeout $(( $(left) - 30 )) "$B/dsa" perplexity -m "$MINI" --device cuda --attention $att --numerics $num \
      --manifest "$DEV/shared/data/dev/MANIFEST.txt" --ctx 8192 > "$OUT/ppl.tmp" 2>&1
    note "dsa-mini ppl ctx 8192 on cuda, $att, $num numerics: rc=$? in $((SECONDS - t0)) s: $(grep -m1 '^perplexity' "$OUT/ppl.tmp")"
    cat "$OUT/ppl.tmp" >> "$OUT/ppl.log"; rm -f "$OUT/ppl.tmp"
  done
fi

if has real && (( $(left) > 60 )); then
  RM=${REAL_MODEL_DIR:-/tmp/dsa-v32-real-attn}
  CTX=${REAL_CTX:-131072}
  t0=$SECONDS
  [[ -f $RM/config.json ]] || timeout 120 "$B/dsa" make-model --preset v32-real-attn --out "$RM" > "$OUT/real.log" 2>&1
  note "real-scale model made in $((SECONDS - t0)) s: $(du -sh "$RM" 2>/dev/null | cut -f1) ($(grep -o '"num_hidden_layers": [0-9]*' "$RM/config.json" 2>/dev/null))"
  (( $(left) > 30 )) || { note "real scale: no time left for the 128K run"; CTX=0; }
  t0=$SECONDS
  (( CTX > 0 )) && timeout $(( $(left) - 10 )) "$B/dsa" bench -m "$RM" --device cuda --ctx "$CTX" --steps 8 --batch 1 \
    --prefill-chunk ${REAL_CHUNK:-32768} >> "$OUT/real.log" 2>&1
  note "real scale, $CTX-token prefill + decode on cuda: rc=$? in $((SECONDS - t0)) s"
  while IFS= read -r l; do note "   $l"; done < <(grep -E "prefill:|memory|ms/step|faster|SLOWER" "$OUT/real.log")
  if (( $(left) > 60 )); then  # the same with the absorbed-form prefill (tensor-core decode kernels; not the reference's rounding)
    t0=$SECONDS
    timeout $(( $(left) - 10 )) "$B/dsa" bench -m "$RM" --device cuda --ctx "$CTX" --steps 4 --batch 1 \
      --prefill-chunk ${REAL_CHUNK:-32768} --prefill-form mqa > "$OUT/real_mqa.log" 2>&1
    note "real scale, $CTX-token prefill in the absorbed form: rc=$? in $((SECONDS - t0)) s: $(grep -m1 'prefill:' "$OUT/real_mqa.log")"
  fi
fi

if has runtime && (( $(left) > 60 )); then  # the batched engine: serving throughput (dsa bench --requests)
  # dsa-mini (context 8192: its long case is 7936-in, not 16K) and the real-scale preset (16K-in, absorbed-form prefill:
  # the reference-form prefill of 2M tokens would take ~20 min). RUNTIME_CASES overrides: "model:in:out:c[:n]" ...
  RM=${REAL_MODEL_DIR:-/tmp/dsa-v32-real-attn}
  CASES=${RUNTIME_CASES:-"mini:1024:256:1:8 mini:1024:256:8:16 mini:1024:256:32:32 mini:1024:256:128:128 mini:7936:256:1:4 mini:7936:256:8:8 mini:7936:256:32:32 mini:7936:256:128:128"}
  for cs in $CASES; do
    IFS=: read -r mdl in_len out_len conc nreq tags <<< "$cs"
    nreq=${nreq:-$conc}
    num=reference; replay=""  # tags, comma-separated: fast (numerics), replay (decode steps as graphs, replayed 3x, timed)
    [[ ,$tags, == *,fast,* ]] && num=fast
    [[ ,$tags, == *,replay,* ]] && replay="--graph-replay 3"
    (( $(left) > 40 )) || { note "runtime: no time left for $cs"; break; }
    M=$MINI; extra=""
    if [[ $mdl == real ]]; then
      M=$RM; extra="--prefill-form mqa --prefill-chunk 16384"
      [[ -f $RM/config.json ]] || timeout 120 "$B/dsa" make-model --preset v32-real-attn --out "$RM" > "$OUT/real_make.log" 2>&1
    fi
    t0=$SECONDS
    timeout $(( $(left) - 10 )) "$B/dsa" bench -m "$M" --device cuda --requests "$nreq" --concurrency "$conc" \
      --input-len "$in_len" --output-len "$out_len" --numerics $num $replay $extra ${RUNTIME_EXTRA:-} > "$OUT/rt.tmp" 2>&1
    note "throughput $mdl in $in_len out $out_len c=$conc n=$nreq $num numerics${replay:+, graph replay}: rc=$? in $((SECONDS - t0)) s: $(grep -E 'requests/s|TTFT|KV blocks|decode-only|graph replay|rror' "$OUT/rt.tmp" | sed 's/  */ /g' | tr '\n' ';')"
    cat "$OUT/rt.tmp" >> "$OUT/runtime.log"; rm -f "$OUT/rt.tmp"
  done
fi

if has serve && (( $(left) > 60 )); then  # dsa serve on the device, the client on loopback, vs dsa bench (issue 12)
  # Per case: dsa serve (any free port) with the engine options the runtime stage gives dsa bench, KV pool and max
  # seqs set as dsa bench sets them; scripts/serve_load.py (Python stdlib: streaming /v1/completions of token-id
  # prompts, ignore_eos, greedy); SIGTERM; then dsa bench --requests N with the same options. Overhead = 1 - serve/bench
  # output tok/s. SERVE_CASES="model:in:out:c[:n] ..." (n default 4c), SERVE_EXTRA: more engine options for both.
  if ! "$B/dsa" serve --help > /dev/null 2>&1; then
    note "serve: this dsa has no server (cpp-httplib not found at configure time; build.log)"
  fi
  missing=$(ldd "$B/dsa" 2>/dev/null | grep 'not found' | tr -s ' \t' ' ' | tr '\n' ';')
  [[ -n $missing ]] && note "serve: libraries missing on this machine: $missing"
  # A log's step statistics (runtime/step_stats.h, printed by dsa bench and by dsa serve when it stops), compact.
  step_split() {
    local d m t
    d=$(grep -m1 'decode-only steps:' "$1" 2> /dev/null | sed -E 's/.*decode-only steps: ([0-9]+), ([0-9.]+) ms each = forward \(enqueue\) ([0-9.]+) \+ sample\/sync ([0-9.]+) \+ host ([0-9.]+) ms.*then ([0-9.]+) ms between.*/decode-only \1 x \2 ms = fwd \3 + sample \4 + host \5, then \6 between/')
    m=$(grep -m1 'other steps:' "$1" 2> /dev/null | grep -oE 'mixed [0-9]+, [0-9.]+ ms each' | sed 's/,//; s/ each//')
    t=$(grep -m1 'stepping thread:' "$1" 2> /dev/null | grep -oE '\([0-9.]+ per step\), on a CPU [0-9.]+%' | sed 's/(//; s/)//; s/per step/invol. switches per step/')
    echo "${d:-no decode-only steps}; ${m:-mixed 0}; ${t:-}"
  }
  # The load generator shares the server's machine (a real client would not): under SCHED_BATCH its
  # threads, woken by every event, do not preempt the server's stepping thread (docs/server.md "Overhead").
  cl_policy=""
  [[ ${SERVE_CLIENT_POLICY:-batch} == batch ]] && command -v chrt > /dev/null && cl_policy="chrt -b 0"
  note "serve: client policy ${cl_policy:-default}${SERVE_SERVER_EXTRA:+, server options $SERVE_SERVER_EXTRA}"
  RM=${REAL_MODEL_DIR:-/tmp/dsa-v32-real-attn}
  CASES=${SERVE_CASES:-"mini:1024:256:1:8 mini:1024:256:8:32 mini:1024:256:32:64 mini:1024:256:128:256 real:1024:256:1:4 real:1024:256:8:16 real:1024:256:32:64 real:1024:256:128:256"}
  k=0
  for cs in $CASES; do
    IFS=: read -r mdl in_len out_len conc nreq <<< "$cs"
    nreq=${nreq:-$((4 * conc))}
    k=$((k + 1))
    (( $(left) > 50 )) || { note "serve: no time left for $cs"; break; }
    M=$MINI; extra=""
    if [[ $mdl == real ]]; then
      M=$RM; extra="--prefill-form mqa --prefill-chunk 16384"
      [[ -f $RM/config.json ]] || timeout 120 "$B/dsa" make-model --preset v32-real-attn --out "$RM" > "$OUT/real_make.log" 2>&1
      # The server needs a tokenizer, and one that decodes every id of the 129280-wide head (dsa-mini's has 8192).
      [[ -f $RM/tokenizer.json ]] || python3 "$ROOT/scripts/widen_tokenizer.py" "$MINI" "$RM" >> "$OUT/real_make.log" 2>&1
    fi
    kv=$(( (nreq < conc ? nreq : conc) * (in_len + out_len + 64) ))  # dsa bench's own default (kKvBlock = 64)
    eng="--device ${SERVE_DEVICE:-cuda} --kv-tokens $kv --max-seqs $(( conc > 128 ? conc : 128 )) $extra ${SERVE_EXTRA:-}"
    t0=$SECONDS
    SL=$OUT/serve_server_$k.log
    "$B/dsa" serve -m "$M" $eng --port 0 --max-queue $(( nreq + 64 )) --max-connections $(( conc + 64 > 1024 ? conc + 64 : 1024 )) \
      --shutdown-grace 5 ${SERVE_SERVER_EXTRA:-} > "$SL" 2>&1 &
    spid=$!
    url=""
    for _ in $(seq 600); do  # up to 120 s for the model to load and the port to be printed
      url=$(grep -oE 'listening on http://[0-9.]+:[0-9]+' "$SL" | head -1 | sed 's/listening on //')
      [[ -n $url ]] && break
      kill -0 $spid 2> /dev/null || break
      sleep 0.2
    done
    lrc=99
    if [[ -n $url ]]; then
      timeout $(( $(left) > 200 ? 180 : $(left) - 20 )) $cl_policy python3 "$ROOT/scripts/serve_load.py" --url "$url" --wait 60 \
        --concurrency "$conc" --requests "$nreq" --input-len "$in_len" --output-len "$out_len" --model-dir "$M" \
        --json "$OUT/serve_load_$k.json" > "$OUT/serve_client_$k.log" 2>&1
      lrc=$?
    fi
    kill -TERM $spid 2> /dev/null  # graceful stop; a second SIGTERM exits at once; then KILL
    for i in $(seq 150); do kill -0 $spid 2> /dev/null || break; (( i == 100 )) && kill -TERM $spid 2> /dev/null; sleep 0.2; done
    kill -0 $spid 2> /dev/null && { kill -KILL $spid; note "serve: the server did not stop on SIGTERM; killed"; }
    wait $spid 2> /dev/null
    src=$?
    s_turn=$(grep -m1 -oE 'client turnaround .* p50 [0-9.]+ ms' "$OUT/serve_client_$k.log" 2> /dev/null | grep -oE '[0-9.]+ ms$' | cut -d' ' -f1)
    s_tok=$(grep -m1 -oE '[0-9.]+ output tok/s' "$OUT/serve_client_$k.log" 2> /dev/null | cut -d' ' -f1)
    s_lat=$(grep -m1 'TTFT' "$OUT/serve_client_$k.log" 2> /dev/null | sed 's/ *| latency.*//; s/  */ /g')
    s_err=$(grep -m1 -oE 'errors [0-9]+, wrong output length [0-9]+' "$OUT/serve_client_$k.log" 2> /dev/null)
    t1=$SECONDS
    timeout $(( $(left) > 200 ? 180 : $(left) - 10 )) "$B/dsa" bench -m "$M" $eng --requests "$nreq" --concurrency "$conc" \
      --input-len "$in_len" --output-len "$out_len" > "$OUT/serve_bench_$k.log" 2>&1
    brc=$?
    b_tok=$(grep -m1 -oE '[0-9.]+ output tok/s' "$OUT/serve_bench_$k.log" | cut -d' ' -f1)
    b_lat=$(grep -m1 'TTFT' "$OUT/serve_bench_$k.log" | sed 's/ *| latency.*//; s/  */ /g')
    ovh=$(python3 -c "import sys; s, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{100 * (1 - s / b):.1f}%')" "$s_tok" "$b_tok" 2> /dev/null || echo "n/a")
    note "serve $mdl in $in_len out $out_len c=$conc n=$nreq: server $s_tok vs dsa bench $b_tok output tok/s, overhead $ovh (client rc=$lrc, server exit $src, bench rc=$brc; $((t1 - t0)) + $((SECONDS - t1)) s) | server:$s_lat; $s_err | bench:$b_lat"
    # The same engine with the client's round trip (dsa bench --client-rtt: a finished request's successor
    # joins a later step, as over HTTP): the schedule the server ran, without HTTP. Then both step splits.
    rtt=${s_turn:-0.5}
    if [[ ${SERVE_RTT_BENCH:-1} == 1 ]] && (( $(left) > 40 )); then
      timeout $(( $(left) > 200 ? 180 : $(left) - 10 )) "$B/dsa" bench -m "$M" $eng --requests "$nreq" --concurrency "$conc" \
        --input-len "$in_len" --output-len "$out_len" --client-rtt "$rtt" > "$OUT/serve_bench_rtt_$k.log" 2>&1
      r_tok=$(grep -m1 -oE '[0-9.]+ output tok/s' "$OUT/serve_bench_rtt_$k.log" | cut -d' ' -f1)
      r_lat=$(grep -m1 'TTFT' "$OUT/serve_bench_rtt_$k.log" | sed 's/ *| latency.*//; s/  */ /g')
      r_ovh=$(python3 -c "import sys; s, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{100 * (1 - s / b):.1f}%')" "$s_tok" "$r_tok" 2> /dev/null || echo "n/a")
      note "serve $mdl c=$conc: dsa bench --client-rtt $rtt (the client's turnaround p50): $r_tok output tok/s, server overhead against it $r_ovh |$r_lat"
    fi
    note "serve $mdl c=$conc steps: server [$(step_split "$SL")] bench [$(step_split "$OUT/serve_bench_$k.log")]${r_tok:+ bench --client-rtt [$(step_split "$OUT/serve_bench_rtt_$k.log")]}"
    r_tok=""
    [[ -z $url ]] && tail -5 "$SL"
    cat "$OUT/serve_client_$k.log" "$OUT/serve_bench_$k.log" >> "$OUT/serve.log" 2> /dev/null
    grep -A5 'engine loop:' "$SL" >> "$OUT/serve.log" 2> /dev/null
    cat "$OUT/serve_bench_rtt_$k.log" >> "$OUT/serve.log" 2> /dev/null
  done
fi

if has gemm && [[ -x $B/bench/gpu/dsa_gpu_gemm_bench ]] && (( $(left) > 60 )); then  # the GEMM bench alone (quick shapes)
  t0=$SECONDS
  timeout 120 "$B/bench/gpu/dsa_gpu_gemm_bench" --quick --md "$OUT/gemm.md" > "$OUT/gemm_bench.log" 2>&1
  note "dsa_gpu_gemm_bench --quick: rc=$? in $((SECONDS - t0)) s"
  # Lab probe: which cuBLASLt block-scaled FP8 configurations have an algorithm here
  if ninja -C "$B" dsa_lt_blockscale_probe >> "$OUT/build.log" 2>&1; then
    "$B/bench/gpu/dsa_lt_blockscale_probe" > "$OUT/lt_probe.log" 2>&1
    note "cuBLASLt block-scaled probe: $(head -1 "$OUT/lt_probe.log"); with an algorithm: $(grep -v ' 0 algorithms' "$OUT/lt_probe.log" | tail -n +2 | tr '\n' ';')"
  fi
fi

if has cost && (( $(left) > 120 )); then  # `dsa cost` inputs: per-layer times per token (runtime/cost_model.h, docs/cost.md)
  rm -f "$FINAL_OUT/cost.csv"
  t0=$SECONDS
  timeout 120 "$B/bench/gpu/dsa_gpu_gemm_bench" --quick --cost-csv "$FINAL_OUT/cost.csv" > "$OUT/cost_gemm.log" 2>&1
  note "cost: GEMM rows rc=$? in $((SECONDS - t0)) s: $(grep -m1 '^cost rows' "$OUT/cost_gemm.log")"
  t0=$SECONDS
  timeout $(( $(left) > 260 ? 200 : $(left) - 60 )) "$B/bench/gpu/dsa_gpu_bench" --only layer --batches 128 \
    --ctxs 1024,2048,4096,16384,32768,65536,131072 --cost-csv "$FINAL_OUT/cost.csv" > "$OUT/cost_decode.log" 2>&1
  note "cost: decode rows (batch 128) rc=$? in $((SECONDS - t0)) s"
  if (( $(left) > 60 )); then
    t0=$SECONDS
    timeout $(( $(left) - 20 )) "$B/bench/gpu/dsa_gpu_prefill_bench" --chunk 2048 --ctxs 2048,8192,32768,131072 \
      --dense-max-flop 1.2e13 --cost-csv "$FINAL_OUT/cost.csv" > "$OUT/cost_prefill.log" 2>&1
    note "cost: prefill rows rc=$? in $((SECONDS - t0)) s"
  fi
  "$B/dsa" cost --measurements "$FINAL_OUT/cost.csv" --md "$FINAL_OUT/cost.md" > /dev/null 2>&1 && note "cost table in cost.md (plot it here: dsa cost --png)"
fi

if has profile && command -v ncu > /dev/null && (( $(left) > 60 )); then  # Nsight Compute: where the time goes
  # Per-kernel durations of the per-layer decode chains (dense and DSA) at batch 1, one metric per launch.
  t0=$SECONDS
  timeout $(( $(left) > 200 ? 150 : $(left) - 40 )) ncu --clock-control none --metrics gpu__time_duration.sum --csv \
    "$B/bench/gpu/dsa_gpu_bench" --only layer --batches 1 --ctxs ${PROFILE_CTXS:-16384,131072} > "$OUT/ncu_b1.csv" 2> "$OUT/ncu_b1.err"
  note "ncu per-kernel durations, batch 1: rc=$? in $((SECONDS - t0)) s (ncu_b1.csv; summary in ncu_b1.txt)"
  python3 "$ROOT/scripts/ncu_durations.py" "$OUT/ncu_b1.csv" > "$OUT/ncu_b1.txt" 2>&1 && cp "$OUT/ncu_b1.txt" "$FINAL_OUT/"
  # Full sections for the large-batch kernels that have floors: sparse MLA decode (b=128 s_q=2) and indexer scores (64K).
  SECTIONS="--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats"
  if [[ ${PROFILE_SECTIONS:-1} == 1 ]] && (( $(left) > 60 )); then  # PROFILE_SECTIONS=0: durations only
    t0=$SECONDS
    timeout $(( $(left) > 150 ? 100 : $(left) - 30 )) ncu --clock-control none $SECTIONS -k regex:'mqa_(score|pv)_kernel' -c 2 \
      "$B/bench/gpu/dsa_gpu_bench" --only mla --quick > "$OUT/ncu_mla.txt" 2>&1
    note "ncu sections of the MLA decode kernels (b=128 s_q=2): rc=$? in $((SECONDS - t0)) s (ncu_mla.txt)"
  fi
  if [[ ${PROFILE_SECTIONS:-1} == 1 ]] && (( $(left) > 60 )); then
    t0=$SECONDS
    timeout $(( $(left) > 150 ? 100 : $(left) - 30 )) ncu --clock-control none $SECTIONS -k regex:'indexer_score' -c 3 \
      "$B/bench/gpu/dsa_gpu_bench" --only layer --batches 128 --ctxs 65536 > "$OUT/ncu_idx.txt" 2>&1
    note "ncu sections of the indexer score kernels (b=128, 64K): rc=$? in $((SECONDS - t0)) s (ncu_idx.txt)"
  fi
fi

if has train && (( $(left) > 60 )); then  # indexer training on CUDA (docs/training.md, "CUDA")
  t0=$SECONDS
  timeout 150 "$T" --gtest_filter='GpuTrain.*' > "$OUT/train_tests.log" 2>&1
  note "train GPU tests: rc=$? in $((SECONDS - t0)) s; $(grep -c '^\[       OK' "$OUT/train_tests.log") ok, $(grep -c '^\[  FAILED' "$OUT/train_tests.log") failed lines"
  grep -E "^\[  FAILED|Failure|^\[ (train|dsa-mini)" "$OUT/train_tests.log" | head -60
  WU=$DEV/shared/data/warmup/MANIFEST.bench.txt
  for pf in ${TRAIN_BENCH:-tf32:mha tf32:mqa fp32:mqa}; do  # precision:backbone form
    IFS=: read -r prec form <<< "$pf"
    (( $(left) > 40 )) || break
    t0=$SECONDS
    rm -rf "/tmp/dsa-train-bench-$prec"
    timeout $(( $(left) > 100 ? 90 : $(left) - 10 )) "$B/dsa" train-indexer -m "$MINI" --data "$WU" \
      --out "/tmp/dsa-train-bench-$prec" --init-indexer random --ctx 8192 --steps 3 --device cuda --precision $prec \
      --backbone-form "$form" --profile > "$OUT/train_bench_$prec-$form.log" 2>&1
    note "train-indexer dsa-mini, 8192-token dense-stage step on cuda, $prec, backbone $form: rc=$? in $((SECONDS - t0)) s: $(grep -oE '[0-9.]+ s/step' "$OUT/train_bench_$prec-$form.log" | tr '\n' ' ')"
    note "   last step: $(grep -A1 '^step 3/' "$OUT/train_bench_$prec-$form.log" | tail -1 | sed 's/^ *//')"
  done
fi

if has trainrun && (( $(left) > 120 )); then  # issue 14's result: train dsa-mini's indexer from random, evaluate on dev
  # Stage 1 (dense KL) from a random indexer (seed 0) on all of warmup/, then stage 2 (sparse KL) from its result;
  # checkpoints every TRAINRUN_SAVE steps, so a run cut by the time limit still leaves its last checkpoint. Then
  # dsa eval (production path: FP8 caches, sparse vs dense, per-layer recall) on dev for the shipped checkpoint and
  # each trained one at each context of TRAINRUN_CTXS, on the first TRAINRUN_WINDOWS windows.
  WUF=$DEV/shared/data/warmup/MANIFEST.txt
  DEVM=$DEV/shared/data/dev/MANIFEST.txt
  TR=/tmp/dsa-trainrun
  rm -rf "$TR"
  TRAIN_COMMON="--ctx 8192 --device cuda --backbone-form ${TRAINRUN_FORM:-mqa} --save-every ${TRAINRUN_SAVE:-50} ${TRAINRUN_EXTRA:-}"
  t0=$SECONDS
  if [[ -n ${TRAINRUN_DENSE_INDEXER:-} ]]; then  # stage 1 done in an earlier call: its indexer tensors, applied to dsa-mini
    python3 "$ROOT/scripts/indexer_overlay.py" apply "$MINI" "$TRAINRUN_DENSE_INDEXER" "$TR/dense" > "$OUT/trainrun_dense.log" 2>&1
    note "trainrun dense stage: taken from $TRAINRUN_DENSE_INDEXER: rc=$?"
  else
    tl=$(( $(left) - ${TRAINRUN_EVAL_S:-150} - ${TRAINRUN_SPARSE_S:-0} - 20 ))  # seconds of training; load and save outside
    timeout $(( tl + 60 )) "$B/dsa" train-indexer -m "$MINI" --data "$WUF" --out "$TR/dense" --time-limit $tl \
      --init-indexer random --seed 0 --steps ${TRAINRUN_STEPS:-750} --lr ${TRAINRUN_LR:-1e-3} $TRAIN_COMMON \
      > "$OUT/trainrun_dense.log" 2>&1
    note "trainrun dense stage: rc=$? in $((SECONDS - t0)) s; last: $(grep -E '^step ' "$OUT/trainrun_dense.log" | tail -1)"
    grep -E '^step ' "$OUT/trainrun_dense.log" | awk 'NR % 50 == 1' | tail -20 > "$FINAL_OUT/trainrun_dense_steps.txt"
    python3 "$ROOT/scripts/indexer_overlay.py" extract "$TR/dense" "$FINAL_OUT/trainrun_dense_indexer.safetensors" > /dev/null
  fi
  MODELS="shipped:$MINI dense:$TR/dense"
  if (( ${TRAINRUN_SPARSE_STEPS:-0} > 0 )) && [[ -f $TR/dense/config.json ]] && (( $(left) > ${TRAINRUN_EVAL_S:-150} + 60 )); then
    t0=$SECONDS
    tl=$(( $(left) - ${TRAINRUN_EVAL_S:-150} - 20 ))
    timeout $(( tl + 60 )) "$B/dsa" train-indexer -m "$TR/dense" --data "$WUF" --out "$TR/sparse" --time-limit $tl \
      --stage sparse --init-indexer keep --seed 1 --steps $TRAINRUN_SPARSE_STEPS --lr ${TRAINRUN_SPARSE_LR:-1e-4} \
      $TRAIN_COMMON > "$OUT/trainrun_sparse.log" 2>&1
    note "trainrun sparse stage: rc=$? in $((SECONDS - t0)) s; last: $(grep -E '^step ' "$OUT/trainrun_sparse.log" | tail -1)"
    grep -E '^step ' "$OUT/trainrun_sparse.log" | awk 'NR % 25 == 1' | tail -20 > "$FINAL_OUT/trainrun_sparse_steps.txt"
    python3 "$ROOT/scripts/indexer_overlay.py" extract "$TR/sparse" "$FINAL_OUT/trainrun_sparse_indexer.safetensors" > /dev/null
    MODELS="$MODELS sparse:$TR/sparse"
  fi
  for ctx in ${TRAINRUN_CTXS:-8192 2048 4096}; do
    for nm in $MODELS; do
      IFS=: read -r name dir <<< "$nm"
      [[ -f $dir/config.json ]] || continue
      (( $(left) > 25 )) || break 2
      t0=$SECONDS
      timeout $(( $(left) - 15 )) "$B/dsa" eval -m "$dir" --manifest "$DEVM" --ctx $ctx --max-windows $(( ${TRAINRUN_WINDOWS:-4} * 8192 / ctx )) \
        --prefill-form ${TRAINRUN_EVAL_FORM:-mha} --device cuda > "$OUT/eval_${name}_$ctx.log" 2>&1
      note "eval $name ctx $ctx: rc=$? in $((SECONDS - t0)) s: $(grep -E '^(ctx|perplexity|mean KL|recall)' "$OUT/eval_${name}_$ctx.log" | tr '\n' ';')"
    done
  done
fi

# Tables first, then the summary and the floors last (the device tool shows the tail of the output).
[[ -f $OUT/gemm.md ]] && { echo; cat "$OUT/gemm.md"; cp "$OUT/gemm.md" "$FINAL_OUT/"; }
[[ -f $OUT/prefill.md ]] && { echo; cat "$OUT/prefill.md"; cp "$OUT/prefill.md" "$FINAL_OUT/"; }
[[ -f $OUT/bench.md ]] && { echo; cat "$OUT/bench.md"; cp "$OUT/bench.md" "$FINAL_OUT/"; }
echo
echo "================ summary ================"
{ echo "$GPU"; printf '%s\n' "${SUMMARY[@]}"; } | tee "$FINAL_OUT/summary.txt"
if [[ -f $OUT/bench.md ]]; then
  echo; python3 "$ROOT/scripts/gpu_summary.py" "$OUT/bench.md" | tee "$FINAL_OUT/floors.md"
fi
exit 0
