"""The driver's cost per trial event at N = 1k, 10k, 100k trials (issue 29), on trials made in
memory (no storage, no Ray): each phase's cost per operation at each N and its growth exponent
between the smallest and the largest N (0: flat; 1: each operation scans the sweep).

Phases so far: ``plan.add`` (a trial found at run time joins the plan: a key lookup),
``progress.set`` (one trial's state changes: the generation's counts and the ETA kept per
event) and ``scheduler`` (the pure scheduler stepped through a whole run with 64 slots, every
teacher's bank built first, jobs ending in the order they started: cost per job handed out).
The sizes run interleaved, rotated each round (harness.py); figures are microseconds per
operation, min / median over rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --sizes 1000,10000,100000 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, min_med, timed  # noqa: E402
from sweeps.ledger import TrialState  # noqa: E402
from sweeps.plan import Plan, build_plan  # noqa: E402
from sweeps.progress import Progress  # noqa: E402
from sweeps.schedule import remaining_work  # noqa: E402
from sweeps.scheduler import Scheduler  # noqa: E402
from sweeps.spec import parse_spec  # noqa: E402

TAUS = [1, 2, 4, 8, 16]  # a teacher and 6 students per seed: 7 trials


def plan_of(n: int) -> Plan:
    spec = parse_spec({
        "name": "scale", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "grid": {"loss": ["kl", "mse"], "tau": TAUS, "seeds": list(range(math.ceil(n / 7))),
                 "baselines": False},
    })
    return build_plan(spec)


def plan_add(plan: Plan) -> float:
    """Seconds per trial for adding every trial, one at a time, to an empty plan."""
    trials = plan.trials
    empty = Plan(plan.spec, [])
    return timed(lambda: [empty.add(t) for t in trials]) / len(trials)


def progress_set(plan: Plan) -> float:
    """Seconds per event for every trial going pending -> running -> done."""
    progress = Progress(plan, lambda key: TrialState.PENDING, io.StringIO())
    keys = [t.key for t in plan.trials]

    def events():
        for k in keys:
            progress.set(k, TrialState.RUNNING)
        for k in keys:
            progress.set(k, TrialState.DONE)

    return timed(events) / (2 * len(keys))


class Quiet:
    """A listener that keeps nothing (the driver's events are timed on their own)."""

    def added(self, trial):
        pass

    def skipped(self, trial, reason):
        pass


def scheduler_run(plan: Plan, slots: int = 64) -> float:
    """Seconds per job for a whole run: fill every slot, end the oldest job, repeat."""

    def run():
        s = Scheduler(plan.spec, plan.trials, plan.trials, models=(), banks=(), values={},
                      priority=remaining_work(plan.spec.chains, {"cnn-small": 1.0}),
                      wants_bank=lambda students: students > 1, listener=Quiet())
        running, jobs = {}, 0
        while not s.finished():
            while len(running) < slots and (job := s.next_job()) is not None:
                s.start(str(jobs), job)
                running[str(jobs)] = job
                jobs += 1
            oldest = next(iter(running))
            del running[oldest]
            s.complete(oldest, model=True, value=0.5)
        return jobs

    jobs = []
    seconds = timed(lambda: jobs.append(run()))
    return seconds / jobs[-1]


PHASES = {"plan.add": plan_add, "progress.set": progress_set, "scheduler": scheduler_run}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    plans = {n: plan_of(n) for n in sizes}
    print(f"trials: {', '.join(str(len(plans[n].trials)) for n in sizes)}")
    print("| phase | " + " | ".join(f"{n:,} (us/op, min / median)" for n in sizes)
          + " | growth exponent |")
    print("| --- " * (len(sizes) + 2) + "|")
    for name, phase in PHASES.items():
        figures = interleaved({n: (lambda n=n, phase=phase: phase(plans[n])) for n in sizes},
                              args.rounds)
        cells = [min_med([f * 1e6 for f in figures[n]]) for n in sizes]
        lo, hi = min(sizes), max(sizes)
        exponent = math.log(min(figures[hi]) / min(figures[lo])) / math.log(hi / lo)
        print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in cells)
              + f" | {exponent:+.2f} |")


if __name__ == "__main__":
    main()
