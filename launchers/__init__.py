"""Sweeps and where they run: one sweep file fans baseline × add-on setting × seed (× any run config key) out
to local processes, a Ray cluster or Slurm, with DDP trials, dedupe and resume. What a trial *is* (its
stages, their keys, their folders, how it runs) is :mod:`wsss_core.pipeline`; this package decides which
trials a sweep has and where they run.

* :mod:`launchers.spec`     ``load_sweep(path)`` → :class:`SweepSpec` (validated before anything runs)
* :mod:`launchers.plan`     ``plan_sweep(spec, workdir)`` → one ``plan_trial`` per combination; ``format_plan``
* :mod:`launchers.submit`   ``run_sweep(spec, workdir, SubmitOptions(...))``: plan, claim, launch, wait
* :mod:`launchers.records`  the sweep's trial records: claim (skip, re-attach, rerun), owner liveness, status
* :mod:`launchers.backend`  the interface of a backend and the registry of the three:
  :mod:`launchers.local` (+ :mod:`launchers.worker`, one rank), :mod:`launchers.ray_launcher`,
  :mod:`launchers.slurm_launcher`; each rank calls :func:`wsss_core.pipeline.run_trial`
* ``wsss sweep plan|run|status FILE`` (:mod:`launchers.cli`)
"""
