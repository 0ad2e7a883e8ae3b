#!/usr/bin/env bash
# Installs the test peers: Debian chromium (apt) and the npm packages in this directory
# (oidc-provider, playwright-core). Idempotent; does nothing when already installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

install_chromium() {
  if [[ -x /usr/bin/chromium ]]; then
    echo "install.sh: chromium already installed ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
    return
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "install.sh: /usr/bin/chromium is missing and I am not root; run as root or: apt-get install -y --no-install-recommends chromium" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show chromium >/dev/null 2>&1; then
    echo "install.sh: apt-get update"
    apt-get update -q
  fi
  echo "install.sh: apt-get install chromium"
  apt-get install -y -q --no-install-recommends chromium
}

install_node_modules() {
  if ! command -v npm >/dev/null; then
    echo "install.sh: npm is not installed (Node.js 20+ needed)" >&2
    exit 1
  fi
  local marker="$here/node_modules/.package-lock.json"
  if [[ -f "$marker" && ! "$here/package-lock.json" -nt "$marker" ]]; then
    echo "install.sh: node_modules up to date"
    return
  fi
  echo "install.sh: npm ci in $here"
  (cd "$here" && npm ci --no-audit --no-fund)
}

install_chromium
install_node_modules
echo "install.sh: done"
