"""Sweep progress per generation (done / running / pending / failed), live or read back from
storage."""

from __future__ import annotations

import sys
import time
from collections import Counter

from .plan import Plan, Trial
from .store import STATES, TrialStore


class Progress:
    """Trial states by key; prints one line per generation whenever a state changes."""

    def __init__(self, plan: Plan, store: TrialStore, out=sys.stdout):
        self.out = out
        self.t0 = time.monotonic()
        self.state = {t.key: store.state(t.key) for t in plan.trials}
        self.generation = {t.key: t.generation for t in plan.trials}

    def add(self, trial: Trial) -> None:
        """Track a trial created at run time (sampled by a searcher, or below a sampled one)."""
        if trial.key not in self.state:
            self.state[trial.key] = "pending"
            self.generation[trial.key] = trial.generation

    def counts(self, generation: int) -> Counter:
        return Counter(s for k, s in self.state.items() if self.generation[k] == generation)

    def line(self, generation: int) -> str:
        c = self.counts(generation)
        total = sum(c.values())
        shown = [s for s in STATES if s != "diverged" or c[s]]  # diverged: only when any
        return (
            f"generation {generation}: " + ", ".join(f"{c[s]} {s}" for s in shown) + f" / {total}"
        )

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{elapsed:7.1f}s] {text}", file=self.out, flush=True)

    def set(self, key: str, state: str) -> None:
        if self.state.get(key) != state:
            self.state[key] = state
            self._print(self.line(self.generation[key]))

    def bank(self, teacher: Trial, seconds: float | None, error: str | None) -> None:
        what = f"bank of {teacher.chain} (noise {teacher.noise_rate:g}, seed {teacher.seed})"
        if error or seconds is None:
            self._print(f"{what}: not built, its students run the teacher online: {error}")
        else:
            self._print(f"{what}: built in {seconds:.1f}s")

    def table(self) -> str:
        return "\n".join(self.line(g) for g in sorted(set(self.generation.values())))
