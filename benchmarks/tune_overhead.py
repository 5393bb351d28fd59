"""Ray Tune's own cost per trial at 1k-100k trials (issue 29, item 6): no-op trainables handed
out by a custom Searcher, as kdsweep's DependencySearcher hands out jobs, on the local Ray, with
the engine's Tune settings (one experiment, warm actors reused, no per-trial logger files,
experiment state in a local folder, the engine's FlatFIFO scheduler and QuietProgress). What
is left per trial is Tune's controller: its Trial objects, placement groups, result processing
and experiment-state snapshots. ``--scheduler fifo`` uses Tune's own FIFOScheduler and progress
callback instead (the engine before issue 43 item 4, which ran a sweep as experiments of
``--experiment`` jobs each).

Printed per N: wall seconds per trial and the driver's CPU seconds per trial, and the growth
exponent between the smallest and largest N (0: flat; 1: each trial scans every trial).

    PYTHONPATH=. .venv/bin/python benchmarks/tune_overhead.py --sizes 1000,10000
    PYTHONPATH=. .venv/bin/python benchmarks/tune_overhead.py --sizes 1000,10000 \
        --scheduler fifo --experiment 2500
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

import sweeps.app.sweep  # noqa: E402,F401  the engine's Tune environment (loggers off)


class Handout(Searcher):
    """``n`` trials, one per ask, then FINISHED (the DependencySearcher's contract)."""

    def __init__(self, n: int):
        super().__init__()
        self.left, self.running = n, 0

    def suggest(self, trial_id):
        if self.left == 0:
            return Searcher.FINISHED if self.running == 0 else None
        self.left -= 1
        self.running += 1
        return {"job": "noop"}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.running -= 1


def noop(config):
    tune.report({"epoch": 1})


def run(n: int, window: str | None, experiment: int, flat: bool) -> tuple[float, float]:
    """(wall seconds, driver CPU seconds) for ``n`` no-op trials, in Tune experiments of at
    most ``experiment`` trials each, one after the other (the engine's KDSWEEP_TUNE_WINDOW)."""
    wall = cpu = 0.0
    for start in range(0, n, experiment):
        w, c = run_one(min(experiment, n - start), window, flat)
        wall, cpu = wall + w, cpu + c
    return wall, cpu


def run_one(n: int, window: str | None, flat: bool) -> tuple[float, float]:
    from sweeps.ray.engine import FlatFIFO, QuietProgress

    if window:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = window
    tuner = tune.Tuner(
        tune.with_resources(noop, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=Handout(n), num_samples=-1, reuse_actors=True,
                                    scheduler=FlatFIFO() if flat else None),
        run_config=tune.RunConfig(name=f"noop-{n}-{time.time_ns()}",
                                  storage_path=tempfile.mkdtemp(prefix="kdtune-"), verbose=0,
                                  callbacks=[QuietProgress()] if flat else None),
    )
    import logging

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    c0, t0 = time.process_time(), time.perf_counter()
    tuner.fit()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--window", help="TUNE_MAX_PENDING_TRIALS_PG (default: the engine's)")
    p.add_argument("--experiment", type=int, default=10**9,
                   help="trials per Tune experiment (the engine's KDSWEEP_TUNE_WINDOW before "
                        "issue 43 item 4)")
    p.add_argument("--scheduler", choices=("flat", "fifo"), default="flat",
                   help="the engine's FlatFIFO (default) or Tune's own FIFOScheduler")
    args = p.parse_args()
    import ray

    from sweeps.ray.engine import connect, pending_window

    connect(None)  # this machine's cores: one trial per CPU
    print(f"local Ray, {ray.cluster_resources().get('CPU')} CPUs; one trial per CPU")
    print(f"scheduler {args.scheduler}, experiments of at most {args.experiment:,} trials")
    print("| trials | wall s | wall ms per trial | driver CPU ms per trial | driver peak RSS MB |")
    print("| --- | --- | --- | --- | --- |")
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {}
    with pending_window():
        for n in sizes:
            wall, cpu = run(n, args.window, args.experiment, args.scheduler == "flat")
            figures[n] = wall / n
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # so far (Linux)
            print(f"| {n:,} | {wall:.1f} | {wall / n * 1e3:.2f} | {cpu / n * 1e3:.2f} "
                  f"| {peak:.0f} |", flush=True)
    lo, hi = min(sizes), max(sizes)
    print(f"growth exponent of wall per trial: "
          f"{math.log(figures[hi] / figures[lo]) / math.log(hi / lo):+.2f}")


if __name__ == "__main__":
    main()
