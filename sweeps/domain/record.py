"""The one typed result record of a trial: what the trial stores as its outcome, what MLflow's
final metrics and the Parquet row are built from.

A record is written once per trial (trained or stopped early) through the ledger; `FINAL_METRICS`
lists the summary numbers that MLflow and Parquet carry, so adding a metric here adds it to both.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class TrialState(StrEnum):
    """One trial's state: the one word for it in storage, Parquet, MLflow, status, report."""

    PENDING = "pending"
    CLAIMED = "claimed"
    RUNNING = "running"
    DONE = "done"  # trained to its last epoch; its weights are stored (model.pt)
    STOPPED_EARLY = "stopped_early"  # ASHA stopped it: a result, no weights
    DIVERGED = "diverged"  # a non-finite loss or metric: a result, no weights
    FAILED = "failed"  # its own error, retries spent (failed.json)
    SKIPPED = "skipped"  # its teacher ended not done (a driver's run only)

    @property
    def ended(self) -> bool:
        return self not in (TrialState.PENDING, TrialState.CLAIMED, TrialState.RUNNING)


# The epoch metrics kept as the trial's final values (kd_core.metrics.EpochMetrics names).
EPOCH_FINALS = (
    "test_acc",
    "test_loss",
    "test_ece",
    "train_loss",
    "train_acc",
    "train_acc_clean",
    "logit_distance",
    "test_logit_distance",
    "test_agreement",
    "val_loss",
    "val_acc",
)


@dataclass
class TrialResult:
    trial: dict  # the Trial it belongs to (Trial.to_dict)
    # its ledger.TrialState once ended: "done" (trained to its last epoch), "stopped_early"
    # (ASHA) or "diverged" (a non-finite loss or metric: no model is kept, and a plain rerun
    # does not train it again)
    state: str = TrialState.DONE
    reason: str | None = None  # why it did not end "done"
    epochs: int = 0  # epochs trained
    test_acc: float | None = None
    test_loss: float | None = None
    test_ece: float | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    train_acc_clean: float | None = None
    logit_distance: float | None = None
    test_logit_distance: float | None = None
    test_agreement: float | None = None
    val_loss: float | None = None  # on the validation split, where the spec holds one out
    val_acc: float | None = None
    realised_noise_rate: float | None = None
    labels_hash: str | None = None
    wall_time: float = 0.0  # seconds of training and evaluation, summed over epochs
    started_at: float | None = None  # first start of the trial (unix time)
    finished_at: float = field(default_factory=time.time)
    logit_source: str | None = None  # None (labels), "shared", "private" or "online"
    cluster: str | None = None  # the cluster (spec `cluster`) that trained it
    sweep: str | None = None  # and the sweep (spec `name`): lineage, never inferred from MLflow
    starts: int = 1
    errors: int = 0
    preemptions: int = 0
    resumed_from: list = field(default_factory=list)
    # test accuracy per epoch (None where an epoch was not evaluated): the Parquet column and
    # the report's convergence flag, kept beside the record's summary (history below is not);
    # stored as text (curve_text: a number per epoch costs a reader more than the rest)
    test_acc_curve: list | None = None
    # One EpochMetrics dict per epoch. Stored apart from the record (the ledger's history.json,
    # read where it is used: MLflow's epochs): None in a record read without it (a summary:
    # Ledger.summary, what a driver's snapshot and `kdsweep status` hold).
    history: list | None = field(default_factory=list)
    # The paper's analyses of the final model (kd_core.analysis.SCALARS), eval mode
    analysis: dict = field(default_factory=dict)
    # The model file published with it (Ledger.publish): {"size": bytes, "sha256": its seal's
    # digest (kd_core.seal.sealed_digest)}; None without a model, or stored before. A node
    # proves the stored model by the listing's size against it (reconcile), and in full only
    # where its bytes are used (a student loading its teacher: resume.trained_model).
    model_file: dict | None = None

    @classmethod
    def from_history(cls, trial: dict, history: list[dict], state: str = TrialState.DONE, **extra):
        """The record of a trial whose per-epoch metrics are ``history``."""
        last = history[-1] if history else {}
        return cls(
            trial=trial,
            state=state,
            epochs=int(last.get("epoch", 0)),
            **{k: last.get(k) for k in EPOCH_FINALS},
            wall_time=sum(h.get("epoch_time", 0.0) for h in history),
            test_acc_curve=[h.get("test_acc") for h in history],
            history=list(history),
            **extra,
        )

    def summary(self) -> TrialResult:
        """The record without its history (its scalars and test accuracy curve): what the
        driver and `kdsweep status` hold per trial, whatever the history's length."""
        if self.history is None:
            return self
        return dataclasses.replace(self, history=None)

    def trained_elsewhere(self, cluster: str, sweep: str) -> bool | None:
        """Whether another cluster or sweep trained it; None for a record from before records
        named their sweep."""
        if self.sweep is None:
            return None
        return (self.cluster, self.sweep) != (cluster, sweep)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialResult:
        """Read a stored record; a TypeError/KeyError means it is not one. Fields a record no
        longer has (best_test_acc: it chose an epoch on the test set) are ignored; fields
        under an earlier name (RENAMED) are read under their own."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {**{new: d[old] for old, new in renamed_in(d).items()}, **d}
        record = cls(**{k: v for k, v in d.items() if k in names})
        if isinstance(record.test_acc_curve, str):
            record.test_acc_curve = curve_values(record.test_acc_curve)
        if "history" not in d:  # stored apart (the ledger's history.json)
            record.history = None
        elif record.test_acc_curve is None and isinstance(record.history, list):
            # a record from before the curve was stored beside the history
            record.test_acc_curve = [h.get("test_acc") for h in record.history]
        return record

    @staticmethod
    def stored_state(d: dict) -> TrialState:
        """The state a stored record holds, without building the record (its curve parsed,
        its fields copied): what `kdsweep status` needs of it. TypeError where ``d`` is not a
        record, as for from_dict (and where its state is not a TrialState)."""
        d = {**{new: d[old] for old, new in renamed_in(d).items()}, **d}
        if "trial" not in d:
            raise TypeError("a record names its trial")
        try:
            return TrialState(d.get("state", TrialState.DONE))
        except ValueError:
            raise TypeError(f"no state {d.get('state')!r}") from None


def curve_text(values) -> str:
    """A curve as a stored record holds it: each epoch's value (repr: read back exactly),
    comma-separated, empty where it is None. One string parses in microseconds where 200 JSON
    numbers take a millisecond to read and to prove (the seal's canonical form): the record
    every driver and `kdsweep status` read per trial."""
    return ",".join("" if v is None else repr(float(v)) for v in values)


def curve_values(text: str) -> list[float | None]:
    """The values of ``curve_text``."""
    return [float(v) if v else None for v in text.split(",")] if text else []


# A record's field (and Parquet column) under its earlier name -> its name now; both still read.
RENAMED = {
    "status": "state",  # before 2026-12-05: the state's one word is state (TrialState)
    "teacher_path": "logit_source",  # before 2026-12-05: a mode, not a path (bank.logit_source)
}


def renamed_in(names: Iterable[str]) -> dict[str, str]:
    """The earlier names among ``names`` (a record's keys, a results file's columns) -> their
    names now, where the name now is not there as well."""
    have = set(names)
    return {old: new for old, new in RENAMED.items() if old in have and new not in have}


# The summary numbers Parquet stores as columns (with the trial's identity and the analyses).
FINAL_METRICS = (
    "epochs",
    *EPOCH_FINALS,
    "realised_noise_rate",
    "wall_time",
    "preemptions",
    "errors",
)
