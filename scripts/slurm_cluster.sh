#!/usr/bin/env bash
# A single-node Slurm cluster with accounting (munge, MariaDB, slurmdbd, slurmctld, slurmd), all of its
# state, config and logs under one folder. Needs root and the Debian packages of
# scripts/install_system_deps.sh. See docs/clusters.md.
#   bash scripts/slurm_cluster.sh start  [--dir DIR] [--port-base N]   # prints: export SLURM_CONF=DIR/slurm.conf
#   bash scripts/slurm_cluster.sh status [--dir DIR]
#   bash scripts/slurm_cluster.sh stop   [--dir DIR]
# DIR defaults to ${WSSS_SLURM_DIR:-/tmp/wsss-slurm}. Ports: N (slurmctld), N+1 (slurmd), N+2 (slurmdbd),
# N+3 (MariaDB); N defaults to ${WSSS_SLURM_PORT_BASE:-6817}.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

CMD=${1:-}
[ -n "$CMD" ] || usage
shift
DIR=${WSSS_SLURM_DIR:-/tmp/wsss-slurm}
PORT_BASE=${WSSS_SLURM_PORT_BASE:-6817}
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#--dir=}; shift ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    --port-base=*) PORT_BASE=${1#--port-base=}; shift ;;
    *) echo "[slurm] unknown argument: $1" >&2; usage ;;
  esac
done
mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")

CLUSTER=wsss
ACCOUNT=wsss
PARTITION=debug
MARKER=$DIR/.wsss-slurm-cluster   # only folders carrying it are ever wiped
LOG=$DIR/log
RUN=$DIR/run                      # our own pid files: one per daemon, written by this script
CONF=$DIR/slurm.conf
DBSOCK=$DIR/mysql/mysqld.sock
MUNGESOCK=$DIR/munge/munge.socket
DAEMONS_UP=(munged mariadb slurmdbd slurmctld slurmd)
export SLURM_CONF=$CONF

say() { echo "[slurm] $*"; }

tail_log() {  # tail_log FILE...: the last lines of each log, for error messages
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f -----" >&2
    tail -n 25 "$f" >&2
  done
}

die() {  # die MESSAGE [LOG...]
  local msg=$1; shift
  echo "[slurm] ERROR: $msg" >&2
  tail_log "$@"
  exit 1
}

# A daemon we started is orphaned once this script exits; a zombie (dead, not yet reaped) counts as gone.
running() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

pid_of() { [ -s "$RUN/$1.pid" ] && cat "$RUN/$1.pid" || true; }

alive() {  # alive NAME: its recorded pid runs
  local pid; pid=$(pid_of "$1")
  [ -n "$pid" ] && running "$pid"
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...: poll every 0.5 s
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "[slurm] timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.5
  done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_pid() {  # stop_pid NAME: SIGTERM, wait up to 20 s, then SIGKILL
  local name=$1 pid; pid=$(pid_of "$name")
  if [ -n "$pid" ] && running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    local started=$SECONDS deadline=$((SECONDS + 20))
    while running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if running "$pid"; then
      say "$name (pid $pid) ignored SIGTERM for 20 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid, $((SECONDS - started)) s)"
  fi
  rm -f "$RUN/$name.pid"
}

# Processes this cluster's daemons left behind (slurmstepd of a killed job): they inherit the marker
# variable every daemon is started with.
leftover_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    running "${p#/proc/}" || continue
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "WSSS_SLURM_CLUSTER_DIR=$DIR" && echo "${p#/proc/}"
  done
  return 0
}

mysql_root() { mariadb --no-defaults --socket="$DBSOCK" -uroot "$@"; }

cluster_answers() {  # slurmctld, slurmdbd and the node all answer
  scontrol ping 2>/dev/null | grep -q "is UP" &&
    sinfo -h -n localhost -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)' &&
    sacct -n -X -S now-1minutes >/dev/null 2>&1
}

all_alive() {
  local d
  for d in "${DAEMONS_UP[@]}"; do alive "$d" || return 1; done
}

cmd_status() {
  if [ ! -e "$MARKER" ]; then
    say "no cluster state in $DIR"
    return 3
  fi
  local d rc=0
  for d in "${DAEMONS_UP[@]}"; do
    if alive "$d"; then say "$d running (pid $(pid_of "$d"))"; else say "$d NOT running"; rc=3; fi
  done
  if [ $rc -eq 0 ]; then
    sinfo -N -o "%N %P %t %c %m" || rc=3
    squeue || rc=3
  fi
  say "config: export SLURM_CONF=$CONF"
  return $rc
}

cmd_stop() {
  if [ ! -e "$MARKER" ]; then
    say "nothing to stop in $DIR"
    return 0
  fi
  if alive slurmctld; then
    scancel --user="$(id -un)" 2>/dev/null || true
    scancel --state=PENDING 2>/dev/null || true
    # Jobs must end before slurmd goes, or their steps stay orphaned.
    if ! wait_until 30 "running jobs to end" bash -c '[ -z "$(squeue -h -t R,CG,S 2>/dev/null)" ]'; then
      squeue >&2 || true
    fi
  fi
  local d
  for d in slurmd slurmctld slurmdbd mariadb munged; do stop_pid "$d"; done
  local left; left=$(leftover_pids | tr '\n' ' ')
  if [ -n "${left// /}" ]; then
    say "killing processes left behind by this cluster: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
  say "stopped (state kept in $DIR; the next start wipes it)"
}

write_configs() {
  local cpus mem
  cpus=$(nproc)
  mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  [ -n "$mem" ] || die "slurmd -C printed no RealMemory"
  # A margin below what the node reports, or slurmd registers with less and the node drains.
  mem=$((mem > 2048 ? mem - 1024 : mem / 2))

  cat >"$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a single-node cluster whose state lives in $DIR
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGESOCK,cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Without these a requeued job waits ~120 s before it runs again.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
KillWait=5
MinJobAge=600
ReturnToService=2
InactiveLimit=0
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT_BASE + 2))
# For slurmdbd this names the munge socket: clients otherwise look for /run/munge/munge.socket.2.
AccountingStoragePass=$MUNGESOCK
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.daemon.pid
SlurmdPidFile=$DIR/run/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$DIR/plugstack.conf
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$DIR/plugstack.conf"

  # slurmdbd refuses a config that is not owned by SlurmUser with mode 600.
  ( umask 077
    cat >"$DIR/slurmdbd.conf" <<EOF
# Written by scripts/slurm_cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGESOCK
DbdHost=localhost
DbdPort=$((PORT_BASE + 2))
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$DIR/run/slurmdbd.daemon.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT_BASE + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  )
}

start_munge() {
  mkdir -p "$DIR/munge"
  mungekey -c -k "$DIR/munge/munge.key" >>"$LOG/munge-setup.log" 2>&1 ||
    die "mungekey -c failed" "$LOG/munge-setup.log"
  chown -R munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"   # clients of every user reach the socket
  chmod 400 "$DIR/munge/munge.key"
  : >"$LOG/munged.log" && chown munge:munge "$LOG/munged.log"
  runuser -u munge -- env WSSS_SLURM_CLUSTER_DIR="$DIR" munged \
    --key-file="$DIR/munge/munge.key" --socket="$MUNGESOCK" \
    --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
    --log-file="$LOG/munged.log" >>"$LOG/munge-setup.log" 2>&1 ||
    die "munged did not start" "$LOG/munge-setup.log" "$LOG/munged.log"
  wait_until 20 "munged's pid file" test -s "$DIR/munge/munged.pid" ||
    die "munged wrote no pid file" "$LOG/munged.log"
  cp "$DIR/munge/munged.pid" "$RUN/munged.pid"
  wait_until 20 "munge to answer on $MUNGESOCK" \
    bash -c "munge -n -S '$MUNGESOCK' | unmunge -S '$MUNGESOCK'" ||
    die "munge does not answer" "$LOG/munged.log"
  say "munged up (pid $(pid_of munged))"
}

start_mariadb() {
  local port=$((PORT_BASE + 3))
  mkdir -p "$DIR/mysql"
  chown mysql:mysql "$DIR/mysql"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" \
    --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
    die "mariadb-install-db failed" "$LOG/mariadb-install.log"
  # pid and error log stay in the mysql-owned datadir (pointing them at a root-owned folder crashes it).
  WSSS_SLURM_CLUSTER_DIR="$DIR" setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" \
    --socket="$DBSOCK" --port="$port" --bind-address=127.0.0.1 --console \
    --skip-name-resolve --performance-schema=OFF --innodb-buffer-pool-size=64M \
    --innodb-lock-wait-timeout=900 --max-connections=100 \
    </dev/null >"$LOG/mariadb.log" 2>&1 &
  echo $! >"$RUN/mariadb.pid"
  wait_until 60 "MariaDB on $DBSOCK" mysql_root -e "SELECT 1" ||
    die "MariaDB did not come up" "$LOG/mariadb.log"
  # A fresh state folder gets a fresh accounting database: stale rows would confuse submitit.
  mysql_root >>"$LOG/mariadb-install.log" 2>&1 <<EOF || die "creating the accounting database failed" "$LOG/mariadb-install.log"
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE DATABASE slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
  say "MariaDB up (pid $(pid_of mariadb), port $port)"
}

start_slurm_daemon() {  # start_slurm_daemon NAME ARGS...: in the foreground mode, backgrounded by us
  local name=$1; shift
  WSSS_SLURM_CLUSTER_DIR="$DIR" SLURM_CONF="$CONF" setsid "$name" -D "$@" \
    </dev/null >>"$LOG/$name.out" 2>&1 &
  echo $! >"$RUN/$name.pid"
  sleep 0.3
  alive "$name" || die "$name exited right after starting" "$LOG/$name.out" "$LOG/$name.log"
}

start_fresh() {
  local port
  for port in "$PORT_BASE" $((PORT_BASE + 1)) $((PORT_BASE + 2)) $((PORT_BASE + 3)); do
    port_busy "$port" && die "port $port is in use (another cluster? try --port-base or 'stop' it first)"
  done
  mkdir -p "$DIR" "$LOG" "$RUN" "$DIR/state" "$DIR/spool"
  touch "$MARKER"
  # munge and mysql must traverse the folder (pytest's own tmp dirs are mode 700).
  chmod 755 "$DIR" "$LOG"
  for user in munge mysql; do
    runuser -u "$user" -- test -x "$DIR" ||
      die "user $user cannot enter $DIR: use a folder whose parents are world-traversable (e.g. under /tmp)"
  done
  DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  write_configs

  start_munge
  start_mariadb

  start_slurm_daemon slurmdbd
  wait_until 60 "slurmdbd to answer sacctmgr" sacctmgr -n list cluster ||
    die "slurmdbd does not answer" "$LOG/slurmdbd.log" "$LOG/slurmdbd.out"
  # The cluster must exist in the database before slurmctld registers; jobs then get recorded.
  sacctmgr -i add cluster "$CLUSTER" >>"$LOG/sacctmgr.log" 2>&1 ||
    die "sacctmgr add cluster failed" "$LOG/sacctmgr.log" "$LOG/slurmdbd.log"
  sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=wsss Organization=wsss \
    >>"$LOG/sacctmgr.log" 2>&1 || die "sacctmgr add account failed" "$LOG/sacctmgr.log"
  sacctmgr -i add user "$(id -un)" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" \
    >>"$LOG/sacctmgr.log" 2>&1 || die "sacctmgr add user failed" "$LOG/sacctmgr.log"
  say "slurmdbd up (pid $(pid_of slurmdbd))"

  start_slurm_daemon slurmctld -i
  wait_until 60 "slurmctld to answer scontrol ping" bash -c 'scontrol ping | grep -q "is UP"' ||
    die "slurmctld does not answer" "$LOG/slurmctld.log" "$LOG/slurmctld.out"
  say "slurmctld up (pid $(pid_of slurmctld))"

  start_slurm_daemon slurmd
  wait_until 60 "node localhost to be idle" bash -c 'sinfo -h -n localhost -o %t | grep -qx idle' ||
    die "node localhost did not become idle: $(sinfo -h -N -o '%N %t %E' 2>&1)" \
      "$LOG/slurmd.log" "$LOG/slurmd.out" "$LOG/slurmctld.log"
  say "slurmd up (pid $(pid_of slurmd))"

  wait_until 60 "sacct to answer" sacct -n -X -S now-1minutes ||
    die "sacct does not answer" "$LOG/slurmdbd.log" "$LOG/slurmctld.log"
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "the Slurm cluster needs root (slurmd runs jobs as their user, munge/mysql users)"
  local b
  for b in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr sacct sbatch; do
    command -v "$b" >/dev/null ||
      die "$b is not installed: run 'bash scripts/install_system_deps.sh' as root (Debian packages munge slurmctld slurmd slurm-client slurmdbd mariadb-server)"
  done
  if [ -e "$MARKER" ] && all_alive && cluster_answers; then
    say "already running in $DIR"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    [ -e "$MARKER" ] || die "$DIR exists, is not empty and is not a cluster folder made by this script: not touching it"
    say "stale state in $DIR: stopping what is left and wiping it"
    cmd_stop >/dev/null
    rm -rf "$DIR"
  fi
  local attempt
  for attempt in 1 2; do
    # A child process (with set -e in force) so that a failed attempt comes back here for one clean retry.
    if bash "$0" __start_fresh --dir "$DIR" --port-base "$PORT_BASE"; then
      say "cluster '$CLUSTER' ready in $DIR (partition $PARTITION, logs in $LOG)"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    [ $attempt -eq 2 ] && break
    say "start attempt $attempt failed: stopping, wiping $DIR and retrying"
    cmd_stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
  done
  echo "[slurm] ERROR: the cluster did not start twice in a row; logs are in $LOG" >&2
  cmd_stop >/dev/null 2>&1 || true
  exit 1
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  __start_fresh) start_fresh ;;
  *) usage ;;
esac
