#!/usr/bin/env bash
# Install the Debian 12 packages dsa needs (build, tests, benchmarks, the JS tokenizer reference).
# Idempotent: does nothing when everything is already installed.
set -euo pipefail
# clang's compiler-rt (libFuzzer, its ASan/UBSan runtimes) and llvm-symbolizer are only
# recommended by clang: named here for scripts/fuzz.sh (gcc's ASan for scripts/sanitize.sh comes
# with g++).
PKGS=(build-essential cmake ninja-build pkg-config g++ clang libclang-rt-14-dev llvm
      libgtest-dev libgmock-dev libbenchmark-dev
      nlohmann-json3-dev libcli11-dev libpcre2-dev libcpp-httplib-dev
      gnuplot-nox)  # gnuplot: dsa cost --png
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node.js and npm (for the JS tokenizer reference): any install will do (a machine may carry a
# non-Debian Node.js, with which Debian's npm package conflicts); Debian's packages otherwise.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
