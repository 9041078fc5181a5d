#!/usr/bin/env bash
# Submit a study to a running Ray cluster (local `ray start --head` or one from cluster.yaml).
#   cluster/submit.sh studies/batch_size.py --scale gpu --workers 2
# RAY_ADDRESS defaults to the local dashboard; token authentication is used when RAY_AUTH_MODE=token
# (the token is read from ~/.ray/auth_token, made by `ray get-auth-token --generate`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
study="$1"; shift
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# Results must outlive the job's temporary working dir: an absolute folder on the machine the driver runs on
# (LAB_RESULTS: for a cloud cluster the head's, e.g. /home/ubuntu/sslab/results; cluster/README.md).
results="${LAB_RESULTS:-$PWD/results}"
# LAB_STORAGE: where the study's state lives (--storage): a folder every node mounts at the same path (NFS / EFS),
# or s3://bucket/prefix, gs://bucket/prefix (the nodes' credentials must write it).
name="$(basename "$study" .py)"
storage=()
if [ -n "${LAB_STORAGE:-}" ]; then storage=(--storage "$LAB_STORAGE/$name"); fi
exec ray job submit --working-dir . -- python "$study" --out "$results/$name" "${storage[@]}" "$@"
