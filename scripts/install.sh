#!/usr/bin/env bash
# Install wsss-sweep into a local virtual environment (default .venv, or $WSSS_VENV). Idempotent:
# a second run with unchanged pyproject.toml/constraints.txt does nothing.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh --test   # runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${WSSS_VENV:-.venv}
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.wsss-install-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)${EXTRAS:+-test}"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import wsss_core, torch, pydensecrf.densecrf" 2>/dev/null; then
  echo "[install] $VENV is up to date"
  exit 0
fi
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and alone, so no other package's range can pull a different (CUDA) build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".$EXTRAS"
"$VENV/bin/python" - <<'PY'
import torch, pydensecrf.densecrf, ray, mlflow, submitit  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"[install] ok: torch {torch.__version__}, ray {ray.__version__}, mlflow {mlflow.__version__}")
PY
touch "$stamp"
