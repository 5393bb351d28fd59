"""The driver's cost per trial event at N = 1k, 10k, 100k trials (issue 29), on trials made in
memory (no storage, no Ray): each phase's cost per operation at each N and its growth exponent
between the smallest and the largest N (0: flat; 1: each operation scans the sweep).

Phases so far: ``plan.add`` (a trial found at run time joins the plan: a key lookup),
``progress.set`` (one trial's state changes: the generation's counts and the ETA kept per
event) and ``scheduler`` (the pure scheduler stepped through a whole run with 64 slots, every
teacher's bank built first, jobs ending in the order they started: cost per job handed out).
The sizes run interleaved, rotated each round (harness.py); figures are microseconds per
operation, min / median over rounds.

With ``--storage local|s3`` it times what a driver does with a sweep whose every trial is
stored (fabricated through the ledger's own writer, testkit/fabricate.py; not timed), per
trial: ``status`` (`kdsweep status`: the plan, one listing, every listed result read),
``reconcile`` (a rerun's snapshot and its proof of every stored model, on a node that proved
none before) and ``export`` (the Parquet file of every trial, written to storage); and ``fresh
start-up`` (a sweep none of whose trials is stored: the plan, the snapshot, the lease and
reconcile, all the driver does before Ray starts). On s3 the server is moto's on this machine
behind testkit/latency.py's proxy, which holds each request ``--latency`` seconds (a region
away) and counts them: requests per trial are printed beside the times. Local storage is a
tmpfs folder (the writes' fsyncs are not the subject).

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --sizes 1000,10000,100000 --rounds 3
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --storage local --rounds 2
    PYTHONPATH=. .venv/bin/python benchmarks/scale.py --storage s3 --sizes 1000,10000,20000 \
        --latency 0.05 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import interleaved, min_med, timed  # noqa: E402
from sweeps.app.progress import Progress  # noqa: E402
from sweeps.domain.critical_path import remaining_work  # noqa: E402
from sweeps.domain.plan import Plan, build_plan  # noqa: E402
from sweeps.domain.scheduler import Scheduler  # noqa: E402
from sweeps.domain.spec import parse_spec  # noqa: E402
from sweeps.store.ledger import TrialState  # noqa: E402

TAUS = [1, 2, 4, 8, 16]  # a teacher and 6 students per seed: 7 trials


def plan_of(n: int, storage: str = "/nonexistent") -> Plan:
    spec = parse_spec({
        "name": f"scale-{n}", "dataset": {"name": "digits"},
        "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": 2},
        "grid": {"loss": ["kl", "mse"], "tau": TAUS, "seeds": list(range(math.ceil(n / 7))),
                 "baselines": False},
        "storage": storage,
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
        s = Scheduler(plan.spec, plan.trials, plan.trials, done=(), banks=(), values={},
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
            s.complete(oldest, done=True, value=0.5)
        return jobs

    jobs = []
    seconds = timed(lambda: jobs.append(run()))
    return seconds / jobs[-1]


PHASES = {"plan.add": plan_add, "progress.set": progress_set, "scheduler": scheduler_run}


# ---- a stored sweep ------------------------------------------------------------------------
def status(plan: Plan) -> float:
    from sweeps.app.progress import sweep_status

    return timed(lambda: sweep_status(plan.spec)) / len(plan.trials)


def reconcile_rerun(plan: Plan) -> float:
    from sweeps.store.ledger import Ledger
    from sweeps.store.snapshot import Snapshot, reconcile
    from sweeps.store.storage import Storage

    def rerun():
        with tempfile.TemporaryDirectory() as cache:  # a node that proved no model before
            os.environ["KDSWEEP_CACHE"] = cache
            snapshot = Snapshot.load(Ledger(Storage(plan.spec.storage), repair=False),
                                     (t.key for t in plan.trials))
            reconcile(snapshot, plan.trials, retry_failed=False, check_lease=lambda: None)

    return timed(rerun) / len(plan.trials)


def export(plan: Plan) -> float:
    from sweeps.store.ledger import Ledger
    from sweeps.store.results import write_results
    from sweeps.store.snapshot import Snapshot
    from sweeps.store.storage import Storage

    snapshot = Snapshot.load(Ledger(Storage(plan.spec.storage)), (t.key for t in plan.trials))
    return timed(lambda: write_results(plan, snapshot, {}, fence=1)) / len(plan.trials)


def fresh_start(plan: Plan) -> float:
    """A fresh sweep's start-up, what the driver does before it starts Ray (sweep.run_sweep):
    the plan, the snapshot of storage that holds none of its trials, the lease taken (and
    given back), reconcile: on a storage root of its own, new each call."""
    import io
    import uuid

    from sweeps.store.lease import DriverLease
    from sweeps.store.ledger import Ledger, SweepFile, sweep_file
    from sweeps.store.snapshot import Snapshot, reconcile
    from sweeps.store.storage import Storage

    spec = plan.spec.model_copy(update={"storage": f"{plan.spec.storage}-fresh-"
                                                   f"{uuid.uuid4().hex[:8]}"})

    def start():
        trials = build_plan(spec).trials
        storage = Storage(spec.storage)
        snapshot = Snapshot.load(Ledger(storage, repair=False), (t.key for t in trials))
        lease = DriverLease(storage, sweep_file(spec, SweepFile.LEASE))
        lease.acquire(io.StringIO())
        reconcile(snapshot, trials, retry_failed=False, check_lease=lambda: None)
        lease.release()

    return timed(start) / len(plan.trials)


STORED = {"fresh start-up": fresh_start, "status": status, "reconcile": reconcile_rerun,
          "export": export}


@contextlib.contextmanager
def storage_root(kind: str, latency: float, work: Path):
    """(storage URI prefix, the proxy or None) for ``kind``: a tmpfs folder, or moto's S3
    server behind the latency proxy."""
    if kind == "local":
        yield str(work / "store"), None
        return
    from testkit.latency import LatencyProxy
    from testkit.servers import S3_TEST_CREDENTIALS, s3_server

    os.environ.update(S3_TEST_CREDENTIALS)
    with s3_server(work) as endpoint, LatencyProxy(int(endpoint.rsplit(":", 1)[1]),
                                                   latency) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        yield "s3://kdsweep/scale", proxy


def stored_sweeps(args) -> None:
    from testkit.fabricate import fabricate

    sizes = [int(s) for s in args.sizes.split(",")]
    shm = "/dev/shm" if args.storage == "local" and os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as work, \
            storage_root(args.storage, args.latency, Path(work)) as (root, proxy):
        phases = {name: STORED[name] for name in args.phases.split(",")}
        plans = {}
        for n in sizes:
            plans[n] = plan_of(n, f"{root}/{n}")  # a storage of its own: a listing is of all
            if set(phases) == {"fresh start-up"}:
                continue  # nothing stored: nothing to fabricate
            t0 = time.perf_counter()
            delay = proxy.delay if proxy else 0.0
            if proxy:
                proxy.delay = 0.0  # fabricating is not the subject
            fabricate(plans[n].spec)
            if proxy:
                proxy.delay = delay
            print(f"fabricated {len(plans[n].trials):,} stored trials in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        print(f"storage: {args.storage}" + (f", {args.latency * 1e3:.0f} ms per request"
                                            if proxy else ""))
        print("| phase | " + " | ".join(f"{n:,} (us/trial, min / median)" for n in sizes)
              + " | growth exponent |" + (" requests per trial |" if proxy else ""))
        print("| --- " * (len(sizes) + 2 + bool(proxy)) + "|")
        for name, phase in phases.items():
            counts = {}

            def run(n, phase=phase, counts=counts):
                before = proxy.total() if proxy else 0
                seconds = phase(plans[n])
                if proxy:
                    counts[n] = (proxy.total() - before) / len(plans[n].trials)
                return seconds

            figures = interleaved({n: (lambda n=n: run(n)) for n in sizes}, args.rounds)
            print_row(name, sizes, figures,
                      " | ".join(f"{counts[n]:.3f}" for n in sizes) if proxy else None)


def print_row(name, sizes, figures, extra=None) -> None:
    cells = [min_med([f * 1e6 for f in figures[n]]) for n in sizes]
    lo, hi = min(sizes), max(sizes)
    growth = (f"{math.log(min(figures[hi]) / min(figures[lo])) / math.log(hi / lo):+.2f}"
              if hi > lo else "- (one size)")
    print(f"| {name} | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in cells)
          + f" | {growth} |" + (f" {extra} |" if extra else ""), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--storage", choices=["local", "s3"], help="time a stored sweep's phases")
    p.add_argument("--latency", type=float, default=0.05, help="seconds per S3 request")
    p.add_argument("--phases", default=",".join(STORED),
                   help="the stored sweep's phases, comma-separated (a fresh start-up alone "
                        "fabricates nothing)")
    args = p.parse_args()
    if args.storage:
        return stored_sweeps(args)
    sizes = [int(s) for s in args.sizes.split(",")]
    plans = {n: plan_of(n) for n in sizes}
    print(f"trials: {', '.join(str(len(plans[n].trials)) for n in sizes)}")
    print("| phase | " + " | ".join(f"{n:,} (us/op, min / median)" for n in sizes)
          + " | growth exponent |")
    print("| --- " * (len(sizes) + 2) + "|")
    for name, phase in PHASES.items():
        figures = interleaved({n: (lambda n=n, phase=phase: phase(plans[n])) for n in sizes},
                              args.rounds)
        print_row(name, sizes, figures)


if __name__ == "__main__":
    main()
