#!/usr/bin/env bash
# GPU check: each baseline's training step (CAM and AMN on ResNet-50 at crop 512 / batch 16, SEAM on ResNet-38 at
# crop 448 / batch 8; random-init weights, random tensors) in fp32 (torch's default, TF32 convolutions; and with
# TF32 off) and bf16 autocast, NCHW and channels-last, and under torch.compile (CAM by default; a compile failure
# is reported in its row, not fatal); CAM generation per image against batched; one DDP step over NCCL at world
# size 1; `wsss train` under torchrun on the GPU on the synthetic benchmark. Prints images/s and peak memory side
# by side as a Markdown table.
#
#   bash bench/gpu_check.sh              # on a machine with a CUDA GPU: about 5 minutes on an H200
#   bash bench/gpu_check.sh --smoke      # every section once on CPU at tiny sizes (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --help       # the options of bench/gpu_check.py (steps, budget, sections, …)
#
# Python: $PYTHON, else the checkout's .venv, else python3 (on the project's device machine: its python3, which
# holds a CUDA PyTorch; the checkout is put on PYTHONPATH, nothing is installed). With $OUT set (the device tool
# collects it), the table and the raw numbers go to $OUT/gpu_check.md and $OUT/gpu_check.json as well.
# Without a CUDA device (and without --smoke) it prints "no CUDA device" and exits 0.
# Record the figures in bench/RESULTS.md ("GPU check") with the device named.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WSSS_PROGRESS=0
exec "$py" bench/gpu_check.py "$@"
