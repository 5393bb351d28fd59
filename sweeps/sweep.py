"""Sweep: spec -> plan -> one dependency-driven Tune experiment -> results to Parquet and MLflow.

``run_sweep`` reads as its phases: check (before Ray starts) -> connect -> record what storage
already holds -> train the rest (engine.py) -> publish results.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from kd_core.data import ImageData

# Progress is ours (progress.py): Tune's own status tables would interleave with it.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Each epoch already goes to MLflow and the trial's history in storage: Tune's per-trial JSON,
# CSV and TensorBoard copies (~40 KB a trial in shared storage) would be a third and fourth.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from . import faults  # noqa: E402
from .engine import DependencySearcher, Sampler, run_experiment  # noqa: E402
from .events import SweepEvents  # noqa: E402
from .lease import DriverLease  # noqa: E402
from .plan import Plan, Trial, build_plan, search_contexts  # noqa: E402
from .preflight import check_all, check_fits  # noqa: E402
from .progress import Progress  # noqa: E402
from .results import write_results  # noqa: E402
from .schedule import remaining_work, trial_costs  # noqa: E402
from .spec import SweepSpec  # noqa: E402
from .storage import Storage  # noqa: E402
from .store import TrialStore  # noqa: E402
from .teacher_bank import wants_shared_bank  # noqa: E402
from .tracking import Tracker  # noqa: E402

log = logging.getLogger(__name__)


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` ('auto' inside ray job submit), or start a Ray of our
    own: never one that `ray start` left on this machine (Ray's address discovery would join
    it), and listening on 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
        return
    # Going around Ray: ray.init turns a node address of 127.0.0.1 into the machine's external
    # IP unless Ray believes clusters are off (as on macOS); its processes then bind loopback.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # this process
    # ... and the Ray processes it starts (they inherit the variable), but not what this
    # process runs later (a `ray start` it spawns would refuse to join a cluster)
    key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    before = os.environ.get(key)
    os.environ[key] = "0"
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **quiet)
    finally:
        if before is None:
            os.environ.pop(key)
        else:
            os.environ[key] = before


def stored_done(plan: Plan, store: TrialStore) -> set[str]:
    return {t.key for t in plan.trials if store.is_done(t.key)}


def record_stored(
    plan: Plan, store: TrialStore, events: SweepEvents, retry_failed: bool = False, out=None
) -> list[Trial]:
    """Record every planned trial that storage already holds; return the rest (to train).
    A rerun retries trials that failed before; diverged ones only with ``retry_failed``. A
    finished teacher whose model is gone publishes again (from its checkpoints, else retrained)
    when a student still needs it."""
    results = {t.key: store.result(t.key) for t in plan.trials}  # read once per trial
    for t in plan.trials:
        if retry_failed and results[t.key] is not None and results[t.key].state == "diverged":
            store.reset(t.key)
            results[t.key] = None
    needed = {t.teacher_key for t in plan.trials if results[t.key] is None and t.teacher_key}
    for key in needed:
        r = results.get(key)
        if r is not None and r.status == "done" and not store.has_model(key):
            log.warning("%s: gone; its trial publishes it again for its students",
                        store.model_uri(key))
            store.forget_result(key)
            results[key] = None
    todo, diverged = [], 0
    for t in plan.trials:
        if (result := results[t.key]) is None:
            store.clear_failure(t.key)
            todo.append(t)
        else:
            diverged += result.state == "diverged"
            events.reused(t, result)
    if diverged:
        print(
            f"{diverged} trial(s) diverged in an earlier run and are not trained again "
            "(their students are skipped); `kdsweep run SPEC --retry-failed` retrains them",
            file=out,
            flush=True,
        )
    return todo


def make_searcher(
    spec: SweepSpec,
    store: TrialStore,
    plan: Plan,
    todo: list[Trial],
    data: ImageData,
    events: SweepEvents,
) -> DependencySearcher:
    samplers = []
    if spec.search.type == "optuna":  # generation 1 is sampled per teacher
        for teacher, model in search_contexts(plan):
            study = optuna.create_study(
                direction="maximize", sampler=optuna.samplers.TPESampler(seed=teacher.seed)
            )
            samplers.append(Sampler(teacher, model, study, spec.search.num_samples))
    cost = trial_costs(spec, data.num_classes, tuple(data.train_images.shape[1:]))
    return DependencySearcher(
        spec,
        store,
        plan.trials,
        todo,
        samplers,
        events,
        priority=remaining_work(spec, cost),
        wants_bank=lambda n_students: wants_shared_bank(spec, data, n_students),
    )


def publish_results(plan: Plan, store: TrialStore, tracker: Tracker) -> str:
    """The Parquet file in storage and on the parent run; returns its URI."""
    tracker.flush()  # every run created and known before the rows name them
    uri = write_results(plan, store, tracker.runs)
    faults.reached("mid-publish")
    with tempfile.TemporaryDirectory() as d:
        rel = store.results_file(plan.spec)
        parquet = store.storage.local_copy(rel, Path(d) / "results.parquet")
        rows = pd.read_parquet(parquet)
        rows.to_csv(Path(d) / "results.csv", index=False)  # for a spreadsheet, from the UI
        tracker.log_parent_artifact(parquet)
        tracker.log_parent_artifact(Path(d) / "results.csv")
    tracker.log_summary(rows)
    return uri


def run_sweep(
    spec: SweepSpec, address: str | None = None, out=sys.stdout, retry_failed: bool = False
) -> str:
    """Train every trial of the sweep not yet in storage; returns the results file's URI."""
    import ray

    # check
    storage = Storage(spec.storage)
    # Trials run in other processes and cwds (Tune moves them to their trial dirs): hand them
    # the absolute location.
    spec = spec.model_copy(update={"storage": storage.uri if storage.is_local else spec.storage})
    plan = build_plan(spec)
    data = check_all(spec, local=address is None)
    store = TrialStore(storage)
    done = stored_done(plan, store)
    print(plan.describe(done), file=out, flush=True)
    faults.arm()
    lease = DriverLease(storage, spec)  # one driver per sweep and cluster, before Ray starts
    lease.on_lost = lambda held: _superseded(lease, held)
    lease.acquire(out)
    faults.reached("after-lease")
    try:
        # connect, unless every trial is in storage: then a rerun only publishes (seconds)
        if len(done) < len(plan.trials) or retry_failed or spec.search.type == "optuna":
            connect(address)
            if address is None:
                check_fits(spec, ray.cluster_resources())  # memory: as much as Ray granted
        return _train_and_publish(spec, plan, data, store, out, retry_failed, lease, address)
    finally:
        lease.release()


def _superseded(lease: DriverLease, held: dict) -> None:
    """This driver was paused past its lease's TTL and another took the sweep over: stop now,
    from whichever thread saw it, writing nothing more (its writes so far are each atomic)."""
    print(
        f"kdsweep run: error: {lease.storage.uri_of(lease.rel)}: another driver took this "
        f"sweep over (host {held.get('host')}, pid {held.get('pid')}, lease {held.get('fence')}) "
        "while this one was not renewing its lease; this driver stops",
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)  # not sys.exit: no exit handler may write (the MLflow flush) after losing


def _train_and_publish(
    spec: SweepSpec,
    plan: Plan,
    data: ImageData,
    store: TrialStore,
    out,
    retry_failed: bool,
    lease: DriverLease,
    address: str | None,
) -> str:
    # On the way out (SIGTERM from `ray job stop`, which the CLI turns into SystemExit; Ctrl-C;
    # an error) the tracker sends what is queued while its sender pool still takes work:
    # Python shuts such pools before exit handlers run.
    with Tracker(spec, store.storage) as tracker:
        tracker.fence = lease.check
        tracker.start()
        print("\n".join(tracker.links()), file=out, flush=True)
        progress = Progress(plan, store, out)
        lease.check()
        store.save_trial_list(spec, [t.to_dict() for t in plan.trials])
        events = SweepEvents(plan, store, tracker, progress)
        # record what storage holds, train the rest
        todo = record_stored(plan, store, events, retry_failed, out)
        searcher = make_searcher(spec, store, plan, todo, data, events)
        if todo or searcher.samplers:
            connect(address)  # already, unless storage changed since the count above
            run_experiment(spec, store, searcher, events, lease.token)
        # publish
        lease.check()
        uri = publish_results(plan, store, tracker)
        ok = all(s == "done" for s in progress.state.values())  # diverged or failed: FAILED
        tracker.close("FINISHED" if ok else "FAILED")
        print(progress.table(), file=out)
        if tracker.failed_writes:
            print(
                f"MLflow: {tracker.failed_writes} writes failed (see the warnings); "
                "rerun the same command to fill them in",
                file=out,
            )
        print(f"results: {uri}", file=out, flush=True)
        return uri
