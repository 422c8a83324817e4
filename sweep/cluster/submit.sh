#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster with `ray job submit` (the driver runs on the head,
# so closing this terminal does not stop the sweep).
#
#   sweep/cluster/submit.sh http://127.0.0.1:8265 --space cifar10_paper.yaml --data-root /data \
#       --storage s3://YOUR-BUCKET/neuroreg/sweeps --gpus-per-trial 0.5
#
# The dashboard address: forward it first (`ray dashboard sweep/cluster/gpu_cluster.yaml`, or
# ssh -L 8265:127.0.0.1:8265 head). Token authentication: the token of the cluster in
# RAY_AUTH_TOKEN (`ray get-auth-token` on the head) or in ~/.ray/auth_token here.
# The working directory is uploaded without .venv, results, data and git history; every
# node must already have the project's dependencies installed (the cluster's setup).
set -euo pipefail
address=${1:?usage: submit.sh DASHBOARD_URL SWEEP.RUN-FLAGS...}
shift
cd "$(dirname "$0")/../.."
export RAY_AUTH_MODE=token
exec ray job submit --address "$address" --no-wait \
    --working-dir . \
    --runtime-env-json '{"excludes": [".venv", "results", ".git", "**/__pycache__", "*.pt", "shared"]}' \
    -- python -m sweep.run --address auto --quiet "$@"
# Then: ray job logs --address "$address" -f <job id>; ray job stop ... to interrupt (the
# sweep resumes with --resume --name NAME --storage ...).
