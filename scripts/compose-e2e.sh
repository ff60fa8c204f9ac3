#!/usr/bin/env bash
# The README's `docker compose up --build --scale worker=3`, for real, on this machine: a private
# Docker engine (scripts/docker/engine.sh), local stand-ins for the base images where no image
# registry can be reached (scripts/docker/base-images.sh), the project's own Dockerfile and
# docker-compose.yml unchanged, plus docker-compose.ci.yml (build settings only, each with its
# reason). Then, through the published port as a user would:
#   1. wait until every service is healthy;
#   2. submit a job, poll its status URL to the 303, fetch the result and compare it;
#   2b. the declared types of examples/job-types.toml (mounted into the workers): once a worker
#      has registered them, a `render` job (http: the example-backend service renders an SVG)
#      and a `factor` job (command: coreutils' factor), each polled to its 303, its result
#      fetched and compared, with its Content-Type and the status document's result.media_type;
#   3. submit sleep jobs, `docker kill` a worker container while they run: every job must still
#      end `succeeded` (its message comes back to another worker);
#   4. `docker compose down -v`.
# Then the two worker kinds of docker-compose.kinds.yml (worker: echo, sleep, fail; worker-hash:
# hash), from the image already built:
#   5. `up --build --scale worker=1 --scale worker-hash=1`, wait until every service is healthy
#      and both kinds have registered their types;
#   6. GET /v1/job-types: echo's queue is jobs.echo, hash's jobs.hash;
#   7. an echo and a hash job, each polled to its 303 and its result;
#   8. GET /v1/workers: exactly two live workers, one serving just hash, one not serving hash,
#      and each ran one of the two jobs;
#   9. `docker compose down -v`.
# The engine it started is stopped at the end, also when a step fails. Images and the build
# cache stay in the engine's data root (ARR_DOCKER_ROOT) for the next run on this machine.
#
#   bash scripts/compose-e2e.sh          (as root: it installs packages and runs dockerd)
#
# Environment: COMPOSE_E2E_JOBS (sleep jobs for the kill, default 30),
#              COMPOSE_E2E_TIMEOUT (seconds for each of the two stacks, after the first build,
#              default 600).
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

# Status URLs are signed (docker-compose.yml sets APP__SIGNING__KEYS): /v1/jobs/<id>?tenant=…&sig=….
# result_url LOCATION: the job's result URL, the signature's query kept.
result_url() {
  local path="${1%%\?*}"
  printf '%s/result%s' "$path" "${1#"$path"}"
}

# result_of LOCATION: polls a job's status URL to its 303 and prints the job's result.
result_of() {
  local code="" redirect
  until [ "$code" = 303 ]; do
    ((SECONDS < deadline)) || fail "$1 did not reach 303 in time (last answer $code)"
    code=$(curl -sS -o /dev/null -w '%{http_code}' "$base$1") || fail "GET $1 did not answer"
    case "$code" in 202|303) ;; *) fail "GET $1 answered $code: $(curl -sS "$base$1")" ;; esac
    [ "$code" = 303 ] || sleep 0.3
  done
  redirect=$(curl -sS -o /dev/null -w '%{redirect_url}' "$base$1") || fail "GET $1 did not answer"
  [ "$redirect" = "$base$(result_url "$1")" ] \
    || fail "the 303 of $1 pointed at $redirect, not $base$(result_url "$1")"
  curl -sS -f "$base$(result_url "$1")" || fail "GET $(result_url "$1") failed"
}

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
result=$(result_of "$loc")
echo "result: $result"
[ "$(json bytes <<<"$result")" = 1048576 ] && [ "$(json seed <<<"$result")" = 7 ] \
  && [ "$(json sha256 <<<"$result" | wc -c)" = 65 ] || fail "unexpected result $result"

log "declared types (examples/job-types.toml): a render job (http, example-backend) and a factor job (command)"
# The facade accepts a type once a worker has registered it (at the worker's start).
until types=$(curl -sS -f "$base/v1/job-types") && python3 -c '
import json, sys
types = {t.get("name"): t for t in json.loads(sys.argv[1]).get("job_types") or []}
sys.exit(0 if all((types.get(n) or {}).get("workers", 0) >= 1 for n in ("render", "factor")) else 1)
' "$types"; do
  ((SECONDS < deadline)) || fail "no live worker registered render and factor (GET /v1/job-types: $types)"
  sleep 0.5
done
render_loc=$(submit '{"type":"render","input":{"title":"compose & e2e","format":"svg","delay_ms":400}}')
factor_loc=$(submit '{"type":"factor","input":{"number":84}}')
[ -n "$render_loc" ] && [ -n "$factor_loc" ] || fail "a 202 had no Location"
echo "Locations: $render_loc $factor_loc"
# declared_result LOCATION MEDIA_TYPE: the job's result, checked to be served as MEDIA_TYPE
# and recorded so in its status document (result.media_type, result.size).
declared_result() {
  local result type doc
  result=$(result_of "$1") || exit 1
  type=$(curl -sS -o /dev/null -w '%{content_type}' "$base$(result_url "$1")") \
    || fail "GET $(result_url "$1") did not answer"
  [ "${type%%;*}" = "$2" ] || fail "$(result_url "$1") is served as '$type', not $2"
  doc=$(curl -sS -f "$base$1") || fail "GET $1 failed"
  python3 -c '
import json, sys
doc, media_type = json.loads(sys.argv[1]), sys.argv[2]
r = doc.get("result")
sys.exit(0 if isinstance(r, dict) and r.get("media_type", "").split(";")[0] == media_type
         and isinstance(r.get("size"), int) and r["size"] > 0 else 1)
' "$doc" "$2" || fail "the status document of $1 does not record result {media_type: $2, size}: $doc"
  printf '%s' "$result"
}
result=$(declared_result "$render_loc" image/svg+xml)
echo "render result: $result"
grep -q '<svg' <<<"$result" && grep -q 'compose &amp; e2e' <<<"$result" \
  || fail "unexpected render result $result"
result=$(declared_result "$factor_loc" text/plain)
echo "factor result: $result"
[ "$result" = "84: 2 2 3 7" ] || fail "unexpected factor result '$result'"

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
log "docker compose down -v (one worker kind passed)"
"${compose[@]}" down -v --remove-orphans --timeout 20 || fail "docker compose down -v failed"

# --- Two worker kinds (docker-compose.kinds.yml) ------------------------------------------
# From here on fail() and the cleanup see the override's services (worker-hash) too.
compose=(docker compose -p "$project" -f docker-compose.yml -f docker-compose.ci.yml
         -f docker-compose.kinds.yml)
deadline=$((SECONDS + TIMEOUT))
log "two worker kinds: up --build --scale worker=1 --scale worker-hash=1 (docker-compose.kinds.yml), waiting until healthy"
start=$SECONDS
"${compose[@]}" up -d --build --scale worker=1 --scale worker-hash=1 --wait --wait-timeout 300 \
  || fail "the services with two worker kinds did not become healthy"
log "healthy in $((SECONDS - start)) s"
"${compose[@]}" ps

# kinds WHAT DOC: judges the JSON document DOC, of GET /v1/job-types (WHAT=types) or of
# GET /v1/workers (WHAT=workers: the two kinds are live; WHAT=ran: and each ran one job).
# Prints "ok: <what it lists>", "wait: <what is missing yet>" or "bad: <what is wrong>" (no use
# waiting).
kinds() {
  python3 - "$1" "$2" <<'PY'
import json, sys

what, doc = sys.argv[1], json.loads(sys.argv[2])


def verdict(text):
    print(text)
    sys.exit(0)


if what == "types":
    types = {t.get("name"): t for t in doc.get("job_types") or []}
    missing = [n for n in ("echo", "hash") if ((types.get(n) or {}).get("workers") or 0) < 1]
    if missing:
        verdict(f"wait: no live worker serves {' and '.join(missing)} yet; "
                f"types listed: {sorted(map(str, types))}")
    queues = {n: (types[n].get("queue") or {}).get("name") for n in ("echo", "hash")}
    if queues != {"echo": "jobs.echo", "hash": "jobs.hash"}:
        verdict(f"bad: the queues of echo and hash are {queues}, not jobs.echo and jobs.hash")
    verdict("ok: " + ", ".join(f"{n} in {(t.get('queue') or {}).get('name')} "
                               f"({t.get('workers')} worker(s))" for n, t in sorted(types.items())))

workers = doc.get("workers") or []
listed = "; ".join(f"{w.get('id')}: job_types {w.get('job_types')}, queue {w.get('queue')}, "
                   f"jobs_done {w.get('jobs_done')}" for w in workers) or "none"
if len(workers) < 2:
    verdict(f"wait: {len(workers)} live worker(s), not 2 yet ({listed})")
hashers = [w for w in workers if w.get("job_types") == ["hash"]]
others = [w for w in workers if w.get("job_types") and "hash" not in w["job_types"]]
if len(workers) != 2 or len(hashers) != 1 or len(others) != 1:
    verdict("bad: not two live workers, one serving just hash and one serving other types "
            f"than hash: {listed}")
if what == "ran":
    done = [w.get("jobs_done") or 0 for w in (hashers[0], others[0])]
    if sum(done) < 2:
        verdict(f"wait: the workers ran {sum(done)} of the 2 jobs so far ({listed})")
    if done != [1, 1]:
        verdict(f"bad: the echo and the hash job did not run on one worker kind each: {listed}")
verdict(f"ok: {listed}")
PY
}

# until_kinds WHAT PATH: polls GET PATH until `kinds WHAT` judges it ok, then prints what it
# lists; fails at once on "bad", and at the deadline.
until_kinds() {
  local doc verdict
  while :; do
    doc=$(curl -sS -f "$base$2") || fail "GET $2 failed"
    verdict=$(kinds "$1" "$doc") || fail "GET $2: unreadable answer $doc"
    case "$verdict" in
      ok:*) printf 'GET %s: %s\n' "$2" "${verdict#ok: }"; return 0 ;;
      bad:*) fail "GET $2: ${verdict#bad: }" ;;
    esac
    ((SECONDS < deadline)) || fail "GET $2: ${verdict#wait: } (not within the time limit)"
    sleep 0.5
  done
}

log "both kinds register their job types; each type has a queue of its own"
until_kinds types /v1/job-types

log "an echo and a hash job, each run by its kind of worker"
echo_loc=$(submit '{"type":"echo","input":{"kind":"light","n":2}}')
hash_loc=$(submit '{"type":"hash","input":{"bytes":64}}')
[ -n "$echo_loc" ] && [ -n "$hash_loc" ] || fail "a 202 had no Location"
echo "Locations: $echo_loc $hash_loc"
result=$(result_of "$echo_loc")
echo "echo result: $result"
[ "$(json kind <<<"$result")" = light ] && [ "$(json n <<<"$result")" = 2 ] \
  || fail "unexpected echo result $result"
result=$(result_of "$hash_loc")
echo "hash result: $result"
[ "$(json bytes <<<"$result")" = 64 ] && [ "$(json seed <<<"$result")" = 0 ] \
  && [ "$(json sha256 <<<"$result" | wc -c)" = 65 ] || fail "unexpected hash result $result"
# jobs_done reaches the registry with each worker's next heartbeat (worker.heartbeat_seconds).
until_kinds workers /v1/workers
until_kinds ran /v1/workers

log "docker compose down -v (two worker kinds passed)"
"${compose[@]}" down -v --remove-orphans --timeout 20 || fail "docker compose down -v failed"
log "passed"
