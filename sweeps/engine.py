"""Engine: one Ray Tune experiment per `kdsweep run`, all generations in it.

Ray Tune has no trial dependencies of its own, so they live in a Tune Searcher: Tune asks
``suggest()`` for work whenever it can start a trial, and the DependencySearcher answers with
the most critical job that is ready (schedule.py) -- a trial whose teacher's model (and bank,
when the trial will read one) is in storage, or the bank of a teacher that just finished -- or
None while everything left waits on running jobs, and FINISHED once nothing is left. One
experiment keeps Tune's workers warm across generations (reuse_actors) and never waits for a
whole generation to end.

Optuna: for each (generation-0 teacher, generation-1 architecture) the searcher asks its own
optuna study for loss x tau samples (optuna's ask/tell, the same TPE sampler Tune's OptunaSearch
wraps; one study per teacher, which OptunaSearch cannot hold in one experiment). Children of any
trial that finishes with a model are released below it, so sampled lineages continue down
their chains. ASHA stops weak students within each generation; teachers always finish.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from ray import tune
from ray.tune.error import TuneError
from ray.tune.execution import class_cache
from ray.tune.execution.placement_groups import resource_dict_to_pg_factory
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from .plan import Trial, children, make_trial
from .spec import SweepSpec
from .storage import AWS_CREDENTIALS, STORAGE_FULL, StorageFull
from .store import TrialStore
from .trial import WARNINGS, Job, run_job

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Sampler:
    """Optuna's samples of ``model`` students below ``teacher`` (generation 1)."""

    teacher: Trial
    model: str
    study: optuna.Study
    budget: int
    asked: int = 0
    waiting: dict[str, list] = field(default_factory=dict)  # trial key -> optuna trials to tell


class DependencySearcher(Searcher):
    """Hands Tune each job once its dependencies are in storage, critical path first.

    ``events`` is the driver's record keeper (events.py): told when a trial is added to the
    sweep, found already trained, or skipped because its teacher has no model.
    """

    def __init__(
        self,
        spec: SweepSpec,
        store: TrialStore,
        trials: list[Trial],
        todo: list[Trial],
        samplers: list[Sampler],
        events,
        priority: Callable[[tuple[str, ...]], float],
        wants_bank: Callable[[int], bool],
    ):
        super().__init__()
        self.spec, self.store, self.events = spec, store, events
        self.priority, self.wants_bank = priority, wants_bank
        self.waiting: dict[str, Trial] = {}  # not yet handed out, in plan order
        self.order: dict[str, int] = {}
        self.trials = {t.key: t for t in [*trials, *(s.teacher for s in samplers)]}
        self.known: set[str] = set(self.trials)  # every trial of the sweep so far
        self.running: dict[str, Job] = {}  # Tune trial id -> job
        self.models: set[str] = set()  # keys whose model is in storage
        self.no_model: set[str] = set()  # ended (before or during this run) without a model
        self.banks: dict[str, str] = {}  # teacher key -> "build" | "building" | "go"
        self.samplers = samplers
        for t in todo:
            self._add(t)
        self._settle()

    def _release(self, t: Trial) -> None:
        """A trial new to the sweep (sampled, or below a sampled one): wait for it, or record it
        when an earlier run or sweep already trained it."""
        if t.key in self.known:
            return
        self.events.added(t)
        if self.store.is_done(t.key):
            self.known.add(t.key)
            self.trials[t.key] = t
            self.events.reused(t)
            self._ended(t, None, False)
        else:
            self._add(t)

    # ---- Tune's interface ------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        while (job := self._next_job()) is not None:
            if job.kind == "sample":  # a sample already trained, or in flight: no new trial
                continue
            self.running[trial_id] = job
            if job.kind == "bank":
                self.banks[job.trial.key] = "building"
            else:
                del self.waiting[job.trial.key]
            return job.config()
        return Searcher.FINISHED if self._finished() else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        job = self.running.pop(trial_id, None)
        if job is None:
            return
        if job.kind == "bank":  # built or not, its students may go: without it they run online
            self.banks[job.trial.key] = "go"
        else:
            self._ended(job.trial, result, error)
        self._settle()

    def save(self, checkpoint_path: str) -> None:
        """For Tune's experiment snapshot: what is waiting and running (keys only). Never
        restored: a rerun rebuilds this from storage, where trials live by content key."""
        with open(checkpoint_path, "w") as f:
            json.dump(self.__getstate__(), f)

    def __getstate__(self) -> dict:
        # Tuner pickles its config (this searcher included) for Tuner.restore, which kdsweep
        # never uses: keep that file to keys, not the store, the MLflow client or the studies.
        return {
            "waiting": list(self.waiting),
            "running": {i: j.trial.key for i, j in self.running.items()},
            "banks": self.banks,
        }

    # ---- dependencies ----------------------------------------------------------------------
    def _add(self, t: Trial) -> None:
        self.known.add(t.key)
        self.trials[t.key] = t
        self.waiting[t.key] = t
        self.order[t.key] = len(self.order)

    def _in_flight(self, key: str) -> bool:
        return key in self.waiting or any(j.trial.key == key for j in self.running.values())

    def _has_model(self, key: str) -> bool:
        """Whether ``key``'s model is in storage; asks storage once per trial that is not
        waiting or running (a trial that is neither will not get a model in this run)."""
        if key in self.models or key in self.no_model or self._in_flight(key):
            return key in self.models
        (self.models if self.store.has_model(key) else self.no_model).add(key)
        return key in self.models

    def _ended(self, t: Trial, result: dict | None, error: bool) -> None:
        if not self.store.has_model(t.key):
            self.no_model.add(t.key)
        else:
            self.models.add(t.key)
            # A student's lineage continues down its chain with its settings (the grid's are
            # planned already; optuna's are not). A teacher's students are the grid or samples.
            for child in children(self.spec, [t]) if t.generation > 0 else []:
                self._release(child)
        for s in self.samplers:
            for ot in s.waiting.pop(t.key, []):
                self._tell(s, ot, result, error)

    def _settle(self) -> None:
        """Skip trials whose teacher will never have a model; decide banks of new teachers."""
        changed = True
        while changed:
            changed = False
            for t in list(self.waiting.values()):
                k = t.teacher_key
                if k and not self._in_flight(k) and not self._has_model(k):
                    del self.waiting[t.key]
                    why = "it failed, diverged or stopped early"
                    self.events.skipped(t, f"teacher {k} has no model ({why})")
                    changed = True
        for s in self.samplers:
            self._has_model(s.teacher.key)
        for key in sorted(self.models):
            if key not in self.banks:
                students = sum(
                    t.teacher_key == key and t.loss != "ce" for t in self.waiting.values()
                ) + sum(s.budget - s.asked for s in self.samplers if s.teacher.key == key)
                dtype = self.spec.train.bank_dtype
                build = self.wants_bank(students) and not self.store.has_bank(key, dtype)
                self.banks[key] = "build" if build else "go"

    def _ready(self, teacher_key: str | None) -> bool:
        return teacher_key is None or (
            self._has_model(teacher_key) and self.banks.get(teacher_key) == "go"
        )

    def _finished(self) -> bool:
        return not self.waiting and not self.running and not self._samples_left()

    def _samples_left(self) -> bool:
        return any(s.asked < s.budget and self._has_model(s.teacher.key) for s in self.samplers)

    # ---- choosing ---------------------------------------------------------------------------
    def _next_job(self) -> Job | None:
        """The ready job with the most work after it; ties in plan order."""
        best, best_rank = None, None

        def offer(rank, make):
            nonlocal best, best_rank
            if best_rank is None or rank > best_rank:
                best, best_rank = make, rank

        for key, state in self.banks.items():
            if state == "build":
                teacher = self.trials[key]
                offer((self.priority(teacher.lineage), math.inf), lambda t=teacher: Job("bank", t))
        for t in self.waiting.values():
            if self._ready(t.teacher_key):
                offer((self.priority(t.lineage), -self.order[t.key]), lambda t=t: Job("train", t))
        for s in self.samplers:
            if s.asked < s.budget and self._ready(s.teacher.key):
                rank = (self.priority((*s.teacher.lineage, s.model)), -math.inf)
                offer(rank, lambda s=s: self._sample(s))
        return None if best is None else best()

    def _sample(self, s: Sampler) -> Job:
        """Ask optuna for one (loss, tau); a sample already trained or in flight is told its
        result when there is one, and takes no slot."""
        lo, hi = self.spec.search.tau_range
        ot = s.study.ask(
            {
                "loss": optuna.distributions.CategoricalDistribution(self.spec.grid.loss),
                "tau": optuna.distributions.FloatDistribution(lo, hi, log=True),
            }
        )
        s.asked += 1
        t = s.teacher
        trial = make_trial(
            self.spec,
            s.model,
            t,
            loss=ot.params["loss"],
            tau=ot.params["tau"],
            alpha=self.spec.grid.alpha[0],
            noise_rate=t.noise_rate,
            seed=t.seed,
        )
        if trial.key in self.known:  # sampled before in this run (mse ignores tau)
            if self._in_flight(trial.key):
                s.waiting.setdefault(trial.key, []).append(ot)
            else:
                self._tell(s, ot, None, False, trial.key)
            return Job("sample", trial)
        self._release(trial)
        if trial.key not in self.waiting:  # trained by an earlier run or sweep
            self._tell(s, ot, None, False, trial.key)
            return Job("sample", trial)
        s.waiting.setdefault(trial.key, []).append(ot)
        return Job("train", trial)

    def _tell(self, s: Sampler, ot, result: dict | None, error: bool, key: str | None = None):
        metric = self.spec.search.metric
        value = (result or {}).get(metric)
        if value is None and key is not None and (stored := self.store.result(key)):
            value = getattr(stored, metric, None)
        if error or value is None or not math.isfinite(value):
            s.study.tell(ot, state=optuna.trial.TrialState.FAIL)
        else:
            s.study.tell(ot, value)


class StudentASHA(FIFOScheduler):
    """ASHA among the students of each generation (one ASHA per generation, so students are
    ranked against their own generation); teachers and bank builds always run to the end."""

    def __init__(self, spec: SweepSpec):
        super().__init__()
        self.spec = spec
        self.by_generation: dict[int, ASHAScheduler] = {}

    def _asha(self, trial) -> ASHAScheduler | None:
        job = Job.from_config(trial.config)
        g = job.trial.generation
        if job.kind != "train" or g == 0:
            return None
        if g not in self.by_generation:
            a = self.spec.search.asha
            self.by_generation[g] = ASHAScheduler(
                time_attr="epoch",
                metric=self.spec.search.metric,
                mode="max",
                max_t=self.spec.train.epochs,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            )
        return self.by_generation[g]

    def on_trial_add(self, tune_controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        asha = self._asha(trial)
        return asha.on_trial_result(tune_controller, trial, result) if asha else self.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        if asha := self._asha(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_remove(tune_controller, trial)


class SweepCallback(tune.Callback):
    """Runs in the driver: forwards each Tune event of a job to the driver's record keeper."""

    def __init__(self, events, early_stopping: bool):
        self.events, self.early_stopping = events, early_stopping

    def __getstate__(self) -> dict:
        # Tuner pickles its run config for Tuner.restore, which kdsweep never uses (see
        # DependencySearcher.__getstate__); the record keeper holds a writer thread and clients.
        return {"early_stopping": self.early_stopping}

    def on_trial_start(self, iteration, trials, trial, **info):
        job = Job.from_config(trial.config)
        if job.kind == "train":
            self.events.started(job.trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if WARNINGS in result:
            self.events.warned(trial.config["trial"]["key"], result[WARNINGS])
        if STORAGE_FULL in result:  # raised here, it ends the experiment: nothing can be stored
            raise StorageFull(result[STORAGE_FULL])
        if "epoch" in result:
            self.events.epoch(trial.config["trial"]["key"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        job = Job.from_config(trial.config)
        if job.kind == "bank":
            self.events.bank_built(job.trial, (trial.last_result or {}).get("bank_seconds"))
        else:
            self.events.ended(job.trial, trial.last_result or {}, self.early_stopping)

    def on_trial_error(self, iteration, trials, trial, **info):
        job = Job.from_config(trial.config)
        text = str(trial.get_error() or "unknown error")  # Tune's traceback
        if job.kind == "train":
            self.events.failed(job.trial, text)
        else:
            self.events.bank_built(job.trial, None, text)


def job_resources(spec: SweepSpec):
    """Tune asks per trial: a trial gets its architecture's resources; a bank build its
    teacher's, with a whole GPU (it holds the teacher, batches of views and the bank at once)."""

    def request(config: dict):
        job = Job.from_config(config)
        ask = spec.resources.for_model(job.trial.model)
        if job.kind == "bank" and spec.resources.uses_gpu:
            ask = {**ask, "gpu": 1}
        return resource_dict_to_pg_factory(ask)

    return request


def run_experiment(
    spec: SweepSpec, store: TrialStore, searcher: DependencySearcher, events, driver: str
):
    """Run every job the searcher hands out, in one Tune experiment (``driver``: the token of
    this driver's lease, which its workers' trial claims carry)."""
    # Tune copies the driver's AWS credentials into every trainable's runtime_env, and Ray's
    # runtime-env agent logs that env verbatim in its session logs: a secret on disk. Workers
    # take credentials from their node (its environment or instance role), as the driver does.
    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - AWS_CREDENTIALS
    trainable = tune.with_resources(
        tune.with_parameters(run_job, spec=spec, driver=driver), job_resources(spec)
    )
    early = spec.search.asha is not None
    tune_path, tune_fs = store.tune_location(spec)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=StudentASHA(spec) if early else None,
            num_samples=-1,  # the searcher says when it is done
            trial_dirname_creator=lambda t: f"{t.config['job']}-{t.config['trial']['key'][:12]}",
            reuse_actors=True,  # warm workers across generations: no torch import per trial
        ),
        run_config=tune.RunConfig(
            name=time.strftime("run-%Y%m%d-%H%M%S"),
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            # Tune retries both a lost node and a raising trial; the trial itself gives up after
            # spec.max_failures errors (trial.py), so the rest of the budget is for preemptions.
            failure_config=tune.FailureConfig(
                max_failures=spec.max_failures + spec.max_preemptions
            ),
            callbacks=[SweepCallback(events, early)],
            verbose=0,
        ),
    )
    # Results live in storage and MLflow, not in Tune's per-trial logger files (turned off in
    # sweep.py): Tune's end-of-run analysis would warn once per trial that it found none.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        tuner.fit()
    except TuneError as e:  # Tune wraps what a callback raised: a full storage ends the run
        if (full := _storage_full(e)) is not None:
            raise full from None
        raise


def _storage_full(error: BaseException | None) -> StorageFull | None:
    """The StorageFull among an exception's causes and contexts, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StorageFull):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
