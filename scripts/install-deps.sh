#!/usr/bin/env bash
# Installs what dspark needs to build, test and run: Debian 12 packages (apt) and, for the
# server test, the pinned openai npm client (tests/server/package-lock.json). Idempotent:
# does nothing (and needs no network) when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev libpcre2-dev libjansson-dev
      libutf8proc-dev libmicrohttpd-dev libcurl4-openssl-dev libdnnl-dev)
command -v node >/dev/null 2>&1 || PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || PKGS+=(npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -d tests/server/node_modules/openai ]; then
  echo "install-deps: npm ci (tests/server: the openai client for the server test)"
  (cd tests/server && npm ci --no-audit --no-fund --loglevel=error)
fi
