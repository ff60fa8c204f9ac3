#!/usr/bin/env bash
# The performance benchmark in one command (issue 6; see BENCHMARKS.md):
#
#   scripts/bench.sh            full run (3 rounds, under 10 minutes on 2 cores), release build
#   scripts/bench.sh --smoke    tiny counts, one round, debug build: proves the harness works
#                               (CI runs this; it asserts no speed)
#
# Builds the facade, the worker and the bench, sets up Celery in a venv under
# target/venv-celery (from PyPI), makes sure the local RabbitMQ and Redis run
# (scripts/services.sh), and runs every scenario against its baseline. Traffic goes to
# 127.0.0.1 only. Results: target/bench/results.json and target/bench/results.md (smoke:
# target/bench-smoke/), logs of every process under logs/ beside them.
# Extra arguments go to `bench run` (e.g. --only 1,3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=
args=()
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    *) args+=("$arg") ;;
  esac
done

if [[ -n "$smoke" ]]; then
  profile=debug
  out=target/bench-smoke
  cargo build --locked -p api -p worker -p bench
else
  profile=release
  out=target/bench
  cargo build --locked --release -p api -p worker -p bench
fi

bash scripts/services.sh

venv=target/venv-celery
if ! "$venv/bin/python" -c 'import celery, redis' >/dev/null 2>&1; then
  echo "==> setting up Celery in $venv (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'celery[redis]>=5.3,<6'
fi

# The long-poll scenario holds 1,000 connections open at once.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "target/$profile/bench" run \
  ${smoke:+--smoke} \
  --out "$out" \
  --api-bin "target/$profile/api" \
  --worker-bin "target/$profile/bench-worker" \
  --celery-python "$venv/bin/python" \
  --celery-dir bench \
  "${args[@]}"
