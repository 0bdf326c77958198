#!/usr/bin/env bash
# The whole test suite: install what is needed, build (Release, tests on; CUDA sources are
# compiled when nvcc is present even without a GPU), install the JS tokenizer reference and the
# server's end-to-end clients (openai, playwright-core, chromium), run ctest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build} bash scripts/build.sh -DDSA_TESTS=ON -DDSA_BENCH=ON
bash tests/tokenizer_diff/setup.sh
bash tests/server_e2e/setup.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 1800
