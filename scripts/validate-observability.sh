#!/usr/bin/env bash
# Validates the monitoring files: the Grafana dashboard(s), Grafana's provisioning, the
# Prometheus configuration of docker-compose.yml, and how they fit the compose file.
#
#   bash scripts/validate-observability.sh
#
# 1. deploy/grafana/dashboards/*.json: well-formed JSON, a dashboard (uid, title, schemaVersion,
#    unique panel ids, panels inside the 24-column grid and not overlapping), every query on the
#    dashboard's `datasource` variable (or the provisioned uid), whose default is the uid that
#    deploy/grafana/provisioning/datasources/ provisions.
# 2. Every metric name in a query is one of README.md's metrics table ("Metrics"; `_bucket`,
#    `_sum` and `_count` of a `_seconds` histogram too), and every label a query matches or
#    groups by is one of that metric's labels in the table (or le, job, instance).
# 3. deploy/prometheus/prometheus.yml scrapes `api` on the facade's HTTP port and `worker` by
#    DNS on worker.metrics_port, and docker-compose.yml sets what that needs (the worker's
#    APP__WORKER__METRICS_HOST=0.0.0.0, no fixed container_name on the worker); the files the
#    compose file mounts exist.
# 4. When promtool is installed (PATH or PROMTOOL=/path/to/promtool): `promtool check config`
#    on prometheus.yml and `promtool check rules` on every dashboard query (PromQL syntax).
#    Without it that step is skipped; the checks above still run.
#
# Needs Python 3 with PyYAML: the virtualenv of scripts/validate-k8s.sh (target/k8s-validate-venv)
# when it exists, else python3 if it has yaml, else a virtualenv target/observability-venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=""
for candidate in "${K8S_VALIDATE_VENV:-target/k8s-validate-venv}/bin/python" python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  VENV=target/observability-venv
  echo "installing pyyaml into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check pyyaml
  PY="$VENV/bin/python"
fi

PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
export PROMTOOL

exec "$PY" - <<'PYEOF'
import json, os, re, subprocess, sys, tempfile
from pathlib import Path

import yaml

problems, notes = [], []


def fail(msg):
    problems.append(msg)


# ---------------------------------------------------------------------------------------
# README's metrics table: name -> set of labels
# ---------------------------------------------------------------------------------------
def readme_metrics():
    text = Path("README.md").read_text()
    m = re.search(r"^### Metrics\n(.*?)(?=^#)", text, re.S | re.M)
    if not m:
        raise SystemExit("error: README.md has no '### Metrics' section")
    metrics = {}
    for line in m.group(1).splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for token in re.findall(r"`([^`]+)`", first_cell):
            # arr_jobs_{a,b}_total{type}: a brace followed by more of the name is an
            # alternation, a trailing brace is the label list.
            tm = re.fullmatch(r"((?:[a-z0-9_:]+|\{[a-z0-9_,]+\}(?=[a-z0-9_:]))+)"
                              r"(?:\{([a-z0-9_,]*)\})?", token)
            if not tm:
                raise SystemExit(f"error: README metrics table: cannot read {token!r}")
            names = [""]
            for part in re.findall(r"\{[a-z0-9_,]+\}|[a-z0-9_:]+", tm.group(1)):
                alts = part[1:-1].split(",") if part.startswith("{") else [part]
                names = [n + a for n in names for a in alts]
            labels = set(filter(None, (tm.group(2) or "").split(",")))
            for n in names:
                metrics[n] = labels
    if not metrics:
        raise SystemExit("error: README.md's metrics table lists no metric")
    return metrics


METRICS = readme_metrics()
ALWAYS = {"job", "instance"}  # added by Prometheus to every scraped series


def series_labels(name):
    """Labels of a series name, or None if README does not list it."""
    if name in METRICS:
        return METRICS[name] | ALWAYS
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in METRICS and base.endswith("_seconds"):
            return METRICS[base] | ALWAYS | ({"le"} if suffix == "_bucket" else set())
    return None


PROMQL_WORDS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group", "by", "without", "on", "ignoring",
                "group_left", "group_right", "bool", "and", "or", "unless", "offset",
                "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
                "label_values", "clamp_min", "clamp_max", "abs", "round", "vector", "scalar",
                "time", "sum_over_time", "avg_over_time", "max_over_time", "min_over_time",
                "absent", "changes", "resets", "label_replace", "label_join", "sort",
                "sort_desc", "query_result", "metrics", "label_names"}


def check_expr(expr, where):
    """Metric names and label names of one PromQL expression (Grafana variables allowed)."""
    # Parentheses and braces balance (promtool, when present, checks the rest of the syntax).
    stack = []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "({[":
            stack.append(ch)
        elif ch in ")}]":
            if not stack or "({["[")}]".index(ch)] != stack.pop():
                fail(f"{where}: unbalanced brackets in {expr!r}")
                return
    if stack:
        fail(f"{where}: unbalanced brackets in {expr!r}")
        return
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no identifiers inside strings
    bare = re.sub(r"\[[^\]]*\]", "", bare)            # range selectors
    used = set()
    for m in re.finditer(r"(?<![\w$])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", bare):
        ident, matchers = m.group(1), m.group(2)
        if ident in PROMQL_WORDS:
            continue
        if not ident.startswith("arr_"):
            # Label names inside by()/label_values() are read below; anything else is a
            # metric that README does not list.
            if matchers is not None or not re.search(
                    rf"(by|without|on|ignoring|label_values)\s*\([^()]*\b{ident}\b", bare):
                fail(f"{where}: {ident!r} is not a metric of README's metrics table")
            continue
        labels = series_labels(ident)
        if labels is None:
            fail(f"{where}: metric {ident!r} is not in README's metrics table")
            continue
        used.add(ident)
        for lm in re.finditer(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)", matchers or ""):
            if lm.group(1) not in labels:
                fail(f"{where}: {ident} has no label {lm.group(1)!r} (README: "
                     f"{', '.join(sorted(labels - ALWAYS)) or 'none'})")
    known = set().union(*(series_labels(n) for n in used)) if used else ALWAYS
    if problems and not used:
        return used  # an unknown metric, reported above: its labels cannot be checked
    for g in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
        for label in filter(None, (x.strip() for x in g.group(1).split(","))):
            if label not in known:
                fail(f"{where}: groups by {label!r}, a label of none of {sorted(used)}")
    for lv in re.finditer(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", bare):
        labels = series_labels(lv.group(1)) or set()
        if lv.group(2) not in labels:
            fail(f"{where}: label_values of {lv.group(1)} by {lv.group(2)!r}, not its label")
    return used


# ---------------------------------------------------------------------------------------
# Grafana provisioning and dashboards
# ---------------------------------------------------------------------------------------
GRAFANA = Path("deploy/grafana")
ds_files = sorted((GRAFANA / "provisioning/datasources").glob("*.y*ml"))
datasources = []
for f in ds_files:
    doc = yaml.safe_load(f.read_text()) or {}
    for ds in doc.get("datasources", []):
        datasources.append(ds)
prom_ds = [d for d in datasources if d.get("type") == "prometheus"]
if len(prom_ds) != 1 or not prom_ds[0].get("uid"):
    fail(f"{GRAFANA}/provisioning/datasources: want one prometheus datasource with a uid, "
         f"found {len(prom_ds)}")
    DS_UID, DS_URL = None, ""
else:
    DS_UID, DS_URL = prom_ds[0]["uid"], prom_ds[0].get("url", "")

providers = []
for f in sorted((GRAFANA / "provisioning/dashboards").glob("*.y*ml")):
    providers += (yaml.safe_load(f.read_text()) or {}).get("providers", [])
if not providers:
    fail(f"{GRAFANA}/provisioning/dashboards: no dashboard provider")
PROVIDER_PATHS = {p.get("options", {}).get("path") for p in providers}

dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
if not dashboards:
    fail(f"{GRAFANA}/dashboards: no dashboard JSON")
all_used = set()
rule_exprs = []
for f in dashboards:
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        fail(f"{f}: not JSON: {e}")
        continue
    for key in ("uid", "title", "schemaVersion", "panels"):
        if key not in d:
            fail(f"{f}: no {key!r}")
    if not isinstance(d.get("schemaVersion"), int) or not 36 <= d["schemaVersion"] <= 41:
        fail(f"{f}: schemaVersion {d.get('schemaVersion')!r}, expected 36..41 (Grafana 9.x-11.x)")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource")
    ok_refs = {DS_UID}
    if ds_var:
        if ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
            fail(f"{f}: variable `datasource` is not a prometheus datasource variable")
        if DS_UID and ds_var.get("current", {}).get("value") != DS_UID:
            fail(f"{f}: variable `datasource` defaults to "
                 f"{ds_var.get('current', {}).get('value')!r}, not the provisioned uid {DS_UID!r}")
        ok_refs |= {"${datasource}", "$datasource"}

    def ds_ok(ref, where):
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        if uid not in ok_refs:
            fail(f"{where}: datasource {ref!r} is neither $datasource nor uid {DS_UID!r}")

    for name, v in variables.items():
        if v.get("type") == "query":
            ds_ok(v.get("datasource"), f"{f} variable {name}")
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            all_used |= check_expr(q or "", f"{f} variable {name}") or set()

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    ids, cells = set(), {}
    for p in walk(d.get("panels", [])):
        where = f"{f} panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            fail(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy") or g["x"] + g["w"] > 24:
            fail(f"{where}: gridPos {g} is not inside the 24-column grid")
        else:
            for x in range(g["x"], g["x"] + g["w"]):
                for yy in range(g["y"], g["y"] + g["h"]):
                    if (x, yy) in cells:
                        fail(f"{where}: overlaps panel {cells[(x, yy)]}")
                        break
                    cells[(x, yy)] = p.get("id")
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if not p.get("targets"):
            fail(f"{where}: no queries")
        if "datasource" in p:
            ds_ok(p["datasource"], where)
        for t in p.get("targets", []):
            ds_ok(t.get("datasource", p.get("datasource")), f"{where} query {t.get('refId')}")
            expr = t.get("expr")
            if not expr:
                fail(f"{where} query {t.get('refId')}: no expr")
                continue
            all_used |= check_expr(expr, f"{where} query {t.get('refId')}") or set()
            rule_exprs.append((where, expr))
    if "/etc/grafana/dashboards" not in PROVIDER_PATHS:
        fail(f"dashboard provider path {PROVIDER_PATHS}: docker-compose.yml mounts "
             "the dashboards at /etc/grafana/dashboards")
    notes.append(f"{f}: {len(ids)} panels, {len(rule_exprs)} queries")

unused = sorted(n for n in METRICS if not any(u == n or u.startswith(n + "_") for u in all_used))
if unused:
    notes.append(f"README metrics no dashboard shows: {', '.join(unused)}")

# ---------------------------------------------------------------------------------------
# Prometheus configuration and docker-compose.yml
# ---------------------------------------------------------------------------------------
PROM = Path("deploy/prometheus/prometheus.yml")
compose = yaml.safe_load(Path("docker-compose.yml").read_text())
services = compose.get("services", {})
prom = yaml.safe_load(PROM.read_text()) or {}
jobs = {j.get("job_name"): j for j in prom.get("scrape_configs", [])}

def env_of(service):
    env = services.get(service, {}).get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}

api_port = env_of("api").get("APP__HTTP__PORT", "8080")
api_targets = [t for sc in jobs.get("api", {}).get("static_configs", []) for t in sc["targets"]]
if api_targets != [f"api:{api_port}"]:
    fail(f"{PROM}: job api scrapes {api_targets}, expected ['api:{api_port}']")
worker_env = env_of("worker")
default_port = re.search(r"^metrics_port\s*=\s*(\d+)", Path("config/default.toml").read_text(), re.M)
worker_port = int(worker_env.get("APP__WORKER__METRICS_PORT",
                                 default_port.group(1) if default_port else "9091"))
sd = jobs.get("worker", {}).get("dns_sd_configs", [])
if not any(s.get("names") == ["worker"] and s.get("type") == "A" and s.get("port") == worker_port
           for s in sd):
    fail(f"{PROM}: job worker must find every replica with dns_sd_configs names ['worker'], "
         f"type A, port {worker_port}")
if worker_env.get("APP__WORKER__METRICS_HOST") not in ("0.0.0.0", "::"):
    fail("docker-compose.yml: the worker needs APP__WORKER__METRICS_HOST 0.0.0.0 to be scraped")
if "container_name" in services.get("worker", {}):
    fail("docker-compose.yml: a container_name on the worker prevents --scale")
for name in ("prometheus", "grafana"):
    if name not in services:
        fail(f"docker-compose.yml: no service {name!r}")
if DS_URL and DS_URL != "http://prometheus:9090":
    fail(f"Grafana datasource url {DS_URL!r}, the compose service is http://prometheus:9090")
for name, svc in services.items():
    for vol in svc.get("volumes", []):
        source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if source.startswith((".", "/")) and not Path(source).exists():
            fail(f"docker-compose.yml: service {name} mounts {source}, which does not exist")

# ---------------------------------------------------------------------------------------
# promtool (optional)
# ---------------------------------------------------------------------------------------
promtool = os.environ.get("PROMTOOL")
if promtool:
    r = subprocess.run([promtool, "check", "config", str(PROM)], capture_output=True, text=True)
    if r.returncode:
        fail(f"promtool check config {PROM}:\n{r.stdout}{r.stderr}")
    else:
        notes.append(f"promtool check config {PROM}: ok")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}",
         "expr": e.replace("$__rate_interval", "1m").replace("$__interval", "1m")
                  .replace("${type}", ".*").replace("$type", ".*")}
        for i, (_, e) in enumerate(rule_exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tmp:
        yaml.safe_dump(rules, tmp)
    r = subprocess.run([promtool, "check", "rules", tmp.name], capture_output=True, text=True)
    os.unlink(tmp.name)
    if r.returncode:
        fail(f"promtool check rules (the dashboard's queries):\n{r.stdout}{r.stderr}")
    else:
        notes.append(f"promtool: the {len(rule_exprs)} dashboard queries parse")
else:
    notes.append("promtool not found: PromQL syntax and prometheus.yml not checked by promtool "
                 "(set PROMTOOL or install the Debian package prometheus)")

for n in notes:
    print(f"  note  {n}")
for p in problems:
    print(f"  FAIL  {p}")
if problems:
    print("\nobservability files: INVALID (see FAIL above)")
    sys.exit(1)
print(f"\nobservability files valid: {len(dashboards)} dashboard(s), "
      f"{len(all_used)} metric series names all in README's metrics table")
PYEOF
