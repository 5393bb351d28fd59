"""The scheduler: which job runs next. Pure: no Ray, MLflow, optuna or storage I/O, so it is
stepped by hand in tests (tests/test_scheduler.py) and a Tune Searcher adapts it (engine.py).

A job trains one trial, or builds the teacher-logit bank of a trained teacher. A trial is ready
when its teacher is done (its weights stored) and the teacher's bank is built or not wanted; among
ready jobs the one with the most work still below it goes first (the critical path,
``priority``; a bank before anything of equal rank), ties in plan order. A trial whose teacher
ended not done (failed, diverged, stopped early, or itself skipped) is skipped. A
student that ends done releases its own students down its chain (optuna's samples are
not planned ahead). Sources (sampling.OptunaSource) offer one more job while their budget lasts.

What it knows comes from the driver's ledger snapshot at the start (which trials are done,
which banks are stored, the search metric of stored results) and from each job's outcome as the
run goes; it never asks storage.

Every operation is O(log N) amortised in the sweep's N trials (a 100,000-trial sweep is stepped
through in seconds: benchmarks/scale.py): ready jobs sit in a heap keyed by rank, trials whose
teacher is not ready yet are indexed by that teacher and moved to the heap by its outcome, and
an entry a job has left behind (started, skipped) is dropped when it reaches the top.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
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
    """More trials below one teacher, one at a time (sampling.OptunaSource)."""

    teacher: Trial
    model: str

    def left(self) -> int: ...
    def ask(self) -> Trial: ...
    def tell(self, key: str, value: float | None) -> None: ...


# A heap entry: (-priority, class, n, ref). Among equal priority a bank goes first, then
# trials in plan order (n), then a source's next sample (sources in their order); ref is a
# trial key or a source index.
BANK, TRAIN, SAMPLE = 0, 1, 2


class Scheduler:
    """Args:
    spec: the sweep.
    trials: every trial the sweep knows (its plan).
    todo: those to train, in plan order.
    done: keys of done trials (their weights stored).
    banks: teacher keys whose bank is in storage.
    values: the search metric of trials that ended before this run (sampled ones are told it).
    priority: lineage -> remaining work (critical_path.remaining_work).
    wants_bank: a teacher's number of distilling students -> whether to build its bank first.
    listener: told of added and skipped trials.
    sources: optuna's sources (sampling.OptunaSource), one per (teacher, architecture).
    """

    def __init__(
        self,
        spec: SweepSpec,
        trials: Iterable[Trial],
        todo: Iterable[Trial],
        done: Iterable[str],
        banks: Iterable[str],
        values: Mapping[str, float | None],
        priority: Callable[[tuple[str, ...]], float],
        wants_bank: Callable[[int], bool],
        listener: Listener,
        sources: Iterable[Source] = (),
    ):
        self.spec, self.priority, self.wants_bank = spec, priority, wants_bank
        self.listener, self.sources = listener, list(sources)
        self.done, self.stored_banks = set(done), set(banks)
        self.values = dict(values)
        self.waiting: dict[str, Trial] = {}  # not yet handed out, in plan order
        self.order: dict[str, int] = {}
        # every trial of the sweep so far, by key
        self.trials = {t.key: t for t in [*trials, *(s.teacher for s in self.sources)]}
        self.running: dict[str, Job] = {}  # job id -> job
        self.running_keys: set[str] = set()  # trials being trained
        self.banks: dict[str, str] = {}  # teacher key -> "build" | "building" | "go"
        self.blocked: defaultdict[str, list[Trial]] = defaultdict(list)  # teacher not ready
        self.heap: list[tuple[float, int, int, str | int]] = []  # ready jobs, best first
        self.pushed = 0  # entries so far (ties among banks and samples: first pushed first)
        self.sources_of: defaultdict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.sources):
            self.sources_of[s.teacher.key].append(i)
        for t in todo:
            self._register(t)
        students = Counter(t.teacher_key for t in self.waiting.values() if t.loss != "ce")
        for key in sorted(self.done):
            self._decide_bank(key, students[key])
        for t in list(self.waiting.values()):
            k = t.teacher_key
            if t.key not in self.waiting:
                continue  # skipped below a skipped teacher
            if k and k not in self.done and k not in self.waiting:
                self._skip(t)
            else:
                self._place(t)

    # ---- the adapter's interface -----------------------------------------------------------
    def next_job(self) -> Job | None:
        """The ready job with the most work after it (None: nothing is ready now)."""
        while self.heap:
            _, kind, _, ref = self.heap[0]
            if kind == BANK and self.banks.get(ref) == "build":
                return Job("bank", self.trials[ref])
            if kind == TRAIN and ref in self.waiting:
                return Job("train", self.waiting[ref])
            if kind == SAMPLE and self.sources[ref].left() > 0:
                if (job := self._sample(self.sources[ref])) is not None:
                    return job
                continue  # a sample already trained or in flight takes no slot: ask again
            heapq.heappop(self.heap)  # started, skipped or spent since it was pushed
        return None

    def start(self, job_id: str, job: Job) -> None:
        """``job`` (from next_job) was handed out as ``job_id``."""
        self.running[job_id] = job
        if job.kind == "bank":
            self.banks[job.trial.key] = "building"
        else:
            del self.waiting[job.trial.key]
            self.running_keys.add(job.trial.key)

    def complete(self, job_id: str, done: bool, value: float | None = None) -> None:
        """Job ``job_id`` ended; ``done``: it trained to the end, its weights stored;
        ``value``: the search metric it ended with (None: failed)."""
        job = self.running.pop(job_id, None)
        if job is None:
            return
        if job.kind == "bank":  # built or not, its students may go: without it they run online
            self._go(job.trial.key)
        else:
            self.running_keys.discard(job.trial.key)
            self._ended(job.trial, done, value)

    def finished(self) -> bool:
        return not self.waiting and not self.running and not self._samples_left()

    # ---- dependencies ----------------------------------------------------------------------
    def _register(self, t: Trial) -> None:
        self.trials[t.key] = t
        self.waiting[t.key] = t
        self.order[t.key] = len(self.order)

    def _place(self, t: Trial) -> None:
        """Into the ready heap, or under its teacher until the teacher is ready."""
        k = t.teacher_key
        if k is None or (k in self.done and self.banks.get(k) == "go"):
            self._push(t.lineage, TRAIN, self.order[t.key], t.key)
        else:
            self.blocked[k].append(t)

    def _push(self, lineage: tuple[str, ...], kind: int, n: int | None, ref: str | int) -> None:
        self.pushed += 1
        entry = (-self.priority(lineage), kind, self.pushed if n is None else n, ref)
        heapq.heappush(self.heap, entry)

    def _release(self, t: Trial) -> bool:
        """A trial new to the sweep (sampled, or below a sampled one); False if known. One an
        earlier run or another sweep trained is found so by its worker (its trial claim)."""
        if t.key in self.trials:
            return False
        self.listener.added(t)
        self._register(t)
        self._place(t)
        return True

    def _in_flight(self, key: str) -> bool:
        return key in self.waiting or key in self.running_keys

    def _ended(self, t: Trial, done: bool, value: float | None) -> None:
        self.values[t.key] = value
        if done:
            self.done.add(t.key)
            # A student's lineage continues down its chain with its settings (the grid's are
            # planned already; optuna's are not). A teacher's students are the grid or samples.
            for child in children(self.spec, [t]) if t.generation > 0 else []:
                self._release(child)
            students = sum(c.loss != "ce" for c in self.blocked.get(t.key, ()))
            self._decide_bank(t.key, students)
        else:
            for student in self.blocked.pop(t.key, []):
                self._skip(student)
        for s in self.sources:
            s.tell(t.key, value)

    def _decide_bank(self, key: str, students: int) -> None:
        """A teacher is done: build its bank first, or let its students go now."""
        students += sum(self.sources[i].left() for i in self.sources_of.get(key, ()))
        if self.wants_bank(students) and key not in self.stored_banks:
            self.banks[key] = "build"
            self._push(self.trials[key].lineage, BANK, None, key)
        else:
            self._go(key)

    def _go(self, key: str) -> None:
        """Teacher ``key``'s students may start (its bank is stored, built, failed or unwanted)."""
        self.banks[key] = "go"
        for t in self.blocked.pop(key, []):
            self._place(t)
        for i in self.sources_of.get(key, ()):
            s = self.sources[i]
            self._push((*s.teacher.lineage, s.model), SAMPLE, i, i)

    def _skip(self, t: Trial) -> None:
        """``t`` never runs: its teacher ended not done; nor does anything below it."""
        stack = [(t, t.teacher_key)]
        why = "it failed, diverged, stopped early or was skipped"
        while stack:
            t, k = stack.pop()
            if self.waiting.pop(t.key, None) is None:
                continue
            self.listener.skipped(t, f"teacher {k} is not done ({why})")
            stack += [(c, t.key) for c in self.blocked.pop(t.key, [])]

    def _samples_left(self) -> bool:
        return any(s.left() > 0 and s.teacher.key in self.done for s in self.sources)

    # ---- choosing --------------------------------------------------------------------------
    def _sample(self, s: Source) -> Job | None:
        """One sample of ``s``; a sample already trained or in flight is told its value when
        there is one, and takes no slot."""
        trial = s.ask()
        if self._release(trial):
            return Job("train", trial)
        if not self._in_flight(trial.key):  # ended before (mse ignores tau: the same trial)
            s.tell(trial.key, self.values.get(trial.key))
        return None
