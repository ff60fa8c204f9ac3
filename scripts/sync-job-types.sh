#!/usr/bin/env bash
# Writes deploy/base/job-types-configmap.yaml (the ConfigMap arr-job-types that the arr-worker
# Deployment mounts) from examples/job-types.toml, the one file of the quick start's declared
# job types. Run it after changing that file; scripts/validate-k8s.sh fails while the two differ.
#
#   bash scripts/sync-job-types.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

src=examples/job-types.toml
out=deploy/base/job-types-configmap.yaml
{
  cat <<'YAML'
# GENERATED from examples/job-types.toml by scripts/sync-job-types.sh: edit that file and run the
# script (scripts/validate-k8s.sh checks that this copy is identical).
#
# The declared job types of the arr-worker Deployment (worker-deployment.yaml mounts this at
# /etc/arr/job-types/job-types.toml, APP__WORKER__JOB_TYPES_FILE). The two `http` types call
# ${EXAMPLE_BACKEND} (arr-config: the example overlay's arr-example-backend Service); for your
# own types, replace this ConfigMap in your overlay and name the types in arr-worker's
# APP__WORKER__TYPES and their queues in its ScaledObject's triggers.
#
# Changing this ConfigMap does not restart the pods: kubectl rollout restart deployment/arr-worker
apiVersion: v1
kind: ConfigMap
metadata:
  name: arr-job-types
data:
  job-types.toml: |
YAML
  sed -e 's/^/    /' -e 's/^ *$//' "$src"
} >"$out"
echo "wrote $out from $src"
