#!/usr/bin/env bash
# Proxy throughput with IdP-issued JWT bearer tokens versus API keys, in one
# interleaved run on one machine: the same costguard build and process,
# the same route and upstream; only the credential differs. A second
# costguard process has the verified-token cache off, so every request
# verifies the RS256 signature with the cached key.
#
#   benches/jwt-bench.sh [ROUNDS] [SECONDS] [CONNECTIONS]
#
# CPU 0: nginx upstream + wrk; CPU 1: the proxy under test (costguard with one
# worker thread, or nginx as a keep-alive reverse proxy: the baseline).
# Keys and SSO users both get the enterprise tier's rate, set high here so
# the limiter runs but never refuses.
# Loopback only; stops only the processes it started (by pid). Needs wrk,
# nginx and the test peers (tests/peers/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; SECS=${2:-8}; CONNS=${3:-64}
W=$(mktemp -d /tmp/costguard-jwt-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cargo build --release --bin costguard
BIN=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/costguard
bash tests/peers/install.sh >/dev/null

mkdir -p "$W/ngx"
cat >"$W/ngx/nginx.conf" <<NGX
worker_processes 1; pid $W/ngx/nginx.pid; error_log $W/ngx/error.log warn; daemon off;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $W/ngx/cb; proxy_temp_path $W/ngx/px;
  fastcgi_temp_path $W/ngx/fc; uwsgi_temp_path $W/ngx/uw; scgi_temp_path $W/ngx/sc;
  keepalive_requests 10000000;
  server { listen 127.0.0.1:18380; location / { return 200 '{"items":[]}'; } } }
NGX
taskset -c 0 nginx -p "$W/ngx" -c "$W/ngx/nginx.conf" & PIDS+=($!)
# The baseline: nginx as a keep-alive reverse proxy on the proxy's core.
mkdir -p "$W/ngxp"
cat >"$W/ngxp/nginx.conf" <<NGX
worker_processes 1; pid $W/ngxp/nginx.pid; error_log $W/ngxp/error.log warn; daemon off;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $W/ngxp/cb; proxy_temp_path $W/ngxp/px;
  fastcgi_temp_path $W/ngxp/fc; uwsgi_temp_path $W/ngxp/uw; scgi_temp_path $W/ngxp/sc;
  keepalive_requests 10000000;
  upstream app { server 127.0.0.1:18380; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:18383;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGX
taskset -c 1 nginx -p "$W/ngxp" -c "$W/ngxp/nginx.conf" & PIDS+=($!)
NGXP_PID=$!

echo '{"clients":[],"users":{}}' >"$W/idp.json"
node tests/peers/idp.mjs --host 127.0.0.2 --port 0 --config "$W/idp.json" --state "$W" >"$W/idp.out" 2>/dev/null & PIDS+=($!)
for _ in $(seq 100); do [[ -s $W/idp.out ]] && break; sleep 0.1; done
ISSUER=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["issuer"])' "$W/idp.out")

declare -A PID_OF
start() { # name port admin-port token-cache
  cat >"$W/$1.toml" <<TOML
[sso]
token_cache_capacity = $4
[[sso.oidc]]
name = "bench"
issuer = "$ISSUER"
client_id = "bench"
redirect_url = "http://127.0.0.1:$2/auth/callback"
tenant_claim = "tenant_id"
roles_claim = "roles"
TOML
  env COSTGUARD_ADMIN_TOKEN=bench-admin-token-0123456789 COSTGUARD_STORE_PATH="$W/$1-store" \
    COSTGUARD_PROXY_LISTEN=127.0.0.1:$2 COSTGUARD_ADMIN_LISTEN=127.0.0.1:$3 \
    COSTGUARD_PROXY_UPSTREAM=http://127.0.0.1:18380 COSTGUARD_LOG_ACCESS_LOG=false TOKIO_WORKER_THREADS=1 \
    COSTGUARD_RATE_LIMIT_ENTERPRISE=1000000/second \
    taskset -c 1 "$BIN" serve --config "$W/$1.toml" >"$W/$1.log" 2>&1 & PIDS+=($!)
  PID_OF[$2]=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$3/ready" >/dev/null && break; sleep 0.1; done
}
admin() { curl -sf -H "Authorization: Bearer bench-admin-token-0123456789" -H 'Content-Type: application/json' "$@"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

start cached 18381 18391 100000
start verify 18382 18392 0
# The same tenant id in both stores is not possible (ids are random): one tenant each.
T1=$(admin -d '{"organization_name":"B","admin_email":"b@b.example","tier":"enterprise"}' http://127.0.0.1:18391/admin/v1/tenants | json tenant_id)
T2=$(admin -d '{"organization_name":"B","admin_email":"b@b.example","tier":"enterprise"}' http://127.0.0.1:18392/admin/v1/tenants | json tenant_id)
K1=$(admin -d '{"roles":["viewer"]}' "http://127.0.0.1:18391/admin/v1/tenants/$T1/keys" | json api_key)
K2=$(admin -d '{"roles":["viewer"]}' "http://127.0.0.1:18392/admin/v1/tenants/$T2/keys" | json api_key)
mint() { # tenant
  local now; now=$(date +%s)
  curl -sf -H 'Content-Type: application/json' \
    -d "{\"claims\":{\"iss\":\"$ISSUER\",\"aud\":\"bench\",\"sub\":\"bench-user\",\"iat\":$now,\"exp\":$((now + 3600)),\"tenant_id\":\"$1\",\"roles\":[\"viewer\"]}}" \
    "$ISSUER/__test/mint" | json token
}
J1=$(mint "$T1"); J2=$(mint "$T2")

# CPU time (user + system, in clock ticks) of a process and its threads
# (nginx: its worker, the master's only child).
ticks() {
  local pid=$1
  if [[ $pid == nginx ]]; then pid=$(pgrep -P "$NGXP_PID" | head -1); fi
  awk '{print $14 + $15}' "/proc/$pid/stat"
}
run() { # label port tenant credential
  local url="http://127.0.0.1:$2/v1/tenants/$3/costs"
  local code; code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $4" "$url")
  [[ $code == 200 ]] || { echo "$1: status $code" >&2; exit 1; }
  local pid=${PID_OF[$2]:-nginx} before after out
  before=$(ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" -H "Authorization: Bearer $4" "$url")
  after=$(ticks "$pid")
  local rps n
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  # Proxy CPU per request in µs (clock ticks are 1/100 s).
  echo "$1 $rps $(python3 -c "print(f'{($after - $before) * 1e4 / $n:.1f}')")"
}
declare -A SUM
for r in $(seq "$ROUNDS"); do
  while read -r label rps cpu; do
    echo "round $r $label $rps req/s, $cpu µs proxy CPU/request"
    echo "$label $rps $cpu" >>"$W/results"
  done < <(
    run nginx-proxy 18383 x x
    run key 18381 "$T1" "$K1"
    run jwt-cached 18381 "$T1" "$J1"
    run key-2 18382 "$T2" "$K2"
    run jwt-verify-each 18382 "$T2" "$J2"
  )
done
python3 - "$W/results" <<'PY'
import sys, statistics, collections
d = collections.defaultdict(list); cpu = collections.defaultdict(list)
for line in open(sys.argv[1]):
    k, v, c = line.split(); d[k].append(float(v)); cpu[k].append(float(c))
med = {k: statistics.median(v) for k, v in d.items()}
mcpu = {k: statistics.median(v) for k, v in cpu.items()}
for k, v in med.items():
    print(f"{k:16} median {v:10.0f} req/s, {mcpu[k]:6.1f} µs proxy CPU/request ({len(d[k])} rounds)")
print(f"CPU/request: jwt-cached / key = {mcpu['jwt-cached']/mcpu['key']:.2f}, jwt-verify-each / key-2 = {mcpu['jwt-verify-each']/mcpu['key-2']:.2f}")
print(f"jwt-cached / key           = {med['jwt-cached']/med['key']:.2f}")
print(f"jwt-verify-each / key-2    = {med['jwt-verify-each']/med['key-2']:.2f}")
for k in ('key', 'jwt-cached', 'key-2', 'jwt-verify-each'):
    print(f"{k + ' / nginx-proxy':27}= {med[k]/med['nginx-proxy']:.2f}")
PY
