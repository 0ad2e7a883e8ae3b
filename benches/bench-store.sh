# Sourced by the bench scripts (proxy-bench.sh, instructions.sh): one
# tenant and one viewer key in a fresh embedded store, made through the
# real admin API of a costguard started for that and stopped by its pid.
#
#   bench_store BIN CONFIG STORE_DIR ADMIN_PORT   → sets TENANT and KEY
bench_store() {
  local bin=$1 config=$2 store=$3 port=$4 token pid
  token=bench-admin-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
  COSTGUARD_ADMIN_TOKEN=$token COSTGUARD_STORE_PATH=$store COSTGUARD_PROXY_LISTEN=127.0.0.1:0 \
    COSTGUARD_ADMIN_LISTEN=127.0.0.1:$port COSTGUARD_LOG_FORMAT=json \
    "$bin" serve --config "$config" >"$store.setup.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  TENANT=$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"organization_name":"Bench","admin_email":"bench@example.com","tier":"enterprise"}' \
    "http://127.0.0.1:$port/admin/v1/tenants" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tenant_id"])')
  KEY=$(curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"description":"bench","roles":["viewer"],"rate_limit_per_minute":1000000}' \
    "http://127.0.0.1:$port/admin/v1/tenants/$TENANT/keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
  kill -TERM "$pid"; wait "$pid" || true
}

# A policy directory whose one route is public (every method, every path):
# costguard then authenticates, authorizes, limits and audits nothing, so a
# candidate on it measures costguard's own pass-through (listener, request
# id, size limits, target check, header hygiene, forwarding).
#
#   passthrough_policy DIR
passthrough_policy() {
  mkdir -p "$1"
  cp policies/roles.toml "$1/"
  printf '[[public]]\nmethod = "*"\npath = "/**"\n' >"$1/public.toml"
}

# The shipped policy without its business events (`audit_event`): one
# record per request instead of two on the bench's route.
#   no_business_policy DIR
no_business_policy() {
  mkdir -p "$1"
  cp policies/roles.toml "$1/"
  grep -v '^audit_event' policies/routes.toml >"$1/routes.toml"
}
