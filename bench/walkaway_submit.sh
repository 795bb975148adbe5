#!/usr/bin/env bash
# Submit and walk away, timed: `wsss sweep run --launcher slurm` (returns once the trials are submitted) and
# `wsss sweep wait` for a 3-trial tiny sweep (synthetic data, seconds per trial) on the project's single-node
# test Slurm cluster, started and stopped here. Needs what the Slurm tests need (root, the Debian packages).
#   bash bench/walkaway_submit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DIR=$(mktemp -d /tmp/wsss-slurm-bench-XXXX)
chmod 755 "$DIR"
WORK=$(mktemp -d /tmp/wsss-walkaway-XXXX)
cleanup() { bash scripts/slurm_cluster.sh stop --dir "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR" "$WORK"; }
trap cleanup EXIT
bash scripts/slurm_cluster.sh start --dir "$DIR" --port-base "${WSSS_SLURM_PORT_BASE:-26300}" | tail -n 1
export SLURM_CONF=$DIR/slurm.conf PYTHONPATH=$PWD/tests:$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" - "$WORK/walkaway.yaml" <<'PYEOF'
import sys
from sweep_files import tiny_sweep, write_sweep
write_sweep(sys.argv[1], tiny_sweep("walkaway", axes={"seed": [0, 1, 2]},
                                    launcher={"slurm": {"partition": "debug", "array_parallelism": 3}}))
PYEOF
echo "$(nproc) cores; $(uptime)"
start=$(date +%s.%N)
"$PY" -m wsss.cli sweep run "$WORK/walkaway.yaml" --workdir "$WORK/work" --launcher slurm >"$WORK/submit.log"
submitted=$(date +%s.%N)
grep -E "^\[(sweep|slurm)\]" "$WORK/submit.log" | head -n 2
"$PY" -m wsss.cli sweep wait "$WORK/walkaway.yaml" --workdir "$WORK/work" --poll 1 | tail -n 1
done_=$(date +%s.%N)
awk -v a="$start" -v b="$submitted" -v c="$done_" \
  'BEGIN { printf "submit returned after %.1f s; every trial finished %.1f s later\n", b - a, c - b }'
