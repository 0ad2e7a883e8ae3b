#!/usr/bin/env bash
# Installs the system libraries costguard builds against (Debian/Ubuntu):
# libxmlsec1 + libxml2 headers and pkg-config (SAML signatures, via the
# samael crate), and libclang for bindgen, which generates samael's bindings.
# Idempotent: does nothing when everything is there. Needs root to install.
set -euo pipefail

have_libclang() {
  compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null \
    || compgen -G "/usr/lib/x86_64-linux-gnu/libclang*.so*" >/dev/null \
    || compgen -G "/usr/lib/aarch64-linux-gnu/libclang*.so*" >/dev/null
}

have_all() {
  command -v pkg-config >/dev/null \
    && pkg-config --exists xmlsec1 libxml-2.0 \
    && have_libclang
}

if have_all; then
  echo "install-build-deps.sh: build libraries present (xmlsec1 $(pkg-config --modversion xmlsec1), libxml2 $(pkg-config --modversion libxml-2.0), libclang)"
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-build-deps.sh: missing build libraries and I am not root; run: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
packages=(pkg-config libxmlsec1-dev libxml2-dev)
if ! have_libclang; then
  # The versioned runtime is enough for bindgen and much smaller than libclang-dev.
  clang_pkg="$(apt-cache search --names-only '^libclang1-[0-9]+$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)"
  if [[ -z "$clang_pkg" ]]; then
    apt-get update -q
    clang_pkg="$(apt-cache search --names-only '^libclang1-[0-9]+$' | awk '{print $1}' | sort -V | tail -1)"
  fi
  packages+=("$clang_pkg" "libclang-common-${clang_pkg#libclang1-}-dev")
fi
echo "install-build-deps.sh: apt-get install ${packages[*]}"
if ! apt-get install -y -q --no-install-recommends "${packages[@]}"; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${packages[@]}"
fi
have_all || { echo "install-build-deps.sh: still missing a build library after install" >&2; exit 1; }
echo "install-build-deps.sh: done"
