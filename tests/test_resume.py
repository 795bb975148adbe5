"""Kill a training run (SIGKILL) mid-epoch, resume it: the final weights are bit-identical to an
uninterrupted run's (same batches, same augmentation, same importance-sampling draws)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.training import load_run_config, train
from wsss_core.training.checkpoint import checkpoint_path, load_checkpoint, load_model_weights
from wsss_core.training.metrics import read_status
from wsss_core.training.trainer import KILL_AFTER_STEP_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return generate_synthetic_voc(root, seed=2, n_train=12, n_val=2, size=48, num_classes=3, n_aug_extra=12,
                                  show_progress=False)


def overrides(root):
    # 24 images / batch 4 = 6 steps per epoch, 2 epochs; checkpoints at steps 4, 6 (epoch end), 8, 12
    return [f"data.root={root}", "data.crop=32", "train.batch_size=4", "train.epochs=2", "train.checkpoint_every=4",
            "optim.lr=0.05", "model.backbone_options={widths: [8, 16]}",
            "addons=[{name: importance_sampling, params: {weight: 0.5}}, {name: feature_similarity, params: {sigma: 2.0}}]"]


def test_sigkill_then_resume_is_bit_identical(voc_root, tmp_path):
    torch.set_num_threads(1)
    cfg = load_run_config(None, overrides(voc_root))
    reference = train(cfg, tmp_path / "uninterrupted")
    assert reference["steps"] == 12

    run_dir = tmp_path / "killed"
    env = {**os.environ, KILL_AFTER_STEP_ENV: "10", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "WSSS_PROGRESS": "0"}
    command = [sys.executable, "-m", "wsss.cli", "train", "--run-dir", str(run_dir)]
    for item in overrides(voc_root):
        command += ["--set", item]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = load_checkpoint(checkpoint_path(run_dir))
    assert state["position"] == {"step": 8, "epoch": 1, "batch": 2}  # mid-epoch, two steps lost
    assert read_status(run_dir)["status"] == "running"

    resumed = train(load_run_config(run_dir / "config.yaml"), run_dir)
    assert resumed["resumed_from_step"] == 8 and resumed["steps"] == 12
    expected, _ = load_model_weights(tmp_path / "uninterrupted")
    got, _ = load_model_weights(run_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert read_status(run_dir)["status"] == "finished"


def test_resume_never_starts_over(voc_root, tmp_path):
    torch.set_num_threads(1)
    cfg = load_run_config(None, overrides(voc_root) + ["train.max_steps=2"])
    train(cfg, tmp_path / "run")
    again = train(cfg, tmp_path / "run", resume="never")
    assert again["resumed_from_step"] == 0 and again["steps"] == 2
