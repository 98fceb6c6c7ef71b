#!/usr/bin/env bash
# What the browser test needs: Debian's chromium (a downloaded browser does not run here) and
# playwright-core to drive it (no browser download). Idempotent; run by `make test`.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -d node_modules/playwright-core ] || npm ci --silent --no-audit --no-fund >/dev/null
