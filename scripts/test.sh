#!/usr/bin/env bash
# The whole test suite (`make test`, and what `.ci/run` runs): installs
# what is missing first (build libraries, rustfmt/clippy, test peers), then
# runs formatting, lints, every test, and the deployment file checks.
# Fails on the first failure. Works from a fresh clone, as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- toolchain"
cargo --version
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "--- build libraries (libxmlsec1, libxml2, libclang for bindgen)"
bash scripts/install-build-deps.sh

echo "--- cargo fmt --check"
cargo fmt --check

echo "--- cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "--- test peers (OpenID provider, SAML IdP, Chromium, Node and Python packages)"
bash tests/peers/install.sh

echo "--- cargo test (the whole suite)"
cargo test

echo "--- deploy/ checks (Kubernetes schemas, Dockerfile lint)"
venv=target/ci-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements-ci.txt
"$venv/bin/python" deploy/check.py

echo "--- ok"
