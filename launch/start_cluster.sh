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
#   * --node-ip-address ADDR: the address this node registers with and the others reach it at. A head
#     without it registers as 127.0.0.1 (which Ray 2.60 turns into the machine's outward IP); a worker
#     without it takes the source address of its route to the head (a UDP connect, nothing sent), since
#     a worker registered as a loopback address looks ALIVE and is declared dead ~15 s later, silently.
#   * --dashboard-host ADDR (head): where the dashboard and job API listen; 127.0.0.1 by default. The
#     GCS, raylet, object manager and agents listen on every interface whatever is asked (Ray 2.60 has
#     no flag for them), so token auth stays on.
#   * --join-timeout SECONDS (worker): the head's GCS port must answer a TCP connect made FROM the
#     node's address (which proves the head routes back to it) and `ray start` must return within it;
#     else one line, exit 2 (`ray start` alone retries an unreachable GCS forever). After the start the
#     node must be in the GCS's table, ALIVE, under the address asked; else it is stopped, exit 2.
#   * --health-check PERIOD_MS,TIMEOUT_MS,FAILURES (head): how fast the GCS declares a silent node
#     dead, about FAILURES x (PERIOD + TIMEOUT) for a cut link (Ray's default 3000,10000,5 took 62 s),
#     FAILURES x PERIOD for killed processes. Set as RAY_health_check_* in the head's environment.
#   * supervision (--join, unless --no-supervise): a background loop (pid in DIR/supervisor.pid, log in
#     DIR/supervisor.log) starts the node again when its raylet exits: a node cut off long enough to be
#     declared dead exits its raylet once the link returns and would never rejoin on its own.
#     stop_cluster.sh stops the loop first.
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
                               [--node-ip-address ADDR] [--dashboard-host ADDR]
                               [--join-timeout SECONDS] [--health-check PERIOD_MS,TIMEOUT_MS,FAILURES]
                               [--no-supervise] [-- EXTRA_RAY_START_ARGS...]

Start a Ray head from the repo's .venv (or, with --join, a worker node).

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
  --node-ip-address ADDR       the address this node registers with; the others must reach it there
                               (default: head 127.0.0.1, i.e. the machine's outward IP; worker: the
                               source address of the route to the head)
  --dashboard-host ADDR        head: where the dashboard and job API listen (default: 127.0.0.1;
                               0.0.0.0 for every interface). The GCS and raylet ports listen on every
                               interface regardless (Ray 2.60): keep --auth token.
  --join-timeout SECONDS       worker: give up (exit 2, one line) when the head's GCS does not answer
                               from this node's address, or `ray start` does not return, within it
                               (default: 60)
  --health-check P,T,N         head: the GCS health-checks each node every P ms, each check waiting up
                               to T ms, and declares it dead after N failures in a row: a cut-off node
                               in about N x (P + T) ms, a killed one in about N x P
                               (default: 2000,2000,4: ~16 s / ~8 s)
  --no-supervise               worker: do not restart the node when its raylet exits (by default a
                               background loop does, e.g. after a network partition healed)
  -- ARGS...                   passed to `ray start` as is (e.g. --ray-client-server-port 10001)

Prints the job address (http://DASHBOARD_HOST:PORT) as the last line of stdout (with --join: the GCS
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
NODE_IP=""
DASHBOARD_HOST=127.0.0.1
JOIN_TIMEOUT=60
HEALTH_CHECK=2000,2000,4
SUPERVISE=1
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
        --node-ip-address) NODE_IP="${2:?--node-ip-address needs a value}"; shift 2 ;;
        --dashboard-host) DASHBOARD_HOST="${2:?--dashboard-host needs a value}"; shift 2 ;;
        --join-timeout) JOIN_TIMEOUT="${2:?--join-timeout needs a value}"; shift 2 ;;
        --health-check) HEALTH_CHECK="${2:?--health-check needs a value}"; shift 2 ;;
        --no-supervise) SUPERVISE=0; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "start_cluster.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$AUTH" in
    disabled | token) ;;
    *) echo "start_cluster.sh: --auth must be disabled or token, got: $AUTH" >&2; exit 2 ;;
esac
if ! [[ "$JOIN_TIMEOUT" =~ ^[1-9][0-9]*$ ]]; then
    echo "start_cluster.sh: --join-timeout must be a whole number of seconds > 0, got: $JOIN_TIMEOUT" >&2
    exit 2
fi
if ! [[ "$HEALTH_CHECK" =~ ^([1-9][0-9]*),([1-9][0-9]*),([1-9][0-9]*)$ ]]; then
    echo "start_cluster.sh: --health-check must be PERIOD_MS,TIMEOUT_MS,FAILURES (whole numbers > 0)," \
        "got: $HEALTH_CHECK" >&2
    exit 2
fi
# Read by the GCS (the head's); a worker's raylet ignores them.
export RAY_health_check_period_ms="${BASH_REMATCH[1]}"
export RAY_health_check_timeout_ms="${BASH_REMATCH[2]}"
export RAY_health_check_failure_threshold="${BASH_REMATCH[3]}"
is_ipv4() { [[ "$1" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]]; }
if [[ -n "$NODE_IP" ]] && ! is_ipv4 "$NODE_IP"; then
    echo "start_cluster.sh: --node-ip-address must be an IPv4 address, got: $NODE_IP" >&2
    exit 2
fi
if ! is_ipv4 "$DASHBOARD_HOST"; then
    echo "start_cluster.sh: --dashboard-host must be an IPv4 address (0.0.0.0: every interface)," \
        "got: $DASHBOARD_HOST" >&2
    exit 2
fi
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
    echo "health_check=$HEALTH_CHECK"
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

# net MODE ARGS...: the network checks, in Python (iproute2 may be missing); one line on failure.
net() {
    "$BIN/python" - "$@" <<'PY'
import socket, sys, time

mode, args = sys.argv[1], sys.argv[2:]
if mode == "route-src":  # HOST: the source address of this machine's route to HOST (nothing is sent)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((args[0], 9))
        except OSError as exc:
            sys.exit(f"no route to {args[0]} ({exc.strerror or exc})")
        print(s.getsockname()[0])
elif mode == "reach":  # SRC HOST PORT SECONDS: a TCP connect from SRC to HOST:PORT, retried until then
    src, host, port = args[0], args[1], int(args[2])
    deadline, why = time.monotonic() + float(args[3]), "no answer"
    while (left := deadline - time.monotonic()) > 0:
        with socket.socket() as s:
            s.settimeout(min(5.0, left))
            try:
                s.bind((src, 0))
            except OSError as exc:
                sys.exit(f"{src} is not an address of this machine ({exc.strerror or exc})")
            try:
                s.connect((host, port))
                sys.exit(0)
            except OSError as exc:
                why = exc.strerror or str(exc) or type(exc).__name__
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    sys.exit(f"{why}")
elif mode == "registered":  # GCS NODE_ID ADDR SECONDS: the node ALIVE in the GCS's table at ADDR
    from ray._raylet import GcsClient

    gcs, node_id, addr = args[0], args[1], args[2]
    deadline, seen = time.monotonic() + float(args[3]), "not registered"
    while time.monotonic() < deadline:
        try:
            info = GcsClient(address=gcs).get_all_node_info(timeout=5)
        except Exception as exc:  # noqa: BLE001 - said in the one line
            seen = f"GCS unreadable: {exc}".splitlines()[0]
        else:
            for key, node in info.items():
                if (key.hex() if hasattr(key, "hex") else str(key)) == node_id:
                    state = "ALIVE" if node.state == 0 else "DEAD"
                    seen = f"{state} at {node.node_manager_address}"
                    if state == "ALIVE" and node.node_manager_address == addr:
                        sys.exit(0)
        time.sleep(0.5)
    sys.exit(seen)
PY
}

# join_once: start this worker node (bounded by JOIN_TIMEOUT), record its node id, check its registration.
# Exit status 0, or 2 having said why in one line (the node's processes stopped).
join_once() {
    local why node_id
    if ! why="$(net reach "$NODE_IP" "$HEAD_HOST" "$HEAD_PORT" "$JOIN_TIMEOUT" 2>&1)"; then
        echo "start_cluster.sh: cannot reach the head's GCS at $JOIN from $NODE_IP within" \
            "${JOIN_TIMEOUT} s: ${why##*$'\n'}" >&2
        return 2
    fi
    if ! timeout "$JOIN_TIMEOUT" ray start --address="$JOIN" \
        --num-cpus="$CPUS" \
        --object-store-memory="$OBJECT_STORE" \
        --node-ip-address="$NODE_IP" \
        --temp-dir="$TEMP_DIR" \
        --min-worker-port=0 --max-worker-port=0 \
        --disable-usage-stats \
        "${RESOURCE_ARGS[@]}" \
        "${EXTRA[@]}" >&2; then
        "$REPO/launch/stop_cluster.sh" --temp-dir "$TEMP_DIR" --grace 5 >/dev/null 2>&1 || true
        echo "start_cluster.sh: ray start --address=$JOIN failed or took over ${JOIN_TIMEOUT} s" \
            "(node address $NODE_IP)" >&2
        return 2
    fi
    record_node_id
    node_id="$(sed -n 's/^node_id=//p' "$MARKER" | tail -n 1)"
    if ! why="$(net registered "$JOIN" "$node_id" "$NODE_IP" 15 2>&1)"; then
        "$REPO/launch/stop_cluster.sh" --temp-dir "$TEMP_DIR" --grace 5 >/dev/null 2>&1 || true
        echo "start_cluster.sh: the head does not list this node as ALIVE at $NODE_IP" \
            "(${why##*$'\n'}); stopped it" >&2
        return 2
    fi
}

# supervise: restart the node whenever its raylet has exited (checked every 2 s); retries a failed
# start every 5 s. Runs in the background until stop_cluster.sh stops it.
supervise() {
    local gone=0
    echo "$BASHPID" >"$TEMP_DIR/supervisor.pid"
    while sleep 2; do
        if pgrep -u "$(id -u)" -f "raylet --raylet_socket_name=$TEMP_DIR/session_" >/dev/null; then
            gone=0
            continue
        fi
        gone=$((gone + 1))
        (( gone < 2 )) && continue  # one more look: the raylet may be starting
        echo "$(date -u +%FT%TZ) raylet of $TEMP_DIR exited; starting the node again"
        # Leftovers of the old node (log_monitor, agents); this loop is their ancestor, so it stays.
        "$REPO/launch/stop_cluster.sh" --temp-dir "$TEMP_DIR" --grace 5 || true
        until join_once; do
            sleep 5
        done
        echo "$(date -u +%FT%TZ) node rejoined as $(sed -n 's/^node_id=//p' "$MARKER" | tail -n 1)"
        gone=0
    done
}

if [[ -n "$JOIN" ]]; then
    HEAD_HOST="${JOIN%:*}"
    HEAD_PORT="${JOIN##*:}"
    if ! is_ipv4 "$HEAD_HOST" || ! [[ "$HEAD_PORT" =~ ^[0-9]+$ ]]; then
        echo "start_cluster.sh: --join must be IPV4:PORT (the head's RAY_ADDRESS), got: $JOIN" >&2
        exit 2
    fi
    if [[ -z "$NODE_IP" ]]; then
        if ! NODE_IP="$(net route-src "$HEAD_HOST" 2>&1)"; then
            echo "start_cluster.sh: $NODE_IP; pass --node-ip-address" >&2
            exit 2
        fi
    fi
    if [[ "$NODE_IP" == 127.* && "$HEAD_HOST" != 127.* ]]; then
        echo "start_cluster.sh: node address $NODE_IP is loopback but the head is at $HEAD_HOST:" \
            "the head could not reach this node; pass --node-ip-address" >&2
        exit 2
    fi
    echo "node_ip=$NODE_IP" >>"$MARKER"
    join_once || exit 2
    if (( SUPERVISE )); then
        # Detached from this script's stdout/stderr (a caller reading them would wait for the loop).
        supervise </dev/null >>"$TEMP_DIR/supervisor.log" 2>&1 &
        disown
    fi
    echo "Ray worker node up at $NODE_IP: CPUs $CPUS, resources ${RESOURCES:-none}, temp dir $TEMP_DIR," \
        "joined $JOIN$( (( SUPERVISE )) && echo ", supervised")" >&2
    echo "  stop:        launch/stop_cluster.sh --temp-dir $TEMP_DIR" >&2
    echo "$JOIN"
    exit 0
fi

ray start --head \
    --num-cpus="$CPUS" \
    --object-store-memory="$OBJECT_STORE" \
    --node-ip-address="${NODE_IP:-127.0.0.1}" \
    --port="$GCS_PORT" \
    --dashboard-host="$DASHBOARD_HOST" \
    --dashboard-port="$PORT" \
    --temp-dir="$TEMP_DIR" \
    --min-worker-port=0 --max-worker-port=0 \
    --disable-usage-stats \
    "${RESOURCE_ARGS[@]}" \
    "${EXTRA[@]}" >&2
record_node_id

# `ray start` can return before the job API answers; wait for it so a submit right after works.
# The job address to print and poll: the dashboard's host, or (every interface) the node's address.
JOB_HOST="$DASHBOARD_HOST"
if [[ "$JOB_HOST" == 0.0.0.0 ]]; then
    JOB_HOST="${NODE_IP:-127.0.0.1}"
fi
ADDRESS="http://$JOB_HOST:$PORT"
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
