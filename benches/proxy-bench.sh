#!/usr/bin/env bash
# Whole-proxy throughput and latency through the shared load harness
# (../shared/bench/run.sh): costguard with API key authentication, policy
# and limits beside nginx, haproxy and a bare hyper forwarder, in one
# interleaved run; plus costguard with per-key rate limiting off
# (`costguard-nolimits`; the daily quota is still counted, it is how usage
# is counted), with the audit log off (`costguard-noaudit`), with the
# JSON access log on (`costguard-accesslog`), and as a plain pass-through
# (`costguard-passthrough`: one public route, audit and limits off), and
# with the per-request metrics off (`costguard-nometrics`), and with the
# shipped policy's business events off (`costguard-nobusiness`: one audit
# record per request instead of two), so the access decision's own cost
# (or the metrics', or the business record's) is the difference between
# two lines.
#
# It builds the release binaries, makes a store with one tenant and one
# viewer key
# (through the real admin API), then runs the harness with that key as the
# bearer token every config receives. Loopback only; the costguard processes
# it starts for setup are stopped by their own pid.
#
#   benches/proxy-bench.sh [run.sh options, e.g. -r 3 -d 10]
#   PLAIN_BIN=/path/to/costguard-without-auth benches/proxy-bench.sh   # adds that build as "costguard-plain"
#   BEFORE_BIN=/path/to/older/costguard benches/proxy-bench.sh          # adds that build as "costguard-before" (A/B)
#   OTHER_BINS="glibc=/path/a other=/path/b" benches/proxy-bench.sh     # adds those builds as "costguard-glibc", ... (everything on)
#   BENCH_CANDIDATES="costguard costguard-noaudit" benches/proxy-bench.sh -c 64 -r 6   # only those
#   SHARED=1 benches/proxy-bench.sh   # adds "costguard-shared": PostgreSQL store + Redis limiter
#                                     # (127.0.0.1:5432 database test, a schema of its own; 127.0.0.1:6379)
#   SHARED=all benches/proxy-bench.sh # also -shared-noaudit (no audit shipping) and -shared-leased
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS=${HARNESS:-../shared/bench/run.sh}
WORK=$(mktemp -d /tmp/costguard-bench.XXXXXX)

cargo build --release --bin costguard --example bare_forwarder --example copy_store
TARGET=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
BIN=$TARGET/release/costguard
# Candidates run on defaults plus environment overrides (an empty file is a
# valid configuration), so older builds (PLAIN_BIN) accept it too.
CONFIG=$WORK/empty.toml
: >"$CONFIG"

# One tenant and key in a fresh store, created through the admin API.
. benches/bench-store.sh
bench_store "$BIN" "$CONFIG" "$WORK/store" 18189

common="COSTGUARD_PROXY_LISTEN=127.0.0.1:{PORT} COSTGUARD_PROXY_UPSTREAM=http://{UPSTREAM} COSTGUARD_ADMIN_LISTEN=127.0.0.1:0"
# The request is a real route of the shipped policy, for the key's tenant.
args=(--configs "${BENCH_CONFIGS:-direct nginx nginx-authreq haproxy}" --auth-key "$KEY"
  --path "/v1/tenants/$TENANT/costs?month=2026-11"
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store COSTGUARD_LOG_ACCESS_LOG=false $BIN serve --config $CONFIG"
  --port 18090 --name costguard
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store2 COSTGUARD_LOG_FORMAT=json $BIN serve --config $CONFIG > /dev/null"
  --port 18092 --name costguard-accesslog
  --candidate "$TARGET/release/examples/bare_forwarder --listen 127.0.0.1:{PORT} --upstream http://{UPSTREAM}"
  --port 18091 --name bare-hyper
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store4 COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_RATE_LIMIT_ENABLED=false $BIN serve --config $CONFIG"
  --port 18094 --name costguard-nolimits
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store5 COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_AUDIT_ENABLED=false $BIN serve --config $CONFIG"
  --port 18095 --name costguard-noaudit
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store10 COSTGUARD_POLICY_DIR=$WORK/passthrough COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_AUDIT_ENABLED=false COSTGUARD_RATE_LIMIT_ENABLED=false $BIN serve --config $CONFIG"
  --port 18100 --name costguard-passthrough
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store11 COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_METRICS_ENABLED=false $BIN serve --config $CONFIG"
  --port 18101 --name costguard-nometrics
  --candidate "env $common COSTGUARD_STORE_PATH=$WORK/store12 COSTGUARD_POLICY_DIR=$WORK/nobusiness COSTGUARD_LOG_ACCESS_LOG=false $BIN serve --config $CONFIG"
  --port 18102 --name costguard-nobusiness)
passthrough_policy "$WORK/passthrough"
no_business_policy "$WORK/nobusiness"
# The access-log and no-limits candidates need their own store (sled allows one process per
# store): copy the one with the key.
cp -r "$WORK/store" "$WORK/store2"
cp -r "$WORK/store" "$WORK/store4"
cp -r "$WORK/store" "$WORK/store5"
cp -r "$WORK/store" "$WORK/store10"
cp -r "$WORK/store" "$WORK/store11"
cp -r "$WORK/store" "$WORK/store12"
# BENCH_CANDIDATES="costguard costguard-noaudit" keeps only those candidates
# (for a longer A/B run of two of them).
if [[ -n ${BENCH_CANDIDATES:-} ]]; then
  kept=(); i=0
  while ((i < ${#args[@]})); do
    if [[ ${args[i]} == --candidate ]]; then
      name=${args[i + 5]}
      if [[ " $BENCH_CANDIDATES " == *" $name "* ]]; then kept+=("${args[@]:i:6}"); fi
      i=$((i + 6))
    else
      kept+=("${args[i]}"); i=$((i + 1))
    fi
  done
  args=("${kept[@]}")
fi
if [[ -n ${BEFORE_BIN:-} ]]; then
  cp -r "$WORK/store" "$WORK/store6"
  args+=(--candidate "env $common COSTGUARD_STORE_PATH=$WORK/store6 COSTGUARD_LOG_ACCESS_LOG=false $BEFORE_BIN serve --config $CONFIG"
    --port 18096 --name costguard-before)
fi
port=18110
for other in ${OTHER_BINS:-}; do
  name=${other%%=*}; path=${other#*=}
  cp -r "$WORK/store" "$WORK/store-$name"
  args+=(--candidate "env $common COSTGUARD_STORE_PATH=$WORK/store-$name COSTGUARD_LOG_ACCESS_LOG=false $path serve --config $CONFIG"
    --port $port --name "costguard-$name")
  port=$((port + 1))
done
if [[ -n ${SHARED:-} ]]; then
  # The same tenant and key in a schema of its own, dropped afterwards.
  SCHEMA=cgbench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  PREFIX=cgbench-$SCHEMA
  shared="COSTGUARD_STORE_BACKEND=postgres COSTGUARD_STORE_URL=postgres://postgres@127.0.0.1:5432/test COSTGUARD_STORE_SCHEMA=$SCHEMA COSTGUARD_RATE_LIMIT_BACKEND=redis COSTGUARD_RATE_LIMIT_REDIS_URL=redis://127.0.0.1:6379 COSTGUARD_RATE_LIMIT_REDIS_PREFIX=$PREFIX"
  env $shared "$TARGET/release/examples/copy_store" "$WORK/store"
  trap 'psql postgres://postgres@127.0.0.1:5432/test -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE"; redis-cli --scan --pattern "$PREFIX*" | xargs -r redis-cli del >/dev/null' EXIT
  args+=(--candidate "env $common $shared COSTGUARD_STORE_PATH=$WORK/store7 COSTGUARD_LOG_ACCESS_LOG=false $BIN serve --config $CONFIG"
    --port 18097 --name costguard-shared)
  if [[ $SHARED == all ]]; then
    # Where the shared mode's cost goes: without audit shipping (audit off),
    # and with leased limits (fewer Redis round trips).
    args+=(--candidate "env $common $shared COSTGUARD_STORE_PATH=$WORK/store8 COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_AUDIT_ENABLED=false $BIN serve --config $CONFIG"
      --port 18098 --name costguard-shared-noaudit
      --candidate "env $common $shared COSTGUARD_STORE_PATH=$WORK/store9 COSTGUARD_LOG_ACCESS_LOG=false COSTGUARD_RATE_LIMIT_REDIS_MODE=leased COSTGUARD_RATE_LIMIT_LEASE_SIZE=20 $BIN serve --config $CONFIG"
      --port 18099 --name costguard-shared-leased)
  fi
fi
if [[ -n ${PLAIN_BIN:-} ]]; then
  args+=(--candidate "env $common COSTGUARD_STORE_PATH=$WORK/store3 COSTGUARD_LOG_ACCESS_LOG=false $PLAIN_BIN serve --config $CONFIG"
    --port 18093 --name costguard-plain)
fi
"$HARNESS" "${args[@]}" "$@"
