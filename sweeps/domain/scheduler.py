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
an entry a job has left behind (started, skipped) is dropped when it reaches the top. A trial
that ends is told to the sources that sampled it (an index from sample key to source), and
whether any source has samples left is a set of open sources: neither grows with the sources.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from .fusion import fusion_key, group_size
from .plan import Trial, children
from .spec import SweepSpec


@dataclass(frozen=True)
class Job:
    """What one Tune trial does: "train" ``trial``, or build the "bank" of teacher ``trial``.
    Its Tune config is this record and nothing more (the spec travels once, by reference)."""

    kind: str
    trial: Trial
    # a fused job (fusion.py): the siblings it trains besides ``trial``, each its own trial
    siblings: tuple[Trial, ...] = ()

    @property
    def members(self) -> tuple[Trial, ...]:
        """The trials this job trains: ``trial``, then its fused siblings."""
        return (self.trial, *self.siblings)

    def config(self) -> dict:
        out = {"job": self.kind, "trial": self.trial.to_dict()}
        if self.siblings:
            out["siblings"] = [t.to_dict() for t in self.siblings]
        return out

    @classmethod
    def from_config(cls, config: dict) -> Job:
        return cls(config["job"], Trial.from_dict(config["trial"]),
                   tuple(Trial.from_dict(t) for t in config.get("siblings", ())))


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
    max_teachers: the most teachers one fused job reads (fusion.teachers_cap: their banks
        within the budget one trial may give a bank); siblings of one teacher always fuse.
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
        max_teachers: int = 1 << 30,
    ):
        self.spec, self.priority, self.wants_bank = spec, priority, wants_bank
        self.max_teachers = max(1, max_teachers)
        self.listener, self.sources = listener, list(sources)
        self.done, self.stored_banks = set(done), set(banks)
        self.values = dict(values)
        self.waiting: dict[str, Trial] = {}  # not yet handed out, in plan order
        self.order: dict[str, int] = {}
        # every trial of the sweep so far, by key
        self.trials = {t.key: t for t in [*trials, *(s.teacher for s in self.sources)]}
        self.running: dict[str, Job] = {}  # job id -> job
        self.member_of: dict[str, str] = {}  # trial key -> id of the job training it
        self.running_keys: set[str] = set()  # trials being trained
        self.banks: dict[str, str] = {}  # teacher key -> "build" | "building" | "go"
        self.blocked: defaultdict[str, list[Trial]] = defaultdict(list)  # teacher not ready
        self.heap: list[tuple[float, int, int, str | int]] = []  # ready jobs, best first
        # ready trials by fusion_key (siblings and cousins), in the order they became ready
        # (fused jobs take them); an entry a job has left behind is dropped when met, as in the
        # heap; ready_count: how many of each key are ready and not handed out (O(1) to read)
        self.ready_siblings: defaultdict[tuple, deque[str]] = defaultdict(deque)
        self.ready_count: Counter = Counter()
        self.pushed = 0  # entries so far (ties among banks and samples: first pushed first)
        self.sources_of: defaultdict[str, list[int]] = defaultdict(list)  # teacher -> sources
        for i, s in enumerate(self.sources):
            self.sources_of[s.teacher.key].append(i)
        # sample key -> the sources that asked for it (told its value when it ends: only they)
        self.asked_by: defaultdict[str, set[int]] = defaultdict(set)
        self.open: set[int] = set()  # sources whose teacher is done and whose budget lasts
        for t in todo:
            self._register(t)
        students = Counter(t.teacher_key for t in self.waiting.values() if t.loss != "ce")
        for key in sorted(self.done):
            self._decide_bank(key, students[key])
            self._open(key)
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
                if (job := self._sample(ref)) is not None:
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
            for t in job.members:
                del self.waiting[t.key]
                if (key := fusion_key(t)) is not None:
                    self.ready_count[key] -= 1
                self.running_keys.add(t.key)
                self.member_of[t.key] = job_id

    def with_siblings(self, job: Job, limit: int, free: int = 1) -> Job:
        """``job`` (a train job from next_job) with the students ready now that fuse with it
        (fusion.py: its siblings, and cousins under other teachers, up to ``max_teachers``
        teachers), earliest ready first; never waits for more. ``free``: the slots free now,
        this job's among them: the group takes at most ``limit`` and few enough that the ready
        ones spread over the free slots (fusion.group_size). A sampled trial's siblings are its
        source's next samples, asked now (optuna's samples of one teacher fuse as a grid's
        students do; each is told its value as it ends)."""
        key = fusion_key(job.trial) if job.kind == "train" else None
        if key is None or limit <= 1:
            return job
        ready, taken = self.ready_siblings.get(key, deque()), []
        for i in sorted(self.asked_by.get(job.trial.key, ()))[:1]:
            source = self.sources[i]
            while source.left() > 0 and self.ready_count[key] < limit:
                self._sample(i)  # a new trial joins ``ready``; a known one is told, or waits
                ready = self.ready_siblings.get(key, deque())
        size = group_size(self.ready_count[key], free, limit)
        teachers = {job.trial.teacher_key}
        while ready and len(taken) < size - 1:
            ref = ready[0]
            if ref not in self.waiting or ref == job.trial.key or ref in taken:
                ready.popleft()  # left behind by a job, or this one
                continue
            teacher = self.waiting[ref].teacher_key
            if teacher not in teachers and len(teachers) >= self.max_teachers:
                break  # its teacher's bank would not fit: it leads a job of its own
            teachers.add(teacher)
            taken.append(ready.popleft())
        return Job(job.kind, job.trial, tuple(self.waiting[k] for k in taken))

    def complete(self, job_id: str, done: bool, value: float | None = None) -> None:
        """Job ``job_id`` ended; ``done``: it trained to the end, its weights stored;
        ``value``: the search metric it ended with (None: failed)."""
        job = self.running.pop(job_id, None)
        if job is None:
            return
        if job.kind == "bank":  # built or not, its students may go: without it they run online
            self._go(job.trial.key)
        else:
            for t in job.members:  # a fused job's members not ended on their own end with it
                if self.member_of.get(t.key) == job_id:
                    self.member_ended(t.key, done, value if t is job.trial else None)

    def member_ended(self, key: str, done: bool, value: float | None = None) -> None:
        """One trial of a running job ended (a fused job's member leaves it: done, diverged,
        stopped early, failed); its job may go on with the others."""
        job_id = self.member_of.pop(key, None)
        if job_id is None:
            return
        self.running_keys.discard(key)
        self._ended(self.trials[key], done, value)

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
            if (key := fusion_key(t)) is not None:
                self.ready_siblings[key].append(t.key)
                self.ready_count[key] += 1
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
            self._open(t.key)
        else:
            for student in self.blocked.pop(t.key, []):
                self._skip(student)
        for i in sorted(self.asked_by.pop(t.key, ())):  # only the sources that sampled it
            self.sources[i].tell(t.key, value)

    def _open(self, teacher: str) -> None:
        """Teacher ``teacher`` is done: its sources with budget left count as open."""
        self.open.update(i for i in self.sources_of.get(teacher, ()) if self.sources[i].left() > 0)

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
        return bool(self.open)

    # ---- choosing --------------------------------------------------------------------------
    def _sample(self, i: int) -> Job | None:
        """One sample of source ``i``; a sample already trained or in flight is told its value
        when there is one, and takes no slot."""
        s = self.sources[i]
        trial = s.ask()
        if s.left() <= 0:
            self.open.discard(i)
        if self._release(trial):
            self.asked_by[trial.key].add(i)
            return Job("train", trial)
        if self._in_flight(trial.key):  # told when it ends
            self.asked_by[trial.key].add(i)
        else:  # ended before (mse ignores tau: the same trial)
            s.tell(trial.key, self.values.get(trial.key))
        return None
