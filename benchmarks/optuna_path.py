"""The optuna path's driver CPU per job at few and many sources (issue 43, item 7).

The real Scheduler with real OptunaSources (optuna's TPE, one study per teacher and student
architecture), stepped as Tune's searcher steps it: ``slots`` jobs in flight, each ended in
random order with a random metric; every teacher done at start (each source open). Both sizes
time the same JOBS jobs (JOBS / budget sources spent in full; the other sources wait open), so
each study reaches the same size and only the number of sources differs. Figure: the driver's
CPU (process time) per job, from asking the next job to telling its end, plus the CPU of
building the sources (search_contexts and one study each), per source.

Second part (``--tpe``): a single source's CPU per sample as its study grows (TPE's densities
fit to every trial told), with the window (sampling.WINDOW) and without (a window past the
budget).

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.optuna_path --rounds 5
    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.optuna_path --tpe
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.harness import fmt, interleaved, paired
from sweeps.domain import sampling
from sweeps.domain.plan import build_plan
from sweeps.domain.scheduler import Scheduler
from sweeps.domain.spec import parse_spec

JOBS = 2000


class Quiet:
    def added(self, trial):
        pass

    def skipped(self, trial, reason):
        pass


def spec_of(sources: int, budget: int):
    return parse_spec({
        "name": "bench", "dataset": {"name": "digits", "validation": 0.2},
        "chains": [["cnn-large", "cnn-small"]], "train": {"epochs": 2},
        "grid": {"loss": ["kl", "mse"], "seeds": list(range(sources)), "baselines": False},
        "search": {"type": "optuna", "num_samples": budget, "tau_range": [1.0, 20.0]},
        "storage": "/nonexistent"})


def per_job(sources: int, budget: int, slots: int = 8, seed: int = 0) -> tuple[float, float]:
    """(CPU seconds per job over JOBS jobs, CPU seconds per source to build the sources)."""
    spec = spec_of(sources, budget)
    plan = build_plan(spec)
    c0 = time.process_time()
    srcs = sampling.optuna_sources(spec, plan)
    build = (time.process_time() - c0) / sources
    teachers = [t.key for t in plan.generations[0]]
    s = Scheduler(spec, plan.trials, [], done=teachers, banks=(), values={},
                  priority=lambda lineage: len(lineage), wants_bank=lambda n: False,
                  listener=Quiet(), sources=srcs)
    rng, running, n = random.Random(seed), [], 0
    c0 = time.process_time()
    while n < JOBS and not s.finished():
        while len(running) < slots and (job := s.next_job()) is not None:
            s.start(str(n), job)
            running.append(str(n))
            n += 1
        job_id = running.pop(rng.randrange(len(running)))
        s.complete(job_id, done=False, value=rng.random())
    for job_id in running:
        s.complete(job_id, done=False, value=rng.random())
    return (time.process_time() - c0) / n, build


def tpe(samples: int, window: int) -> list[tuple[int, float]]:
    """CPU per sample of one source, per block of 200 samples, with ``window``."""
    saved, sampling.WINDOW = sampling.WINDOW, window
    try:
        spec = spec_of(1, samples)
        src = sampling.optuna_sources(spec, build_plan(spec))[0]
        rng, out, c0 = random.Random(0), [], time.process_time()
        for i in range(1, samples + 1):
            t = src.ask()
            src.tell(t.key, rng.random())
            if i % 200 == 0:
                now = time.process_time()
                out.append((i, (now - c0) / 200))
                c0 = now
        return out
    finally:
        sampling.WINDOW = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=40, help="samples per source")
    ap.add_argument("--tpe", action="store_true")
    ap.add_argument("--samples", type=int, default=2000)
    a = ap.parse_args()
    if a.tpe:
        for name, window in (("window", sampling.WINDOW), ("no window", 10**9)):
            print(name, " ".join(f"{i}:{c * 1e3:.2f}ms" for i, c in tpe(a.samples, window)))
        return
    builds: dict[int, list[float]] = {100: [], 5000: []}

    def variant(n):
        def run():
            job, build = per_job(n, a.budget)
            builds[n].append(build)
            return job
        return run

    got = interleaved({100: variant(100), 5000: variant(5000)}, a.rounds)
    for n, v in got.items():
        print(f"{n:5d} sources: CPU per job ms {fmt([x * 1e3 for x in v])}; "
              f"per source built ms {fmt([x * 1e3 for x in builds[n]])}")
    print(f"ratio 5000/100 (paired): {fmt(paired(got[5000], got[100]))}")


if __name__ == "__main__":
    main()
