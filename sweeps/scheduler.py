"""The scheduler: which job runs next. Pure: no Ray, MLflow, optuna or storage I/O, so it is
stepped by hand in tests (tests/test_scheduler.py) and a Tune Searcher adapts it (engine.py).

A job trains one trial, or builds the teacher-logit bank of a trained teacher. A trial is ready
when its teacher's model is in storage and the teacher's bank is built or not wanted; among
ready jobs the one with the most work still below it goes first (the critical path,
``priority``; a bank before anything of equal rank), ties in plan order. A trial whose teacher
ended without a model (failed, diverged, stopped early, or itself skipped) is skipped. A
student that ends with a model releases its own students down its chain (optuna's samples are
not planned ahead). Samplers (sampling.py) offer one more job while their budget lasts.

What it knows comes from the driver's ledger snapshot at the start (which trials have models,
which banks are stored, the search metric of stored results) and from each job's outcome as the
run goes; it never asks storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .plan import Trial, children
from .spec import SweepSpec


@dataclass(frozen=True)
class Job:
    """What one Tune trial does: "train" ``trial``, or build the "bank" of teacher ``trial``.
    Its Tune config is this record and nothing more (the spec travels once, by reference)."""

    kind: str
    trial: Trial

    def config(self) -> dict:
        return {"job": self.kind, "trial": self.trial.to_dict()}

    @classmethod
    def from_config(cls, config: dict) -> Job:
        return cls(config["job"], Trial.from_dict(config["trial"]))


class Listener(Protocol):
    """The driver's record keeper (events.SweepEvents), told what the scheduler decides."""

    def added(self, trial: Trial) -> None: ...  # a trial new to the sweep
    def skipped(self, trial: Trial, reason: str) -> None: ...


class Source(Protocol):
    """More trials below one teacher, one at a time (sampling.Sampler)."""

    teacher: Trial
    model: str

    def left(self) -> int: ...
    def ask(self) -> Trial: ...
    def tell(self, key: str, value: float | None) -> None: ...


class Scheduler:
    """Args:
    spec: the sweep.
    trials: every trial the sweep knows (its plan).
    todo: those to train, in plan order.
    models: keys whose model is in storage (done trials).
    banks: teacher keys whose bank is in storage.
    values: the search metric of trials that ended before this run (sampled ones are told it).
    priority: lineage -> remaining work (schedule.remaining_work).
    wants_bank: a teacher's number of distilling students -> whether to build its bank first.
    listener: told of added and skipped trials.
    sources: optuna's samplers, one per (teacher, architecture).
    """

    def __init__(
        self,
        spec: SweepSpec,
        trials: Iterable[Trial],
        todo: Iterable[Trial],
        models: Iterable[str],
        banks: Iterable[str],
        values: Mapping[str, float | None],
        priority: Callable[[tuple[str, ...]], float],
        wants_bank: Callable[[int], bool],
        listener: Listener,
        sources: Iterable[Source] = (),
    ):
        self.spec, self.priority, self.wants_bank = spec, priority, wants_bank
        self.listener, self.sources = listener, list(sources)
        self.models, self.stored_banks = set(models), set(banks)
        self.values = dict(values)
        self.waiting: dict[str, Trial] = {}  # not yet handed out, in plan order
        self.order: dict[str, int] = {}
        # every trial of the sweep so far, by key
        self.trials = {t.key: t for t in [*trials, *(s.teacher for s in self.sources)]}
        self.running: dict[str, Job] = {}  # job id -> job
        self.banks: dict[str, str] = {}  # teacher key -> "build" | "building" | "go"
        for t in todo:
            self._wait(t)
        self._settle()

    # ---- the adapter's interface -----------------------------------------------------------
    def next_job(self) -> Job | None:
        """The ready job with the most work after it (None: nothing is ready now)."""
        while (job := self._best()) is not None:
            if (job := job()) is not None:  # a sample already trained or in flight: none
                return job
        return None

    def start(self, job_id: str, job: Job) -> None:
        """``job`` (from next_job) was handed out as ``job_id``."""
        self.running[job_id] = job
        if job.kind == "bank":
            self.banks[job.trial.key] = "building"
        else:
            del self.waiting[job.trial.key]

    def complete(self, job_id: str, model: bool, value: float | None = None) -> None:
        """Job ``job_id`` ended; ``model``: it left a model in storage; ``value``: the search
        metric it ended with (None: failed)."""
        job = self.running.pop(job_id, None)
        if job is None:
            return
        if job.kind == "bank":  # built or not, its students may go: without it they run online
            self.banks[job.trial.key] = "go"
        else:
            self._ended(job.trial, model, value)
        self._settle()

    def finished(self) -> bool:
        return not self.waiting and not self.running and not self._samples_left()

    # ---- dependencies ----------------------------------------------------------------------
    def _wait(self, t: Trial) -> None:
        self.trials[t.key] = t
        self.waiting[t.key] = t
        self.order[t.key] = len(self.order)

    def _release(self, t: Trial) -> bool:
        """A trial new to the sweep (sampled, or below a sampled one); False if known. One an
        earlier run or another sweep trained is found so by its worker (its trial claim)."""
        if t.key in self.trials:
            return False
        self.listener.added(t)
        self._wait(t)
        return True

    def _in_flight(self, key: str) -> bool:
        return key in self.waiting or any(j.trial.key == key for j in self.running.values())

    def _ended(self, t: Trial, model: bool, value: float | None) -> None:
        self.values[t.key] = value
        if model:
            self.models.add(t.key)
            # A student's lineage continues down its chain with its settings (the grid's are
            # planned already; optuna's are not). A teacher's students are the grid or samples.
            for child in children(self.spec, [t]) if t.generation > 0 else []:
                self._release(child)
        for s in self.sources:
            s.tell(t.key, value)

    def _settle(self) -> None:
        """Skip trials whose teacher will never have a model; decide banks of new teachers."""
        changed = True
        while changed:
            changed = False
            for t in list(self.waiting.values()):
                k = t.teacher_key
                if k and k not in self.models and not self._in_flight(k):
                    del self.waiting[t.key]
                    why = "it failed, diverged, stopped early or was skipped"
                    self.listener.skipped(t, f"teacher {k} has no model ({why})")
                    changed = True
        for key in sorted(self.models - self.banks.keys()):
            students = sum(
                t.teacher_key == key and t.loss != "ce" for t in self.waiting.values()
            ) + sum(s.left() for s in self.sources if s.teacher.key == key)
            build = self.wants_bank(students) and key not in self.stored_banks
            self.banks[key] = "build" if build else "go"

    def _ready(self, teacher_key: str | None) -> bool:
        return teacher_key is None or (
            teacher_key in self.models and self.banks.get(teacher_key) == "go"
        )

    def _samples_left(self) -> bool:
        return any(s.left() > 0 and s.teacher.key in self.models for s in self.sources)

    # ---- choosing --------------------------------------------------------------------------
    def _best(self) -> Callable[[], Job | None] | None:
        """How to make the ready job ranked first, or None when nothing is ready."""
        best, best_rank = None, None

        def offer(rank, make):
            nonlocal best, best_rank
            if best_rank is None or rank > best_rank:
                best, best_rank = make, rank

        for key, state in self.banks.items():
            if state == "build":
                teacher = self.trials[key]
                offer((self.priority(teacher.lineage), math.inf), lambda t=teacher: Job("bank", t))
        for t in self.waiting.values():
            if self._ready(t.teacher_key):
                offer((self.priority(t.lineage), -self.order[t.key]), lambda t=t: Job("train", t))
        for s in self.sources:
            if s.left() > 0 and self._ready(s.teacher.key):
                rank = (self.priority((*s.teacher.lineage, s.model)), -math.inf)
                offer(rank, lambda s=s: self._sample(s))
        return best

    def _sample(self, s: Source) -> Job | None:
        """One sample of ``s``; a sample already trained or in flight is told its value when
        there is one, and takes no slot."""
        trial = s.ask()
        if self._release(trial):
            return Job("train", trial)
        if not self._in_flight(trial.key):  # ended before (mse ignores tau: the same trial)
            s.tell(trial.key, self.values.get(trial.key))
        return None
