"""One trial process (one DDP rank): ``python -m launchers.worker SPEC.pkl``.

The local launcher starts one per rank with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
set; exit status 0 when the trial finished, 1 when it failed (the error is in the trial record).
"""

from __future__ import annotations

import os
import sys

from wsss_core.errors import WsssError


def set_threads(cpus: int) -> None:
    import torch

    torch.set_num_threads(max(1, cpus))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m launchers.worker TRIAL_SPEC.pkl", file=sys.stderr)
        return 2
    from wsss_core.pipeline import run_trial

    from .submit import load_trial_spec

    trial = load_trial_spec(argv[0])
    set_threads(int(os.environ.get("WSSS_CPUS_PER_TASK", trial.resources.get("cpus_per_task", 1))))
    try:
        run_trial(trial)
    except WsssError as exc:
        print(f"[sweep] trial {trial.trial_id} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
