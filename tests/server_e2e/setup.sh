#!/usr/bin/env bash
# Installs what the end-to-end server tests (tests/test_server_e2e.cpp) need: the official `openai`
# client and `playwright-core`, pinned in package.json and package-lock.json, into
# tests/server_e2e/node_modules, and Debian's chromium for the chat-page test. Needs node and npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
if ! command -v npm >/dev/null 2>&1; then
  echo "server_e2e/setup.sh: npm is not installed (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "server_e2e/setup.sh: installing chromium"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
