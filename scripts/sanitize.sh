#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer, LeakSanitizer included (part of
# ASan on Linux), CPU only: gcc, -O1 -g1 -fno-omit-frame-pointer, every UB check fatal, the server
# built when cpp-httplib is found. Build type "ASan" (dsa --version says so). docs/hardening.md has
# the timings.
#   scripts/sanitize.sh [ctest args]   build into ${SAN_BUILD_DIR:-build-asan}, run ctest there
#   SAN_JOBS=N                         parallel compiles and tests (default: nproc)
#   SAN_ALL=1                          run the skipped tests too
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B=${SAN_BUILD_DIR:-build-asan}
J=${SAN_JOBS:-$(nproc)}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# -Wno-(maybe-)uninitialized: gcc 12 at -O1 warns inside avx512fintrin.h (_mm512_undefined_ps); the
# Release build keeps those warnings for our own code.
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=ASan -DCMAKE_CXX_COMPILER=g++ \
  -DCMAKE_CXX_FLAGS_ASAN="-O1 -g1 $SAN -Wno-uninitialized -Wno-maybe-uninitialized" \
  -DCMAKE_EXE_LINKER_FLAGS_ASAN="-fsanitize=address,undefined" \
  -DDSA_CUDA=OFF -DDSA_SERVER="${DSA_SERVER:-AUTO}" -DDSA_TESTS=ON -DDSA_BENCH=OFF -DDSA_FUZZ=OFF >/dev/null
ninja -C "$B" -j "$J"

# Skipped: each takes over a minute under the sanitizers on a 2-core machine (their time there in
# parentheses; Release: a few seconds each). They run many model steps (dsa-mini prefills of 1-8K
# tokens, dozens of concurrent streams, a pool filled to preemption) through code the remaining
# tests also cover with fewer steps.
SKIP=(
  'Engine\.PoolExhaustionFinishesOrRejectsClearly'          # 381 s
  'Engine\.BatchedEqualsOneByOne'                           # 129 s
  'Engine\.PreemptedEqualsUninterrupted'                    # 123 s
  'Engine\.PrefixCacheHitEqualsMiss'                        #  75 s
  'DsaMini\.MqaFormPrefillEqualsTokenByTokenDecode'         # 215 s
  'DsaMini\.ShortWindowPerplexityDenseAndDsa'               # 213 s
  'ServerLoad\.SixtyFourConcurrentStreamsGetTheirSoloTokens' # 258 s
  'ServerLoad\.PoolExhaustionPreemptsThenCompletes'         # 179 s
  'ServerLoad\.PrefixCacheVisibleInMetricsAndTtft'          # > 175 s (its 120 s client timeout)
  'Server\.ToolCallsV31Scripted'                            #  93 s
  'Server\.ToolCallsDsmlScripted'                           # > 63 s (its 60 s client timeout)
  'Server\.BadClientsDoNotDisturbOtherStreams'              #  68 s
  'ServerE2E\.OfficialOpenAIClient'                         # 270 s (node client, 4 scenarios)
  'ServerE2E\.ChatPageInHeadlessChromium'                   #  62 s (chromium)
)
EXCLUDE="^($(IFS='|'; echo "${SKIP[*]}"))\$"
[ "${SAN_ALL:-0}" = 1 ] && EXCLUDE='^$'

# exitcode=86: a sanitizer report in a child `dsa` (the CLI tests) cannot pass for the exit code 1 or
# 2 a test expects. ASan also checks the static initialisation order.
export ASAN_OPTIONS="detect_leaks=1:exitcode=86:check_initialization_order=1:strict_init_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
cd "$B"
ctest --output-on-failure -j "$J" --timeout 1800 -E "$EXCLUDE" "$@"
