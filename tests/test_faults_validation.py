"""Fault suite, validation before anything is submitted: every value a trial would reject only after work
started is rejected by `wsss sweep plan` (and `run`, before the work dir is written) with one message naming
the file, the key, the value and what is valid; duplicate YAML keys and non-UTF-8 sweep files too."""

from __future__ import annotations

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main


def _plan(path, capsys, *sets):
    argv = ["sweep", "plan", str(path), "--workdir", str(path.parent / "work")]
    for item in sets:
        argv += ["--set", item]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


FINAL = "base.final.enabled=true"
CASES = [
    ("axes.seed=[0,-1]", ["seed=-1", "train.seed", "must be in 0..2**32-1", "got -1"]),
    ("base.optim.lr=.nan", ["optim.lr", "must be a finite number, got nan"]),
    ("base.optim.lr=.inf", ["optim.lr", "must be a finite number, got inf"]),
    ("synthetic_data.n_train=0", ["synthetic_data.n_train", "must be at least 1, got 0"]),
    ("synthetic_data.num_classes=-1", ["synthetic_data.num_classes", "must be at least 1, got -1"]),
    ("base.train.batch_size=64", ["train.batch_size", "64 × 1 process(es)", "'train_aug' has only 16",
                                  "at most 16"]),
    ("base.cams.split=test", ["cams.split", "'test' is not a split", "train, train_aug, val"]),
    ("base.model.pretrained=/nowhere/w.pth", ["model.pretrained", "weights file /nowhere/w.pth not found on this host",
                                               "null for random init"]),
    # The optional final segmentation stage: its splits, batch and values, once enabled.
    (f"{FINAL} base.final.split=test", ["final.split", "'test' is not a split", "train, train_aug, val"]),
    (f"{FINAL} base.final.val_split=nope", ["final.val_split", "'nope' is not a split", "train, train_aug, val"]),
    (f"{FINAL} base.final.batch_size=64", ["final.batch_size", "64 × 1 process(es)", "'train_aug' has only 16",
                                           "at most 16"]),
    (f"{FINAL} base.final.lr=.nan", ["final.lr", "must be a finite number, got nan"]),
    (f"{FINAL} base.final.pretrained=/nowhere/r.pth", ["final.pretrained", "weights file /nowhere/r.pth not found"]),
    (f"{FINAL} base.final.threshold=1.5", ["final.threshold", "must be in [0, 1] or 'best', got 1.5"]),
    (f"{FINAL} axes.baseline=[amn] base.final.batch_size=2 base.final.split=val",
     ["baseline=amn", "final.split", "'val' has no AMN seed labels", "valid: train_aug, train"]),
]


@pytest.mark.parametrize("setting,expected", CASES, ids=[c[0] for c in CASES])
def test_plan_rejects_what_a_trial_would(tmp_path, capsys, setting, expected):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep("v"))
    code, err = _plan(path, capsys, *setting.split())
    assert code == 2 and str(path) in err, err
    for text in expected:
        assert text in err, (text, err)
    assert len(err.strip().splitlines()) == 1  # one message


def test_run_rejects_before_anything_is_written(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep("v"))
    assert main(["sweep", "run", str(path), "--workdir", str(tmp_path / "work"), "--set", "axes.seed=[-3]"]) == 2
    assert "train.seed" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_dataset_root_and_split_files_are_checked_where_readable(tmp_path, capsys):
    sweep = tiny_sweep("v")
    del sweep["synthetic_data"]
    root = tmp_path / "voc"
    sweep["base"]["data"]["root"] = str(root)
    path = write_sweep(tmp_path / "s.yaml", sweep)
    code, err = _plan(path, capsys)
    assert code == 2 and f"data.root: {root} does not exist on this host" in err
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    code, err = _plan(path, capsys)
    assert code == 2 and "data.train_split: 'train_aug'" in err and "train_aug.txt: split file not found" in err
    assert "splits available: train" in err
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("")
    code, err = _plan(path, capsys)
    assert code == 2 and "train_aug.txt: split file lists no image ids" in err
    # A sweep that runs on a cluster: a root this host cannot read is noted, not refused.
    sweep["base"]["data"]["root"] = str(tmp_path / "only-on-the-cluster")
    sweep["launcher"] = {"default": "slurm"}
    path = write_sweep(tmp_path / "cluster.yaml", sweep)
    code, err = _plan(path, capsys)
    assert code == 0 and "does not exist on this host; it is checked on the cluster's nodes only" in err


def test_duplicate_keys_and_non_utf8_files_give_one_message(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: v\naxes:\n  baseline: [cam]\n  seed: [0]\n  addons: {none: []}\n  seed: [5]\n")
    code, err = _plan(path, capsys)
    assert code == 2 and f"{path}: line 6: duplicate key 'seed' (first given on line 4)" in err, err

    path.write_bytes(b"name: v\n# caf\xe9\n")
    code, err = _plan(path, capsys)
    assert code == 2 and f"{path}: line 2: not UTF-8 text (byte 0xe9" in err


def test_large_grids_need_allow_large_and_show_progress(tmp_path, capsys):
    sweep = tiny_sweep("v", axes={"seed": list(range(200)), "train.max_steps": list(range(1, 61))})
    path = write_sweep(tmp_path / "big.yaml", sweep)
    code, err = _plan(path, capsys)
    assert code == 2 and "seed 200 × train.max_steps 60 = 12000 trials, more than 10000" in err
    assert "--allow-large" in err
    sweep["axes"]["train.max_steps"] = [1, 2, 3]  # 600 trials: validated with progress on stderr
    path = write_sweep(tmp_path / "mid.yaml", sweep)
    assert main(["sweep", "plan", str(path), "--workdir", str(tmp_path / "work"), "--brief"]) == 0
    captured = capsys.readouterr()
    assert "validating trial 1/600" in captured.err and "600 trials" in captured.out


def test_unwritable_work_dir_gives_one_message(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep("v"))
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    assert main(["sweep", "run", str(path), "--workdir", str(not_a_folder / "work"), "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"work dir {not_a_folder / 'work'}: cannot write there" in err
    assert "--workdir" in err


def test_plan_validates_each_trial_once(tmp_path, monkeypatch):
    """`load_sweep` validates the grid and keeps the trials; `plan_sweep` plans from them instead of validating
    every trial a second time (`wsss sweep plan` of 5,000 trials: 34 s CPU with the second pass, 23 s without)."""
    import launchers.spec as spec_module
    from launchers.plan import plan_sweep

    validated: list[str] = []
    real = spec_module.run_config_from_dict
    monkeypatch.setattr(spec_module, "run_config_from_dict",
                        lambda data, where: validated.append(where) or real(data, where))
    spec = spec_module.load_sweep(write_sweep(tmp_path / "s.yaml", tiny_sweep("v", axes={"seed": [0, 1, 2, 3]})))
    plan = plan_sweep(spec, tmp_path / "work")
    assert len(plan.trials) == 4
    assert len(validated) == 1 + 4  # the base, then each trial once
