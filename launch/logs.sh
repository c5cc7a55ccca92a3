#!/usr/bin/env bash
# Print (or follow) the logs of a submitted pipeline job, then its final status.
# A thin wrapper over `ray job logs` that uses the repo's ray CLI and the same address default as
# launch/submit.sh, so the two always talk to the same cluster.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: launch/logs.sh SUBMISSION_ID [--address URL] [--follow]

  --address URL   the cluster's job API (default: $RAY_ADDRESS if http(s)://..., else http://127.0.0.1:8265)
  --follow        stream the logs until the job ends
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDRESS=""
FOLLOW=()
SUBMISSION_ID=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --address) ADDRESS="${2:?--address needs a value}"; shift 2 ;;
        --follow | -f) FOLLOW=(--follow); shift ;;
        -*) echo "logs.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
        *)
            if [[ -n "$SUBMISSION_ID" ]]; then
                echo "logs.sh: one SUBMISSION_ID only (see --help)" >&2
                exit 2
            fi
            SUBMISSION_ID="$1"; shift ;;
    esac
done
if [[ -z "$SUBMISSION_ID" ]]; then
    usage >&2
    exit 2
fi
if [[ -z "$ADDRESS" ]]; then
    case "${RAY_ADDRESS:-}" in
        http://* | https://*) ADDRESS="$RAY_ADDRESS" ;;
        *) ADDRESS="http://127.0.0.1:8265" ;;
    esac
fi
RAY=ray
if [[ -x "$REPO/.venv/bin/ray" ]]; then
    RAY="$REPO/.venv/bin/ray"
fi
export RAY_USAGE_STATS_ENABLED=0

"$RAY" job logs "$SUBMISSION_ID" --address "$ADDRESS" "${FOLLOW[@]}"
"$RAY" job status "$SUBMISSION_ID" --address "$ADDRESS" >&2
