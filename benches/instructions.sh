#!/usr/bin/env bash
# User-space instructions per proxied request under callgrind
# (../shared/bench/instr.py): nginx proxy_pass beside costguard with
# everything on (API key, policy, limits, audit) and with the audit log off,
# in one run. Deterministic on a noisy machine (it repeats to within 0.1 %),
# so it judges a change before the load harness (benches/proxy-bench.sh)
# confirms it. Caveat: valgrind hides SHA-NI, so hashing counts several
# times its native cost (see instr.py).
#
# It builds the release binary, makes a store with one tenant and one
# viewer key through the real admin API (as proxy-bench.sh does), then
# runs instr.py with that key, beside costguard as a plain pass-through
# (one public route, audit and limits off: costguard's own floor).
# Loopback only; it stops only what it started.
#
#   benches/instructions.sh [instr.py options, e.g. -n 3000 -c 8]
#   BEFORE_BIN=/path/to/older/costguard benches/instructions.sh   # adds that build (A/B)
#   BIN=/path/to/costguard benches/instructions.sh                # measures that build (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
INSTR=${INSTR:-../shared/bench/instr.py}
WORK=$(mktemp -d /tmp/costguard-instr.XXXXXX)

if [[ -z ${BIN:-} ]]; then
  cargo build --release --bin costguard
  BIN=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/costguard
fi
CONFIG=$WORK/empty.toml
: >"$CONFIG"

# One tenant and key in a fresh store, created through the admin API.
. benches/bench-store.sh
bench_store "$BIN" "$CONFIG" "$WORK/store" 18289
# sled allows one process per store: each candidate gets its own copy.
cp -r "$WORK/store" "$WORK/store2"
cp -r "$WORK/store" "$WORK/store4"
cp -r "$WORK/store" "$WORK/store5"
cp -r "$WORK/store" "$WORK/store6"
passthrough_policy "$WORK/passthrough"
no_business_policy "$WORK/nobusiness"

common="COSTGUARD_PROXY_LISTEN=127.0.0.1:{PORT} COSTGUARD_PROXY_UPSTREAM=http://{UPSTREAM} COSTGUARD_ADMIN_LISTEN=127.0.0.1:0 COSTGUARD_LOG_ACCESS_LOG=false"
args=(--auth-key "$KEY" --path "/v1/tenants/$TENANT/costs?month=2026-11"
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store $BIN serve --config $CONFIG" --name costguard
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store2 COSTGUARD_AUDIT_ENABLED=false $BIN serve --config $CONFIG" --name costguard-noaudit
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store4 COSTGUARD_POLICY_DIR=$WORK/passthrough COSTGUARD_AUDIT_ENABLED=false COSTGUARD_RATE_LIMIT_ENABLED=false $BIN serve --config $CONFIG" --name costguard-passthrough
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store5 COSTGUARD_METRICS_ENABLED=false $BIN serve --config $CONFIG" --name costguard-nometrics
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store6 COSTGUARD_POLICY_DIR=$WORK/nobusiness $BIN serve --config $CONFIG" --name costguard-nobusiness)
if [[ -n ${BEFORE_BIN:-} ]]; then
  cp -r "$WORK/store" "$WORK/store3"
  args+=(--candidate "env $common COSTGUARD_STORE_PATH=$WORK/store3 $BEFORE_BIN serve --config $CONFIG" --name costguard-before)
fi
python3 "$INSTR" "${args[@]}" --out "$WORK/instr" "$@"
echo "profiles (callgrind_annotate): $WORK/instr"
