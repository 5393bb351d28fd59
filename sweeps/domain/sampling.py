"""Optuna's loss x tau samples, one study per (generation-0 teacher, generation-1 architecture).

optuna's ask/tell with the same TPE sampler Tune's OptunaSearch wraps; one study per teacher,
which OptunaSearch cannot hold in one experiment. Each OptunaSource is a source of trials for
the scheduler (scheduler.Source; not one of optuna's samplers, which it holds): it asks for one
sample at a time, and is told each sample's search metric when its trial ends. optuna's trials
and their TrialState are named in full (``optuna.trial``), never beside ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from .plan import Plan, Trial, make_trial, search_contexts
from .spec import SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class OptunaSource:
    """Optuna's samples of ``model`` students below ``teacher`` (generation 1)."""

    spec: SweepSpec
    teacher: Trial
    model: str
    study: optuna.Study
    budget: int
    asked: int = 0
    waiting: dict[str, list] = field(default_factory=dict)  # trial key -> optuna trials to tell

    def left(self) -> int:
        return self.budget - self.asked

    def ask(self) -> Trial:
        lo, hi = self.spec.search.tau_range
        ot = self.study.ask(
            {
                "loss": optuna.distributions.CategoricalDistribution(self.spec.grid.loss),
                "tau": optuna.distributions.FloatDistribution(lo, hi, log=True),
            }
        )
        self.asked += 1
        t = self.teacher
        trial = make_trial(
            self.spec,
            self.model,
            t,
            loss=ot.params["loss"],
            tau=ot.params["tau"],
            alpha=self.spec.grid.alpha[0],
            noise_rate=t.noise_rate,
            seed=t.seed,
            params=self.spec.grid.loss_settings(ot.params["loss"])[0],  # a plugin loss's own
        )
        self.waiting.setdefault(trial.key, []).append(ot)
        return trial

    def tell(self, key: str, value: float | None) -> None:
        """The samples that gave trial ``key`` learn how it ended (None or not finite: failed)."""
        for ot in self.waiting.pop(key, []):
            if value is None or not math.isfinite(value):
                self.study.tell(ot, state=optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(ot, value)


def optuna_sources(spec: SweepSpec, plan: Plan) -> list[OptunaSource]:
    """One per (teacher, generation-1 architecture) when the spec's search is optuna."""
    if spec.search.type != "optuna":
        return []
    out = []
    for teacher, model in search_contexts(plan):
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=teacher.seed)
        )
        out.append(OptunaSource(spec, teacher, model, study, spec.search.num_samples))
    return out
