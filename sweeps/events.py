"""The driver's record keeper: what happens to each trial goes to MLflow (tracking.py), the
progress display (progress.py) and, for outcomes only the driver sees, storage (store.py).

The engine's searcher and Tune callback call these hooks; each hook is one event.
"""

from __future__ import annotations

from .plan import Plan, Trial
from .progress import Progress
from .record import TrialResult
from .store import TrialStore
from .tracking import Tracker


class SweepEvents:
    def __init__(self, plan: Plan, store: TrialStore, tracker: Tracker, progress: Progress):
        self.plan, self.store, self.tracker, self.progress = plan, store, tracker, progress

    def added(self, trial: Trial) -> None:
        """A trial new to the sweep (sampled by optuna, or below a sampled one)."""
        if self.plan.add(trial):
            self.store.save_trial_list(self.plan.spec, [t.to_dict() for t in self.plan.trials])
        self.progress.add(trial)

    def reused(self, trial: Trial, record: TrialResult | None = None) -> None:
        """Trained before (by this sweep or another): recorded, not trained. ``record``: its
        stored result, when the caller has read it already."""
        self.tracker.ensure_run(trial)
        record = record or self.store.result(trial.key)
        self.tracker.finish(trial.key, record, reused=True)
        self.progress.set(trial.key, record.state)

    def started(self, trial: Trial) -> None:
        self.tracker.ensure_run(trial)  # the run starts with the trial, not when queued
        self.progress.set(trial.key, "running")

    def epoch(self, key: str, metrics: dict) -> None:
        self.tracker.log_epoch(key, metrics)

    def warned(self, key: str, messages: list[str]) -> None:
        """Warnings a trial's worker raised about storage: on the driver's output and in the
        trial's MLflow run (warnings.txt)."""
        for message in messages:
            self.progress.warn(key, message)
        self.tracker.warn(key, messages)

    def ended(self, trial: Trial, last: dict, early_stopping: bool) -> None:
        """A trial's function returned: it published a result, failed for good, or (ASHA)
        was stopped before its last epoch."""
        record = self.store.result(trial.key)
        if record is None:
            failure = self.store.failure(trial.key)
            if failure is not None:
                return self._failed(trial, failure["error"])
            if not (early_stopping and last.get("epoch", 0) < self.plan.spec.train.epochs):
                msg = (
                    f"trial {trial.key} ended without publishing its result to "
                    f"{self.store.storage.uri}; on a cluster, storage must be shared by every "
                    "node (NFS or s3://)"
                )
                return self.failed(trial, msg)
            # Stopped by ASHA: its last metrics are its result; no model, so no students.
            spec = self.plan.spec
            record = TrialResult.from_history(trial.to_dict(), [last], status="stopped_early",
                                              cluster=spec.cluster, sweep=spec.name)
            self.store.publish(trial.key, None, record)
        self.tracker.finish(trial.key, record)
        self.progress.set(trial.key, record.state)

    def failed(self, trial: Trial, error: str) -> None:
        """Tune gave up on the trial (retries spent), or it ended without a result."""
        if self.store.failure(trial.key) is None:
            self.store.mark_failed(trial.key, error)
        self._failed(trial, error)

    def _failed(self, trial: Trial, error: str) -> None:
        self.tracker.ensure_run(trial)
        self.tracker.fail(trial.key, error)
        self.progress.set(trial.key, "failed")

    def skipped(self, trial: Trial, reason: str) -> None:
        self.tracker.ensure_run(trial)
        self.tracker.fail(trial.key, reason, status="KILLED")
        self.progress.set(trial.key, "failed")

    def bank_built(self, teacher: Trial, seconds: float | None, error: str | None = None) -> None:
        self.progress.bank(teacher, seconds, error)
