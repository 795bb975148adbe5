"""bench/gpu_check.sh works before it ever meets a GPU: without CUDA it says so and exits 0; with --smoke it runs
every section (training steps of each baseline in fp32 and bf16 channels-last, torch.compile, CAM generation per
image and batched, a DDP step at world size 1, the trainer under torchrun) on CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from wsss_core.baselines.base import Baseline

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def run_script(*args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WSSS_PROGRESS": "0"}
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    done = run_script(out=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert not (tmp_path / "gpu_check.json").exists()  # nothing measured, nothing written


@pytest.mark.slow
def test_smoke_runs_every_section_on_cpu(tmp_path):
    done = run_script("--smoke", out=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = result["rows"]
    failed = [r for r in rows if "failed" in r["note"] or "skipped" in r["note"]]
    assert failed == []
    measured = {(r["section"], r["what"].split(" (")[0], r["dtype"], r["layout"]) for r in rows
                if r["images_per_s"] and r["images_per_s"] > 0}
    for baseline in ("cam", "seam", "amn"):
        assert ("train", baseline, "fp32", "NCHW") in measured
        assert ("train", baseline, "bf16", "channels-last") in measured
    assert ("train", "cam", "fp32-noTF32", "NCHW") in measured
    assert ("compile", "cam", "bf16", "channels-last") in measured
    cams = {(r["dtype"], r["what"].split(", ")[1], r["note"].split(";")[0]) for r in rows
            if r["section"] == "cams" and r["images_per_s"]}
    if hasattr(Baseline, "batch_cams"):
        assert cams == {(dtype, f"{inputs} inputs", calls) for dtype in ("fp32", "bf16")
                        for inputs in ("tensor", "reference") for calls in ("per-image", "batched")}
        # One image per call and the whole batch in one call give the same maps.
        diffs = {(r["dtype"], r["what"]): float(r["note"].rsplit(" ", 1)[1]) for r in rows
                 if r["what"].startswith("batched vs per-image")}
        assert len(diffs) == 4
        assert diffs[("fp32", "batched vs per-image, tensor inputs")] <= 1e-5
        assert diffs[("fp32", "batched vs per-image, reference inputs")] <= 1e-5
    else:  # a checkout without the batched CAM API: the per-image loop alone, and rows saying why
        assert cams == {("fp32", "tensor inputs", "per-image"), ("bf16", "tensor inputs", "per-image")}
        assert any("no batched CAM API" in r["note"] for r in rows)
    ddp = next(r for r in rows if r["section"] == "ddp")
    assert ddp["images_per_s"] > 0 and "all_reduce, all_gather_object, barrier ok" in ddp["note"]
    trainer = next(r for r in rows if r["section"] == "trainer")
    assert trainer["images_per_s"] > 0 and "status finished" in trainer["note"]
    # The same table on stdout and in gpu_check.md, with the bf16/fp32 summary line of each baseline.
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| section | model | shape | dtype | layout | compile | images/s | peak GiB | note |" in table
    assert table.strip() in done.stdout
    assert sum(line.startswith(("cam:", "seam:", "amn:")) for line in table.splitlines()) == 3
