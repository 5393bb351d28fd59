"""The driver's record keeper: what happens to each trial goes to the run's ledger snapshot,
MLflow (tracking/tracker.py) and the progress display (progress.py); the outcomes only the
driver sees (ASHA stopped a trial, Tune gave up on one) go to storage, under the driver's lease.

The scheduler and the Tune callback call these hooks; each hook is one event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from kd_core.metrics import EpochMetrics

from ..domain.plan import Plan, Trial
from ..domain.record import TrialResult
from ..store.ledger import TrialState
from ..store.snapshot import Snapshot
from ..tracking.tracker import Tracker
from .progress import Progress

EPOCH_FIELDS = {f.name for f in dataclasses.fields(EpochMetrics)}


class SweepEvents:
    """Args:
    plan: the sweep's trials (sampled ones are added as they come).
    snapshot: the driver's view of trial states, updated here.
    tracker: MLflow.
    progress: the console.
    check_lease: raises once this driver no longer holds the sweep's lease
        (lease.DriverLease.check).
    """

    def __init__(self, plan: Plan, snapshot: Snapshot, tracker: Tracker, progress: Progress,
                 check_lease: Callable[[], int | None] = lambda: None):
        self.plan, self.snapshot, self.ledger = plan, snapshot, snapshot.ledger
        self.tracker, self.progress, self.check_lease = tracker, progress, check_lease

    def added(self, trial: Trial) -> None:
        """A trial new to the sweep (sampled by optuna, or below a sampled one)."""
        if self.plan.add(trial):
            self.ledger.save_added_trial(self.plan.spec, trial.to_dict(), self.check_lease())
        self.progress.add(trial)

    def reused(self, trial: Trial, record: TrialResult) -> None:
        """Ended before this run (trained by this sweep or another): recorded, not trained."""
        self.tracker.ensure_run(trial)
        self.tracker.finish(trial.key, record, reused=True)
        self.progress.set(trial.key, TrialState(record.state))

    def started(self, trial: Trial) -> None:
        self.tracker.ensure_run(trial)  # the run starts with the trial, not when queued
        self.progress.set(trial.key, TrialState.RUNNING)

    def epoch(self, key: str, metrics: dict) -> None:
        self.tracker.log_epoch(key, metrics)

    def warned(self, key: str, messages: list[str]) -> None:
        """Warnings a trial's worker raised about storage: on the driver's output and in the
        trial's MLflow run (warnings.txt)."""
        for message in messages:
            self.progress.warn(key, message)
        self.tracker.warn(key, messages)

    def corrupt(self, files: Iterable[tuple[str, str]]) -> None:
        """Files of other trials (a teacher's model or bank) that a worker found corrupt: moved
        aside under the lease (the worker only reads them; the next run derives them again)."""
        for rel, why in files:
            self.check_lease()
            self.ledger.move_aside(rel, why)

    def ended(self, trial: Trial, outcome: str | None, error: str | None, last: dict,
              early_stopping: bool, outputs: dict | None = None) -> None:
        """A trial's job returned, its ``outcome`` as its worker's last report said: a state
        whose result is in storage (read here: its one read in this run), ``failed`` for good
        (with ``error``), or none: stopped by ASHA before its last epoch, or it ended without
        a word (its failure, if it stored one, is read then). ``outputs``: the artifacts its
        worker made for its run (WorkerMessage.outputs; None: MLflow's lane reads them)."""
        spec = self.plan.spec
        if outcome == TrialState.FAILED:
            return self._failed(trial, error or "failed")
        if outcome is not None:
            # its one read in this run: its summary (the tracker's lane reads its history)
            record = self.ledger.summary(trial.key)
            if record is None:
                return self.failed(trial, self._unpublished(trial))
        elif (failure := self.ledger.failure(trial.key)) is not None:  # died saying nothing
            return self._failed(trial, failure["error"])
        elif early_stopping and last.get("epoch", 0) < spec.train.epochs:
            # Stopped by ASHA: its last epoch's metrics are its result; no model, so no
            # students (what else Tune put in the report is not the trial's).
            epoch = {k: v for k, v in last.items() if k in EPOCH_FIELDS}
            record = TrialResult.from_history(trial.to_dict(), [epoch],
                                              state=TrialState.STOPPED_EARLY,
                                              cluster=spec.cluster, sweep=spec.name)
            self.check_lease()
            self.ledger.publish(trial.key, None, record)
            outputs = {}  # made here: no analysis, no curve to log (nor to look for)
        else:
            return self.failed(trial, self._unpublished(trial))
        self.snapshot.set(trial.key, TrialState(record.state), record)
        self.tracker.finish(trial.key, record,
                            reused=bool(record.trained_elsewhere(spec.cluster, spec.name)),
                            outputs=outputs)
        self.progress.set(trial.key, TrialState(record.state))

    def _unpublished(self, trial: Trial) -> str:
        return (f"trial {trial.key} ended without publishing its result to "
                f"{self.ledger.storage.uri}; on a cluster, storage must be shared by every node "
                "(NFS or s3://)")

    def failed(self, trial: Trial, error: str) -> None:
        """Tune gave up on the trial (retries spent), or it ended without a result."""
        if self.ledger.failure(trial.key) is None:
            self.check_lease()
            self.ledger.mark_failed(trial.key, error)
        self._failed(trial, error)

    def _failed(self, trial: Trial, error: str) -> None:
        self._end(trial, TrialState.FAILED, error)

    def skipped(self, trial: Trial, reason: str) -> None:
        self._end(trial, TrialState.SKIPPED, reason)

    def _end(self, trial: Trial, state: TrialState, why: str) -> None:
        self.snapshot.set(trial.key, state)
        self.tracker.ensure_run(trial)
        self.tracker.fail(trial.key, why, state)
        self.progress.set(trial.key, state)

    def bank_built(self, teacher: Trial, seconds: float | None, error: str | None = None) -> None:
        self.progress.bank(teacher, seconds, error)
