"""Fault suite, bad data: a listed image or mask that is missing is refused by `wsss sweep plan` (naming the ids, the
count, the split file and the split); a truncated image or a mask with a class id outside 0..C (and 255) is refused
by the full check (``load_sweep(check_data=True)``, the CLI's ``--check-data``, the same code as ``wsss data check
--read``); and the same bad file met inside a trial that ran without the full check ends the trial failed with one
message naming the file in its record, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sweep_files import TINY_DATA, tiny_sweep, write_sweep
from launchers.spec import load_sweep
from wsss.cli import main
from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.errors import ConfigError
from wsss_core.pipeline import layout

SWEEP = "faults-data"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = TINY_DATA
    return generate_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", seed=d["seed"], n_train=d["n_train"],
                                  n_aug_extra=d["n_aug_extra"], n_val=d["n_val"], size=d["size"],
                                  num_classes=d["num_classes"], show_progress=False)


@pytest.fixture
def root(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "voc"))


def _sweep(tmp_path: Path, root: Path) -> Path:
    """The tiny sweep on the dataset at ``root`` (no synthetic_data stage): trains on train_aug, CAMs of train."""
    sweep = tiny_sweep(SWEEP)
    del sweep["synthetic_data"]
    sweep["base"]["data"]["root"] = str(root)
    return write_sweep(tmp_path / "s.yaml", sweep)


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _paint_class(path: Path, value: int) -> None:
    mask = np.asarray(Image.open(path)).copy()
    mask[:3, :3] = value
    Image.fromarray(mask).save(path)


def _plan(path: Path, capsys) -> tuple[int, str]:
    code = main(["sweep", "plan", str(path), "--workdir", str(path.parent / "work"), "--brief"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_plan_names_the_listed_ids_whose_files_are_missing(tmp_path, pristine, root, capsys):
    ids = _ids(root, "train_aug")
    for image_id in ids[:4]:
        (root / "JPEGImages" / f"{image_id}.jpg").unlink()
    (root / "SegmentationClass" / f"{ids[5]}.png").unlink()  # train's masks are expected (cams.split: train)
    code, err = _plan(_sweep(tmp_path, root), capsys)
    split_file = root / "ImageSets/Segmentation/train_aug.txt"
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"data.train_split: 'train_aug': {split_file} (split 'train_aug'): 4 file(s) listed in split " \
           f"'train_aug' are missing, for 4 of {len(ids)} image ids: {ids[0]} ({root}/JPEGImages/{ids[0]}.jpg)" in err
    assert "and 1 more; restore them or remove their ids from the split file" in err
    # The images back: the missing mask of a train id is named for cams.split (train_aug lists it without a mask)
    for image_id in ids[:4]:
        shutil.copy(pristine / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages")
    code, err = _plan(_sweep(tmp_path, root), capsys)
    assert code == 2 and f"cams.split: 'train': {root}/ImageSets/Segmentation/train.txt (split 'train'): 1 file(s)" \
        in err and f"{ids[5]} ({root}/SegmentationClass/{ids[5]}.png)" in err, err


def test_full_check_names_a_truncated_image_and_a_mask_class_id(tmp_path, pristine, root, capsys, monkeypatch):
    monkeypatch.setenv("WSSS_PROGRESS", "1")  # CI turns progress lines off; this test reads them
    ids = _ids(root, "train")
    _truncate(root / "JPEGImages" / f"{ids[2]}.jpg")
    path = _sweep(tmp_path, root)
    # The cheap check sees every file present: plan accepts it.
    assert _plan(path, capsys)[0] == 0
    with pytest.raises(ConfigError) as info:
        load_sweep(path, check_data=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"data.train_split: 'train_aug': {root}/JPEGImages/{ids[2]}.jpg: unreadable or truncated image" in message
    assert "re-download or re-extract it, or remove its id from the split file" in message
    assert "decoding split train_aug" in capsys.readouterr().err  # progress on stderr

    shutil.copy(pristine / "JPEGImages" / f"{ids[2]}.jpg", root / "JPEGImages")  # the image restored
    _paint_class(root / "SegmentationClass" / f"{ids[1]}.png", 99)
    _paint_class(root / "SegmentationClass" / f"{ids[4]}.png", 7)
    with pytest.raises(ConfigError) as info:
        load_sweep(path, check_data=True)
    message = str(info.value)
    assert f"{root}/SegmentationClass/{ids[1]}.png: mask has class ids 99 outside 0..3 (and 255 = void) for 3 " \
           "foreground classes" in message
    assert f"2 of {len(_ids(root, 'train_aug'))} listed image ids are unusable: {ids[1]}, {ids[4]}" in message
    # The command line's --check-data, on plan and run (nothing written), and `wsss data check --read` say the same.
    for action in ("plan", "run"):
        assert main(["sweep", action, str(path), "--workdir", str(tmp_path / "work"), "--check-data"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()[-1:]) == 1
        assert f"{ids[1]}.png: mask has class ids 99 outside 0..3" in err.strip().splitlines()[-1]
    assert not (tmp_path / "work").exists()
    assert main(["data", "check", "--root", str(root), "--split", "train", "--read"]) == 2
    assert f"{ids[1]}.png: mask has class ids 99 outside 0..3" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated image", "mask class id 99"])
def test_bad_file_inside_a_trial_is_one_message_in_its_record(tmp_path, root, capsys, damage):
    ids = _ids(root, "train")
    if damage == "truncated image":
        bad = root / "JPEGImages" / f"{ids[0]}.jpg"
        _truncate(bad)
        expected = f"{bad}: unreadable or truncated image"
    else:
        bad = root / "SegmentationClass" / f"{ids[0]}.png"
        _paint_class(bad, 99)
        expected = f"{bad}: mask has class ids 99 outside 0..3 (and 255 = void)"
    path = _sweep(tmp_path, root)
    workdir = tmp_path / "work"
    assert main(["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]) == 1
    captured = capsys.readouterr()
    (record,) = layout.list_trials(workdir, SWEEP)
    assert record["state"] == "failed"
    assert record["error"].startswith(f"stage train: DataError: {expected}"), record["error"]
    assert "\n" not in record["error"] and "Traceback" not in record["error"]
    assert expected in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
