"""Launcher overhead per trial (local, Ray, Slurm) against the trial's own compute, on the synthetic benchmark.

For each launcher and each trial size (1 process, 2-process DDP) a one-trial sweep runs in a fresh work dir;
overhead = wall time of ``run_sweep`` − the trial's compute (sum of its stage durations, from the stage
records). Ray's cluster start (or connect) is timed separately. Slurm runs when ``SLURM_CONF`` points at a
cluster (``bash scripts/slurm_cluster.sh start``); Ray starts a local cluster unless ``--ray-address``.

    .venv/bin/python bench/launcher_overhead.py [--launchers local,ray,slurm] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/sweep_files.py: the tiny sweeps

from launchers.spec import load_sweep  # noqa: E402
from launchers.submit import SubmitOptions, run_sweep  # noqa: E402
from sweep_files import tiny_sweep, write_sweep  # noqa: E402
from wsss_core.pipeline import layout  # noqa: E402


def one(launcher: str, procs: int, root: Path, index: int, address: str | None) -> dict:
    sweep = tiny_sweep(f"bench_{launcher}_{procs}_{index}",
                       launcher={"ray": {"cpus_per_worker": 0.9, "trial_cpus": 0.2, "max_failures": 0}},
                       resources={"procs_per_node": procs, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5})
    sweep["base"]["train"]["max_steps"] = 20
    sweep["synthetic_data"]["seed"] = index  # a fresh data stage too: the whole trial runs every time
    sweep["axes"]["thresholds"] = {"start": 0.0, "stop": 0.95, "step": 0.01}
    workdir = root / f"{launcher}-{procs}-{index}"
    spec = load_sweep(write_sweep(root / f"{launcher}-{procs}-{index}.yaml", sweep))
    start = time.perf_counter()
    outcome = run_sweep(spec, workdir, SubmitOptions(launcher=launcher, tracking=False, address=address),
                        stream=open(os.devnull, "w"))
    wall = time.perf_counter() - start
    (record,) = outcome.records
    if record.get("state") != "finished":
        raise SystemExit(f"{launcher} trial failed: {record.get('error')}")
    durations = {n: layout.read_stage(Path(s["dir"]))["duration_s"] for n, s in record["stages"].items()}
    compute = sum(durations.values())
    return {"wall": wall, "compute": compute, "overhead": wall - compute, "train": durations["train"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launchers", default="local,ray,slurm")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    os.environ.setdefault("WSSS_PROGRESS", "0")
    root = Path(tempfile.mkdtemp(prefix="wsss-bench-launch-"))
    rows = []
    try:
        for launcher in args.launchers.split(","):
            if launcher == "slurm" and not os.environ.get("SLURM_CONF"):
                print("slurm: SLURM_CONF not set, skipped (bash scripts/slurm_cluster.sh start)", file=sys.stderr)
                continue
            if launcher == "ray":
                import ray

                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                tick = time.perf_counter()
                if args.ray_address:
                    ray.init(address=args.ray_address, log_to_driver=False)
                else:
                    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
                print(f"ray: cluster {'connect' if args.ray_address else 'start'} "
                      f"{time.perf_counter() - tick:.1f} s", flush=True)
            for procs in (1, 2):
                runs = [one(launcher, procs, root, i, args.ray_address) for i in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                rows.append((launcher, procs, med))
                print(f"{launcher:<6} {procs} proc  wall {med['wall']:6.1f} s  compute {med['compute']:6.1f} s "
                      f"(train {med['train']:5.1f} s)  overhead {med['overhead']:6.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| launcher | processes | wall (s) | trial compute (s) | overhead per trial (s) |")
    print("|---|---|---|---|---|")
    for launcher, procs, med in rows:
        print(f"| {launcher} | {procs} | {med['wall']:.1f} | {med['compute']:.1f} | {med['overhead']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
