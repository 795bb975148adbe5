"""Fault suite, test-suite hygiene: `scripts/ray_cluster.sh stop` leaves no process of its cluster, the
agents included (the raylet starts ray::DashboardAgent and ray::RuntimeEnvAgent with an environment of their
own, so they lack the cluster's marker; orphaned when the raylet died, they used to outlive the suite)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from cluster_fixtures import RAY_SCRIPT, _free_port_block, _run_script

pytestmark = pytest.mark.slow


def _processes_of(ray_dir: Path) -> dict[int, str]:
    """pid -> title of every live process with the cluster's marker or a file open under its dir."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if " Z " in (proc / "stat").read_text().rsplit(")", 1)[1][:3] or int(proc.name) == os.getpid():
                continue
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            marked = f"WSSS_RAY_CLUSTER_DIR={ray_dir}".encode() in (proc / "environ").read_bytes().split(b"\0")
            open_here = any(os.readlink(fd).startswith(f"{ray_dir}/") for fd in (proc / "fd").iterdir())
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if marked or open_here:
            out[int(proc.name)] = title
    return out


def test_stop_leaves_no_process_of_the_cluster_agents_included():
    ray_dir = Path(tempfile.mkdtemp(prefix="wsss-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = _run_script([RAY_SCRIPT, "start", "--dir", ray_dir, "--port", _free_port_block(8), "--num-cpus", 1],
                        300, env=env)
    try:
        assert start.returncode == 0, start.stderr
        deadline = time.time() + 60
        while time.time() < deadline and sum(t.startswith("ray::") for t in _processes_of(ray_dir).values()) < 2:
            time.sleep(0.5)
        titles = _processes_of(ray_dir).values()
        assert any("DashboardAgent" in t for t in titles) and any("RuntimeEnvAgent" in t for t in titles), titles
    finally:
        stop = _run_script([RAY_SCRIPT, "stop", "--dir", ray_dir], 120)
    assert stop.returncode == 0, stop.stderr
    time.sleep(0.5)
    left = _processes_of(ray_dir)
    if not left:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert left == {}
