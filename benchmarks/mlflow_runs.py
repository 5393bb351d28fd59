"""Trial runs per second into a local MLflow server: what a rerun of a stored sweep costs the
driver's Tracker (issue 29, item 4), and whether that cost stays flat as the experiment grows.

N trials are stored whole (testkit/fabricate.py: a result, a sealed model), then handed to the
Tracker as a rerun does (``ensure_run`` then ``finish(reused=True)``: the run, its params, its
epochs from the stored history, its dataset input, the model and analysis artifacts, its end),
into a fresh experiment on a real `mlflow server`. Timed: windows of ``--window`` trials
starting at each of ``--at`` (enqueued, then flushed), the trials between windows written
untimed; so "at 9,900" is the cost once the experiment holds 9,900 runs. Variants (lanes:
KDSWEEP_MLFLOW_SENDERS) interleave, rotated each round, each on a fresh experiment.

    PYTHONPATH=. .venv/bin/python benchmarks/mlflow_runs.py --trials 1000 --at 0,900 \\
        --lanes 1,8 --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/mlflow_runs.py --trials 10000 --at 0,900,9900 \\
        --lanes 8 --rounds 1 --postgres
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, min_med  # noqa: E402
from benchmarks.scale import plan_of  # noqa: E402
from sweeps.store.ledger import Ledger  # noqa: E402
from sweeps.store.storage import Storage  # noqa: E402
from sweeps.tracking import writer  # noqa: E402
from sweeps.tracking.tracker import Tracker  # noqa: E402
from testkit.fabricate import fabricate  # noqa: E402
from testkit.servers import mlflow_sqlite_server, postgres  # noqa: E402


class Requests:
    """HTTP requests the client sends, counted where every MLflow request goes through
    (requests' adapter): REST calls and artifact uploads alike."""

    def __init__(self):
        import threading

        import requests.adapters

        self.count, self.lock = 0, threading.Lock()
        send = requests.adapters.HTTPAdapter.send

        def counted(adapter, *a, **kw):
            with self.lock:
                self.count += 1
            return send(adapter, *a, **kw)

        requests.adapters.HTTPAdapter.send = counted


REQUESTS = Requests()
PER_TRIAL: list[float] = []  # requests per trial in each timed window


def run(server: str, store: str, trials: int, at: list[int], window: int, lanes: int,
        name: str) -> dict[int, float]:
    """Trials per second in each window (start -> rate)."""
    writer.SENDERS = lanes
    plan = plan_of(trials, store)
    spec = plan.spec.model_copy(update={"name": name, "tracking_uri": server})
    ledger = Ledger(Storage(store))
    trials_ = plan.trials[:trials]
    results = {t.key: ledger.result(t.key) for t in trials_}
    tracker = Tracker(spec, ledger.storage)
    rates, done = {}, 0

    def write(ts):
        for t in ts:
            tracker.ensure_run(t)
            tracker.finish(t.key, results[t.key], reused=True)
        tracker.flush()

    for start in at:
        write(trials_[done:start])  # untimed: the experiment grows to ``start`` runs
        t0, sent = time.perf_counter(), REQUESTS.count
        write(trials_[start:start + window])
        rates[start] = window / (time.perf_counter() - t0)
        PER_TRIAL.append((REQUESTS.count - sent) / window)
        done = start + window
    assert tracker.failed_writes == 0, tracker.failed_writes
    tracker.shutdown()
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--at", default="0,900")
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--lanes", default="1,8")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--postgres", action="store_true",
                   help="the server on PostgreSQL with 4 workers (as start-mlflow.sh)")
    args = p.parse_args()
    at, lanes = [int(a) for a in args.at.split(",")], [int(n) for n in args.lanes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kdruns-"))
    store = str(work / "store")
    t0 = time.perf_counter()
    fabricate(plan_of(args.trials, store).spec)
    print(f"fabricated {args.trials:,} stored trials in {time.perf_counter() - t0:.0f} s")
    with contextlib.ExitStack() as stack:
        if args.postgres:
            pg = stack.enter_context(postgres())
            backend, workers = f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/mlflow", 4
        else:
            backend, workers = None, 1
        server = stack.enter_context(mlflow_sqlite_server(work, backend, workers))
        where = f"mlflow server on {'PostgreSQL, 4 workers' if args.postgres else 'SQLite'}"
        runs = iter(range(10**6))
        figures = interleaved({
            n: (lambda n=n: run(server, store, args.trials, at, args.window, n,
                                f"runs-{n}-{next(runs)}")) for n in lanes}, args.rounds)
    print(f"{where}; {args.window} trials per window; trial runs/s min / median over "
          f"{args.rounds} round(s); HTTP requests per trial {min(PER_TRIAL):.1f}-"
          f"{max(PER_TRIAL):.1f}")
    print("| lanes | " + " | ".join(f"at {a:,}" for a in at) + f" | at {at[-1]:,} / at {at[0]:,} |")
    print("| --- " * (len(at) + 2) + "|")
    for n in lanes:
        cells = [min_med([r[a] for r in figures[n]]) for a in at]
        ratio = min_med([r[at[-1]] / r[at[0]] for r in figures[n]])
        print(f"| {n} | " + " | ".join(f"{lo:.1f} / {md:.1f}" for lo, md in cells)
              + f" | {ratio[0]:.2f} / {ratio[1]:.2f} |")


if __name__ == "__main__":
    main()
