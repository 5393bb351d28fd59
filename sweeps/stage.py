"""Stage: one generation's trials run as one Ray Tune experiment, events forwarded to MLflow."""

from __future__ import annotations

import hashlib
import time

import optuna
from ray import tune
from ray.tune import PlacementGroupFactory
from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .plan import Trial
from .progress import Progress
from .spec import SweepSpec
from .storage import Storage, trial_file
from .tracking import Tracker
from .trial import run_trial, trial_from_config


class StageEvents(tune.Callback):
    """Runs in the driver: per-epoch metrics to MLflow, trial outcomes to storage and progress."""

    def __init__(self, spec: SweepSpec, tracker: Tracker, progress: Progress, storage: Storage):
        self.spec, self.tracker, self.progress, self.storage = spec, tracker, progress, storage
        self.early_stopping = False  # set per stage: ASHA may end trials before their last epoch
        self.trials: dict[str, Trial] = {}  # Tune trial id -> our trial, for this stage

    def _key(self, tune_trial) -> str:
        if tune_trial.trial_id not in self.trials:
            self.trials[tune_trial.trial_id] = trial_from_config(self.spec, tune_trial.config)
        return self.trials[tune_trial.trial_id].key

    def on_trial_start(self, iteration, trials, trial, **info):
        key = self._key(trial)
        ours = self.trials[trial.trial_id]
        self.tracker.ensure_run(ours)  # sampled trials get their run when they start
        self.progress.add(ours)
        self.progress.set(key, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            self.tracker.log_epoch(self._key(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        rel = trial_file(key, "result.json")
        result = self.storage.read_json(rel)
        if result is None:
            failed = self.storage.read_json(trial_file(key, "failed.json"))
            if failed is not None or not self.early_stopping:
                msg = (
                    failed["error"]
                    if failed
                    else (
                        f"trial {key} ended without publishing {self.storage.uri_of(rel)}; "
                        "on a cluster, storage must be shared by every node (NFS or s3://)"
                    )
                )
                if failed is None:
                    self.storage.write_json(trial_file(key, "failed.json"), {"error": msg})
                self.tracker.fail(key, msg)
                self.progress.set(key, "failed")
                return
            # Stopped by ASHA: record where it stopped. It has no model, so no students.
            last = trial.last_result or {}
            result = {
                "trial": self.trials[trial.trial_id].to_dict(),
                "status": "stopped_early",
                "epochs": last.get("epoch", 0),
                "finished_at": time.time(),
                **{k: v for k, v in last.items() if k.startswith(("test_", "train_"))},
            }
            self.storage.write_json(rel, result)
        self.tracker.finish(key, result)
        self.progress.set(key, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        text = str(trial.get_error() or trial.error_msg or "unknown error")  # Tune's traceback
        self.storage.write_json(
            trial_file(key, "failed.json"), {"error": text, "time": time.time()}
        )
        self.tracker.fail(key, text)
        self.progress.set(key, "failed")


def trial_resources(spec: SweepSpec):
    """Tune asks per trial: resources follow the trial's architecture (spec.resources.models)."""

    def request(config: dict) -> PlacementGroupFactory:
        model = trial_from_config(spec, config).model
        return resource_dict_to_pg_factory(spec.resources.for_model(model))

    return request


def _fit(
    spec: SweepSpec,
    storage: Storage,
    name: str,
    param_space: dict,
    events: StageEvents,
    generation: int,
    search_alg=None,
    num_samples: int = 1,
) -> None:
    trainable = tune.with_resources(run_trial, trial_resources(spec))
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
    events.early_stopping = scheduler is not None
    events.trials.clear()
    tune_path, tune_fs = storage.tune_location(f"sweeps/{spec.name}/tune")
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": spec.model_dump(), **param_space},
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            trial_dirname_creator=lambda t: f"{events._key(t)[:12]}-{t.trial_id}",
            reuse_actors=True,  # keep warm worker processes: saves a torch import per trial
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            # Tune retries both a lost node and a raising trial; the trial itself gives up after
            # spec.max_failures errors (trial.py), so the rest of the budget is for preemptions.
            failure_config=tune.FailureConfig(
                max_failures=spec.max_failures + spec.max_preemptions
            ),
            callbacks=[events],
            verbose=0,
        ),
    )
    tuner.fit()


def run_stage(
    spec: SweepSpec, storage: Storage, generation: int, todo: list[Trial], events: StageEvents
) -> None:
    """Train ``todo`` (all of one generation, teachers already in storage) on the Ray cluster."""
    keys = "".join(sorted(t.key for t in todo))
    name = f"gen{generation}-{hashlib.sha256(keys.encode()).hexdigest()[:10]}"
    space = {"trial": tune.grid_search([t.to_dict() for t in todo])}
    _fit(spec, storage, name, space, events, generation)


def run_search(
    spec: SweepSpec, storage: Storage, teacher: Trial, model: str, events: StageEvents
) -> list[Trial]:
    """Optuna (TPE) over loss x tau for ``model`` students of ``teacher``; returns the trials run.

    The metric is the student's last reported ``search.metric``. Each sample is still a
    content-addressed trial: a config already in storage is reported, not retrained.
    """
    sampler = optuna.samplers.TPESampler(seed=teacher.seed)
    searcher = OptunaSearch(metric=spec.search.metric, mode="max", sampler=sampler)
    space = {
        "parent": teacher.to_dict(),
        "model": model,
        "loss": tune.choice(spec.grid.loss),
        "tau": tune.loguniform(*spec.search.tau_range),
    }
    name = f"search-{teacher.key[:10]}-{model}"
    _fit(spec, storage, name, space, events, 1, searcher, spec.search.num_samples)
    return list({t.key: t for t in events.trials.values()}.values())
