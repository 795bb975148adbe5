"""The pipeline: the only place a stage exists, is keyed, is cached and is run.

Read in this order (a trial's path, top to bottom):

* ``chains.py``  the stages of each baseline, in order (the method in one screen)
* ``stages/``    one module per stage: its config slice, its inputs, its run function
* ``stage.py``   what a stage is (``StageDef``) and what its run function gets (``StageRun``)
* ``keys.py``    ``stage_keys``: the one function that computes stage keys
* ``trial.py``   ``plan_trial``: a run config → a trial of keyed stages (``TrialSpec``)
* ``runner.py``  ``run_trial``: claim, run, record, resume, on every rank of the trial
* ``layout.py``  the work dir: stage folders, records, locks, trial records, the layout version
* ``integrity.py`` whether a finished stage can be trusted (outputs intact, inputs not recomputed since)
* ``faults.py``  the test-only fault hooks the runner honours

Nothing here imports torch at import time; ``launchers`` (where trials run) and ``analysis`` (reports)
build on this package, never the other way round.
"""

from .chains import CHAINS, chain_for, find_stage
from .runner import run_trial
from .stage import PREVIOUS, StageDef, StageRun
from .trial import StageSpec, TrialSpec, plan_trial

__all__ = ["CHAINS", "PREVIOUS", "StageDef", "StageRun", "StageSpec", "TrialSpec", "chain_for", "find_stage",
           "plan_trial", "run_trial"]
