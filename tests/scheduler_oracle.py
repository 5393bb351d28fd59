"""The scheduler's rules by definition, each decision a scan of every trial (the scheduler
before its heap and indexes; quadratic in the sweep): the oracle the O(log N) scheduler is
compared with, job for job, in test_scheduler.py."""

from __future__ import annotations

import math

from sweeps.domain.plan import children
from sweeps.domain.scheduler import Job


class Oracle:
    def __init__(self, spec, trials, todo, done, banks, values, priority, wants_bank,
                 listener, sources=()):
        self.spec, self.priority, self.wants_bank = spec, priority, wants_bank
        self.listener, self.sources = listener, list(sources)
        self.done, self.stored_banks, self.values = set(done), set(banks), dict(values)
        self.waiting, self.order, self.running, self.banks = {}, {}, {}, {}
        self.asked = set()  # (source's index, sample key): told that sample's value when it ends
        self.trials = {t.key: t for t in [*trials, *(s.teacher for s in self.sources)]}
        for t in todo:
            self._wait(t)
        self._settle()

    def next_job(self):
        while (job := self._best()) is not None:
            if (job := job()) is not None:
                return job
        return None

    def start(self, job_id, job):
        self.running[job_id] = job
        if job.kind == "bank":
            self.banks[job.trial.key] = "building"
        else:
            del self.waiting[job.trial.key]

    def complete(self, job_id, done, value=None):
        job = self.running.pop(job_id, None)
        if job is None:
            return
        if job.kind == "bank":
            self.banks[job.trial.key] = "go"
        else:
            t = job.trial
            self.values[t.key] = value
            if done:
                self.done.add(t.key)
                for child in children(self.spec, [t]) if t.generation > 0 else []:
                    self._release(child)
            for i, s in enumerate(self.sources):
                if (i, t.key) in self.asked:
                    self.asked.discard((i, t.key))
                    s.tell(t.key, value)
        self._settle()

    def finished(self):
        left = any(s.left() > 0 and s.teacher.key in self.done for s in self.sources)
        return not self.waiting and not self.running and not left

    def _wait(self, t):
        self.trials[t.key] = t
        self.waiting[t.key] = t
        self.order[t.key] = len(self.order)

    def _release(self, t):
        if t.key in self.trials:
            return False
        self.listener.added(t)
        self._wait(t)
        return True

    def _in_flight(self, key):
        return key in self.waiting or any(j.trial.key == key for j in self.running.values())

    def _settle(self):
        changed = True
        while changed:
            changed = False
            for t in list(self.waiting.values()):
                k = t.teacher_key
                if k and k not in self.done and not self._in_flight(k):
                    del self.waiting[t.key]
                    self.listener.skipped(t, f"teacher {k} is not done")
                    changed = True
        for key in sorted(self.done - self.banks.keys()):
            students = sum(
                t.teacher_key == key and t.loss != "ce" for t in self.waiting.values()
            ) + sum(s.left() for s in self.sources if s.teacher.key == key)
            build = self.wants_bank(students) and key not in self.stored_banks
            self.banks[key] = "build" if build else "go"

    def _ready(self, k):
        return k is None or (k in self.done and self.banks.get(k) == "go")

    def _best(self):
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
                offer((self.priority((*s.teacher.lineage, s.model)), -math.inf),
                      lambda s=s: self._sample(s))
        return best

    def _sample(self, s):
        trial = s.ask()
        i = next(i for i, x in enumerate(self.sources) if x is s)
        if self._release(trial):
            self.asked.add((i, trial.key))
            return Job("train", trial)
        if self._in_flight(trial.key):
            self.asked.add((i, trial.key))
        else:
            s.tell(trial.key, self.values.get(trial.key))
        return None
