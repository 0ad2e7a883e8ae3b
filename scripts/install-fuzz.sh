#!/usr/bin/env bash
# The fuzz job's tools: the nightly toolchain (libFuzzer's -Zsanitizer and
# SanitizerCoverage flags are nightly-only) and cargo-fuzz. Fails loudly if
# either cannot be had: the fuzz job never skips silently.
set -euo pipefail
if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version
