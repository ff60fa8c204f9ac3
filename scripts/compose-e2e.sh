#!/usr/bin/env bash
# The README's `docker compose up --build --scale worker=3`, for real, on this machine: a private
# Docker engine (scripts/docker/engine.sh), local stand-ins for the base images where no image
# registry can be reached (scripts/docker/base-images.sh), the project's own Dockerfile and
# docker-compose.yml unchanged, plus docker-compose.ci.yml (build settings only, each with its
# reason). Then, through the published port as a user would:
#   1. wait until every service is healthy;
#   2. submit a job, poll its status URL to the 303, fetch the result and compare it;
#   3. submit sleep jobs, `docker kill` a worker container while they run: every job must still
#      end `succeeded` (its message comes back to another worker);
#   4. `docker compose down -v`.
# The engine it started is stopped at the end, also when a step fails. Images and the build
# cache stay in the engine's data root (ARR_DOCKER_ROOT) for the next run on this machine.
#
#   bash scripts/compose-e2e.sh          (as root: it installs packages and runs dockerd)
#
# Environment: COMPOSE_E2E_JOBS (sleep jobs for the kill, default 30),
#              COMPOSE_E2E_TIMEOUT (seconds for the whole run after the build, default 600).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/docker/engine.sh
source scripts/docker/engine.sh

JOBS="${COMPOSE_E2E_JOBS:-30}"
TIMEOUT="${COMPOSE_E2E_TIMEOUT:-600}"
project=arr-e2e
compose=(docker compose -p "$project" -f docker-compose.yml -f docker-compose.ci.yml)
base="http://127.0.0.1:8080"

log() { printf '\ncompose-e2e: %s\n' "$*" >&2; }
fail() {
  printf '\ncompose-e2e: FAILED: %s\n' "$*" >&2
  "${compose[@]}" ps -a >&2 2>/dev/null || true
  "${compose[@]}" logs --no-color --tail 40 >&2 2>/dev/null || true
  exit 1
}

cleanup() {
  local status=$?
  if [ -n "${DOCKER_HOST:-}" ] && docker info >/dev/null 2>&1; then
    log "docker compose down -v"
    "${compose[@]}" down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    # Keep the base images and the build cache (the next run's dependency layer); drop the
    # untagged images that each new build leaves behind.
    docker image prune -f >/dev/null 2>&1 || true
    docker builder prune -f --keep-storage 6GB >/dev/null 2>&1 || true
  fi
  engine_stop
  exit "$status"
}
trap cleanup EXIT
# A command that fails under `set -e` says where, before the cleanup's output.
trap 'printf "\ncompose-e2e: FAILED at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
engine_tools
engine_start
bash scripts/docker/base-images.sh

for port in 8080 15672; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port on 127.0.0.1 is taken; the compose file publishes there"
  fi
done

log "docker compose build (the project's Dockerfile)"
start=$SECONDS
"${compose[@]}" build || fail "the image did not build"
log "image built in $((SECONDS - start)) s"

deadline=$((SECONDS + TIMEOUT))
log "docker compose up --scale worker=3, waiting until healthy"
start=$SECONDS
"${compose[@]}" up -d --scale worker=3 --wait --wait-timeout 300 || fail "the services did not become healthy"
log "healthy in $((SECONDS - start)) s"
"${compose[@]}" ps

# json FIELD: a top-level string or number member of the JSON document on stdin.
json() { python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$1"; }

# submit BODY: prints the Location of a 202 answer, fails otherwise.
submit() {
  local headers
  headers=$(curl -sS -o /dev/null -D - -X POST "$base/v1/jobs" -H 'content-type: application/json' -d "$1") \
    || fail "POST /v1/jobs did not answer"
  grep -q '^HTTP/[0-9.]* 202' <<<"$headers" || fail "POST /v1/jobs answered $(head -n1 <<<"$headers")"
  tr -d '\r' <<<"$headers" | awk 'tolower($1) == "location:" {print $2}'
}

log "a job through the published port: 202, polls, 303, the result"
loc=$(submit '{"type":"hash","input":{"bytes":1048576,"seed":7}}')
[ -n "$loc" ] || fail "the 202 had no Location"
echo "Location: $loc"
code=""
until [ "$code" = 303 ]; do
  ((SECONDS < deadline)) || fail "the job did not reach 303 in time (last answer $code)"
  code=$(curl -sS -o /dev/null -w '%{http_code}' "$base$loc")
  case "$code" in 202|303) ;; *) fail "GET $loc answered $code" ;; esac
  [ "$code" = 303 ] || sleep 0.3
done
redirect=$(curl -sS -o /dev/null -w '%{redirect_url}' "$base$loc")
[ "$redirect" = "$base$loc/result" ] || fail "the 303 pointed at $redirect, not $base$loc/result"
result=$(curl -sS -f "$base$loc/result") || fail "GET $loc/result failed"
echo "result: $result"
[ "$(json bytes <<<"$result")" = 1048576 ] && [ "$(json seed <<<"$result")" = 7 ] \
  && [ "$(json sha256 <<<"$result" | wc -c)" = 65 ] || fail "unexpected result $result"

log "$JOBS sleep jobs, one worker container killed while they run"
locs=()
for ((i = 0; i < JOBS; i++)); do
  locs+=("$(submit '{"type":"sleep","input":{"seconds":3}}')")
done
sleep 1.5
victim=$("${compose[@]}" ps -q worker | awk 'NR == 1')
[ -n "$victim" ] || fail "no worker container to kill"
running_before=$(for l in "${locs[@]}"; do curl -sS "$base$l" | json status; done | grep -c running || true)
docker kill "$victim" >/dev/null || fail "docker kill $victim failed"
echo "killed worker container ${victim:0:12} with $running_before of $JOBS jobs running"
pending=("${locs[@]}")
succeeded=0 again=0
while ((${#pending[@]})); do
  ((SECONDS < deadline)) || fail "${#pending[@]} of $JOBS jobs did not end in time"
  left=()
  for l in "${pending[@]}"; do
    doc=$(curl -sS "$base$l") || fail "GET $l did not answer"
    status=$(json status <<<"$doc")
    case "$status" in
      queued|running) left+=("$l") ;;
      succeeded)
        succeeded=$((succeeded + 1))
        if [ "$(json attempts <<<"$doc")" -gt 1 ]; then again=$((again + 1)); fi ;;
      *) fail "job $l ended $status: $doc" ;;
    esac
  done
  pending=("${left[@]}")
  ((${#pending[@]} == 0)) || sleep 1
done
((succeeded == JOBS)) || fail "$succeeded of $JOBS jobs succeeded"
echo "compose-e2e: $succeeded of $JOBS jobs succeeded after a worker was killed; $again ran again on another worker"
((again > 0)) || echo "compose-e2e: (no job had to run again: the kill met no running job)"
log "passed"
