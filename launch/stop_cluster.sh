#!/usr/bin/env bash
# Stop the Ray cluster that launch/start_cluster.sh started with --temp-dir DIR, and only that one.
#
# Why not `ray stop`: it kills every Ray process of the user on the machine (other clusters, other
# people's tests, a notebook's ray.init()). Instead this script finds the cluster by its temp dir:
#   * gcs_server, raylet, dashboard, log monitor and the agents carry DIR in their command line;
#   * job drivers and workers of a working_dir job have their current directory under DIR;
#   * workers rename themselves (`ray::IDLE`, `ray::ProbeActor`), so they are found as descendants of
#     the processes above (workers are children of the raylet, job drivers of the JobSupervisor actor).
#   * the head's Ray client server (`python -m ray.util.client.server`, reparented to init) names neither
#     DIR nor a parent of the cluster: it is found by its `--node-id=`, one of the node ids of DIR (from
#     the raylet's command line, or the marker, where start_cluster.sh records it for when the raylet is
#     already gone).
# All of them get SIGTERM (as `ray stop` sends), the GCS last, then SIGKILL whatever outlives the grace
# period. It is safe to run more than once, and with no cluster running.
#
# It acts only on a directory that start_cluster.sh marked as its own (DIR/.imagelora-cluster, written
# before `ray start`): any process whose command line mentions a path under DIR, or runs in it, would be
# killed, and --rm deletes DIR, so a mistyped `--temp-dir /tmp` or `--temp-dir ~` must do nothing.
# Without the marker it exits 2 having touched nothing; a DIR that does not exist has nothing to stop.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: launch/stop_cluster.sh [--temp-dir DIR] [--grace SECONDS] [--rm]

Stop the local Ray cluster whose temp dir is DIR (default: /tmp/ray-ild-$UID), leaving any other Ray
on the machine running.

  --temp-dir DIR     the --temp-dir given to launch/start_cluster.sh; refused (exit 2) unless it holds
                     the marker file .imagelora-cluster that start_cluster.sh writes there
  --grace SECONDS    wait up to this long for each SIGTERM round before SIGKILL (default: 10)
  --rm               delete DIR (session logs included) once everything has stopped
USAGE
}

TEMP_DIR="/tmp/ray-ild-$(id -u)"
GRACE=10
REMOVE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --temp-dir) TEMP_DIR="${2:?--temp-dir needs a value}"; shift 2 ;;
        --grace) GRACE="${2:?--grace needs a value}"; shift 2 ;;
        --rm) REMOVE=1; shift ;;
        *) echo "stop_cluster.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$GRACE" =~ ^[0-9]+$ ]]; then
    echo "stop_cluster.sh: --grace must be a whole number of seconds, got: $GRACE" >&2
    exit 2
fi
TEMP_DIR="$(realpath -m -- "$TEMP_DIR")"
if [[ "$TEMP_DIR" == / || -z "$TEMP_DIR" ]]; then
    echo "stop_cluster.sh: refusing temp dir '$TEMP_DIR'" >&2
    exit 2
fi
if [[ ! -e "$TEMP_DIR" ]]; then
    echo "stop_cluster.sh: $TEMP_DIR does not exist; no cluster of start_cluster.sh there, nothing stopped"
    exit 0
fi
# The marker start_cluster.sh writes: a regular file (not a link) of ours, in a directory of ours.
MARKER="$TEMP_DIR/.imagelora-cluster"
if [[ ! -d "$TEMP_DIR" || -L "$MARKER" || ! -f "$MARKER" || ! -O "$MARKER" || ! -O "$TEMP_DIR" ]]; then
    echo "stop_cluster.sh: refusing $TEMP_DIR: it is not a temp dir of launch/start_cluster.sh" \
        "(no marker file $MARKER owned by you); nothing was stopped or removed." \
        "Pass the --temp-dir that start_cluster.sh printed." >&2
    exit 2
fi

# PIDs of this user's processes that belong to the cluster (see the header), one per line. This script,
# its subshells and its ancestors (e.g. a shell whose cwd is inside DIR) are never included.
cluster_pids() {
    local table pid ppid stat args cwd id
    local -A parent=() member=() mine=() ancestors=() nodes=() clients=()
    # One snapshot of the process table. Zombies (state Z) are skipped: they have already exited and
    # only wait to be reaped by their parent (in a container whose PID 1 does not reap, forever).
    table="$(ps -u "$(id -u)" -o pid=,ppid=,stat=,args=)"
    while read -r pid ppid stat args; do
        parent[$pid]=$ppid
        [[ "$stat" == Z* ]] && continue
        if [[ "$args" == *" -m ray.util.client.server "* ]]; then
            clients[$pid]="$args"
        fi
        # Literal (not regex) match of "DIR/..." or of "DIR" as a whole argument.
        if [[ "$args " == *"$TEMP_DIR/"* || "$args " == *"$TEMP_DIR "* ]]; then
            member[$pid]=1
            if [[ "$args " =~ \ --node_id=([0-9a-f]+)\  ]]; then
                nodes[${BASH_REMATCH[1]}]=1
            fi
        fi
        cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
        if [[ "$cwd" == "$TEMP_DIR" || "$cwd" == "$TEMP_DIR"/* ]]; then
            member[$pid]=1
        fi
    done <<<"$table"
    while IFS= read -r id; do
        [[ -n "$id" ]] && nodes[$id]=1
    done < <(sed -n 's/^node_id=\([0-9a-f][0-9a-f]*\)$/\1/p' "$MARKER")
    for pid in "${!clients[@]}"; do
        for id in "${!nodes[@]}"; do
            [[ "${clients[$pid]} " == *" --node-id=$id "* ]] && member[$pid]=1
        done
    done
    pid="${parent[$$]:-}"
    while [[ -n "$pid" && "$pid" != 0 && -z "${ancestors[$pid]:-}" ]]; do
        ancestors[$pid]=1
        unset 'member[$pid]'
        pid="${parent[$pid]:-}"
    done
    mine[$$]=1
    add_descendants mine
    for pid in "${!mine[@]}"; do unset 'member[$pid]'; done
    add_descendants member
    for pid in "${!member[@]}"; do
        [[ -z "${mine[$pid]:-}" && -z "${ancestors[$pid]:-}" ]] && echo "$pid"
    done
    return 0
}

# add_descendants SET: add every process below a member of the associative array SET (by the caller's
# `parent` map) to SET.
add_descendants() {
    local -n set_ref="$1"
    local pid changed=1
    while (( changed )); do
        changed=0
        for pid in "${!parent[@]}"; do
            if [[ -z "${set_ref[$pid]:-}" && -n "${set_ref[${parent[$pid]}]:-}" ]]; then
                # shellcheck disable=SC2004 # an associative array: the key needs the "$"
                set_ref[$pid]=1
                changed=1
            fi
        done
    done
}

# alive PID...: those of the PIDs still running (kill -0 would also count zombies).
alive() {
    ps -o pid=,stat= -p "$(IFS=,; echo "$*")" 2>/dev/null | while read -r pid stat; do
        [[ "$stat" == Z* ]] || echo "$pid"
    done
}

# terminate PID...: SIGTERM, then wait up to GRACE seconds for them to exit.
terminate() {
    local deadline=$((SECONDS + GRACE)) left
    kill -TERM "$@" 2>/dev/null || true
    while (( SECONDS < deadline )); do
        mapfile -t left < <(alive "$@")
        (( ${#left[@]} == 0 )) && return 0
        sleep 0.25
    done
}

# A worker node's supervisor (start_cluster.sh --join) goes first, and alone: it would start the node again.
# Not when it is this script's ancestor (the supervisor clears a dead node's leftovers with this script).
SUPERVISOR_FILE="$TEMP_DIR/supervisor.pid"
if [[ -f "$SUPERVISOR_FILE" && ! -L "$SUPERVISOR_FILE" ]]; then
    sup="$(head -c 20 -- "$SUPERVISOR_FILE")"
    pid=$$
    while [[ "$sup" =~ ^[0-9]+$ && -n "$pid" && "$pid" != 0 && "$pid" != "$sup" ]]; do
        pid="$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')"
    done
    if [[ "$sup" =~ ^[0-9]+$ && "$pid" != "$sup" ]] \
        && [[ "$(tr '\0' ' ' <"/proc/$sup/cmdline" 2>/dev/null)" == *start_cluster.sh* ]]; then
        echo "stop_cluster.sh: stopping the node's supervisor ($sup)"
        terminate "$sup"
        kill -KILL "$sup" 2>/dev/null || true
        rm -f -- "$SUPERVISOR_FILE"
    fi
fi

mapfile -t PIDS < <(cluster_pids)
if (( ${#PIDS[@]} == 0 )); then
    echo "stop_cluster.sh: no Ray processes with temp dir $TEMP_DIR"
else
    echo "stop_cluster.sh: stopping ${#PIDS[@]} processes of the cluster in $TEMP_DIR"
    # GCS last: the raylet, the autoscaler monitor and the agents say goodbye to the GCS on SIGTERM;
    # with the GCS already gone they keep retrying it and outlive any reasonable grace period.
    GCS=()
    OTHERS=()
    for pid in "${PIDS[@]}"; do
        args="$(ps -o args= -p "$pid" 2>/dev/null || true)"
        if [[ "$args" == */gcs_server\ * ]]; then GCS+=("$pid"); else OTHERS+=("$pid"); fi
    done
    if (( ${#OTHERS[@]} )); then terminate "${OTHERS[@]}"; fi
    if (( ${#GCS[@]} )); then terminate "${GCS[@]}"; fi
    # Survivors of the first list (a worker whose raylet died is reparented, so the rescan alone could
    # miss it) plus anything the rescan finds (a worker the raylet was spawning during the shutdown).
    mapfile -t LEFT < <({ alive "${PIDS[@]}"; cluster_pids; } | sort -u)
    if (( ${#LEFT[@]} )); then
        echo "stop_cluster.sh: SIGKILL to ${#LEFT[@]} processes still running after SIGTERM:"
        ps -o pid=,args= -p "$(IFS=,; echo "${LEFT[*]}")" | cut -c1-100 || true
        kill -KILL "${LEFT[@]}" 2>/dev/null || true
        sleep 1
    fi
fi

mapfile -t LEFT < <({ alive "${PIDS[@]}"; cluster_pids; } | sort -u)
if (( ${#LEFT[@]} )); then
    echo "stop_cluster.sh: still running: ${LEFT[*]}" >&2
    exit 1
fi
# ray start records the address here; a stale file would point clients at a dead cluster.
rm -f -- "$TEMP_DIR/ray_current_cluster"
if (( REMOVE )) && [[ -d "$TEMP_DIR" ]]; then
    rm -rf -- "$TEMP_DIR"
fi
echo "stop_cluster.sh: stopped"
