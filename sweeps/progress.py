"""Sweep progress per stage (done / running / pending / failed), live or read back from storage."""

from __future__ import annotations

import sys
from collections import Counter

from .plan import Plan
from .storage import Storage, trial_file

STATES = ("done", "running", "pending", "failed")


def stored_state(storage: Storage, key: str) -> str:
    if storage.exists(trial_file(key, "result.json")):
        return "done"
    if storage.exists(trial_file(key, "failed.json")):
        return "failed"
    if storage.exists(trial_file(key, "progress.json")):
        return "running"  # started; an interrupted trial resumes from its checkpoint
    return "pending"


class Progress:
    """Trial states by key; prints one line per stage whenever a state changes."""

    def __init__(self, plan: Plan, storage: Storage, out=sys.stdout):
        self.plan, self.out = plan, out
        self.state = {t.key: stored_state(storage, t.key) for t in plan.trials}
        self.generation = {t.key: t.generation for t in plan.trials}

    def add(self, trial) -> None:
        """Track a trial created at run time (sampled by a searcher)."""
        if trial.key not in self.state:
            self.state[trial.key] = "pending"
            self.generation[trial.key] = trial.generation

    def counts(self, generation: int) -> Counter:
        return Counter(s for k, s in self.state.items() if self.generation[k] == generation)

    def line(self, generation: int) -> str:
        c = self.counts(generation)
        total = sum(c.values())
        return f"stage {generation}: " + ", ".join(f"{c[s]} {s}" for s in STATES) + f" / {total}"

    def set(self, key: str, state: str) -> None:
        if self.state.get(key) != state:
            self.state[key] = state
            print(self.line(self.generation[key]), file=self.out, flush=True)

    def table(self) -> str:
        return "\n".join(self.line(g) for g in sorted(set(self.generation.values())))
