#!/usr/bin/env bash
# Validates docker-compose.yml as compose itself renders it (the default services, the
# `observability` profile, with docker-compose.ci.yml, and with the two-kinds override
# docker-compose.kinds.yml alone, with that profile and with docker-compose.ci.yml), then checks
# what compose cannot, in the merged configuration without and with docker-compose.kinds.yml:
#   - every published port is bound to ARR_PUBLISH_ADDRESS, 127.0.0.1 by default (the quick
#     start runs with auth off, RabbitMQ's guest/guest and Grafana's anonymous viewer);
#   - each stop_grace_period covers the process's drain: the facade's http.shutdown_grace_seconds
#     + a 5 s margin; the worker's worker.shutdown_grace_seconds + 5.5 s of closing + 5 s of span
#     flushing + a 5 s margin (the same model as scripts/validate-k8s.sh). A budget not set in the
#     service's environment is the compiled-in default from config/default.toml;
#   - every worker service (command `worker`: `worker`, and `worker-hash` of the override)
#     serves only built-in job types (APP__WORKER__TYPES, all of them when unset), every built-in
#     type is served by some worker service, none has a container_name (it could not scale);
#     without the override `worker` serves every type (the quick start), with it `worker` and
#     `worker-hash` run the same image and `worker-hash` serves only `hash`.
# Needs the compose v2 plugin (scripts/docker/engine.sh installs it); no engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

variants=("-f docker-compose.yml" "-f docker-compose.yml --profile observability"
          "-f docker-compose.yml -f docker-compose.ci.yml"
          "-f docker-compose.yml -f docker-compose.kinds.yml"
          "-f docker-compose.yml -f docker-compose.kinds.yml --profile observability"
          "-f docker-compose.yml -f docker-compose.ci.yml -f docker-compose.kinds.yml")
for variant in "${variants[@]}"; do
  # shellcheck disable=SC2086 # the variant is a list of words
  docker compose $variant config -q
done

rendered=$(mktemp) kinds=$(mktemp)
trap 'rm -f "$rendered" "$kinds"' EXIT
env -u ARR_PUBLISH_ADDRESS docker compose -f docker-compose.yml --profile observability \
  config --format json >"$rendered"
env -u ARR_PUBLISH_ADDRESS docker compose -f docker-compose.yml -f docker-compose.kinds.yml \
  --profile observability config --format json >"$kinds"

python3 - "$rendered" "$kinds" "${#variants[@]}" <<'PY'
import json, re, sys, tomllib

WORKER_CLOSE, OTLP_FLUSH, MARGIN = 5.5, 5, 5
# The `worker` binary's built-in job types (worker/src/jobs/), as in scripts/validate-k8s.sh.
BUILTIN_TYPES = ("echo", "sleep", "hash", "fail")
defaults = tomllib.load(open("config/default.toml", "rb"))
problems = []


def seconds(text):
    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(h|ms|m|s|us)", text or "10s"):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def check(services, label):
    workers = {}
    for name, svc in sorted(services.items()):
        for port in svc.get("ports", []):
            if port.get("published") and port.get("host_ip") != "127.0.0.1":
                where = port.get("host_ip") or "every interface"
                problems.append(f"{label}{name}: port {port['published']} is published on {where}, not 127.0.0.1")
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
            workers[name] = served(name, env, label)
            if "container_name" in svc:
                problems.append(f"{label}{name}: a container_name prevents --scale")
        else:
            continue
        if have < need:
            problems.append(f"{label}{name}: stop_grace_period {have:g} s < {what}")
        else:
            print(f"  ok    {label}{name}: stop_grace_period {have:g} s >= {what}")
    for t in BUILTIN_TYPES:
        if not any(t in types for types in workers.values()):
            problems.append(f"{label}job type {t!r} is served by no worker service")
    if workers:
        print(f"  ok    {label}job types: " + "; ".join(f"{n} {','.join(t)}" for n, t in sorted(workers.items())))
    return workers


def served(name, env, label):
    """The built-in types a worker service serves (APP__WORKER__TYPES; unset: all)."""
    raw = env.get("APP__WORKER__TYPES")
    if raw is None:
        return list(BUILTIN_TYPES)
    types = []
    for t in str(raw).split(","):
        if t not in BUILTIN_TYPES:
            problems.append(f"{label}{name}: APP__WORKER__TYPES {raw!r}: {t!r} is not a built-in "
                            f"job type ({', '.join(BUILTIN_TYPES)}; a comma list without spaces)")
        elif t not in types:
            types.append(t)
    return types


base = json.load(open(sys.argv[1]))["services"]
workers = check(base, "")
if workers.get("worker") != list(BUILTIN_TYPES):
    problems.append("worker: must serve every built-in type in docker-compose.yml (the quick "
                    "start); set APP__WORKER__TYPES only in docker-compose.kinds.yml")

kinds = json.load(open(sys.argv[2]))["services"]
label = "kinds: "
workers = check(kinds, label)
if "worker-hash" not in workers:
    problems.append(f"{label}no worker-hash service (docker-compose.kinds.yml)")
else:
    if workers["worker-hash"] != ["hash"]:
        problems.append(f"{label}worker-hash serves {workers['worker-hash']}, not just hash")
    if "hash" in workers.get("worker", []):
        problems.append(f"{label}worker still serves hash, which worker-hash is for")
    if kinds["worker-hash"].get("image") != kinds["worker"].get("image"):
        problems.append(f"{label}worker-hash runs {kinds['worker-hash'].get('image')!r}, not "
                        f"worker's image {kinds['worker'].get('image')!r}")
    if "build" in kinds["worker-hash"]:
        problems.append(f"{label}worker-hash has a build of its own; it runs the image that "
                        "api and worker build")
for p in problems:
    print(f"  FAIL  {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"compose: valid ({sys.argv[3]} variants), ports on 127.0.0.1, grace periods cover the "
      "drains, every job type served (one worker kind, or two with docker-compose.kinds.yml)")
PY
