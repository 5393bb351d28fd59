"""Stored trials without training: each planned trial's result and model written through the
ledger's own writer, as a finished trial's worker writes them. For tests and benchmarks of what
a driver does with many stored trials (nothing here loads the models: they are sealed, empty)."""

from __future__ import annotations

import random

from kd_core.checkpoint import checkpoint_bytes
from sweeps.domain.plan import Trial, build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import SweepSpec
from sweeps.store.ledger import Ledger
from sweeps.store.storage import Storage


def fabricate(spec: SweepSpec, seed: int = 0) -> list[Trial]:
    """Store every trial of ``spec``'s plan as done, with ``spec.train.epochs`` epochs of
    plausible metrics; returns the trials."""
    rng = random.Random(seed)
    ledger = Ledger(Storage(spec.storage))
    model = checkpoint_bytes({"model": {}})
    trials = build_plan(spec).trials
    for t in trials:
        acc = rng.uniform(0.5, 0.9)
        history = [
            {"epoch": e, "train_loss": 2.0 / e, "train_acc": acc * e / spec.train.epochs,
             "test_acc": acc * e / spec.train.epochs, "test_loss": 1.5 / e,
             "epoch_time": 0.1}
            for e in range(1, spec.train.epochs + 1)
        ]
        record = TrialResult.from_history(t.to_dict(), history, cluster=spec.cluster,
                                          sweep=spec.name, resumed_from=[0])
        ledger.publish(t.key, model, record)
    return trials
