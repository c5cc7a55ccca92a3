#!/usr/bin/env bash
# Submit the pipeline to a Ray cluster as a Ray job: `python -m imagelora_dist run ARGS` in a copy of
# this repo (the working dir is uploaded to the cluster, minus launch/runtime_env.yaml's `excludes`).
#
# Why this shape:
#   * --working-dir . from the repo root: the job runs the code as it is in this checkout, also on a
#     remote cluster that has only the package's dependencies installed.
#   * --runtime-env launch/runtime_env.yaml: offline / no-telemetry env vars for the driver and every
#     actor, and upload excludes (Ray refuses a working dir over ~500 MB; .venv alone is GBs).
#   * a submission id chosen here, so it can be printed before the logs stream and used with
#     launch/logs.sh or `ray job stop` even with --no-wait.
#   * relative output_dir / tracking.uri in the job resolve inside the job's working-dir copy (under
#     the cluster's temp dir) and vanish with it: pass absolute paths or shared storage, e.g.
#     output_dir=$PWD/runs/x tracking.uri=sqlite:///$PWD/mlruns.db tracking.artifact_root=$PWD/mlartifacts
#   * auth: the client keeps RAY_AUTH_MODE from the environment; for a cluster with token auth,
#     `export RAY_AUTH_MODE=token` first (see launch/README.md).
#   * credentials: the nodes of a cluster need not have the object store's credentials in their own
#     environment, so every AWS_* variable set here (keys, session token, region, AWS_ENDPOINT_URL[_S3];
#     not those naming a local file, AWS_CA_BUNDLE and AWS_*_FILE, which --env NAME can still pass) and
#     each `--env NAME` is added to the job's runtime env, which reaches the driver and every actor
#     and task. They go through a private temp file (mode 0600, deleted after the submission), not the
#     command line. Ray keeps a job's runtime env in its job info, readable by whoever can reach the job
#     API: on a shared cluster give the nodes their credentials instead (instance role, a Kubernetes
#     secret in the pod env) and pass --no-aws-env.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: launch/submit.sh [--address URL] [--submission-id ID] [--no-wait] [--env NAME]... [--no-aws-env]
                        [-- PIPELINE_ARGS...]

Submit `python -m imagelora_dist run PIPELINE_ARGS` (default: the embedded tiny config) as a Ray job.

  --address URL        the cluster's job API (default: $RAY_ADDRESS if it is http(s)://...,
                       else http://127.0.0.1:8265)
  --submission-id ID   the job's id (default: imagelora-<date>-<time>-<random>)
  --no-wait            return once submitted instead of streaming the logs until the job ends
  --env NAME           add the variable NAME, as set in this shell, to the job's runtime env (repeatable;
                       e.g. MLFLOW_TRACKING_TOKEN)
  --no-aws-env         do not add this shell's AWS_* variables (added by default: object-store
                       credentials and endpoint for s3:// shards, train.storage and MLflow artifacts)
  -- ARGS...           pipeline arguments, e.g. -- --config configs/qwen2_5_vl_7b.yaml output_dir=/abs/runs/x

Prints "submission_id: ID" first; with --no-wait the last line of stdout is the bare id. Without
--no-wait the exit code is 1 when the job failed.
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDRESS=""
SUBMISSION_ID=""
NO_WAIT=0
PASS_AWS=1
PASS_ENV=()
PIPELINE_ARGS=()  # the embedded default config

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --address) ADDRESS="${2:?--address needs a value}"; shift 2 ;;
        --submission-id) SUBMISSION_ID="${2:?--submission-id needs a value}"; shift 2 ;;
        --no-wait) NO_WAIT=1; shift ;;
        --env) PASS_ENV+=("${2:?--env needs a variable name}"); shift 2 ;;
        --no-aws-env) PASS_AWS=0; shift ;;
        --) shift; if [[ $# -gt 0 ]]; then PIPELINE_ARGS=("$@"); fi; break ;;
        *) echo "submit.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$ADDRESS" ]]; then
    case "${RAY_ADDRESS:-}" in
        http://* | https://*) ADDRESS="$RAY_ADDRESS" ;;
        *) ADDRESS="http://127.0.0.1:8265" ;;
    esac
fi
if [[ -z "$SUBMISSION_ID" ]]; then
    SUBMISSION_ID="imagelora-$(date +%Y%m%d-%H%M%S)-$RANDOM"
fi
# The repo's ray CLI when there is one (same Ray version as the cluster start_cluster.sh starts).
RAY=ray
PYTHON=python3
if [[ -x "$REPO/.venv/bin/ray" ]]; then
    RAY="$REPO/.venv/bin/ray"
    PYTHON="$REPO/.venv/bin/python"
fi
export RAY_USAGE_STATS_ENABLED=0

for name in "${PASS_ENV[@]}"; do
    if ! [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "submit.sh: --env $name: not a variable name" >&2
        exit 2
    fi
    if [[ -z "${!name+set}" ]]; then
        echo "submit.sh: --env $name: not set in this shell" >&2
        exit 2
    fi
done
if (( PASS_AWS )); then
    # Not the ones naming a file (AWS_CA_BUNDLE, AWS_*_FILE): that path need not exist on the nodes.
    mapfile -t aws_names < <(compgen -e | grep '^AWS_' | grep -v -e '_FILE$' -e '^AWS_CA_BUNDLE$' || true)
    PASS_ENV+=("${aws_names[@]}")
fi
RUNTIME_ENV=launch/runtime_env.yaml
if (( ${#PASS_ENV[@]} )); then
    # launch/runtime_env.yaml plus the variables, in a file only this user can read.
    RUNTIME_ENV="$(umask 077 && mktemp "${TMPDIR:-/tmp}/imagelora-runtime-env.XXXXXX")"
    trap 'rm -f -- "$RUNTIME_ENV"' EXIT
    "$PYTHON" - "$REPO/launch/runtime_env.yaml" "$RUNTIME_ENV" "${PASS_ENV[@]}" <<'PY'
import json, os, sys
import yaml
source, dest, *names = sys.argv[1:]
with open(source) as f:
    env = yaml.safe_load(f)
env.setdefault("env_vars", {}).update({name: os.environ[name] for name in names})
with open(dest, "w") as f:
    json.dump(env, f)  # JSON is YAML too
PY
    echo "submit.sh: job runtime env adds: $(printf '%s\n' "${PASS_ENV[@]}" | sort -u | tr '\n' ' ')" >&2
fi

cd "$REPO" # --working-dir . and the runtime env path are relative to the repo root
echo "submission_id: $SUBMISSION_ID"
WAIT_FLAG=()
if (( NO_WAIT )); then
    WAIT_FLAG=(--no-wait)
fi
# ray job submit quotes the entrypoint argv with shlex.join, so arguments with spaces survive.
"$RAY" job submit \
    --address "$ADDRESS" \
    --submission-id "$SUBMISSION_ID" \
    --working-dir . \
    --runtime-env "$RUNTIME_ENV" \
    "${WAIT_FLAG[@]}" \
    -- python -m imagelora_dist run "${PIPELINE_ARGS[@]}"
if (( NO_WAIT )); then
    echo "logs:   launch/logs.sh $SUBMISSION_ID --address $ADDRESS --follow" >&2
    echo "$SUBMISSION_ID"
fi
