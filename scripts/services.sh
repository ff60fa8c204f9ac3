#!/usr/bin/env bash
# Make sure RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) are running on
# this machine, starting whichever is not. Idempotent: when both already accept
# connections it returns at once. Exits non-zero with a message if a service
# does not come up.
#
# Environment (optional):
#   SERVICES_TIMEOUT   seconds to wait for each service to come up (default 60)
set -euo pipefail

TIMEOUT="${SERVICES_TIMEOUT:-60}"

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: ERROR: %s\n' "$*" >&2; exit 1; }

# port_open HOST PORT: true when a TCP connection to HOST:PORT succeeds.
port_open() {
  # shellcheck disable=SC2016 # $1/$2 are expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [[ "$(timeout 3 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]
  else
    port_open 127.0.0.1 6379
  fi
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND once a second for TIMEOUT seconds.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 1
  done
  log "$what is up"
}

ensure_rabbitmq() {
  if port_open 127.0.0.1 5672; then
    log "RabbitMQ already accepts connections on 127.0.0.1:5672"
    return 0
  fi
  command -v rabbitmq-server >/dev/null 2>&1 \
    || die "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed (apt-get install rabbitmq-server)"
  log "starting RabbitMQ (rabbitmq-server -detached)"
  rabbitmq-server -detached || die "rabbitmq-server -detached failed"
  wait_for "RabbitMQ (127.0.0.1:5672)" port_open 127.0.0.1 5672 \
    || die "RabbitMQ did not accept connections on 127.0.0.1:5672 within ${TIMEOUT}s (see /var/log/rabbitmq/)"
}

ensure_redis() {
  if port_open 127.0.0.1 6379; then
    log "Redis already accepts connections on 127.0.0.1:6379"
  else
    command -v redis-server >/dev/null 2>&1 \
      || die "Redis is not running on 127.0.0.1:6379 and redis-server is not installed (apt-get install redis-server)"
    log "starting Redis (redis-server --daemonize yes)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      || die "redis-server failed to start"
  fi
  wait_for "Redis (127.0.0.1:6379)" redis_ping \
    || die "Redis did not answer PING on 127.0.0.1:6379 within ${TIMEOUT}s"
}

ensure_rabbitmq
ensure_redis
