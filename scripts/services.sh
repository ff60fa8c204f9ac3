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
  command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] \
    || die "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed: install it (Debian: sudo apt-get install rabbitmq-server) or point APP__AMQP__URL at a broker"
  # Debian's rabbitmq-server runs the node as the rabbitmq user and must be started by root (or
  # by that user): anyone else gets a cryptic Erlang error, so say it plainly instead.
  if [ "$(id -u)" -ne 0 ] && [ "$(id -un)" != rabbitmq ]; then
    die "RabbitMQ is not running on 127.0.0.1:5672, and user $(id -un) cannot start it (the node runs as user rabbitmq): start it as root (sudo rabbitmq-server -detached, or sudo systemctl start rabbitmq-server) and run this again"
  fi
  log "starting RabbitMQ (rabbitmq-server -detached)"
  PATH="$PATH:/usr/sbin" rabbitmq-server -detached || die "rabbitmq-server -detached failed (see /var/log/rabbitmq/)"
  wait_for "RabbitMQ (127.0.0.1:5672)" port_open 127.0.0.1 5672 \
    || die "RabbitMQ did not accept connections on 127.0.0.1:5672 within ${TIMEOUT}s (see /var/log/rabbitmq/)"
}

ensure_redis() {
  if port_open 127.0.0.1 6379; then
    log "Redis already accepts connections on 127.0.0.1:6379"
  else
    command -v redis-server >/dev/null 2>&1 \
      || die "Redis is not running on 127.0.0.1:6379 and redis-server is not installed: install it (Debian: sudo apt-get install redis-server) or point APP__REDIS__URL at a server"
    # Any user can run this one (it keeps nothing on disk); its log says why it would not start.
    local logfile
    logfile="${TMPDIR:-/tmp}/services-redis-$(id -un).log"
    log "starting Redis (redis-server --daemonize yes, log $logfile)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir "${TMPDIR:-/tmp}" --logfile "$logfile" \
      || die "redis-server failed to start as user $(id -un) (see $logfile)"
  fi
  wait_for "Redis (127.0.0.1:6379)" redis_ping \
    || die "Redis did not answer PING on 127.0.0.1:6379 within ${TIMEOUT}s"
}

# url_is_local URL: true when URL (or every node of a comma-separated list) names this machine.
url_is_local() {
  local url="$1" node host
  IFS=',' read -ra nodes <<<"$url"
  for node in "${nodes[@]}"; do
    host=${node#*://}; host=${host#*@}; host=${host%%/*}; host=${host%:*}
    case "$host" in
      127.0.0.1|localhost|"[::1]") ;;
      *) return 1 ;;
    esac
  done
}

# A run configured for other servers (APP__AMQP__URL, APP__REDIS__URL) needs no local ones.
if [ -n "${APP__AMQP__URL:-}" ] && ! url_is_local "$APP__AMQP__URL"; then
  log "APP__AMQP__URL names another host: not checking a local RabbitMQ"
else
  ensure_rabbitmq
fi
if [ -n "${APP__REDIS__CLUSTER_URLS:-}" ] || { [ -n "${APP__REDIS__URL:-}" ] && ! url_is_local "$APP__REDIS__URL"; }; then
  log "APP__REDIS__URL names another host: not checking a local Redis"
else
  ensure_redis
fi
