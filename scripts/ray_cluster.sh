#!/usr/bin/env bash
# A local single-node Ray cluster (head only) for the launcher tests. See docs/clusters.md.
#   bash scripts/ray_cluster.sh start  [--dir DIR] [--port P] [--num-cpus N]   # prints: export RAY_ADDRESS=127.0.0.1:P
#   bash scripts/ray_cluster.sh status [--dir DIR]
#   bash scripts/ray_cluster.sh stop   [--dir DIR]
# DIR (Ray's temp dir and our logs; keep it short, Ray puts unix sockets in it) defaults to
# ${WSSS_RAY_DIR:-/tmp/wsss-ray}; P to ${WSSS_RAY_PORT:-6390} (P..P+7 are used); N to 2.
# Pass the printed address to ray.init(address=...) or a launcher's --address.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CMD=${1:-}
[ -n "$CMD" ] || usage
shift
DIR=${WSSS_RAY_DIR:-/tmp/wsss-ray}
PORT=${WSSS_RAY_PORT:-6390}
NUM_CPUS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#--dir=}; shift ;;
    --port) PORT=$2; shift 2 ;;
    --port=*) PORT=${1#--port=}; shift ;;
    --num-cpus) NUM_CPUS=$2; shift 2 ;;
    --num-cpus=*) NUM_CPUS=${1#--num-cpus=}; shift ;;
    *) echo "[ray] unknown argument: $1" >&2; usage ;;
  esac
done
mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")
ADDRESS_FILE=$DIR/address
LOG=$DIR/log

VENV=${WSSS_VENV:-.venv}
if [ -x "$VENV/bin/ray" ]; then RAY=$PWD/$VENV/bin/ray; else RAY=$(command -v ray || true); fi
[ -n "$RAY" ] || { echo "[ray] ERROR: no ray executable in $VENV/bin or on PATH: run scripts/install.sh" >&2; exit 1; }
export PATH="$(dirname "$RAY"):$PATH"
# Local test clusters: no token auth (on by default in Ray 2.60), no usage reporting.
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0

say() { echo "[ray] $*"; }

# The processes of this cluster inherit this marker from `ray start` (GCS, raylet, monitors, workers), except
# the agents the raylet starts with an environment of its own (ray::DashboardAgent, ray::RuntimeEnvAgent):
# those are known by their Ray process title and a file open under $DIR (their logs). Orphaned when the raylet
# dies, they used to outlive `stop`. `ray stop` would instead kill every Ray cluster on the machine, other
# users' ones included.
cluster_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    grep -q '^[0-9]* (.*) Z' "$p/stat" 2>/dev/null && continue   # a zombie: already dead
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "WSSS_RAY_CLUSTER_DIR=$DIR"; then
      echo "${p#/proc/}"
    elif head -c 5 "$p/cmdline" 2>/dev/null | grep -qxF 'ray::' \
        && find "$p/fd" -maxdepth 1 -lname "$DIR/*" 2>/dev/null | grep -q .; then
      echo "${p#/proc/}"
    fi
  done
  return 0
}

answers() { [ -s "$ADDRESS_FILE" ] && timeout 30 "$RAY" status --address "$(cat "$ADDRESS_FILE")" >/dev/null 2>&1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_stop() {
  local pids; pids=$(cluster_pids | tr '\n' ' ')
  if [ -z "${pids// /}" ]; then
    say "nothing runs for $DIR"
    rm -f "$ADDRESS_FILE"
    return 0
  fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  # Like `ray stop --force` a test cluster needs no graceful shutdown; gcs_server ignores SIGTERM anyway.
  local deadline=$((SECONDS + 3))
  while [ -n "$(cluster_pids)" ] && [ $SECONDS -lt $deadline ]; do sleep 0.3; done
  pids=$(cluster_pids | tr '\n' ' ')
  if [ -n "${pids// /}" ]; then
    say "SIGKILL to what ignored SIGTERM: $pids"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  rm -f "$ADDRESS_FILE"
  say "stopped the Ray cluster of $DIR"
}

cmd_status() {
  if answers; then
    "$RAY" status --address "$(cat "$ADDRESS_FILE")"
    echo "export RAY_ADDRESS=$(cat "$ADDRESS_FILE")"
    return 0
  fi
  say "no Ray cluster answers for $DIR"
  return 3
}

cmd_start() {
  if answers; then
    say "already running"
    echo "export RAY_ADDRESS=$(cat "$ADDRESS_FILE")"
    return 0
  fi
  [ -z "$(cluster_pids)" ] || { say "stale processes of $DIR: stopping them"; cmd_stop; }
  local p
  for p in $(seq "$PORT" $((PORT + 7))); do
    port_busy "$p" && { echo "[ray] ERROR: port $p is in use: pick another --port" >&2; exit 1; }
  done
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    [ -e "$DIR/.wsss-ray-cluster" ] || { echo "[ray] ERROR: $DIR is not empty and was not made by this script: not touching it" >&2; exit 1; }
    rm -rf "$DIR"
  fi
  mkdir -p "$LOG"
  touch "$DIR/.wsss-ray-cluster"
  local address=127.0.0.1:$PORT attempt
  for attempt in 1 2; do
    if WSSS_RAY_CLUSTER_DIR="$DIR" timeout 120 "$RAY" start --head --num-cpus="$NUM_CPUS" \
        --node-ip-address=127.0.0.1 --port="$PORT" \
        --dashboard-agent-listen-port=$((PORT + 2)) --dashboard-agent-grpc-port=$((PORT + 3)) \
        --metrics-export-port=$((PORT + 4)) --runtime-env-agent-port=$((PORT + 5)) \
        --node-manager-port=$((PORT + 6)) --object-manager-port=$((PORT + 7)) \
        --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=$((PORT + 1)) --disable-usage-stats --object-store-memory=$((512 * 1024 * 1024)) \
        --temp-dir="$DIR" </dev/null >"$LOG/ray-start.log" 2>&1; then
      echo "$address" >"$ADDRESS_FILE"
      local deadline=$((SECONDS + 60))
      until answers || [ $SECONDS -ge $deadline ]; do sleep 0.5; done
      if answers; then
        say "head up at $address (temp dir and logs under $DIR)"
        echo "export RAY_ADDRESS=$address"
        return 0
      fi
    fi
    echo "[ray] start attempt $attempt failed; last lines of $LOG/ray-start.log:" >&2
    tail -n 15 "$LOG/ray-start.log" >&2 || true
    cmd_stop >/dev/null
    mkdir -p "$LOG"
  done
  echo "[ray] ERROR: the Ray head did not start twice in a row (see $DIR/session_latest/logs)" >&2
  exit 1
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) usage ;;
esac
