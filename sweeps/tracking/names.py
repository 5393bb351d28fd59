"""What MLflow is given, in its terms: metric names, param strings, finite values, and which
epochs a run still lacks (deduplication and backfill, a pure function of the stored history
and the steps MLflow holds)."""

from __future__ import annotations

import dataclasses
import math
import time

from mlflow.entities import Metric

from kd_core.metrics import EpochMetrics

# The final model's analyses go under their own prefix: the MLflow UI shows them in a section
# of their own, apart from the per-epoch charts.
ANALYSIS_PREFIX = "analysis/"
# A trial's run names its sweep's run in our own tag, not MLflow's parent tag: the UI folds a
# parent's children under one collapsed row ("101 matching runs", "Load more"), and a sweep's
# trials are what a reader compares. Runs created before carry the parent tag; both are read.
SWEEP_RUN_TAG = "kdsweep.sweep_run"
OLD_PARENT_TAG = "mlflow.parentRunId"
STATE_TAG = "kdsweep.state"  # the trial's ledger.TrialState once it ended
# A trial's own per-epoch metrics; Tune's bookkeeping in each result (pid, timestamp,
# time_this_iter_s, ...) is not logged.
EPOCH_METRICS = {f.name for f in dataclasses.fields(EpochMetrics)} - {"epoch"}

# MLflow 3's UI opens in its GenAI mode in a fresh browser: the GenAI / Model training switch is
# kept in the browser's local storage (default GenAI) and the experiment's kind tag does not
# override it. A link carries the switch's own URL parameter, so it opens on the runs table.
UI_MODE = "workflowType=machine_learning"


def param(v) -> str:
    """A param as a user types it in a filter: tau 4, 20, inf (not 4.0)."""
    if isinstance(v, float):
        return f"{v:g}"
    return "inf" if v == "inf" else str(v)


def finite(metrics: dict) -> list[tuple[str, float]]:
    return [
        (k, float(v))
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def unlogged(epochs: list[dict], logged: set[int]) -> list[Metric]:
    """The metrics of the epochs (EpochMetrics dicts) whose step is not in ``logged``, which
    then holds them: no step is sent twice, and one missing is sent whatever the order."""
    now = int(time.time() * 1000)
    out = []
    for metrics in epochs:
        step = int(metrics["epoch"])
        if step in logged:
            continue
        own = {k: v for k, v in metrics.items() if k in EPOCH_METRICS}
        out += [Metric(k, v, now, step) for k, v in finite(own)]
        logged.add(step)
    return out
