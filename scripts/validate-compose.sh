#!/usr/bin/env bash
# Validates docker-compose.yml as compose itself renders it (the default services, the
# `observability` profile, and with docker-compose.ci.yml), then checks what compose cannot:
#   - every published port is bound to ARR_PUBLISH_ADDRESS, 127.0.0.1 by default (the quick
#     start runs with auth off, RabbitMQ's guest/guest and Grafana's anonymous viewer);
#   - each stop_grace_period covers the process's drain: the facade's http.shutdown_grace_seconds
#     + a 5 s margin; the worker's worker.shutdown_grace_seconds + 5.5 s of closing + 5 s of span
#     flushing + a 5 s margin (the same model as scripts/validate-k8s.sh). A budget not set in the
#     service's environment is the compiled-in default from config/default.toml.
# Needs the compose v2 plugin (scripts/docker/engine.sh installs it); no engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

for variant in "-f docker-compose.yml" "-f docker-compose.yml --profile observability" \
               "-f docker-compose.yml -f docker-compose.ci.yml"; do
  # shellcheck disable=SC2086 # the variant is a list of words
  docker compose $variant config -q
done

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
env -u ARR_PUBLISH_ADDRESS docker compose -f docker-compose.yml --profile observability \
  config --format json >"$rendered"

python3 - "$rendered" <<'PY'
import json, re, sys, tomllib

WORKER_CLOSE, OTLP_FLUSH, MARGIN = 5.5, 5, 5
defaults = tomllib.load(open("config/default.toml", "rb"))
services = json.load(open(sys.argv[1]))["services"]
problems = []


def seconds(text):
    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(h|ms|m|s|us)", text or "10s"):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


for name, svc in sorted(services.items()):
    for port in svc.get("ports", []):
        if port.get("published") and port.get("host_ip") != "127.0.0.1":
            where = port.get("host_ip") or "every interface"
            problems.append(f"{name}: port {port['published']} is published on {where}, not 127.0.0.1")
    command = (svc.get("command") or [""])[0]
    env = svc.get("environment") or {}
    have = seconds(svc.get("stop_grace_period"))
    if command == "api":
        drain = float(env.get("APP__HTTP__SHUTDOWN_GRACE_SECONDS") or defaults["http"]["shutdown_grace_seconds"])
        need, what = drain + MARGIN, f"drain {drain:g} s + {MARGIN} s margin"
    elif command == "worker":
        drain = float(env.get("APP__WORKER__SHUTDOWN_GRACE_SECONDS") or defaults["worker"]["shutdown_grace_seconds"])
        need = drain + WORKER_CLOSE + OTLP_FLUSH + MARGIN
        what = f"drain {drain:g} s + close {WORKER_CLOSE} s + span flush {OTLP_FLUSH} s + {MARGIN} s margin"
    else:
        continue
    if have < need:
        problems.append(f"{name}: stop_grace_period {have:g} s < {what}")
    else:
        print(f"  ok    {name}: stop_grace_period {have:g} s >= {what}")
for p in problems:
    print(f"  FAIL  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print("compose: valid (3 variants), ports on 127.0.0.1, grace periods cover the drains")
PY
