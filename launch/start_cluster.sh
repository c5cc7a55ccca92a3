#!/usr/bin/env bash
# Start a local, single-node Ray head for `launch/submit.sh` (ray job submit).
#
# Why each flag (Ray 2.60, see ../shared/STACK.md section 3):
#   * PATH gets the repo's .venv/bin first, so the raylet, the dashboard and every job entrypoint
#     (`python -m imagelora_dist ...`) use the venv's python and packages, not the system ones.
#   * --dashboard-host=127.0.0.1: the dashboard and job API (the unauthenticated HTTP entry point that
#     runs arbitrary commands) listen on loopback only.
#   * --node-ip-address=127.0.0.1: meant to keep Ray on loopback, but Ray 2.60 replaces a loopback
#     address with the machine's outward IP (services.resolve_ip_for_localhost), and gcs_server, the
#     raylet, the dashboard agent and the Ray client server listen on every interface. So the GCS port
#     IS reachable from the network; see auth below.
#   * RAY_AUTH_MODE=token (default --auth token): since the GCS and raylet ports are reachable, anyone
#     who can connect could otherwise run code as you. The token is $RAY_AUTH_TOKEN, else the file named
#     by RAY_AUTH_TOKEN_PATH (which must exist), else ~/.ray/auth_token, generated (mode 0600) if missing
#     (`ray start` itself refuses token mode without a token). Every client shell then needs
#     `export RAY_AUTH_MODE=token` (plus RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN on another machine), or
#     `ray job submit` / `ray status` fail with "Missing authentication token". The job drivers inherit
#     the mode and token path from this script's environment. `--auth disabled` is for a throwaway
#     cluster on a machine whose ports nobody else can reach (a laptop, a CI container, the tests).
#   * --num-cpus and --object-store-memory: Ray would otherwise claim all cores and 30% of RAM in /dev/shm.
#   * --temp-dir: a dedicated, short directory (unix socket paths are limited to ~107 bytes). It is also
#     how launch/stop_cluster.sh finds this cluster's processes without touching any other Ray
#     (plain `ray stop` kills every Ray process of the user on the machine). This script writes the
#     marker file DIR/.imagelora-cluster (ports, auth, its pid) before `ray start`; stop_cluster.sh
#     kills or deletes nothing in a directory without it. So DIR must be new, empty, or already marked
#     (a previous cluster of this script): a marker must never land in /tmp, $HOME or a project folder.
#   * --min-worker-port=0 --max-worker-port=0: workers bind OS-chosen ports instead of the fixed
#     10002-19999 range, so this cluster cannot collide with another Ray on the same machine.
#   * --disable-usage-stats / RAY_USAGE_STATS_ENABLED=0: no telemetry (the machine may be offline).
#   * --join GCS_ADDRESS: a worker node for a running head (another machine, or a second raylet on this
#     one for tests): same flags, no dashboard, its own --temp-dir (and marker, so stop_cluster.sh stops
#     exactly this node), `--resources` to tag it. Every process of the node, workers included, inherits
#     this script's environment: set TMPDIR for a node-local scratch dir. In token mode it needs the
#     head's token (it never generates one: a new token would not match).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: launch/start_cluster.sh [--cpus N] [--port PORT] [--temp-dir DIR] [--gcs-port PORT]
                               [--object-store-memory BYTES] [--auth token|disabled]
                               [--join GCS_ADDRESS] [--resources JSON]
                               [-- EXTRA_RAY_START_ARGS...]

Start a local Ray head bound to 127.0.0.1, from the repo's .venv (or, with --join, a worker node).

  --cpus N                     CPUs Ray may schedule on (default: 2)
  --port PORT                  dashboard / job API port on 127.0.0.1 (default: 8265)
  --temp-dir DIR               Ray's temp/session dir; keep it short, and new, empty or used by a
                               previous start_cluster.sh (default: /tmp/ray-ild-$UID)
  --gcs-port PORT              GCS port, the address ray.init() connects to (default: 6379)
  --object-store-memory BYTES  object store size (default: 1000000000)
  --auth MODE                  token (default; clients need `export RAY_AUTH_MODE=token`, token in
                               ~/.ray/auth_token, generated if missing, or $RAY_AUTH_TOKEN_PATH) or
                               disabled (only where no one else can reach this machine's ports)
  --join GCS_ADDRESS           start a worker node of the head at GCS_ADDRESS (host:port, what the
                               head printed as RAY_ADDRESS) instead of a head; --port and --gcs-port
                               are then unused
  --resources JSON             custom resources of this node, e.g. '{"node_w1": 1}'
  -- ARGS...                   passed to `ray start` as is (e.g. --ray-client-server-port 10001)

Prints the job address (http://127.0.0.1:PORT) as the last line of stdout (with --join: the GCS
address joined); ray's own output goes to stderr. Stop it with: launch/stop_cluster.sh --temp-dir DIR
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CPUS=2
PORT=8265
TEMP_DIR="/tmp/ray-ild-$(id -u)"
GCS_PORT=6379
OBJECT_STORE=1000000000
AUTH=token
JOIN=""
RESOURCES=""
EXTRA=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --cpus) CPUS="${2:?--cpus needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --temp-dir) TEMP_DIR="${2:?--temp-dir needs a value}"; shift 2 ;;
        --gcs-port) GCS_PORT="${2:?--gcs-port needs a value}"; shift 2 ;;
        --object-store-memory) OBJECT_STORE="${2:?--object-store-memory needs a value}"; shift 2 ;;
        --auth) AUTH="${2:?--auth needs a value}"; shift 2 ;;
        --join) JOIN="${2:?--join needs a value}"; shift 2 ;;
        --resources) RESOURCES="${2:?--resources needs a value}"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "start_cluster.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$AUTH" in
    disabled | token) ;;
    *) echo "start_cluster.sh: --auth must be disabled or token, got: $AUTH" >&2; exit 2 ;;
esac
# The environment whose python runs the cluster and the jobs: the repo's .venv, else (e.g. a CI image
# with the package installed system-wide) the one that provides `ray` on PATH.
if [[ -x "$REPO/.venv/bin/ray" ]]; then
    BIN="$REPO/.venv/bin"
elif command -v ray >/dev/null 2>&1; then
    BIN="$(dirname "$(command -v ray)")"
    echo "start_cluster.sh: no $REPO/.venv; using the Python environment of $BIN/ray" >&2
else
    echo "start_cluster.sh: $REPO/.venv/bin/ray not found; run 'make install' first" >&2
    exit 1
fi

# Ray keeps the path as given; stop_cluster.sh matches it in process command lines, so make it absolute.
TEMP_DIR="$(realpath -m -- "$TEMP_DIR")"
# Unix sockets live at <temp>/session_<date>_<time>_<pid>/sockets/<name> (~70 bytes below the root).
if (( ${#TEMP_DIR} > 40 )); then
    echo "start_cluster.sh: --temp-dir $TEMP_DIR is too long for Ray's unix sockets; use a shorter path" >&2
    exit 2
fi
# One cluster per temp dir: a second `ray start` there would mix two clusters' sessions, and
# stop_cluster.sh could not tell them apart. Live (non-zombie) processes using a session under DIR?
procs="$(ps -u "$(id -u)" -o stat=,args=)"
if awk -v pat="$TEMP_DIR/session_" '$1 !~ /^Z/ && index($0, pat) { found = 1 } END { exit !found }' \
    <<<"$procs"; then
    echo "start_cluster.sh: a Ray cluster already runs with temp dir $TEMP_DIR" \
        "(launch/stop_cluster.sh --temp-dir $TEMP_DIR)" >&2
    exit 1
fi
# The marker that lets stop_cluster.sh act on DIR. Never put it into a directory that holds anything
# else (stop_cluster.sh --rm deletes DIR): DIR must be absent, empty, or marked by an earlier run.
MARKER="$TEMP_DIR/.imagelora-cluster"
if [[ "$TEMP_DIR" == / || "$TEMP_DIR" == "$(realpath -m -- "${HOME:-/}")" ]]; then
    echo "start_cluster.sh: refusing temp dir $TEMP_DIR; use a dedicated one such as /tmp/ray-ild" >&2
    exit 2
fi
if [[ -e "$TEMP_DIR" && ! -d "$TEMP_DIR" ]]; then
    echo "start_cluster.sh: --temp-dir $TEMP_DIR exists and is not a directory" >&2
    exit 2
fi
if [[ -d "$TEMP_DIR" && ! -f "$MARKER" ]] && [[ -n "$(ls -A -- "$TEMP_DIR")" ]]; then
    echo "start_cluster.sh: --temp-dir $TEMP_DIR is not empty and was not created by start_cluster.sh" \
        "(no $MARKER); use a new or empty directory (launch/stop_cluster.sh may delete it)" >&2
    exit 2
fi

export PATH="$BIN:$PATH"
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE="$AUTH"

# Token mode: `ray start` refuses it without a token, and Ray's own generator writes a world-readable
# file. Use RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH as given, else ~/.ray/auth_token (created 0600).
TOKEN_SOURCE=""
if [[ "$AUTH" == token ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        TOKEN_SOURCE="\$RAY_AUTH_TOKEN"
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
        if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
            echo "start_cluster.sh: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2
            exit 1
        fi
        TOKEN_SOURCE="$RAY_AUTH_TOKEN_PATH"
    else
        TOKEN_SOURCE="$HOME/.ray/auth_token"
        if [[ -n "$JOIN" && ! -s "$TOKEN_SOURCE" ]]; then
            echo "start_cluster.sh: --join in token mode needs the head's token (RAY_AUTH_TOKEN," \
                "RAY_AUTH_TOKEN_PATH or $TOKEN_SOURCE)" >&2
            exit 1
        fi
        if [[ ! -s "$TOKEN_SOURCE" ]]; then
            (
                umask 077
                mkdir -p -- "$HOME/.ray"
                "$BIN/python" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' \
                    >"$TOKEN_SOURCE.tmp.$$"
                mv -f -- "$TOKEN_SOURCE.tmp.$$" "$TOKEN_SOURCE"
            )
            echo "start_cluster.sh: generated a new auth token in $TOKEN_SOURCE (mode 0600)" >&2
        fi
    fi
fi

mkdir -p -- "$TEMP_DIR"
# Written before `ray start`, so that stop_cluster.sh can also clean up after a start that failed halfway.
{
    echo "# Written by launch/start_cluster.sh; launch/stop_cluster.sh only acts on a temp dir with this file."
    echo "started=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "start_pid=$$"
    if [[ -n "$JOIN" ]]; then
        echo "role=worker"
        echo "joined=$JOIN"
    else
        echo "role=head"
        echo "dashboard_port=$PORT"
        echo "gcs_port=$GCS_PORT"
    fi
    echo "auth=$AUTH"
    echo "extra_ray_start_args=${EXTRA[*]}"
} >"$MARKER"

RESOURCE_ARGS=()
if [[ -n "$RESOURCES" ]]; then
    RESOURCE_ARGS=(--resources="$RESOURCES")
fi
# record_node_id: append this node's id (from its raylet's command line) to the marker, so that
# stop_cluster.sh also finds the processes that name only the node id (the Ray client server).
record_node_id() {
    local pid args
    for pid in $(pgrep -u "$(id -u)" -f "raylet --raylet_socket_name=$TEMP_DIR/session_" || true); do
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [[ "$args" =~ \ --node_id=([0-9a-f]+)\  ]]; then
            echo "node_id=${BASH_REMATCH[1]}" >>"$MARKER"
        fi
    done
}

if [[ -n "$JOIN" ]]; then
    ray start --address="$JOIN" \
        --num-cpus="$CPUS" \
        --object-store-memory="$OBJECT_STORE" \
        --node-ip-address=127.0.0.1 \
        --temp-dir="$TEMP_DIR" \
        --min-worker-port=0 --max-worker-port=0 \
        --disable-usage-stats \
        "${RESOURCE_ARGS[@]}" \
        "${EXTRA[@]}" >&2
    record_node_id
    echo "Ray worker node up: CPUs $CPUS, resources ${RESOURCES:-none}, temp dir $TEMP_DIR, joined $JOIN" >&2
    echo "  stop:        launch/stop_cluster.sh --temp-dir $TEMP_DIR" >&2
    echo "$JOIN"
    exit 0
fi

ray start --head \
    --num-cpus="$CPUS" \
    --object-store-memory="$OBJECT_STORE" \
    --node-ip-address=127.0.0.1 \
    --port="$GCS_PORT" \
    --dashboard-host=127.0.0.1 \
    --dashboard-port="$PORT" \
    --temp-dir="$TEMP_DIR" \
    --min-worker-port=0 --max-worker-port=0 \
    --disable-usage-stats \
    "${RESOURCE_ARGS[@]}" \
    "${EXTRA[@]}" >&2
record_node_id

# `ray start` can return before the job API answers; wait for it so a submit right after works.
ADDRESS="http://127.0.0.1:$PORT"
ready=0
for _ in $(seq 1 60); do
    if "$BIN/python" - "$ADDRESS" <<'PY' 2>/dev/null; then
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/api/version", timeout=2).read()
except urllib.error.HTTPError as exc:  # token mode: 401 without a token, and the server is up
    if exc.code not in (401, 403):
        raise
PY
        ready=1
        break
    fi
    sleep 0.5
done
if (( ! ready )); then
    echo "start_cluster.sh: WARNING: the job API at $ADDRESS did not answer within 30 s" >&2
fi

# ray start records the GCS address it really used (the machine's IP, see the header) here.
GCS_ADDRESS="$(cat "$TEMP_DIR/ray_current_cluster" 2>/dev/null || echo "127.0.0.1:$GCS_PORT")"
{
    echo "Ray head up: CPUs $CPUS, temp dir $TEMP_DIR, auth $AUTH"
    echo "  submit jobs: launch/submit.sh --address $ADDRESS -- output_dir=$PWD/runs/job"
    echo "  ray.init():  RAY_ADDRESS=$GCS_ADDRESS"
    echo "  dashboard:   $ADDRESS"
    if [[ "$AUTH" == token ]]; then
        echo "  clients:     export RAY_AUTH_MODE=token (token: $TOKEN_SOURCE;" \
            "on other machines set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
    else
        echo "  WARNING: auth is disabled and the GCS/raylet ports listen on every interface" \
            "(Ray 2.60 cannot bind them to loopback); use it only where no one else can reach them."
        echo "  clients:     export RAY_AUTH_MODE=disabled"
    fi
    echo "  stop:        launch/stop_cluster.sh --temp-dir $TEMP_DIR"
} >&2
echo "$ADDRESS"
