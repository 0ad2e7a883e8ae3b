#!/usr/bin/env bash
# Installs the test peers: Debian chromium, xmlsec1 and promtool (apt), the npm packages in this
# directory (oidc-provider, playwright-core) and a Python venv at .venv with
# requirements-saml.txt (pysaml2 for saml_idp.py). Idempotent; does nothing when
# already installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

apt_install() {
  local pkg="$1" path="$2"
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "install.sh: $path is missing and I am not root; run as root or: apt-get install -y --no-install-recommends $pkg" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    echo "install.sh: apt-get update"
    apt-get update -q
  fi
  echo "install.sh: apt-get install $pkg"
  apt-get install -y -q --no-install-recommends "$pkg"
  if [[ ! -x "$path" ]]; then
    echo "install.sh: apt-get install $pkg did not provide $path" >&2
    exit 1
  fi
}

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

install_xmlsec1() {
  if [[ -x /usr/bin/xmlsec1 ]]; then
    echo "install.sh: xmlsec1 already installed ($(/usr/bin/xmlsec1 --version 2>/dev/null || echo '?'))"
    return
  fi
  apt_install xmlsec1 /usr/bin/xmlsec1
}

# promtool (Debian's prometheus package): checks the /metrics page in
# tests/metrics.rs and the alert rules in deploy/monitoring/ (.ci/run). The
# package's server is not started (--no-install-recommends; the unit is
# not enabled without systemd).
install_promtool() {
  if [[ -x /usr/bin/promtool ]]; then
    echo "install.sh: promtool already installed"
    return
  fi
  apt_install prometheus /usr/bin/promtool
}

install_saml_venv() {
  local venv="$here/.venv" req="$here/requirements-saml.txt"
  local marker="$venv/.requirements-saml.installed"
  if [[ -f "$marker" && -x "$venv/bin/python" && ! "$req" -nt "$marker" ]]; then
    echo "install.sh: Python venv up to date ($venv)"
    return
  fi
  if ! command -v python3 >/dev/null; then
    echo "install.sh: python3 is not installed (3.11+ needed)" >&2
    exit 1
  fi
  if ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "install.sh: python3 -m venv $venv ($(python3 --version))"
    python3 -m venv --clear "$venv"
  fi
  echo "install.sh: pip install -r $(basename "$req") into $venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
  "$venv/bin/python" -c 'import saml2, lxml, cryptography'
  touch "$marker"
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
install_xmlsec1
install_promtool
install_node_modules
install_saml_venv
echo "install.sh: done"
