"""Local launcher: each trial is a group of ``world_size`` processes on this machine (DDP over gloo on CPU,
one process per GPU otherwise), as many trials at once as cores × oversubscribe and memory allow.

Every rank is ``python -m launchers.worker SPEC`` with the standard torch.distributed variables; its output
goes to ``<workdir>/sweeps/<sweep>/logs/<trial>.rank<r>.log``.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_core.pipeline import TrialSpec, layout

from .plan import SweepPlan
from .spec import Resources, SweepSpec, check_local_resources, machine_cores, machine_memory_gb
from .submit import SubmitOptions, write_trial_spec

KILL_GRACE_S = 10.0  # after one rank failed, how long the others get to notice before they are killed


def check_resources(spec: SweepSpec, plan: SweepPlan, opts: SubmitOptions | None = None) -> None:
    check_local_resources(spec, [Resources(**t.resources) for t in plan.trials])


def _free_port() -> int:
    from wsss_core.training.launch import free_port

    return free_port()


@dataclass
class _Group:
    trial: TrialSpec
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    failed_at: float | None = None
    gpus: list[int] = field(default_factory=list)
    slot: int | None = None  # the fd of the sweep slot it holds (see Slots), inherited by its ranks

    def codes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def done(self) -> bool:
        return all(c is not None for c in self.codes())

    def terminate(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


class Slots:
    """At most ``limit`` trials of a sweep at once across every submitter of it: a trial holds one of the
    sweep's ``slots/slot-K.lock`` files (flock) from start to end. The lock's file descriptor is inherited by
    the trial's ranks, so a slot stays taken while they run even if their submitter was killed."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit

    def take(self) -> int | None:
        """The fd of a free slot (now held), or None when all are taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for k in range(self.limit):
            fd = os.open(self.folder / f"slot-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)
            return fd
        return None

    @staticmethod
    def give(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # the lock goes when the ranks' inherited copies are closed too (they have exited)


def _start(trial: TrialSpec, gpus: list[int], slot: int | None = None) -> _Group:
    """Start the trial's ranks; ``gpus``: the devices it was given (one per rank), empty on CPU; ``slot``:
    the sweep slot's fd the ranks inherit (:class:`Slots`)."""
    res = Resources(**trial.resources)
    spec_path = write_trial_spec(trial)
    log_dir = layout.sweep_dir(Path(trial.workdir), trial.sweep) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    group = _Group(trial, gpus=list(gpus), slot=slot)
    with layout.update_trial(trial.record_path) as record:
        record["log"] = str(log_dir / f"{trial.trial_id}.rank0.log")
    for rank in range(res.world_size):
        env = dict(os.environ, OMP_NUM_THREADS=str(res.cpus_per_task), WSSS_CPUS_PER_TASK=str(res.cpus_per_task),
                   PYTHONUNBUFFERED="1")
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))  # rank r takes cuda:r of these
        if res.world_size > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(res.world_size),
                       LOCAL_WORLD_SIZE=str(res.world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        log = log_dir / f"{trial.trial_id}.rank{rank}.log"
        with open(log, "ab") as handle:
            group.procs.append(subprocess.Popen([sys.executable, "-m", "launchers.worker", str(spec_path)],
                                                env=env, stdout=handle, stderr=subprocess.STDOUT,
                                                pass_fds=() if slot is None else (slot,)))
        group.logs.append(log)
    return group


def _visible_gpus() -> list[int]:
    """The GPU indices this launcher may hand out (respecting an outer CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count()
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer:
        ids = [int(x) for x in outer.split(",") if x.strip().isdigit()]
        return ids[:count] if count else ids
    return list(range(count))


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])


def launch(spec: SweepSpec, plan: SweepPlan, trials: list[TrialSpec], opts: SubmitOptions,
           stream: Any) -> dict[str, str | None]:
    """Run ``trials`` to completion; returns trial id -> error for trials that died unrecorded."""
    settings = spec.launcher.local
    cores = machine_cores() * settings.oversubscribe
    memory = machine_memory_gb() * 0.9
    cap = opts.max_concurrent or settings.max_concurrent
    limit = cap or len(trials)
    slots = Slots(layout.sweep_dir(plan.workdir, spec.name) / "slots", cap) if cap else None
    free_gpus = _visible_gpus() if any(t.resources["gpus_per_node"] for t in trials) else []
    queue = list(trials)
    running: list[_Group] = []
    errors: dict[str, str | None] = {}
    try:
        while queue or running:
            used_cores = sum(Resources(**g.trial.resources).world_size * g.trial.resources["cpus_per_task"]
                             for g in running)
            used_mem = sum(g.trial.resources["mem_gb"] for g in running)
            while queue and len(running) < limit:
                res = Resources(**queue[0].resources)
                need = res.world_size * res.cpus_per_task
                if running and (used_cores + need > cores or used_mem + res.mem_gb > memory):
                    break
                if res.gpus_per_node > len(free_gpus):
                    break  # wait for a running trial to give its GPUs back
                slot = slots.take() if slots else None
                if slots and slot is None:
                    break  # another submitter of this sweep (or its orphaned ranks) holds every slot
                given, free_gpus = free_gpus[:res.gpus_per_node], free_gpus[res.gpus_per_node:]
                trial = queue.pop(0)
                running.append(_start(trial, given, slot))
                used_cores += need
                used_mem += res.mem_gb
                print(f"[local] started {trial.trial_id} ({res.world_size} process(es))", file=stream, flush=True)
            time.sleep(opts.poll_s / 4)
            for group in list(running):
                codes = group.codes()
                if any(c not in (None, 0) for c in codes) and group.failed_at is None:
                    group.failed_at = time.time()
                if group.failed_at is not None and not group.done() and time.time() - group.failed_at > KILL_GRACE_S:
                    group.terminate()  # a rank blocked in a collective after its peer failed
                if group.done():
                    running.remove(group)
                    Slots.give(group.slot)
                    free_gpus = sorted(free_gpus + group.gpus)
                    codes = group.codes()
                    tid = group.trial.trial_id
                    if any(codes):
                        bad = next(i for i, c in enumerate(codes) if c)
                        errors[tid] = (f"rank {bad} exited with status {codes[bad]}: "
                                       f"{_log_tail(group.logs[bad])} (log {group.logs[bad]})")
                        print(f"[local] {tid} failed (exit {codes[bad]}); log {group.logs[bad]}", file=stream,
                              flush=True)
                    else:
                        print(f"[local] {tid} finished", file=stream, flush=True)
    except BaseException:
        for group in running:
            group.terminate()
        for group in running:
            for proc in group.procs:
                try:
                    proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
            Slots.give(group.slot)
        raise
    return errors


def release() -> None:
    """Nothing to let go of (the backend interface, launchers.backend)."""
