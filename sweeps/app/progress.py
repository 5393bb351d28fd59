"""Sweep progress per generation (done / running / pending / failed, a bar), live with the
elapsed time and an ETA, or read back from storage."""

from __future__ import annotations

import io
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable

from ..domain.plan import Plan, Trial, build_plan
from ..domain.spec import SweepSpec
from ..store.ledger import Ledger, TrialState
from ..store.snapshot import Snapshot
from ..store.storage import Storage

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
    """Trial states by key, with counts per generation kept per event (O(1) each); prints a
    generation's line when its counts change, at most one round of lines per ``every``
    seconds (a rerun that records 100,000 stored trials prints a few lines, not 100,000)."""

    def __init__(self, plan: Plan, state: Callable[[str], TrialState], out,
                 every: float = 1.0):
        """``state``: a planned trial's state as this run starts (Snapshot.state)."""
        self.out, self.every = out, every
        self.t0 = time.monotonic()
        self.state = {t.key: state(t.key) for t in plan.trials}
        self.generation = {t.key: t.generation for t in plan.trials}
        self.ended_before = {k for k, s in self.state.items() if s.ended}
        self.by_generation: dict[int, Counter] = defaultdict(Counter)
        for k, s in self.state.items():
            self.by_generation[self.generation[k]][s] += 1
        self.ended_now = 0  # trials that ended in this run (the ETA's rate)
        self.left = sum(not s.ended for s in self.state.values())
        self.changed: set[int] = set()  # generations whose line is not printed yet
        self.printed = -math.inf  # when the last round of lines was printed

    def add(self, trial: Trial) -> None:
        """Track a trial created at run time (sampled by a searcher, or below a sampled one)."""
        if trial.key not in self.state:
            self.state[trial.key] = TrialState.PENDING
            self.generation[trial.key] = trial.generation
            self.by_generation[trial.generation][TrialState.PENDING] += 1
            self.left += 1

    def counts(self, generation: int) -> Counter:
        return self.by_generation[generation]

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
        if not self.ended_now or not self.left:
            return ""
        return f", sweep ETA {duration(elapsed / self.ended_now * self.left)}"

    def warn(self, key: str, message: str) -> None:
        """A warning a trial's worker raised (its own log stays on its node)."""
        self._print(f"warning from trial {key[:12]}: {message}")

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{duration(elapsed):>8}] {text}{self.eta(elapsed)}", file=self.out, flush=True)

    def set(self, key: str, state: TrialState) -> None:
        old = self.state.get(key)
        if old == state:
            return
        self.state[key] = state
        g = self.generation[key]
        self.by_generation[g][old] -= 1
        self.by_generation[g][state] += 1
        was_ended = old is not None and old.ended
        self.left += was_ended - state.ended
        if key not in self.ended_before:
            self.ended_now += state.ended - was_ended
        self.changed.add(g)
        if time.monotonic() - self.printed >= self.every:
            self.flush()

    def flush(self) -> None:
        """Print the line of each generation whose counts changed since the last round."""
        for g in sorted(self.changed):
            self._print(self.line(g))
        self.changed.clear()
        self.printed = time.monotonic()

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
    process runs the sweep): each trial's state, no record held (Snapshot.load), a result
    read only where the sweep's index of states (Ledger.state_index, left by its last run)
    does not hold its file as it is now."""
    ledger = Ledger(Storage(spec.storage), repair=False)
    plan = load_plan(spec, ledger)
    snapshot = Snapshot.load(ledger, (t.key for t in plan.trials), results=False,
                             index=ledger.state_index(spec))
    progress = Progress(plan, snapshot.state, io.StringIO())
    return f"sweep {spec.name} ({spec.storage})\n{progress.table()}"
