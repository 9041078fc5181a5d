#!/usr/bin/env bash
# Submit a study to a running Ray cluster (local `ray start --head` or one from cluster.yaml).
#   cluster/submit.sh studies/batch_size.py --scale gpu --workers 2
# RAY_ADDRESS defaults to the local dashboard; token authentication is used when RAY_AUTH_MODE=token
# (the token is read from ~/.ray/auth_token, made by `ray get-auth-token --generate`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
study="$1"; shift
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# Results must outlive the job's temporary working dir: write them under the repo you submit from.
exec ray job submit --working-dir . -- python "$study" --out "$PWD/results/$(basename "$study" .py)" "$@"
