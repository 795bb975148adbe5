"""Test helper: a sweep's outputs without training, real evaluations of made-up CAMs, as trial records.

For the tracking and report tests. Each trial's CAMs are the ground-truth masks blurred by
a method-dependent amount plus seed-dependent noise, so methods differ, seeds scatter, and every number
comes from the real ``evaluate_cams``. Trial records and stage folders follow the work dir's layout
(:mod:`wsss_core.pipeline.layout`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from wsss_core.evaluation.cam_store import CamStore
from wsss_core.evaluation.evaluate import evaluate_cams
from wsss_core.evaluation.ground_truth import read_gt_mask, read_split_ids
from wsss_core.evaluation.report import write_eval_outputs
from wsss_core.pipeline import layout

ADDON_SETTINGS: dict[str, tuple[list[str], str | None]] = {
    "none": ([], None),
    "is_binomial": (["importance_sampling"], "binomial"),
}


@dataclass
class FakeTrial:
    trial_id: str
    record: dict[str, Any]
    result: dict
    eval_dir: Path
    stage_dirs: dict[str, Path]


def fake_cams(data_root: str | Path, split: str, store_path: str | Path, num_classes: int, blur: float,
              noise: float, seed: int) -> Path:
    """Write CAMs = blurred ground truth + noise for every image of ``split``; returns the store path."""
    rng = np.random.default_rng(seed)
    store = CamStore.create(store_path, num_classes)
    for image_id in read_split_ids(data_root, split):
        gt = read_gt_mask(data_root, image_id)
        present = sorted(int(v) - 1 for v in np.unique(gt) if 0 < v < 255)
        maps = []
        for cls in present:
            blurred = ndimage.gaussian_filter((gt == cls + 1).astype(np.float32), blur)
            # low-frequency noise moves the contour; a peak inside the object makes a curve with an optimum
            field = ndimage.gaussian_filter(rng.random(gt.shape, dtype=np.float32), 3.0)
            field = (field - field.min()) / max(float(np.ptp(field)), 1e-5)
            peak = ndimage.gaussian_filter(blurred, 2 * blur)
            cam = np.clip(blurred * peak + noise * field, 0, None)
            maps.append(cam / max(float(cam.max()), 1e-5))
        cams = np.stack(maps) if maps else np.zeros((0, *gt.shape), np.float32)
        store.write(image_id, np.asarray(present, np.int64), cams.astype(np.float32))
    return Path(store_path)


def fake_sweep(workdir: str | Path, sweep_name: str, data_root: str | Path, split: str = "train",
               num_classes: int = 6, baselines: Sequence[str] = ("cam", "seam"),
               addon_settings: dict[str, tuple[list[str], str | None]] | None = None,
               seeds: Sequence[int] = (0, 1), write_records: bool = True) -> list[FakeTrial]:
    """Evaluate one made-up CAM store per (baseline, add-on setting, seed) and write the trial records."""
    workdir = Path(workdir)
    settings = addon_settings or ADDON_SETTINGS
    trials = []
    index = 0
    for b, baseline in enumerate(baselines):
        for a, (label, (addons, posterior)) in enumerate(settings.items()):
            for seed in seeds:
                trial_id = f"{baseline}-{label}-s{seed}"
                stage_root = layout.stages_root(workdir) / trial_id
                stage_dirs = {"train": stage_root / "train", "eval": stage_root / "eval"}
                for path in stage_dirs.values():
                    path.mkdir(parents=True, exist_ok=True)
                store = fake_cams(data_root, split, stage_root / "cams", num_classes, blur=2.0 + 1.5 * b - 0.8 * a,
                                  noise=0.3 + 0.1 * seed, seed=1000 * index + seed)
                result = evaluate_cams(store, data_root, split)
                eval_dir = stage_dirs["eval"]
                write_eval_outputs(result, eval_dir)
                record = {
                    "trial_id": trial_id, "sweep": sweep_name, "index": index,
                    "axes": {"baseline": baseline, "addons": label, "seed": seed},
                    "baseline": baseline, "addons": list(addons), "posterior": posterior, "seed": seed,
                    "stages": {name: {"key": f"{name}-{trial_id}", "dir": str(path), "state": "finished"}
                               for name, path in stage_dirs.items()},
                    "state": "finished", "attempts": 1, "error": None,
                    "tracking": {"parent_run_id": None, "run_ids": {}},
                    "eval_json": str(eval_dir / "eval.json"),
                }
                if write_records:
                    write_trial_record(workdir, sweep_name, record)
                trials.append(FakeTrial(trial_id, record, result, eval_dir, stage_dirs))
                index += 1
    return trials


def write_trial_record(workdir: str | Path, sweep_name: str, record: dict) -> Path:
    path = layout.trial_path(Path(workdir), sweep_name, record["trial_id"])
    layout.write_trial(path, record)
    return path


_TEMPLATE: Path | None = None


def initialised_sqlite_store(path: str | Path) -> str:
    """A SQLite MLflow store at ``path`` with its schema created, copied from one made once per process
    (creating the schema runs MLflow's migrations: ~10 s). Returns its tracking URI."""
    global _TEMPLATE
    from wsss_core.tracking.store import init_store

    if _TEMPLATE is None or not _TEMPLATE.is_file():
        template = Path(tempfile.mkdtemp(prefix="wsss-mlflow-template-")) / "mlflow.db"
        init_store(f"sqlite:///{template}")
        _TEMPLATE = template
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE, path)
    return f"sqlite:///{path.resolve()}"
