"""Every baseline × every add-on combination trains under 2-process gloo DDP on the synthetic benchmark and
yields CAMs that evaluate_cams scores. One spawn of two processes runs all the trainings (start-up costs
more than the few steps each one takes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss_core.data.synth import generate_synthetic_voc
from wsss_core.evaluation import CamStore, evaluate_cams
from wsss_core.pipeline import plan_trial, run_trial
from wsss_core.training.amn import amn_chain
from wsss_core.training.checkpoint import load_model_weights
from wsss_core.training.config import load_run_config

ADDON_COMBOS = {
    "none": "[]",
    "is": "[{name: importance_sampling}]",
    "fsl": "[{name: feature_similarity, params: {sigma: 2.0}}]",
    "both": "[{name: importance_sampling}, {name: feature_similarity, params: {sigma: 2.0}}]",
}
BASELINES = ("cam", "seam", "amn")


def _ddp_jobs(rank: int, nproc: int, port: int, jobs: list, results) -> None:
    """One DDP rank: run every job (train + CAMs) in the same process group."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from wsss_core.training import make_cams, train
    from wsss_core.training.amn import make_amn_cams, train_amn
    from wsss_core.training.distributed import cleanup_distributed

    try:
        out = {}
        for name, cfg, paths in jobs:
            if cfg.model.baseline == "amn":
                trained = train_amn(cfg, paths["seeds"], paths["run"], paths["cam_run"])
                make_amn_cams(cfg, paths["run"], paths["seeds"], paths["store"])
            else:
                trained = train(cfg, paths["run"])
                make_cams(cfg, paths["run"], evaluate=False)
            out[name] = trained
        results.put((rank, "ok", out))
    except BaseException:
        results.put((rank, "crash", traceback.format_exc()))
    finally:
        cleanup_distributed()


def run_two_ranks(jobs: list) -> dict:
    from wsss_core.training.launch import free_port

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_jobs, args=(rank, 2, port, jobs, results)) for rank in range(2)]
    for proc in procs:
        proc.start()
    outcomes = {}
    try:
        while len(outcomes) < 2:
            try:
                rank, kind, detail = results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"a rank died with exit code {dead[0].exitcode}"
                continue
            assert kind == "ok", f"rank {rank} failed:\n{detail}"
            outcomes[rank] = detail
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
    return outcomes[0]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_ddp") / "voc"
    return generate_synthetic_voc(root, seed=2, n_train=6, n_val=2, size=40, num_classes=3, n_aug_extra=2,
                                  show_progress=False)


def trial(voc_root: Path, baseline: str, addons: str):
    overrides = [f"data.root={voc_root}", "data.crop=32", "train.batch_size=2", "train.max_steps=2",
                 "train.device=cpu", f"model.baseline={baseline}", "model.backbone_options={widths: [8, 16, 16]}",
                 "cams.scales=[1.0, 0.5]", f"addons={addons}"]
    if baseline == "amn":
        overrides.append("model.options={aspp_rates: [1, 2], addons_on_network: true, "
                         "training: {lr: 0.001, epochs: 1}}")
    return load_run_config(None, overrides)


@pytest.fixture(scope="module")
def ddp_runs(voc_root, tmp_path_factory):
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("ddp_runs")
    jobs, stores, cfgs = [], {}, {}
    for baseline in BASELINES:
        for combo, addons in ADDON_COMBOS.items():
            name = f"{baseline}-{combo}"
            cfg = trial(voc_root, baseline, addons)
            run_dir = work / name
            if baseline == "amn":  # the CAM stage and seeds (single process), then AMN under DDP
                chain = plan_trial(cfg, work / "chain", sweep="ddp", until="amn_seeds")
                run_trial(chain)
                paths = {"run": str(run_dir), "seeds": chain.stage("amn_seeds").dir,
                         "cam_run": chain.stage("amn_cam_train").dir, "store": str(work / name / "maps")}
                stores[name] = Path(paths["store"])
            else:
                paths = {"run": str(run_dir)}
                stores[name] = run_dir / "cams"
            jobs.append((name, cfg, paths))
            cfgs[name] = cfg
    summaries = run_two_ranks(jobs)
    return summaries, stores, cfgs, work


@pytest.mark.slow
@pytest.mark.parametrize("baseline", BASELINES)
def test_every_addon_combination_trains_under_ddp_and_scores(ddp_runs, voc_root, baseline):
    summaries, stores, cfgs, work = ddp_runs
    labels = np.load(voc_root / "cls_labels.npy", allow_pickle=True).item()
    for combo in ADDON_COMBOS:
        name = f"{baseline}-{combo}"
        summary = summaries[name]
        assert summary["world_size"] == 2 and summary["steps"] == 2, name
        weights, _ = load_model_weights(work / name)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), name
        store = CamStore(stores[name])
        for image_id in store.ids():
            keys, cams = store.read(image_id)
            assert keys.tolist() == np.flatnonzero(labels[image_id]).tolist(), name
        result = evaluate_cams(stores[name], voc_root, "train", thresholds=[0.1, 0.3, 0.5])
        assert result["num_images"] == 6, name
        assert all(row["miou"] is not None and 0.0 < row["miou"] <= 1.0 for row in result["per_threshold"]), name


def test_addon_terms_reach_each_baseline(voc_root):
    """The add-on losses show up in each baseline's training terms (AMN: FSL on its network, IS on its CAM
    stage, whose GAP it replaces)."""
    from wsss_core.baselines.compose import build_model

    torch.manual_seed(0)
    image, label = torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    for baseline in ("cam", "seam"):
        cfg = trial(voc_root, baseline, ADDON_COMBOS["both"])
        _, terms, _ = build_model(cfg.model, cfg.addons, 3)(image, label)
        assert {"cls_is", "fsl"} <= set(terms), baseline
    chain = amn_chain(trial(voc_root, "amn", ADDON_COMBOS["both"]))
    model = build_model(chain.amn.model, chain.amn.addons, 3)
    model.baseline.set_seed_targets(torch.randint(0, 4, (2, 32, 32)))
    assert set(model(image, label)[1]) == {"pcl", "fsl"}
    _, cam_terms, _ = build_model(chain.cam.model, chain.cam.addons, 3)(image, label)
    assert {"cls_is", "fsl"} <= set(cam_terms)
