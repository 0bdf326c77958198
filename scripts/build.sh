#!/usr/bin/env bash
# Configure and build dsa in Release into ${BUILD_DIR:-build}. CUDA is built when nvcc is found
# (/usr/local/cuda/bin/nvcc or on PATH); pass DSA_CUDA=OFF to skip it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSA_CUDA="${DSA_CUDA:-AUTO}" "$@"
ninja -C "$BUILD_DIR" -j "$JOBS"
