"""Fault suite, resume: metrics.jsonl holds each step once after any number of kills and resumes (a resumed
training re-logs the steps after its checkpoint; their old lines, and a line cut short by the kill, go)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.training import load_run_config, train
from wsss_core.training.trainer import KILL_AFTER_STEP_ENV

REPO = Path(__file__).resolve().parents[1]


def test_metrics_have_each_step_once_after_two_kills_and_resumes(tmp_path):
    root = generate_synthetic_voc(tmp_path / "voc", seed=2, n_train=12, n_val=2, size=40, num_classes=3,
                                  n_aug_extra=12, show_progress=False)
    # 24 images / batch 4 = 6 steps per epoch, 2 epochs; checkpoints every 4 steps and at epoch ends
    sets = [f"data.root={root}", "data.crop=32", "train.batch_size=4", "train.epochs=2", "train.checkpoint_every=4",
            "model.backbone_options={widths: [8, 16]}", "train.log_every=1"]
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "wsss.cli", "train", "--run-dir", str(run_dir)]
    for item in sets:
        command += ["--set", item]
    for kill_after in (7, 11):  # killed a step after checkpoint 6, then 3 steps after checkpoint 8
        env = {**os.environ, KILL_AFTER_STEP_ENV: str(kill_after), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
               "WSSS_PROGRESS": "0"}
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write('{"step": 99, "loss"')  # a line cut short by the kill
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]] \
        == list(range(1, 12))  # the second run resumed at checkpoint 6 and re-logged step 7: once
    result = train(load_run_config(run_dir / "config.yaml"), run_dir)
    assert result["resumed_from_step"] == 8 and result["steps"] == 12
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
