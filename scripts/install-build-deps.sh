#!/usr/bin/env bash
# Installs the system libraries costguard builds against (Debian/Ubuntu):
# libxmlsec1 + libxml2 headers and pkg-config (SAML signatures, via the
# samael crate), and libclang for bindgen, which generates samael's bindings.
# Idempotent: does nothing when everything is there. Installs as root, or
# through sudo when run by another user.
set -euo pipefail

# bindgen loads libclang through clang-sys, which accepts `libclang.so`,
# `libclang.so.N` and `libclang-N.so[.M]` (never `libclang-cpp.so.N`, the C++
# interface a fresh Debian machine often has), from $LIBCLANG_PATH, the LLVM
# lib directories and the system library directories.
have_libclang_library() {
  local dirs=(${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/local/llvm*/lib* /usr/lib /usr/lib64 /usr/lib/*-linux-gnu /usr/local/lib)
  local d
  for d in "${dirs[@]}"; do
    [[ -d "$d" ]] || continue
    if find "$d" -maxdepth 1 \( -type f -o -type l \) -regextype posix-extended \
        -regex '.*/libclang(-[0-9][0-9.]*)?\.so(\.[0-9][0-9.]*)?' -print -quit 2>/dev/null | grep -q .; then
      return 0
    fi
  done
  return 1
}

# bindgen also needs clang's own headers (stddef.h, ...) to parse the
# libxml2/xmlsec headers: Debian ships them in libclang-common-N-dev.
have_clang_headers() {
  compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stddef.h" >/dev/null \
    || compgen -G "/usr/lib/clang/*/include/stddef.h" >/dev/null \
    || compgen -G "/usr/local/lib/clang/*/include/stddef.h" >/dev/null
}

have_all() {
  command -v pkg-config >/dev/null \
    && pkg-config --exists xmlsec1 libxml-2.0 \
    && have_libclang_library \
    && have_clang_headers
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "install-build-deps.sh: missing build libraries; run this script as root (no sudo here)" >&2
    exit 1
  fi
}

if have_all; then
  echo "install-build-deps.sh: build libraries present (xmlsec1 $(pkg-config --modversion xmlsec1), libxml2 $(pkg-config --modversion libxml-2.0), libclang)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() { [[ $apt_updated -eq 1 ]] || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q; apt_updated=1; }; }

packages=(pkg-config libxmlsec1-dev libxml2-dev)
if ! have_libclang_library || ! have_clang_headers; then
  # The versioned runtime is enough for bindgen and much smaller than
  # libclang-dev. Prefer the LLVM version already on the machine (its
  # libclang-cpp), else the newest one apt offers.
  find_clang_pkg() {
    local present
    present="$(ls -d /usr/lib/llvm-* 2>/dev/null | sed 's/.*llvm-//' | sort -V | tail -1)"
    if [[ -n "$present" ]] && apt-cache show "libclang1-$present" >/dev/null 2>&1; then
      echo "libclang1-$present"
    else
      apt-cache search --names-only '^libclang1-[0-9]+$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1
    fi
  }
  clang_pkg="$(find_clang_pkg)"
  if [[ -z "$clang_pkg" ]]; then
    apt_update
    clang_pkg="$(find_clang_pkg)"
  fi
  [[ -n "$clang_pkg" ]] || { echo "install-build-deps.sh: apt offers no libclang1-N package" >&2; exit 1; }
  packages+=("$clang_pkg" "libclang-common-${clang_pkg#libclang1-}-dev")
fi
echo "install-build-deps.sh: apt-get install ${packages[*]}"
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"; then
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}"
fi
have_all || { echo "install-build-deps.sh: still missing a build library after install (libclang: $(have_libclang_library && echo ok || echo missing), clang headers: $(have_clang_headers && echo ok || echo missing))" >&2; exit 1; }
echo "install-build-deps.sh: done"
