"""Stage: one generation's trials run as one Ray Tune experiment, events forwarded to MLflow."""

from __future__ import annotations

import hashlib
import time
import traceback

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from .plan import Trial
from .progress import Progress
from .spec import SweepSpec
from .storage import Storage, trial_file
from .tracking import Tracker
from .trial import run_trial


def _key(trial) -> str:
    return trial.config["trial"]["key"]


class StageEvents(tune.Callback):
    """Runs in the driver: per-epoch metrics to MLflow, trial outcomes to storage and progress."""

    def __init__(self, tracker: Tracker, progress: Progress, storage: Storage):
        self.tracker, self.progress, self.storage = tracker, progress, storage

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.set(_key(trial), "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            self.tracker.log_epoch(_key(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = _key(trial)
        rel = trial_file(key, "result.json")
        result = self.storage.read_json(rel)
        if result is None:  # stopped early by ASHA: record where it stopped; it has no model
            last = trial.last_result or {}
            result = {
                "trial": trial.config["trial"],
                "status": "stopped_early",
                "epochs": last.get("epoch", 0),
                "finished_at": time.time(),
                **{k: v for k, v in last.items() if k.startswith(("test_", "train_"))},
            }
            self.storage.write_json(rel, result)
        self.tracker.finish(key, result)
        self.progress.set(key, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        key = _key(trial)
        err = trial.get_error()
        text = "".join(traceback.format_exception(err)) if err else "unknown error"
        self.storage.write_json(
            trial_file(key, "failed.json"), {"error": text, "time": time.time()}
        )
        self.tracker.fail(key, text)
        self.progress.set(key, "failed")


def run_stage(
    spec: SweepSpec, storage: Storage, generation: int, todo: list[Trial], events: StageEvents
) -> None:
    """Train ``todo`` (all of one generation, teachers already in storage) on the Ray cluster."""
    trainable = tune.with_resources(
        run_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    scheduler = None
    if spec.search.asha and generation > 0:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=spec.search.metric,
            mode="max",
            max_t=spec.train.epochs,
            grace_period=spec.search.asha.grace_period,
            reduction_factor=spec.search.asha.reduction_factor,
        )
    keys = sorted(t.key for t in todo)
    name = f"gen{generation}-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:10]}"
    tuner = tune.Tuner(
        trainable,
        param_space={
            "spec": spec.model_dump(),
            "trial": tune.grid_search([t.to_dict() for t in todo]),
        },
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            trial_name_creator=lambda t: _key(t)[:12],
            trial_dirname_creator=lambda t: _key(t),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage.uri_of(f"sweeps/{spec.name}/tune"),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[events],
            verbose=0,
        ),
    )
    tuner.fit()
