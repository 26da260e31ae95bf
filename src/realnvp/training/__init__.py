"""Training: one loop for every objective.

- :class:`Trainer` (``trainer.py``) owns the loop: set-up, epochs of steps, evaluation,
  checkpoints, the end of the run; :func:`train` runs one.
- :class:`Context` (``context.py``): everything a run holds, shared by the parts below.
- :class:`Objective` (``objectives.py``): what a step minimises and how a model is evaluated;
  :class:`MaximumLikelihood` is the paper's.
- :class:`TrainingData` (``data.py``): the splits and one epoch's reproducible batches.
- ``step.py`` (a gradient step that leaves no trace when it fails), ``checkpoints.py`` (exact
  resume), :class:`EMA` (``ema.py``), :class:`Metrics` (``metrics.py``), :class:`State`
  (``state.py``), ``rundir.py`` (the run directory), :class:`Faults` (``faults.py``: the seam for
  fault injection).
"""

from .context import Context
from .data import TrainingData, epoch_seed, load_split, load_training_data
from .ema import EMA
from .faults import Faults
from .metrics import Metrics
from .objectives import MaximumLikelihood, Objective
from .state import State
from .trainer import Trainer, TrainingError, adam, train

__all__ = ["EMA", "Context", "Faults", "MaximumLikelihood", "Metrics", "Objective", "State",
           "Trainer", "TrainingData", "TrainingError", "adam", "epoch_seed", "load_split",
           "load_training_data", "train"]
