#!/usr/bin/env bash
# The whole test suite: install what is needed, build (Release, tests on; CUDA sources are
# compiled when nvcc is present even without a GPU), install the JS tokenizer reference and the
# server's end-to-end clients (openai, playwright-core, chromium), run ctest; then the suite again
# under ASan + UBSan + LSan (scripts/sanitize.sh, which names the few slow tests it skips) and a short
# run of every libFuzzer target (scripts/fuzz.sh, FUZZ_SECONDS per target). docs/hardening.md has
# the stages' times. DSA_SKIP_SANITIZE=1 / DSA_SKIP_FUZZ=1 leave a stage out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build} bash scripts/build.sh -DDSA_TESTS=ON -DDSA_BENCH=ON
bash tests/tokenizer_diff/setup.sh
bash tests/server_e2e/setup.sh
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 1800)
if [ "${DSA_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== sanitizers (ASan + UBSan + LSan)"
  SAN_JOBS=${JOBS:-$(nproc)} bash scripts/sanitize.sh
fi
if [ "${DSA_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz smoke runs"
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
