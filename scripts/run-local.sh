#!/usr/bin/env bash
# Run the whole system on this machine: one HTTP facade (api) and two workers,
# against RabbitMQ and Redis on localhost (started if they are not running), and the example
# backend (example-backend, on 127.0.0.1:9000) behind the declared job types of
# examples/job-types.toml (render, report, factor, compress; README "Your service or script
# behind it").
#
#   scripts/run-local.sh                       # facade on 127.0.0.1:8080
#   APP__HTTP__PORT=9090 scripts/run-local.sh  # another port
#   APP__WORKER__JOB_TYPES_FILE= scripts/run-local.sh   # no declared types (no backend either)
#
# For the declared types it sets, unless they are set already:
#   APP__WORKER__JOB_TYPES_FILE=examples/job-types.toml  the file the workers load
#   EXAMPLE_BACKEND_LISTEN=127.0.0.1:9000   where example-backend listens
#   EXAMPLE_BACKEND=http://127.0.0.1:9000   its address as the job-types file names it
#   APP__WORKER__PROGRESS_BASE_URL=http://127.0.0.1:8080  the facade as the backend reaches it
#   APP__SIGNING__KEYS=local:<random>       a signing key made for this run (the facade signs
#                                           status URLs and progress URLs with it, the workers
#                                           sign progress URLs: both need it)
#
# Any APP__<SECTION>__<KEY> variable in the environment overrides the compiled-in
# defaults (see config/default.toml). Ctrl-C (or SIGTERM) stops every process
# gracefully: they get SIGTERM and the script waits for them (a second Ctrl-C
# kills them at once). If any process exits on its own, the others are stopped
# and the script exits non-zero.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export APP__HTTP__PORT="${APP__HTTP__PORT:-8080}"
http_host="${APP__HTTP__HOST:-127.0.0.1}"
worker_count=2
loopback="$http_host"
[[ "$loopback" == "0.0.0.0" || "$loopback" == "::" ]] && loopback=127.0.0.1

# The declared job types and their example backend (see the header).
export APP__WORKER__JOB_TYPES_FILE="${APP__WORKER__JOB_TYPES_FILE-examples/job-types.toml}"
backend=0
[[ -n "$APP__WORKER__JOB_TYPES_FILE" ]] && backend=1
export EXAMPLE_BACKEND_LISTEN="${EXAMPLE_BACKEND_LISTEN:-127.0.0.1:9000}"
export EXAMPLE_BACKEND="${EXAMPLE_BACKEND:-http://${EXAMPLE_BACKEND_LISTEN}}"
export APP__WORKER__PROGRESS_BASE_URL="${APP__WORKER__PROGRESS_BASE_URL-http://${loopback}:${APP__HTTP__PORT}}"
if [[ -z "${APP__SIGNING__KEYS:-}" ]]; then
  # A fresh secret each run: signed URLs of an earlier run stop verifying, which is fine locally.
  APP__SIGNING__KEYS="local:$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
  export APP__SIGNING__KEYS
fi

log() { printf 'run-local: %s\n' "$*" >&2; }

bash scripts/services.sh

log "building release binaries"
cargo build --release --locked --bin api --bin worker --bin example-backend

pids=()
names=()
stopping=0

# start NAME COMMAND...: run COMMAND in the background in its own session, so a
# Ctrl-C in the terminal reaches only this script, which then forwards SIGTERM.
start() {
  local name="$1"; shift
  setsid "$@" &
  pids+=("$!")
  names+=("$name")
  log "started $name (pid $!)"
}

name_of() {
  local i
  for i in "${!pids[@]}"; do
    if [[ "${pids[$i]}" == "$1" ]]; then
      printf '%s' "${names[$i]}"
      return
    fi
  done
  printf 'pid %s' "$1"
}

stop_children() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
}

wait_children() {
  local pid
  for pid in "${pids[@]}"; do
    # wait returns early when a trapped signal arrives: wait again until the child is gone.
    while kill -0 "$pid" 2>/dev/null; do
      wait "$pid" 2>/dev/null || true
    done
  done
}

# shellcheck disable=SC2317 # invoked by trap
on_signal() {
  if ((stopping)); then
    log "second signal: killing all processes"
    local pid
    for pid in "${pids[@]}"; do
      kill -KILL "$pid" 2>/dev/null || true
    done
    return 0
  fi
  stopping=1
  log "stopping: sending SIGTERM to all processes and waiting for them (Ctrl-C again to kill)"
  stop_children
}

# shellcheck disable=SC2317 # invoked by trap
on_exit() {
  # Unexpected exit of the script itself (an error under set -e): leave no orphans.
  if ((${#pids[@]} > 0)); then
    stop_children
    wait_children
  fi
}

trap 'on_signal || :' INT TERM HUP
trap on_exit EXIT

# port_taken PORT: true when something on this machine already accepts connections on PORT.
port_taken() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# healthz: true once the facade answers GET /healthz with 200.
healthz() {
  local host="$http_host"
  [[ "$host" == "0.0.0.0" || "$host" == "::" ]] && host=127.0.0.1
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "http://${host}:${APP__HTTP__PORT}/healthz" 2>/dev/null
  else
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"; printf "GET /healthz HTTP/1.0\r\nHost: $1\r\n\r\n" >&3; head -n 1 <&3 | grep -q " 200 "' \
      _ "$host" "$APP__HTTP__PORT" 2>/dev/null
  fi
}

if port_taken "$APP__HTTP__PORT"; then
  log "ERROR: port $APP__HTTP__PORT is taken by another process; set APP__HTTP__PORT to a free one"
  exit 1
fi

if ((backend)) && port_taken "${EXAMPLE_BACKEND_LISTEN##*:}"; then
  log "ERROR: port ${EXAMPLE_BACKEND_LISTEN##*:} (the example backend's) is taken by another process; set EXAMPLE_BACKEND_LISTEN (and EXAMPLE_BACKEND) to a free one, or APP__WORKER__JOB_TYPES_FILE= for no declared types"
  exit 1
fi

# The facade first: the wait for /healthz below watches pids[0].
start api target/release/api
if ((backend)); then
  start example-backend target/release/example-backend --listen "$EXAMPLE_BACKEND_LISTEN"
fi
for ((i = 1; i <= worker_count; i++)); do
  # Each worker serves its Prometheus metrics on a port of its own: 9091, 9092, ...
  metrics_port=$((9090 + i))
  if port_taken "$metrics_port"; then
    log "WARNING: worker-$i's metrics port $metrics_port is taken by another process: that worker runs without GET /metrics (free the port, or stop the other process)"
  fi
  start "worker-$i" env APP__WORKER__METRICS_PORT="$metrics_port" target/release/worker
done
if ((stopping)); then
  stop_children # a signal came while the processes were being started
fi

# The banner only once the facade answers, so that a curl copied from it works; a facade that
# exits first (a bad setting) ends the script with its status instead.
deadline=$((SECONDS + 60))
until ((stopping)) || healthz; do
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    set +e; wait "${pids[0]}"; api_status=$?; set -e
    log "ERROR: the facade exited (status $api_status) before it answered /healthz; see its log above"
    pids=("${pids[@]:1}"); names=("${names[@]:1}")
    stop_children
    wait_children
    trap - EXIT
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    log "ERROR: the facade did not answer http://${http_host}:${APP__HTTP__PORT}/healthz within 60 s; stopping"
    stop_children
    wait_children
    trap - EXIT
    exit 1
  fi
  sleep 0.2
done

((stopping)) || cat >&2 <<MSG

run-local: facade listening on http://${http_host}:${APP__HTTP__PORT} (${worker_count} workers)
run-local: submit a job:
  curl -si -X POST localhost:${APP__HTTP__PORT}/v1/jobs -H 'content-type: application/json' -d '{"type":"echo","input":{"hello":"world"}}'
run-local: then poll the URL from the Location header of the answer (quote it: it is signed, with & in its query)
MSG
((stopping)) || ((backend == 0)) || cat >&2 <<MSG
run-local: declared job types from ${APP__WORKER__JOB_TYPES_FILE}, example backend on ${EXAMPLE_BACKEND}:
  curl -si -X POST localhost:${APP__HTTP__PORT}/v1/jobs -H 'content-type: application/json' -d '{"type":"render","input":{"title":"Hello","format":"svg"}}'
MSG
((stopping)) || cat >&2 <<MSG
run-local: Ctrl-C stops everything

MSG

status=0
exited_pid=""
set +e
wait -n -p exited_pid "${pids[@]}"
child_status=$?
set -e

if [[ -n "${exited_pid:-}" ]] && ((stopping == 0)); then
  # A process exited on its own: stop the rest and fail.
  log "$(name_of "$exited_pid") exited unexpectedly (status $child_status); stopping the others"
  stopping=1
  status=1
  stop_children
fi

wait_children
trap - EXIT
log "all processes stopped"
exit "$status"
