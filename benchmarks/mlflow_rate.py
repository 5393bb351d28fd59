"""Epoch results per second the driver's MLflow Tracker sustains, into SQLite and into a real
local `mlflow server`, and what one result costs the caller (Tune's callback thread).

A synthetic stream: T trials report E epochs each, interleaved as concurrent trials would
(epoch 1 of every trial, then epoch 2, ...), each with the trainer's ~13 metrics plus Tune's
bookkeeping fields (which are not logged). Modes, each on a fresh store:
- sync: each result written in the caller (what the Tune callback did before the writer);
- writer: each result handed to Tracker.log_epoch (the background writer), timed until
  Tracker.flush() returns;
- async: MLflow's own async logging, each result one ``log_batch(..., synchronous=False)``
  from the caller (the same metrics, deduplicated the same way), timed until every returned
  RunOperations has been waited on (issue 18: used instead of the writer only if as fast);
- async buffered: the same with ``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS`` set (``--buffer``
  whole seconds), under which MLflow's queue waits that long, then merges what it holds into one
  batch per run of consecutive entries (issue 33: the earlier comparison left it unset).
Counted: results / (seconds from the first result to the last one written); caller latency =
time spent in the call, per result (p50/p95). Run creation happens before the clock starts.
CPU per result, over the same interval: the driver (this process: the writer, the MLflow
client), the server (its process group: every worker) and PostgreSQL (its processes). On a
machine where all three share a few cores, the rate is CPU-bound; these costs say what each
side sustains on cores of its own (RESULTS.md, "MLflow").

    PYTHONPATH=. .venv/bin/python benchmarks/mlflow_rate.py --trials 64 --epochs 20
    PYTHONPATH=. .venv/bin/python benchmarks/mlflow_rate.py --trials 64 --epochs 20 --postgres
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved  # noqa: E402

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store.storage import Storage
from sweeps.tracking import writer
from sweeps.tracking.tracker import Tracker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit.servers import mlflow_sqlite_server, postgres  # noqa: E402


def epoch_result(epoch: int) -> dict:
    trainer = {
        "epoch": epoch,
        "lr": 0.1,
        "train_loss": 1.0 / epoch,
        "train_acc": 0.5,
        "train_acc_clean": 0.5,
        "epoch_time": 1.0,
        "train_time": 0.9,
        "test_loss": 1.1,
        "test_acc": 0.5,
        "test_ece": 0.05,
        "logit_distance": 2.0,
        "test_logit_distance": 2.1,
        "test_agreement": 0.9,
    }
    tune = {
        "timestamp": time.time(),
        "pid": 1,
        "time_this_iter_s": 1.0,
        "training_iteration": epoch,
        "time_total_s": epoch * 1.0,
        "time_since_restore": 1.0,
        "iterations_since_restore": 1,
    }
    return {**trainer, **tune, "realised_noise_rate": 0.0}


def listener(port: int) -> int:
    """The pid listening on 127.0.0.1:``port``."""
    return next(c.pid for c in psutil.net_connections("tcp")
                if c.status == "LISTEN" and c.laddr.port == port)


def server_group(server: str) -> int:
    """The process group of the server listening at URL ``server`` (all its workers)."""
    return os.getpgid(listener(int(server.rsplit(":", 1)[1])))


def cpu_by_side(server: str | None, pg_port: int | None = None) -> dict[str, dict[int, float]]:
    """CPU seconds so far, by pid, of the driver (this process), the server's process group
    (found by its listening port) and the PostgreSQL this benchmark started (its postmaster,
    found by its port, and that one's children: never another PostgreSQL on the machine)."""
    groups: dict[str, dict[int, float]] = {"driver": {}, "server": {}, "postgres": {}}
    pgid = None if server is None else server_group(server)
    pg = set()
    if pg_port is not None:
        master = psutil.Process(listener(pg_port))
        pg = {master.pid, *(c.pid for c in master.children(recursive=True))}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            side = ("driver" if p.pid == os.getpid() else
                    "postgres" if p.pid in pg else
                    "server" if pgid is not None and os.getpgid(p.pid) == pgid else None)
            if side:
                groups[side][p.pid] = t.user + t.system
        except (psutil.Error, ProcessLookupError):
            continue
    return groups


def cpu_ms_per_result(before: dict, after: dict, results: int) -> dict[str, float]:
    return {side: 1e3 * sum(t - before[side].get(pid, 0.0) for pid, t in now.items()) / results
            for side, now in after.items()}


def tracker_with_runs(uri: str, tmp: Path, trials: int, name: str) -> tuple[Tracker, list]:
    """A Tracker on a fresh experiment ``name-<ns>`` with the child runs of ``trials``
    students already created (run creation stays out of any timing)."""
    spec = parse_spec(
        {
            "name": f"{name}-{time.time_ns()}",
            "dataset": {"name": "digits"},
            "chains": [["cnn-small", "cnn-small"]],
            "grid": {"tau": [float(t) for t in range(1, trials + 1)], "loss": ["kl"]},
            "storage": str(tmp / "store"),
            "tracking_uri": uri,
        }
    )
    tracker = Tracker(spec, Storage(spec.storage))
    students = [t for t in build_plan(spec).trials if t.generation == 1][:trials]
    for t in students:
        tracker.ensure_run(t)
    tracker.flush()
    return tracker, students


BUFFER = "MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"  # read by MLflow's queue on every round


def run(uri: str, tmp: Path, trials: int, epochs: int, mode: str, server: str | None = None,
        pg_port: int | None = None, buffer: int = 1) -> tuple[float, list[float], dict]:
    os.environ.pop(BUFFER, None)
    if mode == "async buffered":
        os.environ[BUFFER] = str(buffer)
    tracker, students = tracker_with_runs(uri, tmp, trials, f"rate-{mode.replace(' ', '-')}")
    latencies, ops = [], []
    cpu0 = cpu_by_side(server, pg_port)
    t0 = time.perf_counter()
    for e in range(1, epochs + 1):
        for t in students:
            r = epoch_result(e)
            c0 = time.perf_counter()
            if mode == "sync":
                tracker.writer.send(tracker._epochs(t.key, [r]))
            elif mode.startswith("async"):
                for run_id, metrics in tracker._epochs(t.key, [r]).items():
                    ops.append(tracker.client.log_batch(run_id, metrics=metrics,
                                                        synchronous=False))
            else:
                tracker.log_epoch(t.key, r)
            latencies.append(time.perf_counter() - c0)
    tracker.flush()
    for op in ops:
        op.wait()  # raises what the request raised
    seconds = time.perf_counter() - t0
    cpu = cpu_ms_per_result(cpu0, cpu_by_side(server, pg_port), trials * epochs)
    assert tracker.failed_writes == 0
    tracker.shutdown()
    os.environ.pop(BUFFER, None)
    return trials * epochs / seconds, latencies, cpu


def row(name: str, runs: list[tuple[float, list[float], dict[str, float]]]) -> str:
    """One table row over the rounds: results/s min / median; the rest medians."""
    med = statistics.median
    p50 = med(med(lat) for _, lat, _ in runs) * 1e3
    p95 = med(statistics.quantiles(lat, n=20)[18] for _, lat, _ in runs) * 1e3
    cpu = {side: med(c[side] for _, _, c in runs) for side in runs[0][2]}
    return (f"| {name} | {fmt([r for r, _, _ in runs], 0)} | {p50:.2f} | {p95:.2f} | "
            f"{cpu['driver']:.2f} | {cpu['server']:.2f} | {cpu['postgres']:.2f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--postgres", action="store_true", help="a server on PostgreSQL instead")
    p.add_argument("--workers", type=int, default=4, help="the PostgreSQL server's workers")
    p.add_argument("--buffer", type=int, default=1,
                   help="MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS (whole seconds: an int to MLflow)")
    p.add_argument("--modes", default="sync,writer,async,async buffered")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdrate-"))
    print(f"{args.trials} trials x {args.epochs} epochs = {args.trials * args.epochs} results; "
          f"variants interleaved over {args.rounds} rounds; CPU in ms per result (medians)")
    print("| store, mode | results/s min / median | caller p50 ms | caller p95 ms | CPU driver "
          "| CPU server | CPU PostgreSQL |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    n, e = args.trials, args.epochs

    def with_senders(k, fn):
        def call():
            writer.SENDERS = k
            return fn()
        return call

    if args.postgres:  # a server as the cluster runs it: PostgreSQL, several workers
        with postgres() as pg, mlflow_sqlite_server(
            tmp, f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/mlflow", args.workers
        ) as server:
            name = f"mlflow server, PostgreSQL, {args.workers} workers, writer"
            runs = interleaved({
                f"{name}, {k} sender(s)": with_senders(
                    k, lambda: run(server, tmp, n, e, "writer", server, pg))
                for k in (1, 4)}, args.rounds)
            for label, rs in runs.items():
                print(row(label, rs))
        return
    with mlflow_sqlite_server(tmp) as server:
        variants = {}
        for name, uri in (("SQLite", f"sqlite:///{tmp / 'rate.db'}"), ("mlflow server", server)):
            for mode in args.modes.split(","):
                where = server if uri == server else None
                variants[f"{name}, {mode}"] = (
                    lambda uri=uri, mode=mode, where=where:
                    run(uri, tmp, n, e, mode, where, buffer=args.buffer))
        for label, rs in interleaved(variants, args.rounds).items():
            print(row(label, rs))


if __name__ == "__main__":
    main()
