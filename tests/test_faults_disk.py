"""Fault suite, the file system under a trial: a full disk (a real tmpfs, as the stage store or the whole work dir)
ends the trial failed with the worker's own error ("No space left on device" and the path) in its record, and a
rerun after freeing space finishes; a work dir this user cannot write (run as the unprivileged user nobody) is one
message before anything is written; a damaged checkpoint names the way out, and following it literally recovers,
for a finished training met by a later stage and for an interrupted one met on resume."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from sweep_files import tiny_sweep, write_sweep
from wsss.cli import main
from wsss_core.pipeline import layout
from wsss_core.training.checkpoint import checkpoint_path
from wsss_core.training.trainer import KILL_AFTER_STEP_ENV

pytestmark = pytest.mark.slow

SWEEP = "faults-disk"
REPO = Path(__file__).resolve().parents[1]


def _only_record(workdir: Path, sweep: str = SWEEP) -> dict:
    (record,) = layout.list_trials(workdir, sweep)
    return record


def _no_traceback(capsys) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text
    return text


# -- a full disk -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (tests run as root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}); a full disk needs one")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("mounted", ["stages", "."], ids=["stage-store-full", "work-dir-full"])
def test_full_disk_keeps_the_workers_error_and_a_rerun_finishes(tmp_path, capsys, mounted):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(SWEEP))
    workdir = tmp_path / "work"
    run = ["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]
    with _tmpfs(workdir / mounted, "250k") as disk:  # the data stage fits, the training's checkpoint does not
        assert main(run) == 1
        _no_traceback(capsys)
        record = _only_record(workdir)
        assert record["state"] == "failed"
        error = record["error"]
        assert "No space left on device" in error and str(disk.resolve()) in error, error
        assert "free space there and run again" in error
        assert main(["sweep", "status", str(path), "--workdir", str(workdir)]) in (0, 1)
        status = _no_traceback(capsys)
        assert "No space left on device" in status and "stale" not in status, status

        # The advice: free space (the disk grows) and run again.
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        assert main(run + ["--retry-failed"]) == 0
        _no_traceback(capsys)
        assert _only_record(workdir)["state"] == "finished"


# -- a work dir this user cannot write -----------------------------------------------------------------------

def _nobody_python() -> tuple[list[str], dict[str, str]]:
    """A command prefix that runs Python as the user nobody, with this checkout and its packages importable."""
    drop = shutil.which("setpriv")
    if drop is None:
        pytest.skip("setpriv is not installed: cannot run a command as an unprivileged user")
    user = pwd.getpwnam("nobody")
    prefix = [drop, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1", "WSSS_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([*site.getsitepackages(), str(REPO)])}
    # This interpreter may live where nobody cannot enter (e.g. under /root); a system one of the same version
    # runs the same packages.
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if subprocess.run([*prefix, python, "-c", "pass"], capture_output=True, env=env).returncode == 0:
            return [*prefix, python], env
    pytest.skip(f"no Python {version} that the user nobody may run")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder nobody can enter (pytest's tmp_path is private to root), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="wsss-readonly-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_a_work_dir_this_user_cannot_write_is_one_message(shared_tmp):
    prefix, env = _nobody_python()
    path = write_sweep(shared_tmp / "s.yaml", tiny_sweep(SWEEP))
    path.chmod(0o644)
    owned = shared_tmp / "root-owned"  # a work dir another user made, empty
    owned.mkdir(mode=0o755)
    shared = shared_tmp / "shared"  # a work dir all may write, whose folders another user made
    layout.prepare_workdir(shared)
    for folder in ("sweeps", "stages"):
        (shared / folder).mkdir(mode=0o755)
    shared.chmod(0o777)
    sweep_folder = layout.sweep_dir(shared_tmp / "mine", SWEEP)  # a work dir of one's own, but the sweep's folder
    layout.prepare_workdir(sweep_folder.parent.parent)  # was made by another user
    (shared_tmp / "mine").chmod(0o777)
    for folder in (sweep_folder.parent, layout.stages_root(shared_tmp / "mine")):
        folder.mkdir()
        folder.chmod(0o777)
    sweep_folder.mkdir(mode=0o755)
    inner = layout.sweep_dir(shared_tmp / "inner", SWEEP)  # a writable sweep folder whose trials/ another user made
    layout.prepare_workdir(inner.parent.parent)
    for folder in (shared_tmp / "inner", inner.parent, layout.stages_root(shared_tmp / "inner"), inner):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)
    (inner / "trials").mkdir(mode=0o755)
    fix = "; give a writable folder with --workdir (or $WSSS_WORKDIR)"
    denied = "(PermissionError: Permission denied)"
    cases = [(owned, f"work dir {owned}: cannot write there {denied}{fix}"),
             (owned / "new", f"work dir {owned / 'new'}: cannot write there {denied}{fix}"),
             (shared, f"work dir {shared}: cannot write in {shared / 'sweeps'} {denied}{fix}"),
             (shared_tmp / "mine", f"sweep folder {sweep_folder}: cannot write in {sweep_folder} {denied}{fix}"),
             (shared_tmp / "inner", f"sweep folder {inner}: cannot write in {inner / 'trials'} {denied}{fix}")]
    for workdir, message in cases:
        before = sorted(p.name for p in shared_tmp.rglob("*"))
        proc = subprocess.run([*prefix, "-m", "wsss.cli", "sweep", "run", str(path), "--workdir", str(workdir),
                               "--no-tracking"], cwd=shared_tmp, env={**env, "HOME": str(shared_tmp)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"wsss sweep: error: {message}"], proc.stderr
        assert sorted(p.name for p in shared_tmp.rglob("*")) == before  # nothing written


# -- a damaged checkpoint ----------------------------------------------------------------------------------

def _damage(checkpoint: Path) -> None:
    """Overwrite the checkpoint's first bytes, keeping its size (so only reading it finds the damage)."""
    data = bytearray(checkpoint.read_bytes())
    data[:64] = bytes(64)
    checkpoint.write_bytes(bytes(data))


def _follow_the_advice(error: str) -> None:
    """Run the command the message gives, as a user would paste it."""
    command = re.search(r"\(`(rm -r [^`]+)`\)", error)
    assert command, error
    subprocess.run(command.group(1), shell=True, check=True)


def test_damaged_checkpoint_of_a_finished_training_advice_recovers(tmp_path, capsys):
    sweep = tiny_sweep(SWEEP)
    path = write_sweep(tmp_path / "s.yaml", sweep)
    workdir = tmp_path / "work"
    run = ["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]
    assert main(run) == 0
    train_dir = Path(_only_record(workdir)["stages"]["train"]["dir"])
    _damage(checkpoint_path(train_dir))
    # Another sweep's CAM setting reuses the finished training and is the first to read its checkpoint.
    other = dict(sweep, name=f"{SWEEP}-cams")
    other["base"]["cams"]["scales"] = [1.0, 0.5]
    run[2] = str(write_sweep(tmp_path / "other.yaml", other))
    assert main(run) == 1
    _no_traceback(capsys)
    error = _only_record(workdir, other["name"])["error"]
    assert error.startswith(f"stage cams: TrainingError: {checkpoint_path(train_dir)}: cannot read checkpoint, it is "
                            "damaged"), error
    assert f"delete its run folder (`rm -r {train_dir}`) and run again" in error

    _follow_the_advice(error)
    assert main(run + ["--retry-failed"]) == 0
    _no_traceback(capsys)
    assert _only_record(workdir, other["name"])["state"] == "finished" and checkpoint_path(train_dir).is_file()
    assert layout.read_stage(train_dir)["attempts"] == 1  # trained afresh in a new folder
    # The first sweep's trial, recorded finished, has its CAMs (made from the old weights) recomputed too.
    assert main(["sweep", "plan", str(path), "--workdir", str(workdir)]) == 0
    assert "cams: its input stage train was recomputed after it ran" in _no_traceback(capsys)
    run[2] = str(path)
    assert main(run) == 0
    assert _only_record(workdir)["state"] == "finished"


def test_damaged_checkpoint_of_an_interrupted_training_advice_recovers(tmp_path, capsys, monkeypatch):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep(SWEEP))
    workdir = tmp_path / "work"
    run = ["sweep", "run", str(path), "--workdir", str(workdir), "--no-tracking"]
    monkeypatch.setenv(KILL_AFTER_STEP_ENV, "2")  # the training is killed after step 2 (checkpoints every step)
    assert main(run) == 1
    monkeypatch.delenv(KILL_AFTER_STEP_ENV)
    capsys.readouterr()
    train_dir = Path(_only_record(workdir)["stages"]["train"]["dir"])
    assert layout.read_stage(train_dir)["state"] != "finished"
    _damage(checkpoint_path(train_dir))
    assert main(run + ["--retry-failed"]) == 1  # the resume reads the damaged checkpoint
    _no_traceback(capsys)
    error = _only_record(workdir)["error"]
    assert error.startswith(f"stage train: TrainingError: {checkpoint_path(train_dir)}: cannot read checkpoint, it "
                            "is damaged"), error

    _follow_the_advice(error)
    assert main(run + ["--retry-failed"]) == 0
    _no_traceback(capsys)
    assert _only_record(workdir)["state"] == "finished"
    assert layout.read_stage(train_dir)["summary"]["resumed"] is False  # trained from step 0
