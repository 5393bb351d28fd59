"""Sweep: spec -> plan -> one dependency-driven Tune experiment -> results to Parquet and MLflow.

``run_sweep`` reads as its phases: check (before Ray starts) -> snapshot, started (the listing,
in a thread of its own) -> lease -> connect (a local Ray, where a planned trial is certainly to
be trained) -> snapshot, joined -> reconcile and record what storage holds -> train the
rest (engine.py) -> export the results (Parquet, MLflow).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import torch

from kd_core.bank import bank_nbytes
from kd_core.data import ImageData

# Progress is ours (progress.py): Tune's own status tables would interleave with it.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Each epoch already goes to MLflow and the trial's history in storage: Tune's per-trial JSON,
# CSV and TensorBoard copies (~40 KB a trial in shared storage) would be a third and fourth.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


from ..domain import faults  # noqa: E402
from ..domain.critical_path import remaining_work, trial_costs  # noqa: E402
from ..domain.fusion import teachers_cap  # noqa: E402
from ..domain.looks import extend, worst_case  # noqa: E402
from ..domain.plan import Plan, Trial, build_plan  # noqa: E402
from ..domain.sampling import OptunaSource, optuna_sources  # noqa: E402
from ..domain.scheduler import Scheduler  # noqa: E402
from ..domain.settings import env_number  # noqa: E402
from ..domain.spec import SpecError, SweepSpec  # noqa: E402
from ..ray.engine import (  # noqa: E402
    EXIT_RAY_LOST,
    LocalRayWatch,
    connect,
    end_processes,
    run_experiment,
)
from ..ray.plugins import runtime_env  # noqa: E402
from ..ray.teacher_bank import wants_shared_bank  # noqa: E402
from ..store.lease import DriverLease, holder  # noqa: E402
from ..store.ledger import Ledger, SweepFile, TrialFile, TrialState, sweep_file, trial_file  # noqa: E402
from ..store.results import write_results  # noqa: E402
from ..store.snapshot import Loading, Snapshot, reconcile, state_index  # noqa: E402
from ..store.storage import Storage, concurrently  # noqa: E402
from ..tracking.tracker import Tracker  # noqa: E402
from .events import SweepEvents  # noqa: E402
from .preflight import check_all, check_fits  # noqa: E402
from .progress import Progress  # noqa: E402

log = logging.getLogger(__name__)
LARGE_GRID = 1000  # trials; a typo in a grid should not start a month of GPU time unasked


class GridTooLarge(SpecError):
    """The grid plans more trials than the run allows (``max_trials``)."""


def record_stored(
    plan: Plan, snapshot: Snapshot, events: SweepEvents, sources: list[OptunaSource],
    retry_failed: bool = False, out=None, check_lease=lambda: None,
) -> list[Trial]:
    """Repair what storage holds (snapshot.reconcile), record every planned trial that ended
    before; return the rest (to train). Diverged trials train again only with
    ``retry_failed``."""
    reconcile(snapshot, plan.trials, retry_failed, check_lease,
              teachers=[s.teacher.key for s in sources])
    todo, diverged = [], 0
    for t in plan.trials:
        if (result := snapshot.result(t.key)) is None:
            todo.append(t)
        else:
            diverged += result.state == TrialState.DIVERGED
            events.reused(t, result)
    if diverged:
        print(
            f"{diverged} trial(s) diverged in an earlier run and are not trained again "
            "(their students are skipped); `kdsweep run SPEC --retry-failed` retrains them",
            file=out,
            flush=True,
        )
    return todo


def make_scheduler(
    spec: SweepSpec,
    plan: Plan,
    snapshot: Snapshot,
    todo: list[Trial],
    sources: list[OptunaSource],
    data: ImageData,
    events: SweepEvents,
) -> Scheduler:
    """The scheduler, told what the snapshot holds: done trials, stored banks, search metrics."""
    cost = trial_costs(spec.architectures, data.num_classes, tuple(data.train_images.shape[1:]))
    done = {k for k in snapshot.ended() if snapshot.state(k) is TrialState.DONE}
    teachers = {t.teacher_key for t in plan.trials} | {s.teacher.key for s in sources}
    dtype = spec.train.bank_dtype
    return Scheduler(
        spec,
        plan.trials,
        todo,
        done=done,
        # from the snapshot's listing, before Tune's loop starts
        banks={k for k in done & teachers if snapshot.has_bank(k, dtype)},
        values={k: getattr(r, spec.search.metric, None)
                for k, r in snapshot.results.items() if r is not None},
        priority=remaining_work(spec.chains, cost),
        wants_bank=lambda n_students: wants_shared_bank(spec.train, data, n_students),
        listener=events,
        sources=sources,
        # a fused job of cousins holds one bank per teacher: together within the budget one
        # trial may give a bank (fusion.teachers_cap)
        max_teachers=teachers_cap(
            bank_nbytes(len(data.train_labels), data.augment, data.num_classes,
                        getattr(torch, dtype)),
            spec.train.bank_budget_gb * 2**30),
    )


def mlflow_wait() -> float:
    """Seconds a run waits, after its Parquet, for MLflow to catch up before it exits."""
    return env_number("KDSWEEP_MLFLOW_WAIT", 300.0)


mlflow_wait()  # a bad value is one line when the driver loads, before any work


def export_results(plan: Plan, snapshot: Snapshot, tracker: Tracker, fence: int,
                   wait: float | None = None) -> str:
    """The Parquet file in storage (carrying the driver lease's ``fence``), written first,
    never waiting on MLflow: a trial's ``mlflow_run_id`` is its run's as far as the tracker
    knows it then. MLflow is then given ``wait`` seconds to catch up (None: as long as it
    takes); where it did, and runs were created meanwhile, the file is written again with their
    ids. The file goes on the parent run in a lane, like every MLflow write. Returns its URI."""
    known = dict(tracker.runs)  # a copy: the lanes add to it
    uri = write_results(plan, snapshot, known, fence)
    faults.reached("mid-export")
    if tracker.flush(wait) and any(t.key not in known for t in plan.trials):
        uri = write_results(plan, snapshot, dict(tracker.runs), fence)
    tracker.raise_if_full()  # the results are in storage; MLflow's copies wait for space
    tracker.results(snapshot.ledger.results_file(plan.spec))
    return uri


def run_sweep(
    spec: SweepSpec,
    address: str | None = None,
    out=None,
    retry_failed: bool = False,
    max_trials: int | None = None,
    judge: Judge | None = None,
) -> str:
    """Train every trial of the sweep not yet in storage; returns the results file's URI.
    ``out``: where progress goes (the standard output at the time of the call); ``max_trials``:
    refuse a grid that plans more (GridTooLarge), before any work. ``judge``: a sequential
    study's (grid.add_seeds) decisions from its stored results (the report's rule, which this
    layer does not import: `kdsweep run` passes sweeps.report.sequential.next_look)."""
    out = out or sys.stdout
    if spec.grid.add_seeds is not None and judge is None:
        raise SpecError("grid.add_seeds: this caller gives no judge of the claims (kdsweep run "
                        "does)")

    # check
    storage = Storage(spec.storage)
    # Trials run in other processes and cwds (Tune moves them to their trial dirs): hand them
    # the absolute location.
    spec = spec.model_copy(update={"storage": storage.uri if storage.is_local else spec.storage})
    plan = build_plan(spec)
    planned = worst_case(spec) if spec.grid.add_seeds is not None else len(plan.trials)
    if max_trials is not None and planned > max_trials:
        raise GridTooLarge(f"the grid plans {planned} trials (more than {max_trials}"
                           f"{', at its worst case of seeds' if planned > len(plan.trials) else ''}"
                           "); check it with `kdsweep plan`, then run it with --large")
    data = check_all(spec, address)
    env = runtime_env(spec)  # the plugins' files, for every worker
    # snapshot, started: each stored result read once in this run (a trial that ends from here
    # on, trained by an orphaned worker of a dead driver, is found by its worker's claim and
    # recorded then); read only: what is corrupt is repaired in reconcile, under the lease.
    # Listed in a thread of its own while the lease is taken and Ray starts (a root shared
    # with other sweeps lists for seconds: hidden behind start-up the driver makes anyway)
    loading = Loading(Ledger(storage, repair=False), (t.key for t in plan.trials))
    try:
        return _start_and_run(spec, plan, data, env, storage, loading, address, out,
                              retry_failed, judge)
    finally:
        loading.wait()  # ended on every path: an error before the join waits for it here


# Planned trials whose result.json a driver looks for while its snapshot lists (one round of
# requests): one found missing means there is training to do, so Ray starts before the join
PROBES = 8


def _wants_ray(spec: SweepSpec, plan: Plan, storage: Storage, retry_failed: bool) -> bool:
    """Whether a local Ray starts before the snapshot is joined: where there is certainly
    something to run (a search, failed trials retried, or one of PROBES planned trials spread
    over the plan without a result: a fresh sweep). A rerun whose probes are all stored waits
    for the snapshot, which decides (a stored sweep's rerun only exports, with no Ray)."""
    if retry_failed or spec.search.type == "optuna":
        return True
    trials = plan.trials
    picked = sorted({len(trials) - 1 - i * len(trials) // PROBES for i in range(PROBES)})
    rels = [trial_file(trials[i].key, TrialFile.RESULT) for i in picked if i >= 0]
    return not all(concurrently(storage.exists, rels, storage.width))


def _start_and_run(spec: SweepSpec, plan: Plan, data: ImageData, env: dict | None,
                   storage: Storage, loading: Loading, address: str | None, out,
                   retry_failed: bool, judge: Judge | None) -> str:
    import ray

    faults.arm()
    if address is not None:  # a cluster is joined (or refused, in one line) before the lease
        connect(address, env)
    # one driver per sweep and cluster, before Ray starts
    lease = DriverLease(storage, sweep_file(spec, SweepFile.LEASE))
    # a local Ray lost mid-run (its raylet killed by the out-of-memory killer) is one line;
    # the watch also knows the local Ray's processes, which a superseded driver ends at once
    watch = LocalRayWatch(_ray_lost) if address is None else None
    lease.on_lost = lambda held: _superseded(lease, held, watch)
    lease.acquire(out)
    try:  # released on every way out from here (a SIGTERM's SystemExit included)
        faults.reached("after-lease")
        # connect: a local Ray starts while the snapshot lists where a planned trial is
        # certainly to be trained (a rerun of a stored sweep only exports, with no Ray)
        def connect_ray() -> None:
            connect(address, env)
            if address is None:  # memory: as much as Ray granted
                check_fits(spec.resources, spec.architectures, ray.cluster_resources())

        started = address is None and _wants_ray(spec, plan, storage, retry_failed)
        if started:
            connect_ray()
        # snapshot, joined: what it holds decides the rest
        snapshot = loading.join()
        snapshot.ledger.writer = lease  # the sweep's shared files are written under it
        done = snapshot.ended()
        print(plan.describe(done), file=out, flush=True)
        # connect, unless every trial is in storage: then a rerun only exports (seconds)
        if not started and (len(done) < len(plan.trials) or retry_failed
                            or spec.search.type == "optuna"):
            connect_ray()
        with watch or contextlib.nullcontext():
            uri = _train_and_export(spec, plan, data, snapshot, out, retry_failed, lease,
                                    address, env)
            for k, seeds in enumerate(spec.grid.look_seeds()[1:], 2):
                wanted, lines = judge(spec, uri)
                print(f"look {k - 1}: " + "; ".join(lines), file=out, flush=True)
                if not wanted:
                    print(f"every claim decided at look {k - 1}: no more seeds", file=out,
                          flush=True)
                    break
                added = extend(plan, seeds, wanted)
                print(f"look {k}: seeds {', '.join(map(str, seeds))} in {len(wanted)} "
                      "strand(s) (chain x noise rate) of the claims undecided: "
                      f"{len(added)} trials", file=out, flush=True)
                snapshot = Snapshot.load(Ledger(storage, repair=False),
                                         (t.key for t in plan.trials))
                snapshot.ledger.writer = lease
                uri = _train_and_export(spec, plan, data, snapshot, out, retry_failed, lease,
                                        address, env)
            return uri
    finally:
        lease.release()


# A sequential study's judge: (spec, the results file's URI) -> (the strands the next look adds
# seeds to, empty when every claim is decided; a line per claim saying where it stands)
Judge = Callable[[SweepSpec, str], tuple[set, list[str]]]


def _superseded(lease: DriverLease, held: dict, watch: LocalRayWatch | None) -> None:
    """This driver was paused past its lease's TTL and another took the sweep over: stop now,
    from whichever thread saw it, writing nothing more (its writes so far are each atomic)."""
    print(
        f"kdsweep run: error: {lease.storage.uri_of(lease.rel)}: another driver took this "
        f"sweep over ({holder(held)}) while this one was not renewing its lease; this driver "
        "stops",
        file=sys.stderr,
        flush=True,
    )
    # its local Ray and workers, as the watch last listed them, SIGKILLed without a wait (no
    # scan either: this process's other threads run meanwhile): nothing left running. The
    # watch stands down first: the Ray it sees die here is this stop's doing, not a lost Ray
    # (a second line and exit 4, seen under load); where the watch fired first, its handler
    # ends the process
    if watch is not None and not watch.stand_down():
        threading.Event().wait()
    end_processes(watch.procs if watch is not None else [], grace=0)
    os._exit(3)  # not sys.exit: no exit handler may write (the MLflow flush) after losing


def _ray_lost(cause: str, log: str, console: int, procs: list) -> None:
    """The local Ray is gone (LocalRayWatch, which sent what this process prints from then on,
    Ray's tracebacks included, to ``log``): one line on the console with the cause and what
    to do, what is left of Ray ended, exit EXIT_RAY_LOST. Nothing stored is touched: every
    write is atomic, and a rerun resumes."""
    os.write(console, (
        f"kdsweep run: error: the local Ray stopped: {cause}; everything stored is kept "
        "(trials done, their checkpoints): run the same command to continue "
        f"(Ray's messages: {log})\n").encode())
    end_processes(procs, grace=0)
    os._exit(EXIT_RAY_LOST)


def _train_and_export(
    spec: SweepSpec,
    plan: Plan,
    data: ImageData,
    snapshot: Snapshot,
    out,
    retry_failed: bool,
    lease: DriverLease,
    address: str | None,
    env: dict | None = None,
) -> str:
    # On the way out (SIGTERM from `ray job stop`, which the CLI turns into SystemExit; Ctrl-C;
    # an error) the tracker sends what is queued while its sender pool still takes work:
    # Python shuts such pools before exit handlers run.
    ledger = snapshot.ledger
    lease.check()  # the sweep's MLflow parent run is created under the lease
    with Tracker(spec, ledger.storage) as tracker:
        tracker.check_lease = lease.check
        tracker.sweep.start()
        print("\n".join(tracker.sweep.links()), file=out, flush=True)
        ledger.save_trial_list(spec, [t.to_dict() for t in plan.trials], lease.check())
        # reconcile and record what storage holds, train the rest
        sources = optuna_sources(spec, plan)
        progress = Progress(plan, snapshot.state, out)
        events = SweepEvents(plan, snapshot, tracker, progress, lease.check)
        todo = record_stored(plan, snapshot, events, sources, retry_failed, out, lease.check)
        scheduler = make_scheduler(spec, plan, snapshot, todo, sources, data, events)
        if todo or sources:
            connect(address, env)  # already, unless storage changed since the count above
            run_experiment(spec, ledger, scheduler, events, lease.token)
        # export: the Parquet first, then MLflow for at most KDSWEEP_MLFLOW_WAIT seconds
        deadline = time.monotonic() + mlflow_wait()
        uri = export_results(plan, snapshot, tracker, lease.check(), mlflow_wait())
        # what `kdsweep status` reads instead of every result (Ledger.state_index)
        ledger.save_state_index(spec, state_index(snapshot, (t.key for t in plan.trials)),
                                lease.check())
        ok = all(s in (TrialState.DONE, TrialState.STOPPED_EARLY)
                 for s in progress.state.values())  # diverged, failed or skipped: FAILED
        left = tracker.close("FINISHED" if ok else "FAILED",
                             wait=max(0.0, deadline - time.monotonic()))
        print(progress.table(), file=out)
        if left:
            print(f"MLflow: {left} writes not made after {mlflow_wait():g} s "
                  "(KDSWEEP_MLFLOW_WAIT); the results file is complete; rerun the same command "
                  "to fill MLflow in", file=out)
        if tracker.failed_writes:
            print(
                f"MLflow: {tracker.failed_writes} writes failed (see the warnings); "
                "rerun the same command to fill them in",
                file=out,
            )
        print(f"results: {uri}", file=out, flush=True)
        return uri
