"""End to end on the synthetic benchmark: train briefly, make CAMs on 2 ranks, score every threshold.
The trained CAMs must clearly beat CAMs that are constant over the image (scored the same way)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsss_core.data import build_dataset
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.evaluation import CamStore, evaluate_cams
from wsss_core.training import launch_local, load_run_config, train
from wsss_core.training.metrics import read_status


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return generate_synthetic_voc(root, seed=0, n_train=24, n_val=2, size=64, num_classes=4, n_aug_extra=40,
                                  show_progress=False)


def constant_cams_miou(root, split, out) -> float:
    """Every ground-truth class's map = 1 everywhere: the best any threshold can do without localisation."""
    dataset = build_dataset("voc", root, split)
    store = CamStore.create(out, dataset.num_classes)
    for index in range(len(dataset)):
        sample = dataset.load(index)
        keys = np.flatnonzero(sample["label"] > 0.5)
        height, width = sample["image"].shape[:2]
        store.write(sample["id"], keys, np.ones((len(keys), height, width), np.float32))
    return evaluate_cams(out, root, split)["best"]["miou"]


def test_trained_cams_beat_constant_maps(voc_root, tmp_path):
    torch.set_num_threads(2)
    cfg = load_run_config(None, [f"data.root={voc_root}", "train.epochs=6", "train.batch_size=8", "optim.lr=0.05",
                                 "cams.scales=[1.0, 0.5, 1.5]"])
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    summary = launch_local("make_cams", cfg, run_dir, nproc=2)
    store = CamStore(run_dir / "cams")
    assert len(store) == 24 and summary["num_images"] == 24
    result = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert result["best"]["miou"] == pytest.approx(summary["best_miou"])
    assert len(result["thresholds"]) > 10  # the whole threshold curve, in one pass
    keys, cams = store.read(store.ids()[0])
    assert cams.dtype == np.float32 and cams.max() <= 1.0 and cams.min() >= 0.0
    assert read_status(run_dir)["stages"] == {"train": {"status": "finished", "error": None},
                                              "cams": {"status": "finished", "error": None}}
    constant = constant_cams_miou(voc_root, "train", tmp_path / "constant")
    assert summary["best_miou"] > constant + 0.08, (summary["best_miou"], constant)
