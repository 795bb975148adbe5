"""Sweeps and launchers: one sweep file fans baseline × add-on setting × seed (× any run config key) out to
local processes, a Ray cluster or Slurm, with DDP trials, content-addressed cached stages, dedupe and resume.

* :mod:`launchers.spec`    ``load_sweep(path)`` → :class:`SweepSpec` (validated before anything runs)
* :mod:`launchers.plan`    ``plan_sweep(spec, workdir)`` → trials × keyed stages; ``format_plan``
* :mod:`launchers.stages`  the stage chain and ``run_trial(trial)``: the one entry point of every launcher
* :mod:`launchers.state`   stage and trial records, locks, owner liveness
* :mod:`launchers.submit`  ``run_sweep(spec, workdir, SubmitOptions(...))``: claim, launch, wait
* :mod:`launchers.local`, :mod:`launchers.ray_launcher`, :mod:`launchers.slurm_launcher`: the launchers
* ``wsss sweep plan|run|status FILE`` (:mod:`launchers.cli`)
"""
