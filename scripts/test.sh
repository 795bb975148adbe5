#!/usr/bin/env bash
# Install everything the test suite needs (Python packages; the Debian packages of the single-node
# Slurm cluster when running as root) and run the whole suite. Extra arguments go to pytest.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
if [ -x scripts/install_system_deps.sh ]; then
  bash scripts/install_system_deps.sh
fi
VENV=${WSSS_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH" RAY_AUTH_MODE=disabled WSSS_PROGRESS=${WSSS_PROGRESS:-0}
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
