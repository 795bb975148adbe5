"""Time to plan and submit a 200-trial sweep (5 add-on settings × 40 seeds, 96 thresholds each).

Steps timed: load + validate the sweep file (every trial config checked), plan (stage keys), ``wsss sweep
plan``'s table (reads 800 stage records), claim (200 trial records under their locks), trial specs written,
and, with ``SLURM_CONF`` set, the submission of the 200-task job array through submitit (then cancelled:
nothing is trained). A second plan after the claim shows the cost on a work dir that has records.

    .venv/bin/python bench/submit_200.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/sweep_files.py: the tiny sweeps

from launchers.plan import format_plan, plan_sweep  # noqa: E402
from launchers.spec import load_sweep  # noqa: E402
from launchers.submit import SubmitOptions, claim_trials, write_trial_spec  # noqa: E402
from sweep_files import tiny_sweep, write_sweep  # noqa: E402

ADDONS = {"none": [], "is_b": [{"name": "importance_sampling"}], "fs_b": [{"name": "feature_similarity"}],
          "is_m": [{"name": "importance_sampling", "posterior": "multinomial"}],
          "both_b": [{"name": "importance_sampling"}, {"name": "feature_similarity"}]}


def once(root: Path, index: int, slurm: bool) -> dict[str, float]:
    sweep = tiny_sweep(f"s200_{index}", axes={"addons": ADDONS, "seed": list(range(40)),
                                              "thresholds": {"start": 0.0, "stop": 0.95, "step": 0.01}})
    path = write_sweep(root / f"s200_{index}.yaml", sweep)
    workdir = root / f"work{index}"
    out: dict[str, float] = {}
    tick = time.perf_counter()
    spec = load_sweep(path)
    out["load + validate"] = time.perf_counter() - tick
    tick = time.perf_counter()
    plan = plan_sweep(spec, workdir)
    out["plan (keys)"] = time.perf_counter() - tick
    assert len(plan.trials) == 200
    tick = time.perf_counter()
    format_plan(plan)
    out["plan table"] = time.perf_counter() - tick
    tick = time.perf_counter()
    claimed = claim_trials(plan, SubmitOptions(launcher="slurm" if slurm else "local", tracking=False), None)
    out["claim 200 records"] = time.perf_counter() - tick
    assert len(claimed.ran) == 200
    tick = time.perf_counter()
    paths = [str(write_trial_spec(t)) for t in plan.trials]
    out["write 200 specs"] = time.perf_counter() - tick
    if slurm:
        from launchers.slurm_launcher import SlurmTrial, _executor
        from launchers.spec import Resources

        tick = time.perf_counter()
        executor = _executor(root / f"submitit{index}", spec, Resources(**plan.trials[0].resources))
        executor.update_parameters(array_parallelism=1)
        jobs = executor.map_array(SlurmTrial(), paths)
        out["sbatch 200-task array"] = time.perf_counter() - tick
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)
    tick = time.perf_counter()
    format_plan(plan_sweep(load_sweep(path), workdir))
    out["load + plan again (records exist)"] = time.perf_counter() - tick
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slurm = bool(os.environ.get("SLURM_CONF"))
    root = Path(tempfile.mkdtemp(prefix="wsss-bench-200-"))
    try:
        runs = [once(root, i, slurm) for i in range(args.repeats)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| step (200 trials, 800 stages) | median (s) |")
    print("|---|---|")
    for key in runs[0]:
        print(f"| {key} | {statistics.median(r[key] for r in runs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
