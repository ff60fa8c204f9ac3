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
#     serves only job types it has (APP__WORKER__TYPES, all of them when unset): the built-in
#     ones and those of its job-types file (APP__WORKER__JOB_TYPES_FILE, the `[types.<name>]`
#     tables of the file as mounted); every built-in and every declared type is served by some
#     worker service, none has a container_name (it could not scale); without the override
#     `worker` serves every type (the quick start), with it `worker` and `worker-hash` run the
#     same image and `worker-hash` serves only `hash`;
#   - a worker's job-types file is in a read-only bind mount (the target directory holds the
#     path the environment names) of a file that exists on this machine, and every ${VAR} the
#     file names is set in the worker's environment; a worker with a progress base URL has the
#     facade's signing keys (APP__SIGNING__KEYS, the same value);
#   - the `example-backend` service exists, runs the api's image with its example-backend
#     command and a healthcheck, listens on the port the workers' EXAMPLE_BACKEND names, and the
#     workers that name it wait for it to be healthy.
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
import json, os, re, sys, tomllib, urllib.parse

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


def declared(name, svc, env, label):
    """The types of the worker's job-types file, as mounted (none when it names no file)."""
    path = str(env.get("APP__WORKER__JOB_TYPES_FILE") or "").strip()
    if not path:
        return []
    mounts = [v for v in svc.get("volumes") or [] if v.get("type") == "bind"
              and (path + "/").startswith(v.get("target", "").rstrip("/") + "/")]
    if not mounts:
        problems.append(f"{label}{name}: APP__WORKER__JOB_TYPES_FILE {path!r} is in no bind mount")
        return []
    mount = max(mounts, key=lambda v: len(v["target"]))
    host = os.path.join(mount["source"], os.path.relpath(path, mount["target"]))
    if not mount.get("read_only"):
        problems.append(f"{label}{name}: the mount of {mount['target']} is not read-only (:ro)")
    try:
        doc = tomllib.loads(open(host, encoding="utf-8").read()).get("types", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        problems.append(f"{label}{name}: the job-types file {path!r} (here {host}): {e}")
        return []
    types = sorted(doc)
    if not types:
        problems.append(f"{label}{name}: the job-types file {host} declares no [types.<name>]")
    # ${VAR} is expanded in the handlers' tables (url, header values, secrets, set_env).
    strings = []
    def walk(value):
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
    for decl in doc.values():
        walk({k: decl.get(k) for k in ("http", "command")})
    found = set(re.findall(r"(?<!\$)\$\{([^}]*)\}", "\n".join(strings)))
    for var in sorted(found):
        if not env.get(var):
            problems.append(f"{label}{name}: the job-types file names ${{{var}}}, which the "
                            "service's environment does not set")
    return types


def check(services, label):
    workers = {}
    api_keys = next((s.get("environment", {}).get("APP__SIGNING__KEYS") for s in services.values()
                     if (s.get("command") or [""])[0] == "api"), None)
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
            types = declared(name, svc, env, label)
            all_declared.update(types)
            workers[name] = served(name, env, label, types)
            if "container_name" in svc:
                problems.append(f"{label}{name}: a container_name prevents --scale")
            if env.get("APP__WORKER__PROGRESS_BASE_URL") and env.get("APP__SIGNING__KEYS") != api_keys:
                problems.append(f"{label}{name}: has a progress base URL but not the facade's "
                                "APP__SIGNING__KEYS (progress URLs are signed by the worker, "
                                "checked by the facade)")
            backend = env.get("EXAMPLE_BACKEND")
            if backend:
                check_backend(services, name, svc, str(backend), label)
        else:
            continue
        if have < need:
            problems.append(f"{label}{name}: stop_grace_period {have:g} s < {what}")
        else:
            print(f"  ok    {label}{name}: stop_grace_period {have:g} s >= {what}")
    for t in list(BUILTIN_TYPES) + sorted(all_declared):
        if not any(t in types for types in workers.values()):
            problems.append(f"{label}job type {t!r} is served by no worker service")
    if "example-backend" not in services:
        problems.append(f"{label}no example-backend service (the backend of examples/job-types.toml)")
    if workers:
        print(f"  ok    {label}job types: " + "; ".join(f"{n} {','.join(t)}" for n, t in sorted(workers.items())))
    return workers


def served(name, env, label, declared_types):
    """The types a worker service serves (APP__WORKER__TYPES; unset: all it has)."""
    known = list(BUILTIN_TYPES) + declared_types
    raw = env.get("APP__WORKER__TYPES")
    if raw is None:
        return known
    types = []
    for t in str(raw).split(","):
        if t not in known:
            problems.append(f"{label}{name}: APP__WORKER__TYPES {raw!r}: {t!r} is not a type it "
                            f"has ({', '.join(known)}; a comma list without spaces)")
        elif t not in types:
            types.append(t)
    return types


def check_backend(services, name, svc, url, label):
    """EXAMPLE_BACKEND of worker `name` names the example-backend service, as it listens."""
    parsed = urllib.parse.urlsplit(url)
    backend = services.get(parsed.hostname or "")
    if parsed.hostname != "example-backend" or backend is None:
        problems.append(f"{label}{name}: EXAMPLE_BACKEND {url!r} does not name the "
                        "example-backend service")
        return
    command = backend.get("command") or []
    listen = command[command.index("--listen") + 1] if "--listen" in command[:-1] else ""
    if command[:1] != ["example-backend"] or listen.rsplit(":", 1)[-1] != str(parsed.port or 80):
        problems.append(f"{label}example-backend: command {command} does not run example-backend "
                        f"listening on the port of {name}'s EXAMPLE_BACKEND {url!r}")
    if not listen.startswith("0.0.0.0:"):
        problems.append(f"{label}example-backend: listens on {listen!r}, not 0.0.0.0 (the "
                        "workers reach it from other containers)")
    if not (backend.get("healthcheck") or {}).get("test"):
        problems.append(f"{label}example-backend: no healthcheck")
    api_image = next((s.get("image") for s in services.values()
                      if (s.get("command") or [""])[0] == "api"), None)
    if backend.get("image") != api_image:
        problems.append(f"{label}example-backend: runs {backend.get('image')!r}, not the api's "
                        f"image {api_image!r} (which has the binary)")
    condition = ((svc.get("depends_on") or {}).get("example-backend") or {}).get("condition")
    if condition != "service_healthy":
        problems.append(f"{label}{name}: does not wait for example-backend to be healthy "
                        "(depends_on, condition: service_healthy)")


all_declared = set()
base = json.load(open(sys.argv[1]))["services"]
workers = check(base, "")
if not all_declared:
    problems.append("worker: loads no job-types file (APP__WORKER__JOB_TYPES_FILE, "
                    "examples/job-types.toml: the quick start's declared types)")
if workers.get("worker") != list(BUILTIN_TYPES) + sorted(all_declared):
    problems.append("worker: must serve every built-in and declared type in docker-compose.yml "
                    "(the quick start); set APP__WORKER__TYPES only in docker-compose.kinds.yml")

kinds = json.load(open(sys.argv[2]))["services"]
label = "kinds: "
all_declared = set()
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
      "drains, every job type served, built-in and declared (one worker kind, or two with "
      "docker-compose.kinds.yml), the job-types file mounted where the workers look, the "
      "example backend where they call it")
PY
