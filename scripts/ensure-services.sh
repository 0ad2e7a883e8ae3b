#!/usr/bin/env bash
# Makes sure the shared-mode test services answer: PostgreSQL on
# 127.0.0.1:5432 (trust auth, database `test`) and Redis on 127.0.0.1:6379.
# Starts whichever does not answer (the commands are the ones this machine
# and CI document), waits for it, and fails loudly if it still does not
# answer: the shared-mode tests never skip. Idempotent; safe to run often.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 -d test >/dev/null 2>&1; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $what does not answer after 30 s" >&2
  return 1
}

for tool in pg_isready pg_ctlcluster redis-cli redis-server; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-services: $tool is missing; installing postgresql and redis-server" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server >/dev/null
    break
  fi
done

if pg_up; then
  echo "ensure-services: PostgreSQL answers on 127.0.0.1:5432"
else
  echo "ensure-services: starting PostgreSQL"
  # shellcheck disable=SC2046
  as_root pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start || true
  wait_for PostgreSQL pg_up
fi

if redis_up; then
  echo "ensure-services: Redis answers on 127.0.0.1:6379"
else
  echo "ensure-services: starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for Redis redis_up
fi
