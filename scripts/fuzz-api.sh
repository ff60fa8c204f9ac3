#!/usr/bin/env bash
# Fuzz the HTTP facade against its own OpenAPI document with schemathesis: every check on,
# a bounded number of examples per operation, and zero failures allowed. The document is the
# contract; this holds the facade to it in both directions (no 5xx, every status, header,
# content type and body as documented, schema-valid requests accepted, invalid ones refused).
#
#   scripts/fuzz-api.sh                        # debug binaries, 50 examples per operation
#   FUZZ_MAX_EXAMPLES=100 scripts/fuzz-api.sh  # more
#   FUZZ_PROFILE=release scripts/fuzz-api.sh   # release binaries
#   FUZZ_ARGS="--include-operation-id listJobs --seed 1" scripts/fuzz-api.sh  # more options
#
# First the served document is checked against the official OpenAPI 3.1 schema and the JSON
# Schema 2020-12 meta-schema (scripts/validate-openapi.py).
#
# Needs RabbitMQ and Redis on localhost (scripts/services.sh) and python3 with venv. It starts
# one facade and one worker of its own (own queue name and Redis key prefix, through APP__
# overrides) and removes their queues and keys when it ends. schemathesis lives in a venv
# under target/ (PyPI, pinned). Reports: target/fuzz-api/ (JUnit XML, schemathesis output,
# the processes' logs).
#
# Settings of the run, and why (the checks themselves are all on, set in
# scripts/schemathesis.toml rather than with `--checks all`, which would override the two
# per-operation tunings there; each is explained in that file):
# - jobs are made short and final (sleep/hash stopped after 1 s, one attempt each, retries 100
#   ms apart) so the event streams and long polls that the stateful phase opens on the jobs it
#   created end in seconds, and a fuzzed `{"type":"sleep","input":{"seconds":3600}}` does not
#   hold a worker slot for an hour;
# - `Prefer: wait` is capped at 2 s and the SSE keep-alive is 1 s for the same reason;
# - one schemathesis worker: with several threads, CPython 3.11's AST compiler (used by
#   hypothesis to describe strategies) fails now and then with "AST constructor recursion
#   depth mismatch", an error of the tool, not of the API.
#
# A warning it may print, and why it is expected: "Schema validation mismatch" on GET
# /v1/jobs/{id}: over 10% of that operation's answers in the stateful phase are 4xx other than
# 401/403/404, because the status monitor answers a failed job with 422 or 424 and a canceled
# one with 409, as the contract says.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-50}"
PROFILE="${FUZZ_PROFILE:-debug}"
VENV="target/venv-schemathesis"
OUT="target/fuzz-api"

log() { printf 'fuzz-api: %s\n' "$*" >&2; }

bash scripts/services.sh

if [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null || true)" != *"$SCHEMATHESIS_VERSION"* ]]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "building the $PROFILE binaries"
if [[ "$PROFILE" == release ]]; then
  cargo build --locked --release -p api -p worker --bins
else
  cargo build --locked -p api -p worker --bins
fi
BIN="target/$PROFILE"

mkdir -p "$OUT"
tag="fuzz-$(date +%s)-$$"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export APP__AMQP__QUEUE="$tag"
export APP__REDIS__KEY_PREFIX="$tag"
export APP__HTTP__PORT="$port"
export APP__HTTP__MAX_WAIT_SECONDS=2
export APP__HTTP__SSE_KEEPALIVE_SECONDS=1
export APP__HTTP__SHUTDOWN_GRACE_SECONDS=1
export APP__WORKER__CONCURRENCY=16
export APP__AMQP__PREFETCH=32
export APP__WORKER__METRICS_PORT=0
export APP__WORKER__SHUTDOWN_GRACE_SECONDS=1
export APP__AMQP__RETRY_BASE_DELAY_MS=100
export APP__AMQP__RETRY_MAX_DELAY_MS=200
for type in SLEEP HASH; do
  export "APP__JOBS__LIMITS__${type}__MAX_RUN_SECONDS=1"
done
for type in ECHO SLEEP HASH FAIL; do
  export "APP__JOBS__LIMITS__${type}__MAX_ATTEMPTS=1"
done
export APP__LOG__FORMAT=json

pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # The queues of this run: the work queue, its dead-letter queue and its delay queues.
  if command -v rabbitmqctl >/dev/null 2>&1; then
    timeout 60 rabbitmqctl -q list_queues name 2>/dev/null | grep -E "^${tag}(\.|$)" |
      while read -r queue; do
        # </dev/null: rabbitmqctl would otherwise read the rest of the list from stdin.
        timeout 30 rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1 || true
      done || true
  fi
  if command -v redis-cli >/dev/null 2>&1; then
    timeout 60 redis-cli -h 127.0.0.1 --scan --pattern "${tag}:*" |
      xargs -r -n 500 redis-cli -h 127.0.0.1 del >/dev/null || true
  fi
}
trap cleanup EXIT

"$BIN/api" >"$OUT/api.log" 2>&1 &
pids+=("$!")
"$BIN/worker" >"$OUT/worker.log" 2>&1 &
pids+=("$!")

base="http://127.0.0.1:$port"
for _ in $(seq 1 60); do
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)" == 200 ]]; then
    break
  fi
  sleep 0.5
done
if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz" || true)" != 200 ]]; then
  log "the facade did not become ready; its log:"
  tail -n 50 "$OUT/api.log" >&2
  exit 1
fi

# The document lists the job types the worker registered: wait until the facade has read all
# four built-ins, or the run would fuzz a document without them.
for _ in $(seq 1 60); do
  if [[ "$(curl -s "$base/v1/job-types" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["job_types"]))' 2>/dev/null || true)" == 4 ]]; then
    break
  fi
  sleep 0.5
done

log "validating $base/openapi.json as OpenAPI 3.1 (scripts/validate-openapi.py)"
curl -sf "$base/openapi.json" -o "$OUT/openapi.json"
"$VENV/bin/python" scripts/validate-openapi.py "$OUT/openapi.json"

log "running schemathesis against $base/openapi.json ($MAX_EXAMPLES examples per operation)"
status=0
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
  ${FUZZ_ARGS:-} \
  --max-examples "$MAX_EXAMPLES" \
  --workers 1 \
  --request-timeout 20 \
  --report junit --report-dir "$OUT" \
  --no-color 2>&1 | tee "$OUT/schemathesis.txt" || status=$?
if ((status != 0)); then
  log "schemathesis found failures (exit $status); see $OUT/schemathesis.txt"
  exit "$status"
fi
log "no failures"
