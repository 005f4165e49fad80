#!/usr/bin/env bash
# A real multi-node Ray cluster on this one machine: one head and N worker nodes, each its own
# `ray start` with its own CPUs, custom resource, temp dir and ports. For rehearsing what a cluster
# run does (placement over nodes, losing a node mid-run) without Kubernetes.
#
#   deploy/local-cluster.sh start [--workers N] [--port P] [--cpus-per-node C] [--dir D] [--no-auth]
#   eval "$(deploy/local-cluster.sh env)"              # the driver's RAY_ADDRESS and token variables
#   matchmill run configs/demo.yaml --address "$(deploy/local-cluster.sh address)"
#   deploy/local-cluster.sh status                     # nodes alive, CPUs, custom resources
#   deploy/local-cluster.sh kill-node 1                # SIGKILL worker 1's raylet (a lost node)
#   deploy/local-cluster.sh stop [--grace S]           # ends exactly the processes `start` started
#                                                      # (SIGTERM, then SIGKILL after S s, default 10)
#
# Options:
#   --workers N        worker nodes besides the head (default 1); worker i advertises {"node<i>": 1}
#                      and the head {"head": 1}, so `<stage>.resources={node1: 0.01}` pins a stage
#   --port P           the head's GCS port (default: a free port); every other port is free-picked
#   --cpus-per-node C  `--num-cpus` of every node, the head included (default 1)
#   --dir D            state folder (default $MATCHMILL_CLUSTER_DIR or /tmp/mm-cluster-$UID); keep it
#                      short: Ray's socket paths live under it and Unix sockets allow ~100 characters
#   --no-auth          RAY_AUTH_MODE=disabled (Ray 2.60 token authentication off)
#
# Token authentication (Ray >= 2.52 turns it on as soon as a token exists, e.g. ~/.ray/auth_token
# written by any embedded `ray.init()`): a worker node joins, and a driver connects with an explicit
# address, only with RAY_AUTH_MODE=token and the head's token. `start` therefore fixes both: it
# writes a token to <dir>/auth_token (the caller's RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH if set, else
# a new random one, mode 600) and starts every node with RAY_AUTH_MODE=token
# RAY_AUTH_TOKEN_PATH=<dir>/auth_token; `env` prints the same two variables for the driver.
#
# Losing a node: the GCS declares a node dead after health_check_failure_threshold missed checks,
# one every health_check_period_ms (defaults 5 x 3000 ms, plus health_check_timeout_ms per check).
# Export shorter ones before `start`, e.g. RAY_health_check_period_ms=500
# RAY_health_check_timeout_ms=500 RAY_health_check_failure_threshold=3; every node inherits them.
#
# Network: the driver joins at 127.0.0.1:<port>, but Ray binds its ports on every interface and
# advertises this machine's address (it maps --node-ip-address 127.0.0.1 to it), so keep token
# authentication on, or firewall the ports, on a machine others can reach.
#
# State in <dir>: head.pid / worker<i>.pid (each a process-group leader: `ray start --block` under
# setsid, so the group holds exactly that node's GCS/raylet/agents/workers), <node>.log (ray start's
# output), <node>/ (the node's Ray temp dir: sessions, logs), address, auth_token, env.
set -euo pipefail

PROG=$(basename "$0")
STATE_DIR=${MATCHMILL_CLUSTER_DIR:-/tmp/mm-cluster-$(id -u)}
WORKERS=1
PORT=""
CPUS=1
AUTH=token
STARTED=0
STOP_GRACE=10
START_TIMEOUT=${MATCHMILL_CLUSTER_START_TIMEOUT:-120}
RAY=${RAY:-ray}
PYTHON=${PYTHON:-python3}

die() { echo "$PROG: error: $*" >&2; exit 2; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

free_ports() {  # N free TCP ports on 127.0.0.1, one per line (held together while picked: distinct)
    "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
EOF
}

port_free() {
    "$PYTHON" -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

alive() {  # PID: running (a zombie, exited but not yet reaped, is not)
    [[ -n "${1:-}" ]] || return 1
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n "$stat" && "$stat" != Z* ]]
}

group_procs() {  # PGID [NAME]: pids of the live (not zombie) processes of that process group
    ps -eo pgid=,pid=,stat=,comm= | awk -v g="$1" -v n="${2:-}" '$1 == g && $3 !~ /^Z/ && (n == "" || $4 == n) { print $2 }'
}

node_names() {  # head first, then the workers, as recorded
    [[ -f "$STATE_DIR/head.pid" ]] && echo head
    local f
    for f in "$STATE_DIR"/worker*.pid; do
        [[ -e "$f" ]] || continue
        basename "$f" .pid
    done | sort -V
}

node_env() {  # the environment every node process and the driver get
    if [[ "$AUTH" == token ]]; then
        echo "RAY_AUTH_MODE=token"
        echo "RAY_AUTH_TOKEN_PATH=$STATE_DIR/auth_token"
    else
        echo "RAY_AUTH_MODE=disabled"
    fi
}

write_token() {
    umask 077
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        printf '%s' "$RAY_AUTH_TOKEN" >"$STATE_DIR/auth_token"
    elif [[ -n "${RAY_AUTH_TOKEN_PATH:-}" && -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        cp "$RAY_AUTH_TOKEN_PATH" "$STATE_DIR/auth_token"
    else
        "$PYTHON" -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' >"$STATE_DIR/auth_token"
    fi
    chmod 600 "$STATE_DIR/auth_token"
}

# start_node NAME ARGS...: `ray start --block` in a new session (pid = process group), log to NAME.log
start_node() {
    local name=$1; shift
    local -a envs
    mapfile -t envs < <(node_env)
    mkdir -p "$STATE_DIR/$name"
    env -u RAY_AUTH_TOKEN -u RAY_ADDRESS "${envs[@]}" RAY_USAGE_STATS_ENABLED=0 \
        setsid "$RAY" start --block --disable-usage-stats --node-ip-address 127.0.0.1 \
        --temp-dir "$STATE_DIR/$name" --num-cpus "$CPUS" --min-worker-port 0 --max-worker-port 0 \
        "$@" </dev/null >"$STATE_DIR/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/$name.pid"
}

wait_started() {  # NAME: until its log says the runtime started (or the process died / timed out)
    local name=$1 pid deadline=$((SECONDS + START_TIMEOUT))
    pid=$(cat "$STATE_DIR/$name.pid")
    until grep -q "Ray runtime started" "$STATE_DIR/$name.log" 2>/dev/null; do
        if ! alive "$pid"; then
            tail -n 20 "$STATE_DIR/$name.log" >&2 || true
            die "$name did not start (its log: $STATE_DIR/$name.log)"
        fi
        ((SECONDS < deadline)) || die "$name not started after ${START_TIMEOUT}s (its log: $STATE_DIR/$name.log)"
        sleep 0.5
    done
}

gcs_nodes() {  # MODE [WANT]: `wait` until WANT nodes are alive, or `list` them (read from the GCS)
    local -a envs
    mapfile -t envs < <(node_env)
    env -u RAY_AUTH_TOKEN "${envs[@]}" "$PYTHON" - "$(cat "$STATE_DIR/address")" "$1" "${2:-0}" "$START_TIMEOUT" <<'EOF'
import json, sys, time
from ray._raylet import GcsClient  # what `ray status` reads through; no driver, no dashboard needed
address, mode, want, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
while True:
    try:
        nodes = list(GcsClient(address=address).get_all_node_info(timeout=10).values())
        error = None
    except Exception as exc:  # noqa: BLE001 - still starting (wait) / unreachable (list)
        nodes, error = [], exc
    alive = [n for n in nodes if n.state == 0]  # GcsNodeInfo.ALIVE
    if mode == "list":
        if error is not None:
            sys.exit(f"the GCS at {address} does not answer: {error}")
        for n in sorted(nodes, key=lambda n: (not n.is_head_node, n.node_id)):
            res = {k: v for k, v in n.resources_total.items()
                   if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
            print(f"  {n.node_id.hex()[:12]}  {'ALIVE' if n.state == 0 else 'DEAD '}  "
                  f"{'head  ' if n.is_head_node else 'worker'}  {json.dumps(res, sort_keys=True)}")
        sys.exit(0)
    if len(alive) >= want:
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(f"{len(alive)} of {want} nodes alive after {timeout:g} s" + (f": {error}" if error else ""))
    time.sleep(0.5)
EOF
}

print_env() {
    local -a envs
    mapfile -t envs < <(node_env)
    local e
    echo "export RAY_ADDRESS=$(cat "$STATE_DIR/address")"
    for e in "${envs[@]}"; do echo "export $e"; done
    [[ "$AUTH" == token ]] && echo "unset RAY_AUTH_TOKEN"
    return 0
}

load_state() {
    [[ -f "$STATE_DIR/address" ]] || die "no cluster recorded in $STATE_DIR (run: $PROG start)"
    AUTH=$(cat "$STATE_DIR/auth_mode" 2>/dev/null || echo token)
}

cmd_start() {
    while (($#)); do
        case $1 in
            --workers) WORKERS=${2:?}; shift 2 ;;
            --port) PORT=${2:?}; shift 2 ;;
            --cpus-per-node) CPUS=${2:?}; shift 2 ;;
            --dir) STATE_DIR=${2:?}; shift 2 ;;
            --no-auth) AUTH=disabled; shift ;;
            *) die "start: unknown option $1" ;;
        esac
    done
    [[ "$WORKERS" =~ ^[0-9]+$ ]] || die "--workers: expected a number, got $WORKERS"
    mkdir -p "$STATE_DIR"
    local name
    for name in $(node_names); do
        alive "$(cat "$STATE_DIR/$name.pid")" && die "a cluster is already running from $STATE_DIR ($name); $PROG stop --dir $STATE_DIR first"
    done
    rm -f "$STATE_DIR"/*.pid "$STATE_DIR"/*.log "$STATE_DIR/address" "$STATE_DIR/env"
    if [[ -z "$PORT" ]]; then
        PORT=$(free_ports 1)
    else
        port_free "$PORT" || die "--port $PORT is in use"
    fi
    echo "$AUTH" >"$STATE_DIR/auth_mode"
    [[ "$AUTH" == token ]] && write_token
    echo "127.0.0.1:$PORT" >"$STATE_DIR/address"

    # every port a node binds, picked free: several Ray instances may share this machine
    local -a p
    mapfile -t p < <(free_ports 7)
    local -a client=()  # Ray Client's server (port 10001 by default) only where ray[client] is installed
    "$PYTHON" -c 'from ray._private.utils import get_ray_client_dependency_error as e; raise SystemExit(e() is not None)' \
        2>/dev/null && client=(--ray-client-server-port "${p[0]}")
    start_node head --head --port "$PORT" --include-dashboard false --resources '{"head": 1}' \
        "${client[@]}" --node-manager-port "${p[1]}" --object-manager-port "${p[2]}" \
        --dashboard-agent-listen-port "${p[3]}" --dashboard-agent-grpc-port "${p[4]}" \
        --runtime-env-agent-port "${p[5]}" --metrics-export-port "${p[6]}"
    trap 'if ((STARTED == 0)); then echo "$PROG: start failed; stopping what it started" >&2; cmd_stop >/dev/null 2>&1 || true; fi' EXIT
    wait_started head
    local i
    for ((i = 1; i <= WORKERS; i++)); do
        mapfile -t p < <(free_ports 6)
        start_node "worker$i" --address "127.0.0.1:$PORT" --resources "{\"node$i\": 1}" \
            --node-manager-port "${p[0]}" --object-manager-port "${p[1]}" \
            --dashboard-agent-listen-port "${p[2]}" --dashboard-agent-grpc-port "${p[3]}" \
            --runtime-env-agent-port "${p[4]}" --metrics-export-port "${p[5]}"
    done
    for ((i = 1; i <= WORKERS; i++)); do wait_started "worker$i"; done
    gcs_nodes wait $((WORKERS + 1)) || die "not every node registered with the head; see $STATE_DIR/*.log"
    STARTED=1
    print_env >"$STATE_DIR/env"
    echo "local Ray cluster: head + $WORKERS worker node(s), $CPUS CPU(s) each, at 127.0.0.1:$PORT (state: $STATE_DIR)"
    echo "custom resources: head {\"head\": 1}$(for ((i = 1; i <= WORKERS; i++)); do printf ', worker%d {"node%d": 1}' "$i" "$i"; done)"
    if [[ "$AUTH" == token ]]; then
        echo "token authentication: on (token in $STATE_DIR/auth_token); the driver needs:"
    else
        echo "token authentication: off; the driver needs:"
    fi
    sed 's/^/    /' "$STATE_DIR/env"
    echo "run a job on it:"
    echo "    source $STATE_DIR/env   # or: eval \"\$($0 env --dir $STATE_DIR)\""
    echo "    matchmill run configs/demo.yaml --address 127.0.0.1:$PORT"
    echo "stop it: $0 stop --dir $STATE_DIR"
}

parse_dir() {
    while (($#)); do
        case $1 in
            --dir) STATE_DIR=${2:?}; shift 2 ;;
            --grace) STOP_GRACE=${2:?}; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
}

cmd_stop() {
    local name pid n=0 grace=$STOP_GRACE
    # workers first, then the head (the GCS), as `ray stop` orders them
    for name in $(node_names | sort -r); do
        pid=$(cat "$STATE_DIR/$name.pid")
        if alive "$pid"; then
            kill -TERM -- "-$pid" 2>/dev/null || true
            n=$((n + 1))
        fi
    done
    local deadline=$((SECONDS + grace)) left
    while :; do
        left=0
        for name in $(node_names); do
            [[ -n "$(group_procs "$(cat "$STATE_DIR/$name.pid")")" ]] && left=1
        done
        ((left == 0 || SECONDS >= deadline)) && break
        sleep 0.5
    done
    for name in $(node_names); do  # what ignored SIGTERM
        pid=$(cat "$STATE_DIR/$name.pid")
        [[ -n "$(group_procs "$pid")" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$STATE_DIR/$name.pid"
    done
    rm -f "$STATE_DIR/address" "$STATE_DIR/env"
    echo "stopped $n node(s) recorded in $STATE_DIR"
}

cmd_status() {
    load_state
    local name pid
    echo "address: $(cat "$STATE_DIR/address")   token authentication: $AUTH"
    for name in $(node_names); do
        pid=$(cat "$STATE_DIR/$name.pid")
        if [[ -n "$(group_procs "$pid")" ]]; then
            echo "$name: running (process group $pid, raylet pid $(raylet_pid "$name" || echo '-'))"
        else
            echo "$name: not running"
        fi
    done
    echo "nodes (GCS):"
    gcs_nodes list
}

raylet_pid() {  # NAME: the raylet of that node (a process of its group)
    local pid
    pid=$(group_procs "$(cat "$STATE_DIR/$1.pid")" raylet | head -n 1)
    [[ -n "$pid" ]] && echo "$pid"
}

cmd_kill_node() {
    local which=${1:?kill-node: which worker? (1..N)}; shift
    parse_dir "$@"
    load_state
    local name="worker$which" pid
    [[ -f "$STATE_DIR/$name.pid" ]] || die "no $name in $STATE_DIR"
    pid=$(raylet_pid "$name") || die "$name has no raylet running"
    kill -KILL "$pid"
    echo "killed $name's raylet (pid $pid); the rest of that node's processes follow it"
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        start) cmd_start "$@" ;;
        stop) parse_dir "$@"; cmd_stop ;;
        status) parse_dir "$@"; cmd_status ;;
        address) parse_dir "$@"; load_state; cat "$STATE_DIR/address" ;;
        env) parse_dir "$@"; load_state; print_env ;;
        kill-node) cmd_kill_node "$@" ;;
        -h | --help | help) usage ;;
        *) usage >&2; exit 2 ;;
    esac
}

main "$@"
