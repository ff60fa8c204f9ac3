#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ (the kustomize base and every overlay).
#
#   bash scripts/validate-k8s.sh
#
# 1. Renders every directory under deploy/ that holds a kustomization.yaml, with
#    `kubectl kustomize` when kubectl is installed, and always with a small built-in renderer
#    (below) that supports exactly the kustomize features deploy/ uses. When both ran, their
#    outputs must be the same objects, so the built-in one is known to be right when kubectl
#    is missing. A feature the built-in renderer does not know is an error, not a guess.
# 2. Validates every rendered object against the Kubernetes JSON schemas shipped in the PyPI
#    package kubernetes-validate (offline), strictly (unknown fields are errors), for each
#    Kubernetes version in K8S_VERSIONS. KEDA's ScaledObject and TriggerAuthentication are
#    not in those schemas: they are checked against minimal schemas of their required fields
#    written here. Any other kind without a schema is an error.
# 3. Checks what no schema can: selectors match the pod labels (and no Deployment's selector
#    takes another's pods), referenced objects, ports and secret keys exist, the grace periods
#    cover the drains, the pods' security settings, and that prometheus.io/port annotations
#    name the port each process serves /metrics on. And the worker kinds: every worker
#    Deployment serves (APP__WORKER__TYPES) only types it has: the built-in types of the
#    `worker` binary and the declared ones of its job-types file (APP__WORKER__JOB_TYPES_FILE,
#    read from the ConfigMap mounted there: its `[types.<name>]` tables; every ${VAR} its
#    handler tables name must be in the container's environment); every built-in and every
#    declared type is served by some worker Deployment, a worker consumes a shared queue only
#    if it serves every type in it, the facade routes each type to the queue its workers read,
#    and each worker Deployment's ScaledObject triggers on exactly the queues of its types:
#    `<APP__AMQP__QUEUE>.<type>`, or `<APP__AMQP__QUEUE>.<suffix>` where
#    APP__AMQP__TYPE_QUEUES__<TYPE>=<suffix> is set (in the ConfigMap or the Deployment's env).
# 4. deploy/base/job-types-configmap.yaml holds examples/job-types.toml unchanged (it is made by
#    scripts/sync-job-types.sh).
#
# Exits non-zero on the first directory with a problem (after listing all its problems).
# Python packages go into a virtualenv under target/ (created once, reused afterwards).
#
# Environment: K8S_VERSIONS (default "1.30 1.37"), K8S_VALIDATE_VENV (default
# target/k8s-validate-venv), K8S_RENDERER=builtin to skip kubectl.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
VENV=${K8S_VALIDATE_VENV:-target/k8s-validate-venv}
export K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.37"}

have_deps() {
  "$1" - "$KUBERNETES_VALIDATE_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import jsonschema, yaml, kubernetes_validate.version as v
sys.exit(0 if v.__version__ == sys.argv[1] else 1)
EOF
}

PY="$VENV/bin/python"
if [ -x "$PY" ] && have_deps "$PY"; then
  :
else
  echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION and pyyaml into $VENV"
  # A virtualenv left by another Python or another pin is made anew.
  if [ -f "$VENV/pyvenv.cfg" ]; then rm -rf "$VENV"; fi
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" pyyaml
  have_deps "$PY" || { echo "error: kubernetes-validate did not install into $VENV" >&2; exit 1; }
fi

KUBECTL=""
if [ "${K8S_RENDERER:-}" != builtin ] && command -v kubectl >/dev/null 2>&1 \
   && kubectl kustomize --help >/dev/null 2>&1; then
  KUBECTL=$(command -v kubectl)
fi
export KUBECTL

exec "$PY" - <<'PYEOF'
import base64, copy, json, os, posixpath, re, subprocess, sys, tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path("deploy")
VERSIONS = os.environ["K8S_VERSIONS"].split()
KUBECTL = os.environ.get("KUBECTL") or None


# What a worker may take after its shutdown budget (worker.shutdown_grace_seconds, which covers
# its jobs and then its webhook deliveries): 3 s to put back leased jobs, send the last acks and
# close, 2 s to leave the fleet registry, 0.5 s for blocking handler threads (config/default.toml);
# and the OpenTelemetry SDK's 5 s to flush spans when export is on.
WORKER_CLOSE_SECONDS = 5.5
OTLP_FLUSH_SECONDS = 5

# The job types the `worker` binary has built in (worker/src/jobs/: echo.rs, sleep.rs, hash.rs,
# fail.rs); APP__WORKER__TYPES picks among them, and leaving it out means all of them.
BUILTIN_TYPES = ("echo", "sleep", "hash", "fail")
# shared::job_types::valid_name.
TYPE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# amqp.type_queues.<type> = "<suffix>": type's jobs go to `<amqp.queue>.<suffix>`.
TYPE_QUEUES_ENV = "APP__AMQP__TYPE_QUEUES__"
# The quick start's declared job types, and their copy in the base (scripts/sync-job-types.sh).
JOB_TYPES_FILE = Path("examples/job-types.toml")
JOB_TYPES_CONFIGMAP = ROOT / "base" / "job-types-configmap.yaml"


class Problem(Exception):
    pass


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ---------------------------------------------------------------------------------------
# Built-in renderer: the subset of kustomize that deploy/ uses.
# ---------------------------------------------------------------------------------------
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "labels",
                  "replicas", "patches", "secretGenerator", "generatorOptions"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
                  "ClusterTriggerAuthentication"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def unsupported(where, what):
    raise Problem(f"{where}: the built-in renderer does not support {what}; "
                  "extend scripts/validate-k8s.sh or keep the kustomization simpler")


def pod_specs(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] in POD_TEMPLATE_KINDS:
        yield spec.get("template", {}).get("spec", {})
    elif obj["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif obj["kind"] == "Pod":
        yield spec


def merge_patch(target, patch, where):
    """Strategic-merge patch restricted to maps (lists would need kustomize's merge keys)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            merge_patch(target[key], value, where)
        elif isinstance(value, list):
            unsupported(where, f"patches containing lists (at {key!r})")
        else:
            target[key] = value


def split_image(image):
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


def render_builtin(directory):
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    k = load_yaml_docs(kfile)[0]
    for key in k:
        if key not in SUPPORTED_KEYS:
            unsupported(kfile, f"the field {key!r}")
    objs = []
    for res in k.get("resources", []):
        p = directory / res
        if p.is_dir():
            objs += render_builtin(p)
        elif p.is_file():
            objs += load_yaml_docs(p)
        else:
            raise Problem(f"{kfile}: resource {res!r} not found")

    options = k.get("generatorOptions") or {}
    for key in options:
        if key != "disableNameSuffixHash":
            unsupported(kfile, f"generatorOptions.{key}")
    for gen in k.get("secretGenerator", []):
        if not options.get("disableNameSuffixHash"):
            unsupported(kfile, "generated names with a hash suffix")
        for key in gen:
            if key not in {"name", "envs", "literals", "type"}:
                unsupported(kfile, f"secretGenerator.{key}")
        pairs = list(gen.get("literals", []))
        for env in gen.get("envs", []):
            for line in (directory / env).read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    pairs.append(line)
        data = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise Problem(f"{kfile}: secretGenerator {gen['name']}: no '=' in {pair!r}")
            data[key] = base64.b64encode(value.encode()).decode()
        objs.append({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": gen["name"]},
                     "type": gen.get("type", "Opaque"), "data": data})

    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            unsupported(kfile, "patches other than a strategic-merge file given by `path`")
        for patch in load_yaml_docs(directory / entry["path"]):
            where = f"{directory / entry['path']}"
            name = patch.get("metadata", {}).get("name")
            hits = [o for o in objs if o["kind"] == patch.get("kind")
                    and o["apiVersion"] == patch.get("apiVersion")
                    and o["metadata"]["name"] == name]
            if len(hits) != 1:
                raise Problem(f"{where}: patch target {patch.get('kind')}/{name} "
                              f"matches {len(hits)} objects")
            body = {key: value for key, value in patch.items()
                    if key not in ("apiVersion", "kind")}
            body["metadata"] = {key: value for key, value in body.get("metadata", {}).items()
                                if key != "name"}
            merge_patch(hits[0], body, where)

    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
            elif o["kind"] == "Namespace" and o["metadata"]["name"] != k["namespace"]:
                unsupported(kfile, "a Namespace object named unlike `namespace`")

    for entry in k.get("labels", []):
        for key in entry:
            if key not in {"pairs", "includeSelectors", "includeTemplates"}:
                unsupported(kfile, f"labels.{key}")
        if entry.get("includeSelectors"):
            unsupported(kfile, "labels with includeSelectors: true")
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and o["kind"] in POD_TEMPLATE_KINDS:
                tmeta = o["spec"]["template"].setdefault("metadata", {})
                tmeta.setdefault("labels", {}).update(entry["pairs"])

    for entry in k.get("images", []):
        for key in entry:
            if key not in {"name", "newName", "newTag", "digest"}:
                unsupported(kfile, f"images.{key}")
        for o in objs:
            for ps in pod_specs(o):
                for c in ps.get("containers", []) + ps.get("initContainers", []):
                    name, tag, digest = split_image(c["image"])
                    if name != entry["name"]:
                        continue
                    name = entry.get("newName", name)
                    if "digest" in entry:
                        c["image"] = f"{name}@{entry['digest']}"
                        continue
                    tag = entry.get("newTag", tag)
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    for entry in k.get("replicas", []):
        hits = [o for o in objs if o["metadata"]["name"] == entry["name"]
                and o["kind"] in {"Deployment", "StatefulSet", "ReplicaSet"}]
        if not hits:
            raise Problem(f"{kfile}: replicas: no workload named {entry['name']!r}")
        for o in hits:
            o["spec"]["replicas"] = entry["count"]
    return objs


def render_kubectl(directory):
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        raise Problem(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def normalized(objs):
    result = {}
    for o in objs:
        o = copy.deepcopy(o)
        if o["kind"] == "Secret":
            o["data"] = {key: base64.b64decode("".join(value.split())).decode()
                         for key, value in (o.get("data") or {}).items()}
        key = (o["apiVersion"], o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if key in result:
            raise Problem(f"two objects named {'/'.join(key)}")
        result[key] = o
    return result


# ---------------------------------------------------------------------------------------
# Minimal schemas of KEDA's custom resources (keda.sh/v1alpha1): the fields KEDA requires
# and the types its CRDs declare, with no unknown fields at the levels spelled out here.
# ---------------------------------------------------------------------------------------
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                    "maxLength": 253},
                           "namespace": {"type": "string"}, "labels": STR_MAP,
                           "annotations": STR_MAP}}
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
            "metadata": METADATA,
            "spec": {
                "type": "object", "required": ["scaleTargetRef", "triggers"],
                "additionalProperties": False,
                "properties": {
                    "scaleTargetRef": {
                        "type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                       "apiVersion": {"type": "string"},
                                       "envSourceContainerName": {"type": "string"}}},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "idleReplicaCount": {"type": "integer", "minimum": 0},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                    "advanced": {"type": "object"},
                    "fallback": {"type": "object", "required": ["failureThreshold", "replicas"]},
                    "triggers": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "required": ["type", "metadata"],
                            "additionalProperties": False,
                            "properties": {
                                "type": {"type": "string"}, "name": {"type": "string"},
                                "metadata": STR_MAP, "useCachedMetrics": {"type": "boolean"},
                                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                "authenticationRef": {
                                    "type": "object", "required": ["name"],
                                    "additionalProperties": False,
                                    "properties": {"name": {"type": "string"},
                                                   "kind": {"enum": ["TriggerAuthentication",
                                                                     "ClusterTriggerAuthentication"]}}},
                            },
                            "allOf": [{
                                "if": {"properties": {"type": {"const": "rabbitmq"}}},
                                "then": {"properties": {"metadata": {
                                    "required": ["queueName", "mode", "value"],
                                    "properties": {
                                        "mode": {"enum": ["QueueLength", "MessageRate"]},
                                        "protocol": {"enum": ["amqp", "http", "auto"]},
                                        "value": {"pattern": r"^[0-9]+(\.[0-9]+)?$"}}}}},
                            }],
                        }},
                }},
        }},
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
            "metadata": METADATA,
            "spec": {
                "type": "object", "minProperties": 1,
                "properties": {
                    "secretTargetRef": {
                        "type": "array", "minItems": 1,
                        "items": {"type": "object", "required": ["parameter", "name", "key"],
                                  "additionalProperties": False,
                                  "properties": {"parameter": {"type": "string"},
                                                 "name": {"type": "string"},
                                                 "key": {"type": "string"}}}},
                    "env": {"type": "array"}, "podIdentity": {"type": "object"},
                    "hashiCorpVault": {"type": "object"}, "azureKeyVault": {"type": "object"},
                    "awsSecretManager": {"type": "object"}, "gcpSecretManager": {"type": "object"},
                    "configMapTargetRef": {"type": "array"},
                }, "additionalProperties": False}},
    },
}


def validate_schema(o):
    """Returns what the object was validated against; raises Problem when it is invalid."""
    kind, api = o.get("kind"), o.get("apiVersion", "")
    if api.startswith("keda.sh/"):
        schema = KEDA_SCHEMAS.get(kind)
        if schema is None:
            raise Problem(f"{kind}: no schema for the KEDA kind {kind} ({api})")
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(o), key=str)
        if errors:
            raise Problem("; ".join(f"{'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
                                    for e in errors))
        return "minimal KEDA schema"
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.absolute_path)) or "."
            raise Problem(f"Kubernetes {version} schema: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            raise Problem(e.message)
    return "Kubernetes " + ", ".join(VERSIONS) + " (strict)"


# ---------------------------------------------------------------------------------------
# Checks across objects.
# ---------------------------------------------------------------------------------------
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
                      r"([eE][+-]?[0-9]+|[KMGTPE]i|[mkMGTPE])?$")


def matches(selector, labels):
    return all(labels.get(key) == value for key, value in selector.items())


def check_consistency(objs, is_overlay):
    problems, notes = [], []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    deployments = by_kind.get("Deployment", {})
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    config = configmaps.get("arr-config", {}).get("data", {})

    def grace(key):
        return int(config.get(key, "30"))

    def secret_key(name, key, optional, where):
        if name not in secrets:
            if is_overlay and not optional:
                problems.append(f"{where}: Secret {name!r} is not rendered")
            elif not optional:
                notes.append(f"{where} needs Secret {name}/{key}, provided outside the base")
            return
        if key not in (secrets[name].get("data") or {}) and not optional:
            problems.append(f"{where}: Secret {name!r} has no key {key!r}")

    # A workload that an autoscaler owns must not name a replica count of its own: every
    # `kubectl apply` would set the count back to it (scaling a busy deployment down) until
    # the autoscaler reacts again.
    scaled = {}
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for oname, o in by_kind.get(kind, {}).items():
            ref = o.get("spec", {}).get("scaleTargetRef", {})
            if ref.get("kind", "Deployment") == "Deployment":
                if ref.get("name") in scaled:
                    problems.append(f"Deployment/{ref.get('name')}: scaled by both "
                                    f"{scaled[ref.get('name')]} and {kind}/{oname}")
                scaled[ref.get("name")] = f"{kind}/{oname}"
    for target, owner in scaled.items():
        if target in deployments and "replicas" in deployments[target]["spec"]:
            problems.append(f"Deployment/{target}: sets spec.replicas, but {owner} owns the count")
        elif target in deployments:
            notes.append(f"Deployment/{target}: no spec.replicas ({owner} owns the count)")

    for name, d in deployments.items():
        where = f"Deployment/{name}"
        template = d["spec"]["template"]
        tlabels = template.get("metadata", {}).get("labels", {})
        if not matches(d["spec"]["selector"].get("matchLabels", {}), tlabels):
            problems.append(f"{where}: selector does not match the pod template's labels")
        ps = template["spec"]
        sc = ps.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != 10001:
            problems.append(f"{where}: pods must run as non-root uid 10001 (the image's user)")
        for c in ps["containers"]:
            cw = f"{where} container {c['name']}"
            csc = c.get("securityContext", {})
            if not (csc.get("readOnlyRootFilesystem") is True
                    and csc.get("allowPrivilegeEscalation") is False
                    and "ALL" in csc.get("capabilities", {}).get("drop", [])):
                problems.append(f"{cw}: needs readOnlyRootFilesystem, no privilege escalation "
                                "and capabilities drop ALL")
            if "requests" not in c.get("resources", {}) or "limits" not in c.get("resources", {}):
                problems.append(f"{cw}: needs resource requests and limits")
            for group in ("requests", "limits"):
                for res, qty in c.get("resources", {}).get(group, {}).items():
                    if not QUANTITY.match(str(qty)):
                        problems.append(f"{cw}: resources.{group}.{res}: {qty!r} is no quantity")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    problems.append(f"{cw}: {probe} uses port {port!r}, not a container port")
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef") or ef.get("secretRef") or {}
                pool = configmaps if "configMapRef" in ef else secrets
                if ref.get("name") not in pool and not ref.get("optional"):
                    if "configMapRef" in ef or is_overlay:
                        problems.append(f"{cw}: envFrom names {ref.get('name')!r}, not rendered")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret_key(ref["name"], ref["key"], ref.get("optional", False), cw)
            command = (c.get("command") or [""])[0]
            prestop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            sleep = int(prestop[1]) if len(prestop) == 2 and prestop[0] == "sleep" else 0
            drain = {"api": grace("APP__HTTP__SHUTDOWN_GRACE_SECONDS"),
                     "worker": grace("APP__WORKER__SHUTDOWN_GRACE_SECONDS")}.get(command)
            if drain is not None:
                # The worker's budget covers its jobs and then its webhook deliveries (one
                # deadline); after it, closing takes at most WORKER_CLOSE_SECONDS more, and
                # flushing spans (when an operator turns export on) up to OTLP_FLUSH_SECONDS.
                extra = WORKER_CLOSE_SECONDS + OTLP_FLUSH_SECONDS if command == "worker" else 0
                need = sleep + drain + extra + 5
                have = ps.get("terminationGracePeriodSeconds", 30)
                what = (f"preStop sleep {sleep} s + {command} drain {drain} s"
                        + (f" + close {WORKER_CLOSE_SECONDS} s + span flush {OTLP_FLUSH_SECONDS} s"
                           if extra else "") + " + 5 s margin")
                if have < need:
                    problems.append(f"{where}: terminationGracePeriodSeconds {have} < {what}")
                else:
                    notes.append(f"{where}: grace {have} s >= {what}")

        # Prometheus scrape annotations: the port must be a container port on which the
        # process really serves /metrics (facade: its HTTP port; worker: worker.metrics_port,
        # bound to all interfaces, since 127.0.0.1, the default, is unreachable from outside).
        ann = template.get("metadata", {}).get("annotations") or {}
        if ann.get("prometheus.io/scrape") == "true":
            port = ann.get("prometheus.io/port", "")
            path = ann.get("prometheus.io/path", "/metrics")
            if path != "/metrics":
                problems.append(f"{where}: prometheus.io/path {path!r}, but metrics are served "
                                "at /metrics")
            for c in ps["containers"]:
                if not any(str(p["containerPort"]) == port for p in c.get("ports", [])):
                    problems.append(f"{where}: prometheus.io/port {port!r} is no container "
                                    f"port of {c['name']}")
                env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}

                def setting(key, default):
                    return str(env.get(key, config.get(key, default)))
                command = (c.get("command") or [""])[0]
                if command == "api":
                    serves, host = setting("APP__HTTP__PORT", "8080"), None
                elif command == "worker":
                    serves = setting("APP__WORKER__METRICS_PORT", "9091")
                    host = setting("APP__WORKER__METRICS_HOST", "127.0.0.1")
                else:
                    continue
                if serves != port:
                    problems.append(f"{where}: prometheus.io/port {port!r}, but {command} "
                                    f"serves /metrics on port {serves}")
                elif host is not None and host not in ("0.0.0.0", "::"):
                    problems.append(f"{where}: {command} metrics listen on {host} "
                                    "(APP__WORKER__METRICS_HOST), unreachable for Prometheus")
                else:
                    notes.append(f"{where}: Prometheus scrapes {command} on :{port}{path}")

    def selected(selector, kind):
        hits = [n for n, d in deployments.items()
                if matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))]
        if not selector or not hits:
            problems.append(f"{kind}: selector {selector} selects no Deployment's pods")
        return hits

    # Two Deployments whose selectors take each other's pods fight over them (each counts the
    # other's pods as its own): every worker kind needs a label of its own.
    for name, d in deployments.items():
        for other, od in deployments.items():
            if other != name and matches(d["spec"]["selector"].get("matchLabels", {}),
                                         od["spec"]["template"]["metadata"].get("labels", {})):
                problems.append(f"Deployment/{name}: its selector also matches the pods of "
                                f"Deployment/{other}")

    for name, s in by_kind.get("Service", {}).items():
        for dname in selected(s["spec"].get("selector", {}), f"Service/{name}"):
            containers = deployments[dname]["spec"]["template"]["spec"]["containers"]
            ports = [p for c in containers for p in c.get("ports", [])]
            for sp in s["spec"]["ports"]:
                target = sp.get("targetPort", sp["port"])
                if not any(target in (p.get("name"), p["containerPort"]) for p in ports):
                    problems.append(f"Service/{name}: targetPort {target!r} is no port of "
                                    f"Deployment/{dname}")
    for name, p in by_kind.get("PodDisruptionBudget", {}).items():
        selected(p["spec"]["selector"].get("matchLabels", {}), f"PodDisruptionBudget/{name}")
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, h in by_kind.get(kind, {}).items():
            ref = h["spec"]["scaleTargetRef"]
            if ref.get("kind", "Deployment") != "Deployment" or ref["name"] not in deployments:
                problems.append(f"{kind}/{name}: scales {ref}, which is not rendered")
    for name, so in by_kind.get("ScaledObject", {}).items():
        for t in so["spec"]["triggers"]:
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                problems.append(f"ScaledObject/{name}: TriggerAuthentication {auth!r} not rendered")
    for name, ta in by_kind.get("TriggerAuthentication", {}).items():
        for ref in ta["spec"].get("secretTargetRef", []):
            secret_key(ref["name"], ref["key"], False, f"TriggerAuthentication/{name}")
    check_worker_kinds(deployments, configmaps, by_kind.get("ScaledObject", {}), problems, notes)
    return problems, notes


def container_env(c, configmaps):
    """A container's environment as far as the manifests state it: the data of its ConfigMaps
    (envFrom, a later one winning), then its `env` (winning over envFrom). A value taken from a
    Secret or a field is None (unknown here)."""
    env = {}
    for ef in c.get("envFrom", []):
        if "configMapRef" in ef:
            data = configmaps.get(ef["configMapRef"].get("name"), {}).get("data") or {}
            env.update({ef.get("prefix", "") + key: value for key, value in data.items()})
    for e in c.get("env", []):
        env[e["name"]] = None if "valueFrom" in e else str(e.get("value", ""))
    return env


def declared_types(d, c, env, configmaps, where, problems, notes):
    """The types of the job-types file a worker container loads (APP__WORKER__JOB_TYPES_FILE),
    read from the ConfigMap mounted at that path; None when it cannot be known."""
    path = env.get("APP__WORKER__JOB_TYPES_FILE")
    if path is None:
        if "APP__WORKER__JOB_TYPES_FILE" in env:
            problems.append(f"{where}: APP__WORKER__JOB_TYPES_FILE comes from a Secret or a "
                            "field; give it as a value (its types are checked)")
            return None
        return []
    path = path.strip()
    if not path:
        return []
    volumes = {v["name"]: v for v in d["spec"]["template"]["spec"].get("volumes", [])}
    key = None
    for m in sorted(c.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        mount = m["mountPath"].rstrip("/")
        volume = volumes.get(m["name"], {})
        if "subPath" in m and path == mount:
            key = m["subPath"]
        elif "subPath" not in m and path.startswith(mount + "/"):
            key = posixpath.relpath(path, mount)
        else:
            continue
        if "configMap" not in volume:
            problems.append(f"{where}: APP__WORKER__JOB_TYPES_FILE {path!r} is in volume "
                            f"{m['name']!r}, not a ConfigMap (the check reads ConfigMaps only)")
            return None
        items = volume["configMap"].get("items")
        if items:
            key = next((i["key"] for i in items if i["path"] == key), None)
        cm_name = volume["configMap"].get("name")
        break
    else:
        problems.append(f"{where}: APP__WORKER__JOB_TYPES_FILE {path!r} is in no volume mount")
        return None
    data = (configmaps.get(cm_name) or {}).get("data") or {}
    if key not in data:
        problems.append(f"{where}: APP__WORKER__JOB_TYPES_FILE {path!r}: ConfigMap {cm_name!r} "
                        f"is not rendered or has no key {key!r}")
        return None
    try:
        doc = tomllib.loads(data[key]).get("types", {})
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{where}: ConfigMap {cm_name} key {key}: not TOML: {e}")
        return None
    types = sorted(doc)
    for t in types:
        if not TYPE_NAME.match(t):
            problems.append(f"{where}: ConfigMap {cm_name}: [types.{t}] is not a job type name")
    if not types:
        problems.append(f"{where}: ConfigMap {cm_name} key {key} declares no [types.<name>]")
    # ${VAR} is expanded (at the worker's start) in the handlers' tables: it must be set.
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
    for var in sorted(set(re.findall(r"(?<!\$)\$\{([^}]*)\}", "\n".join(strings)))):
        if var not in env:
            problems.append(f"{where}: the job-types file (ConfigMap {cm_name}) names ${{{var}}}, "
                            "which the container's environment does not set")
    notes.append(f"{where}: declares {', '.join(types)} (ConfigMap {cm_name}, at {path})")
    return types


def check_worker_kinds(deployments, configmaps, scaled_objects, problems, notes):
    """The worker kinds: which types each worker Deployment serves, which queues those are,
    and that its ScaledObject watches exactly them (see the header, point 3)."""

    def routing(env, where):
        """(queue of a type, the mapping): amqp.queue and amqp.type_queues from `env`."""
        for key in [k for k in env if k == "APP__AMQP__QUEUE" or k.startswith(TYPE_QUEUES_ENV)]:
            if env[key] is None:
                problems.append(f"{where}: {key} comes from a Secret or a field; give it as a "
                                "value (the queues of the KEDA triggers are checked against it)")
            elif env[key] == "":
                problems.append(f"{where}: {key} is empty")
        prefix = env.get("APP__AMQP__QUEUE") or "jobs"
        # config-rs lower-cases the keys of environment variables: ..._QUEUES__ECHO is `echo`.
        mapping = {key[len(TYPE_QUEUES_ENV):].lower(): value for key, value in env.items()
                   if key.startswith(TYPE_QUEUES_ENV) and value}
        return (lambda t: f"{prefix}.{mapping.get(t, t)}"), mapping

    def processes(command):
        for dname, d in sorted(deployments.items()):
            for c in d["spec"]["template"]["spec"]["containers"]:
                if (c.get("command") or [""])[0] == command:
                    yield dname, c

    kinds = {}  # worker Deployment -> (its types, or None when unknown; queue of a type)
    mapped = set()
    all_declared, declared_known = set(), True
    for dname, c in processes("worker"):
        where = f"Deployment/{dname} container {c['name']}"
        env = container_env(c, configmaps)
        queue_of, mapping = routing(env, where)
        mapped |= set(mapping)
        raw = env.get("APP__WORKER__TYPES")
        if dname in kinds:
            problems.append(f"Deployment/{dname}: more than one worker container")
            continue
        declared = declared_types(deployments[dname], c, env, configmaps, where, problems, notes)
        if declared is None:
            declared_known = False
            declared = []
        all_declared |= set(declared)
        has = list(BUILTIN_TYPES) + declared
        if raw is None and "APP__WORKER__TYPES" in env:
            problems.append(f"{where}: APP__WORKER__TYPES comes from a Secret or a field; give "
                            "it as a value (its ScaledObject's queues are checked against it)")
            types = None
        elif raw is None:
            types = has
            notes.append(f"{where}: no APP__WORKER__TYPES, serves every type it has")
        elif raw == "":
            # config-rs reads an empty list variable as one empty name, which the worker refuses.
            problems.append(f"{where}: APP__WORKER__TYPES is empty; the worker refuses an empty "
                            "type name: leave the variable out to serve every built-in type")
            types = None
        else:
            types = []
            for t in raw.split(","):
                if not TYPE_NAME.match(t):
                    problems.append(f"{where}: APP__WORKER__TYPES {raw!r}: {t!r} is not a job "
                                    "type name (a comma list without spaces)")
                elif t not in has:
                    problems.append(f"{where}: APP__WORKER__TYPES {raw!r}: {t!r} is not a "
                                    "built-in type of the worker binary or a declared one of its "
                                    f"job-types file ({', '.join(has)})")
                elif t not in types:
                    types.append(t)
        kinds[dname] = (types, queue_of)
    known = {dname: kind for dname, kind in kinds.items() if kind[0] is not None}

    for t in BUILTIN_TYPES if len(known) == len(kinds) else ():
        if not any(t in types for types, _ in kinds.values()):
            problems.append(f"built-in type {t!r} is served by no worker Deployment: its jobs "
                            "would wait in their queue for good")
    for t in sorted(all_declared) if len(known) == len(kinds) and declared_known else ():
        if not any(t in types for types, _ in kinds.values()):
            problems.append(f"declared type {t!r} is served by no worker Deployment (name it in "
                            "the APP__WORKER__TYPES of a kind that loads the file): its jobs "
                            "would wait in their queue for good")

    # A worker reads every message of the queues it consumes: a queue that several types share
    # (APP__AMQP__TYPE_QUEUES__*) must be served whole by each worker kind that consumes it.
    for dname, (types, queue_of) in sorted(known.items()):
        for other in sorted((set(BUILTIN_TYPES) | all_declared | mapped) - set(types)):
            if queue_of(other) in {queue_of(t) for t in types}:
                problems.append(f"Deployment/{dname}: consumes {queue_of(other)}, which also "
                                f"holds {other!r} jobs, a type it does not serve")

    # The facade publishes each job to its type's queue by its own settings: they must name the
    # queue that the type's workers consume.
    for aname, c in processes("api"):
        api_queue_of, _ = routing(container_env(c, configmaps), f"Deployment/{aname}")
        for dname, (types, queue_of) in sorted(known.items()):
            for t in types:
                if api_queue_of(t) != queue_of(t):
                    problems.append(f"Deployment/{aname} publishes {t!r} jobs to "
                                    f"{api_queue_of(t)}, but Deployment/{dname} consumes "
                                    f"{queue_of(t)} for them")

    owners = {}
    for name, so in sorted(scaled_objects.items()):
        target = so["spec"]["scaleTargetRef"]["name"]
        queues = [t["metadata"].get("queueName") for t in so["spec"]["triggers"]
                  if t["type"] == "rabbitmq"]
        if target not in kinds:
            if queues:
                problems.append(f"ScaledObject/{name}: rabbitmq triggers on {target}, which "
                                "runs no worker")
            continue
        owners[target] = name
        types, queue_of = kinds[target]
        if types is None:
            continue  # its types are unknown (a problem above)
        want = sorted({queue_of(t) for t in types})
        for q in sorted({q for q in queues if queues.count(q) > 1}):
            problems.append(f"ScaledObject/{name}: more than one trigger on queue {q!r}")
        missing = [q for q in want if q not in queues]
        extra = sorted({q for q in queues if q not in want}, key=str)
        if missing:
            problems.append(f"ScaledObject/{name}: no trigger on {', '.join(missing)}, the "
                            f"queue(s) of Deployment/{target}'s types ({', '.join(types)})")
        if extra:
            problems.append(f"ScaledObject/{name}: triggers on {', '.join(map(repr, extra))}, "
                            f"not a queue of Deployment/{target}'s types ({', '.join(types)})")
        if not missing and not extra:
            notes.append(f"ScaledObject/{name}: scales Deployment/{target} "
                         f"({','.join(types)}) on {', '.join(want)}")
    for dname in sorted(set(kinds) - set(owners)):
        notes.append(f"Deployment/{dname}: a worker kind no ScaledObject scales")


# ---------------------------------------------------------------------------------------
def main():
    dirs = sorted(p.parent for p in ROOT.rglob("kustomization.yaml"))
    if not dirs:
        print("error: no kustomization.yaml under deploy/", file=sys.stderr)
        return 1
    if KUBECTL:
        version = subprocess.run([KUBECTL, "version", "--client"], capture_output=True,
                                 text=True).stdout.replace("\n", ", ").strip(", ")
        print(f"renderers: kubectl kustomize ({version}) and the built-in renderer, compared")
    else:
        print("renderers: the built-in renderer only (kubectl not found or K8S_RENDERER=builtin)")
    print(f"schemas: kubernetes-validate {kubernetes_validate.version.__version__}, "
          f"Kubernetes {', '.join(VERSIONS)}, strict; KEDA kinds: minimal schemas in this script")
    failed = False
    print(f"\n--- {JOB_TYPES_CONFIGMAP}")
    try:
        copied = (load_yaml_docs(JOB_TYPES_CONFIGMAP)[0].get("data") or {}).get("job-types.toml")
        if copied != JOB_TYPES_FILE.read_text():
            raise Problem(f"its job-types.toml differs from {JOB_TYPES_FILE}: run "
                          "bash scripts/sync-job-types.sh")
        print(f"  ok    ConfigMap job-types.toml == {JOB_TYPES_FILE}")
    except (Problem, OSError, yaml.YAMLError, IndexError, AttributeError) as e:
        print(f"  FAIL  {e}")
        failed = True
    for d in dirs:
        print(f"\n--- {d}")
        try:
            objs = render_builtin(d)
            if KUBECTL:
                ours, theirs = normalized(objs), normalized(render_kubectl(d))
                if ours != theirs:
                    for key in sorted(set(ours) | set(theirs)):
                        if ours.get(key) != theirs.get(key):
                            print(f"  differs: {'/'.join(key)}\n    built-in: "
                                  f"{json.dumps(ours.get(key), sort_keys=True)}\n    kubectl:  "
                                  f"{json.dumps(theirs.get(key), sort_keys=True)}")
                    raise Problem("the built-in renderer and kubectl kustomize disagree")
                objs = render_kubectl(d)
                print(f"  rendered {len(objs)} objects (kubectl kustomize == built-in renderer)")
            else:
                print(f"  rendered {len(objs)} objects (built-in renderer)")
        except (Problem, yaml.YAMLError, OSError, KeyError, TypeError) as e:
            print(f"  FAIL render: {e}")
            failed = True
            continue
        bad = False
        for o in objs:
            label = f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"
            try:
                against = validate_schema(o)
                print(f"  ok    {label:40} {o.get('apiVersion')}: {against}")
            except Problem as e:
                print(f"  FAIL  {label:40} {e}")
                bad = True
        if bad:
            failed = True
            continue
        try:
            problems, notes = check_consistency(objs, is_overlay=(d != ROOT / "base"))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            problems, notes = [f"malformed object: {type(e).__name__}: {e}"], []
        for n in notes:
            print(f"  note  {n}")
        for p in problems:
            print(f"  FAIL  {p}")
        if problems:
            failed = True
        else:
            print("  ok    cross-object checks (selectors, references, ports, worker kinds "
                  "and their queues, grace, security, metrics)")
    print()
    if failed:
        print("Kubernetes manifests: INVALID (see FAIL above)")
        return 1
    print(f"Kubernetes manifests: {len(dirs)} kustomizations valid")
    return 0


sys.exit(main())
PYEOF
