"""One run's epoch loop, shared by ``train`` here, `kdsweep train` and a sweep's trial
(sweeps/ray/trial.py): the checkpoint cadence, divergence detection and the moment the outcome is
published, in one place.

The order within an epoch is what makes a run resumable and its reports trustworthy: the
epoch's state goes to the checkpoints first (saved every ``every`` epochs and after the last,
remembered between, so an exit can still write it), then, on the last epoch or a divergence,
the outcome is published, and only then does the consumer see the epoch: it never reports an
epoch it could lose, nor a final one whose outcome is not in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ImageData
from .metrics import EpochMetrics
from .models import Classifier
from .train import Trainer


class Checkpoints(Protocol):
    def save(self, state: dict, background: bool = False) -> None:
        """Keep ``state``; ``background``: it may finish while the next epoch trains."""

    def remember(self, state: dict) -> None:
        """The state of an epoch between saves (an exit handler may still write it)."""


@dataclass(frozen=True)
class Outcome:
    state: str  # "done" (trained to its last epoch) or "diverged": the trial states it ends in
    reason: str | None = None


DONE = Outcome("done")


class CheckpointFile:
    """Checkpoints in one local file, written atomically (a run on this machine)."""

    def __init__(self, path: str | Path | None):
        self.path = path

    def save(self, state: dict, background: bool = False) -> None:
        if self.path is not None:
            save_checkpoint(self.path, state)

    def remember(self, state: dict) -> None:
        pass


def diverged(metrics: dict) -> str | None:
    """Why an epoch's metrics show divergence (a non-finite loss or metric), or None."""
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    return f"non-finite {', '.join(bad)}" if bad else None


def fit(
    trainer: Trainer,
    checkpoints: Checkpoints,
    every: int = 1,
    publish: Callable[[Outcome], dict] = lambda outcome: {},
    after_epoch: Callable[[int], None] = lambda epoch: None,
) -> Iterator[tuple[EpochMetrics, dict]]:
    """Train ``trainer``'s remaining epochs, yielding each one's metrics with what publishing
    returned (empty before the last epoch). A diverged epoch is published as such and ends the
    run: resume is exact, so training on would only diverge again. ``after_epoch``: called
    once the epoch's state is with the checkpoints (a test's fault point)."""
    for m in trainer.epochs():
        last = trainer.epoch == trainer.config.epochs
        if last or trainer.epoch % every == 0:
            checkpoints.save(trainer.state_dict(), background=not last)
        else:
            checkpoints.remember(trainer.state_dict())
        after_epoch(trainer.epoch)
        if reason := diverged(m.as_dict()):
            yield m, publish(Outcome("diverged", f"epoch {trainer.epoch}: {reason}"))
            return
        yield m, publish(DONE) if last else {}


def train(
    model: Classifier,
    data: ImageData,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 1,
) -> Iterator[EpochMetrics]:
    """Train ``model`` (resuming from ``checkpoint_path`` when it exists), yielding epoch metrics.

    The checkpoint is written atomically every ``checkpoint_every`` epochs and after the last,
    *before* the epoch's metrics are yielded, so a consumer never reports an epoch it could lose.
    """
    trainer = Trainer(model, data, config, teacher)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        trainer.load_state_dict(load_checkpoint(checkpoint_path))
    for metrics, _ in fit(trainer, CheckpointFile(checkpoint_path), checkpoint_every):
        yield metrics
