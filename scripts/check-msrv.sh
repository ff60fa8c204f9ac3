#!/usr/bin/env bash
# Checks that the MSRV this project states is true: the workspace's `rust-version` (which every
# member inherits) and the README's "Rust (X or newer)" must equal the highest `rust-version`
# declared by any package in Cargo.lock. A second toolchain cannot be installed on the machines
# this runs on, so the check reads the declarations (cargo metadata) instead of building with
# the old compiler; a dependency update that raises the bar fails here until both places say so.
#
#   bash scripts/check-msrv.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo metadata --locked --format-version 1 | python3 -c '
import json, re, sys

def key(v):
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

def short(v):
    # "1.89.0" and "1.89" are the same requirement; print it the way Cargo.toml does.
    major, minor, patch = key(v)
    return f"{major}.{minor}" if patch == 0 else f"{major}.{minor}.{patch}"

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
deps = [p for p in meta["packages"] if p["id"] not in members and p.get("rust_version")]
need = max((key(p["rust_version"]) for p in deps), default=(0, 0, 0))
needed_by = sorted(p["name"] + " " + p["version"] for p in deps if key(p["rust_version"]) == need)
need_s = short(".".join(map(str, need)))
problems = []
for p in meta["packages"]:
    if p["id"] in members:
        declared = p.get("rust_version")
        if declared is None:
            problems.append("workspace member " + p["name"] + " declares no rust-version")
        elif key(declared) != need:
            problems.append("workspace member " + p["name"] + f" says rust-version {declared}, the locked dependencies need {need_s}")
readme = open("README.md", encoding="utf-8").read()
m = re.search(r"Rust \((\d+\.\d+(?:\.\d+)?) or newer\)", readme)
if not m:
    problems.append("README.md does not say \"Rust (X or newer)\"")
elif key(m.group(1)) != need:
    problems.append(f"README.md says Rust {m.group(1)} or newer, the locked dependencies need {need_s}")
print(f"msrv: {len(deps)} locked packages declare a rust-version; the highest is {need_s} (" + ", ".join(needed_by) + ")")
if problems:
    for p in problems:
        print(f"msrv: ERROR: {p}", file=sys.stderr)
    sys.exit(1)
print(f"msrv: Cargo.toml and README.md say {need_s}: true")
'
