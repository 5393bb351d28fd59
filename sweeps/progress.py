"""Sweep progress per generation (done / running / pending / failed, a bar), live with the
elapsed time and an ETA, or read back from storage."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable

from .ledger import Ledger, TrialState
from .plan import Plan, Trial, build_plan
from .snapshot import Snapshot
from .spec import SweepSpec
from .storage import Storage

# The order of a progress line; the first four always shown, the rest when any trial is in them.
SHOWN = (TrialState.DONE, TrialState.RUNNING, TrialState.PENDING, TrialState.FAILED)
ORDER = (*SHOWN, TrialState.CLAIMED, TrialState.STOPPED_EARLY, TrialState.DIVERGED,
         TrialState.SKIPPED)


def bar(fraction: float, width: int = 20) -> str:
    n = round(fraction * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def duration(seconds: float) -> str:
    """1h02m, 3m05s or 12.3s."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


class Progress:
    """Trial states by key; prints one line per generation whenever a state changes."""

    def __init__(self, plan: Plan, state: Callable[[str], TrialState], out):
        """``state``: a planned trial's state as this run starts (Snapshot.state)."""
        self.out = out
        self.t0 = time.monotonic()
        self.state = {t.key: state(t.key) for t in plan.trials}
        self.generation = {t.key: t.generation for t in plan.trials}
        self.ended_before = {k for k, s in self.state.items() if s.ended}

    def add(self, trial: Trial) -> None:
        """Track a trial created at run time (sampled by a searcher, or below a sampled one)."""
        if trial.key not in self.state:
            self.state[trial.key] = TrialState.PENDING
            self.generation[trial.key] = trial.generation

    def counts(self, generation: int) -> Counter:
        return Counter(s for k, s in self.state.items() if self.generation[k] == generation)

    def line(self, generation: int) -> str:
        c = self.counts(generation)
        total = sum(c.values())
        shown = [s for s in ORDER if s in SHOWN or c[s]]
        return (
            f"generation {generation}: "
            + ", ".join(f"{c[s]} {s}" for s in shown)
            + f" / {total} {bar(sum(c[s] for s in TrialState if s.ended) / max(total, 1))}"
        )

    def eta(self, elapsed: float) -> str:
        """The sweep's remaining time at the rate trials ended so far in this run."""
        ended = sum(1 for k, s in self.state.items() if s.ended and k not in self.ended_before)
        left = sum(1 for s in self.state.values() if not s.ended)
        if not ended or not left:
            return ""
        return f", sweep ETA {duration(elapsed / ended * left)}"

    def warn(self, key: str, message: str) -> None:
        """A warning a trial's worker raised (its own log stays on its node)."""
        self._print(f"warning from trial {key[:12]}: {message}")

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{duration(elapsed):>8}] {text}{self.eta(elapsed)}", file=self.out, flush=True)

    def set(self, key: str, state: TrialState) -> None:
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


def load_plan(spec: SweepSpec, ledger: Ledger) -> Plan:
    """The plan as the last run recorded it (with sampled trials), else as the spec implies."""
    plan = build_plan(spec)
    for d in ledger.trial_list(spec) or []:
        plan.add(Trial.from_dict(d))
    return plan


def sweep_status(spec: SweepSpec) -> str:
    """The progress table read from storage alone, which it never changes (works while another
    process runs the sweep)."""
    ledger = Ledger(Storage(spec.storage), repair=False)
    plan = load_plan(spec, ledger)
    snapshot = Snapshot.load(ledger, (t.key for t in plan.trials))
    progress = Progress(plan, snapshot.state, io.StringIO())
    return f"sweep {spec.name} ({spec.storage})\n{progress.table()}"
