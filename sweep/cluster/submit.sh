#!/usr/bin/env bash
# Submit a sweep to a running Ray cluster with `ray job submit` (the driver runs on the head,
# so closing this terminal does not stop the sweep).
#
#   sweep/cluster/submit.sh [--wait] http://127.0.0.1:8265 --space cifar10_paper.yaml --data-root /data \
#       --storage s3://YOUR-BUCKET/neuroreg/sweeps --gpus-per-trial 0.5
#
# --wait follows the job's output and exits with its status (default: submit and return).
# The dashboard address: forward it first (`ray dashboard sweep/cluster/gpu_cluster.yaml`, or
# ssh -L 8265:127.0.0.1:8265 head). Token authentication: the token of the cluster in
# RAY_AUTH_TOKEN (`ray get-auth-token` on the head) or in ~/.ray/auth_token here.
# The working directory is uploaded without .venv, results, data and git history; every
# node must already have the project's dependencies installed (the cluster's setup).
#
# The driver's interpreter on the head (sweep/cluster/job_entry.sh): NEUROREG_PYTHON when set
# here (a path on the head), else the Python environment the head's Ray runs in, else python3
# on the head's PATH; the first that imports the project's requirements runs the sweep. If
# none does, the job fails at once naming each interpreter and what it lacks.
set -euo pipefail
wait_flag=(--no-wait)
if [[ "${1:-}" == "--wait" ]]; then
    wait_flag=()
    shift
fi
address=${1:?usage: submit.sh [--wait] DASHBOARD_URL SWEEP.RUN-FLAGS...}
shift
cd "$(dirname "$0")/../.."
export RAY_AUTH_MODE=token
env_vars="{}"
if [[ -n "${NEUROREG_PYTHON:-}" ]]; then
    escaped=${NEUROREG_PYTHON//\\/\\\\}
    env_vars="{\"NEUROREG_PYTHON\": \"${escaped//\"/\\\"}\"}"
fi
exec "${RAY:-ray}" job submit --address "$address" "${wait_flag[@]}" \
    --working-dir . \
    --runtime-env-json "{\"excludes\": [\".venv\", \"results\", \".git\", \"**/__pycache__\", \"*.pt\", \"shared\"], \"env_vars\": $env_vars}" \
    -- sh sweep/cluster/job_entry.sh --address auto --quiet "$@"
# Then: ray job logs --address "$address" -f <job id>; ray job stop ... to interrupt (the
# sweep resumes with --resume --name NAME --storage ...).
