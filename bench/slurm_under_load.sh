#!/usr/bin/env bash
# The Slurm tests on a loaded machine: N CPU-bound processes run beside them, K rounds; one line per round
# (pytest's exit status, wall time, load average). Needs what the Slurm tests need (root, the Debian packages).
#   bash bench/slurm_under_load.sh [N=4] [K=2]
set -u
cd "$(dirname "$0")/.."
N=${1:-4}
K=${2:-2}
PY=${PYTHON:-.venv/bin/python}
hogs=()
for _ in $(seq "$N"); do "$PY" -c 'while True: pass' & hogs+=($!); done
trap 'kill "${hogs[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
echo "$(nproc) cores, $N CPU-bound processes beside the tests; $(uptime)"
for k in $(seq "$K"); do
  start=$SECONDS
  "$PY" -m pytest -q -rf -p no:cacheprovider tests/test_launcher_slurm.py tests/test_slurm_cluster.py \
    tests/test_sweep_follow_slurm.py >"${LOG:-/tmp/slurm_under_load}.$k.log" 2>&1
  grep -E "^FAILED|^E   .*Error|passed|failed" "${LOG:-/tmp/slurm_under_load}.$k.log" | tail -n 6
  echo "round $k: in $((SECONDS - start)) s (log ${LOG:-/tmp/slurm_under_load}.$k.log); $(uptime)"
done
