"""A rerun of a fully stored sweep into an MLflow server behind 100 ms per request (issue 43,
item 6): how long the driver's main thread waits on MLflow, when the Parquet is written, when
MLflow is complete.

N stored trials (testkit.fabricate, EPOCHS epochs each) on local storage; a plain `mlflow
server` (SQLite, 2 workers) behind testkit's latency proxy; `run_sweep` in this process, as
`kdsweep run` calls it. Timed the same way for any commit (PYTHONPATH picks the code): the
longest single ``Writer.put`` (the main thread and Tune's callbacks), ``record_stored`` (the
main thread recording every stored trial), the first ``write_results`` (the Parquet) and the
run's return, from the call; then, where the run returned with MLflow behind, a second run
that waits for it (``KDSWEEP_MLFLOW_WAIT`` an hour), and the runs MLflow holds at the end.

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.mlflow_slow --trials 1000
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=1000, help="a multiple of 10")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--delay", type=float, default=0.1)
    ap.add_argument("--wait", type=float, default=1.0, help="KDSWEEP_MLFLOW_WAIT of run 1")
    a = ap.parse_args()

    import ray  # noqa: F401  (imported by run_sweep: its import is not the run's to pay)
    from mlflow import MlflowClient

    from sweeps.app import sweep as sweep_module
    from sweeps.domain.spec import parse_spec
    from sweeps.tracking import writer as writer_module
    from testkit.fabricate import fabricate
    from testkit.latency import LatencyProxy
    from testkit.servers import mlflow_sqlite_server

    figures = {"put": 0.0, "record_stored": [], "parquet": []}
    put = writer_module.Writer.put

    def timed_put(self, *args):
        t0 = time.perf_counter()
        put(self, *args)
        figures["put"] = max(figures["put"], time.perf_counter() - t0)

    record_stored, write_results = sweep_module.record_stored, sweep_module.write_results

    def timed_record(*args, **kw):
        t0 = time.perf_counter()
        try:
            return record_stored(*args, **kw)
        finally:
            figures["record_stored"].append(time.perf_counter() - t0)
            figures["recorded"] = time.monotonic()

    def timed_write(*args, **kw):
        uri = write_results(*args, **kw)
        figures["parquet"].append(time.monotonic())
        return uri

    writer_module.Writer.put = timed_put
    sweep_module.record_stored, sweep_module.write_results = timed_record, timed_write

    work = Path(tempfile.mkdtemp(prefix="mlflow-slow-"))
    with mlflow_sqlite_server(work, workers=2) as server, \
            LatencyProxy(int(server.rsplit(":", 1)[1]), delay=a.delay) as proxy:
        seeds = a.trials // 10
        spec = parse_spec({
            "name": "slow", "dataset": {"name": "digits"},
            "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": a.epochs},
            "grid": {"loss": ["kl"], "tau": [1, 2, 3, 4, 6, 8, 10, 15, 20],
                     "seeds": list(range(seeds)), "baselines": False},
            "storage": str(work / "store"), "tracking_uri": proxy.endpoint,
        })
        n = len(fabricate(spec))
        client = MlflowClient(server)

        def finished() -> int:
            exp = client.get_experiment_by_name("slow")
            if exp is None:
                return 0
            runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'",
                                      max_results=5000)
            return sum(r.info.status == "FINISHED" for r in runs)

        for i, wait in enumerate([a.wait, 3600.0]):  # then as long as MLflow takes
            os.environ["KDSWEEP_MLFLOW_WAIT"] = str(wait)
            figures["put"], figures["parquet"] = 0.0, []
            t0 = time.monotonic()
            sweep_module.run_sweep(spec, out=io.StringIO())
            took = time.monotonic() - t0
            parquet = figures["parquet"][0]
            done = finished()
            print(f"run {i + 1} ({n} trials, {a.epochs} epochs, {a.delay * 1e3:g} ms/request, "
                  f"wait {wait}): returned after {took:.1f} s; Parquet at "
                  f"{parquet - t0:.1f} s ({parquet - figures['recorded']:.1f} s "
                  f"after record_stored ended); longest put {figures['put'] * 1e3:.1f} ms; "
                  f"record_stored {figures['record_stored'][-1]:.2f} s; MLflow runs FINISHED "
                  f"{done}/{n}; requests so far {proxy.total()}", flush=True)
            if done == n:
                break


if __name__ == "__main__":
    main()
