#!/usr/bin/env bash
# Installs the Debian 12 packages dspark needs to build, test and run. Idempotent: does
# nothing (and needs no network) when everything is present. Nothing comes from anywhere
# but Debian's archive.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-dev libpcre2-dev libjansson-dev
      libutf8proc-dev libmicrohttpd-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
