"""The trainer's fault-injection seam: hooks at the moments a run can go wrong.

The default :class:`Faults` does nothing. Tests and experiments subclass it and pass an instance
as ``Trainer(faults=...)`` to see the run's state before a step, to make a loss or its gradient
non-finite, or to stop a process while a checkpoint is being written, without patching the
package's internals.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


class Faults:
    """No faults; override any hook."""

    def before_step(self, ctx) -> None:
        """Called before every training batch's forward pass (skipped ones included)."""

    def loss(self, ctx, loss: Tensor) -> Tensor:
        """The loss the step back-propagates, given the objective's."""
        return loss

    def before_checkpoint(self, ctx, path: Path) -> None:
        """Called before each checkpoint file is written (``best`` before ``last``)."""
