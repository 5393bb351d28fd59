"""Sweep: spec -> plan -> stages in generation order, then results to Parquet and MLflow."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from kd_core.data import ImageData, load_dataset

# Progress is ours (progress.py): silence Tune's own tables and the snapshot-frequency warning
# that per-epoch checkpoints of short trials trigger.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from .plan import Plan, Trial, build_plan, children, search_contexts
from .progress import Progress
from .results import results_path, write_results
from .spec import SpecError, SweepSpec
from .stage import StageEvents, run_search, run_stage
from .storage import Storage, trial_file
from .teacher_bank import ensure_banks, students_per_teacher
from .tracking import Tracker


def preflight(spec: SweepSpec) -> ImageData:
    """Fail before any work when the dataset cannot be read here."""
    try:
        d = spec.dataset
        return load_dataset(d.name, root=d.root, download=d.download)
    except (FileNotFoundError, ValueError) as e:
        raise SpecError(f"dataset: {e}") from None


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` ('auto' inside ray job submit), or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def check_fits(spec: SweepSpec) -> None:
    """On a local Ray (fixed resources, no autoscaler), refuse trials that could never start:
    Tune would otherwise wait for them forever."""
    import ray

    have = ray.cluster_resources()
    for model in spec.architectures:
        ask = spec.resources.for_model(model)
        for name, field in (("cpu", "CPU"), ("gpu", "GPU"), ("memory", "memory")):
            if ask.get(name, 0) > have.get(field, 0):
                where = (
                    f"resources.models.{model}" if model in spec.resources.models else "resources"
                )
                raise SpecError(
                    f"{where}: a {model} trial asks for {name} {ask[name]:g}, more than this "
                    f"machine's Ray has ({have.get(field, 0):g}); pass --address to use a cluster"
                )


def report_banks(banks: dict[str, float], out) -> None:
    for teacher, seconds in banks.items():
        print(f"teacher bank for {teacher}: built in {seconds:.1f}s", file=out, flush=True)


def stored_done(plan: Plan, storage: Storage) -> set[str]:
    return {t.key for t in plan.trials if storage.exists(trial_file(t.key, "result.json"))}


def run_sweep(spec: SweepSpec, address: str | None = None, out=sys.stdout) -> str:
    """Run every stage whose trials are not yet in storage; returns the results file's URI."""
    storage = Storage(spec.storage)
    # Trials run in other processes and cwds (Tune moves them to their trial dirs): hand them
    # the absolute location.
    spec = spec.model_copy(update={"storage": storage.uri if storage.is_local else spec.storage})
    plan = build_plan(spec)
    data = preflight(spec)
    print(plan.describe(stored_done(plan, storage)), file=out, flush=True)
    connect(address)
    if address is None:
        check_fits(spec)
    tracker = Tracker(spec, storage)
    tracker.start()
    progress = Progress(plan, storage, out)
    save_trial_list(plan, storage)
    events = StageEvents(spec, tracker, progress, storage)
    depth = max(len(c) for c in spec.chains)
    for g in range(depth):
        if g == len(plan.stages):  # optuna: generation 1 is sampled, later ones follow it
            if g == 1:
                contexts = [
                    (teacher, model)
                    for teacher, model in search_contexts(plan)
                    if storage.exists(trial_file(teacher.key, "model.pt"))
                ]
                wanted = Counter({t.key: spec.search.num_samples for t, _ in contexts})
                report_banks(ensure_banks(spec, storage, data, wanted), out)
                sampled = [run_search(spec, storage, t, m, events) for t, m in contexts]
                plan.stages.append([t for batch in sampled for t in batch])
                save_trial_list(plan, storage)
                continue
            parents = [
                t for t in plan.stages[g - 1] if storage.exists(trial_file(t.key, "model.pt"))
            ]
            plan.stages.append(children(spec, parents))
            save_trial_list(plan, storage)
        todo = []
        for t in plan.stages[g]:
            progress.add(t)
            tracker.ensure_run(t)
            result = storage.read_json(trial_file(t.key, "result.json"))
            if result is not None:  # trained before (by this sweep or another): record only
                tracker.finish(t.key, result, reused=True)
                progress.set(t.key, "done")
            elif t.teacher_key and not storage.exists(trial_file(t.teacher_key, "model.pt")):
                msg = f"teacher {t.teacher_key} has no model (it failed or stopped early)"
                tracker.fail(t.key, msg, status="KILLED")
                progress.set(t.key, "failed")
            else:
                storage.delete(trial_file(t.key, "failed.json"))  # a rerun retries failures
                todo.append(t)
        if todo:
            banks = ensure_banks(spec, storage, data, students_per_teacher(todo))
            report_banks(banks, out)
            run_stage(spec, storage, g, todo, events)
    uri = write_results(plan, storage, tracker.runs)
    with tempfile.TemporaryDirectory() as d:
        tracker.log_parent_artifact(
            storage.local_copy(results_path(spec.name), Path(d) / "results.parquet")
        )
    ok = all(s == "done" for s in progress.state.values())
    tracker.close("FINISHED" if ok else "FAILED")
    print(progress.table(), file=out)
    print(f"results: {uri}", file=out, flush=True)
    return uri


def trial_list_path(name: str) -> str:
    return f"sweeps/{name}/trials.json"


def save_trial_list(plan: Plan, storage: Storage) -> None:
    """Every trial known so far (sampled ones included), for `kdsweep status` and reports."""
    storage.write_json(trial_list_path(plan.spec.name), [t.to_dict() for t in plan.trials])


def load_plan(spec: SweepSpec, storage: Storage) -> Plan:
    """The plan as the last run recorded it (with sampled trials), else as the spec implies."""
    plan = build_plan(spec)
    stored = storage.read_json(trial_list_path(spec.name))
    if stored:
        known = {t.key for t in plan.trials}
        for d in stored:
            t = Trial.from_dict(d)
            if t.key not in known:
                while len(plan.stages) <= t.generation:
                    plan.stages.append([])
                plan.stages[t.generation].append(t)
    return plan


def sweep_status(spec: SweepSpec) -> str:
    """The progress table read from storage alone (works while another process runs the sweep)."""
    storage = Storage(spec.storage)
    plan = load_plan(spec, storage)
    progress = Progress(plan, storage, io.StringIO())
    return f"sweep {spec.name} ({spec.storage})\n{progress.table()}"
