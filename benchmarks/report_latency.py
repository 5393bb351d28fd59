"""How long a trial waits in `tune.report` while the driver logs its results to MLflow, in a
real Ray Tune run: the driver's callback writing each result itself (before) against handing
it to the Tracker's background writer (now), into a real local `mlflow server`; "none" logs
nothing, the floor that Tune's own round trip sets.

T function trainables report E epoch results each as fast as they can (no training), each
with the trainer's 12 metrics; a driver callback forwards each result to MLflow as
kdsweep's SweepCallback does. Counted per result inside the trainable: the seconds
`tune.report` took (p50/p95), which includes Tune's own round trip to the driver and the
driver's callbacks; the results/s through Tune over the run (Tune's loop, not MLflow, bounds
this one); and the driver process's CPU per result (Tune's loop, Ray's core worker, the
callback, the writer: what a driver core must sustain on a cluster). Ray and the server
start before the clock; the writer is flushed inside it. On a machine of few cores the
server takes CPU from the driver's loop that on a cluster it does not (it runs on a VM of
its own): --nice-server gives it the lowest priority.

    PYTHONPATH=. .venv/bin/python benchmarks/report_latency.py --trials 4 --epochs 150 \
        --modes none,sync,writer,none,writer,none,writer [--nice-server]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ray import tune

from sweeps.ray.engine import connect
from sweeps.tracking.tracker import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.mlflow_rate import (  # noqa: E402
    cpu_by_side,
    epoch_result,
    server_group,
    tracker_with_runs,
)
from testkit.servers import mlflow_sqlite_server  # noqa: E402


def reporter(config):
    waits = []
    for e in range(1, config["epochs"] + 1):
        t0 = time.perf_counter()
        tune.report(epoch_result(e))
        waits.append(time.perf_counter() - t0)
    Path(config["out"], f"{config['i']}.json").write_text(json.dumps(waits))


class ToMLflow(tune.Callback):
    """The driver's side: each result to MLflow, written here (sync) or queued (writer)."""

    def __init__(self, tracker: Tracker, keys: list[str], mode: str):
        self.tracker, self.keys, self.mode = tracker, keys, mode

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its run config; the Tracker stays in the driver

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self.keys[trial.config["i"]]
        if self.mode == "writer":
            self.tracker.log_epoch(key, result)
        elif self.mode == "sync":  # written before Tune's loop goes on: the writer, waited for
            self.tracker.log_epoch(key, result)
            self.tracker.flush()


def run(uri: str, tmp: Path, trials: int, epochs: int, mode: str
        ) -> tuple[float, list[float], float]:
    tracker, students = tracker_with_runs(uri, tmp, trials, f"latency-{mode}")
    out = tmp / f"{mode}-{time.time_ns()}"
    out.mkdir()
    tuner = tune.Tuner(
        tune.with_resources(reporter, {"cpu": 0.1}),
        param_space={"i": tune.grid_search(list(range(trials))), "epochs": epochs,
                     "out": str(out)},
        run_config=tune.RunConfig(
            storage_path=str(tmp / "tune"), name=mode, verbose=0,
            callbacks=[ToMLflow(tracker, [t.key for t in students], mode)],
        ),
    )
    cpu0 = cpu_by_side(None)["driver"][os.getpid()]
    t0 = time.perf_counter()
    tuner.fit()
    tracker.flush()
    seconds = time.perf_counter() - t0
    cpu = cpu_by_side(None)["driver"][os.getpid()] - cpu0
    assert tracker.failed_writes == 0
    waits = [w for i in range(trials) for w in json.loads((out / f"{i}.json").read_text())]
    return trials * epochs / seconds, waits, cpu / (trials * epochs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--nice-server", action="store_true",
                   help="run the server at the lowest CPU priority (as if on its own host)")
    p.add_argument("--modes", default="none,sync,writer",
                   help="in this order; repeat them to interleave (the machine is noisy)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdlat-"))
    connect(None)
    print(f"{args.trials} trials x {args.epochs} results through Tune into an mlflow server")
    print("| driver callback | results/s | tune.report p50 ms | tune.report p95 ms "
          "| driver CPU ms/result |")
    print("| --- | --- | --- | --- | --- |")
    with mlflow_sqlite_server(tmp) as server:
        if args.nice_server:  # what a server on a host of its own does not take from the driver
            os.setpriority(os.PRIO_PGRP, server_group(server), 19)
        for mode in args.modes.split(","):
            rate, waits, cpu = run(server, tmp, args.trials, args.epochs, mode)
            q = statistics.quantiles(waits, n=20)
            print(f"| {mode} | {rate:.0f} | {statistics.median(waits) * 1e3:.1f} | "
                  f"{q[18] * 1e3:.1f} | {cpu * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
