"""Optuna's loss x tau samples, one study per (generation-0 teacher, generation-1 architecture).

optuna's ask/tell with the same TPE sampler Tune's OptunaSearch wraps; one study per teacher,
which OptunaSearch cannot hold in one experiment. Each OptunaSource is a source of trials for
the scheduler (scheduler.Source; not one of optuna's samplers, which it holds): it asks for one
sample at a time, and is told each sample's search metric when its trial ends. optuna's trials
and their TrialState are named in full (``optuna.trial``), never beside ours.

TPE's cost per sample grows with its study (it fits its two densities to every trial told:
~5 us per trial per sample, 11 ms per sample at 2,000 and a 2,000-sample study's asks ~12 s of
the driver's loop; benchmarks/RESULTS.md, "The optuna path"), so a source keeps a window of
its study: once it holds WINDOW trials, the next study starts from the best GOOD of them (TPE's
"good" group is its best min(10%, 25) trials: the same group as the whole study's) and the
latest WINDOW / 2, with the same sampler (its random stream goes on). A sample then costs what
a WINDOW-trial study costs, however many the source has taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from .plan import Plan, Trial, make_trial, search_contexts
from .settings import env_number
from .spec import SweepSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
WINDOW = int(env_number("KDSWEEP_TPE_WINDOW", 200, minimum=50, integer=True))
GOOD = 25  # TPE's default gamma: its "good" group is at most this many of the best trials


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
        failed = value is None or not math.isfinite(value)
        for ot in self.waiting.pop(key, []):
            if failed:
                ot.study.tell(ot, state=optuna.trial.TrialState.FAIL)
            else:
                ot.study.tell(ot, value)
            if ot.study is not self.study:  # asked before the window moved: into this one too
                state = optuna.trial.TrialState.FAIL if failed else None
                self.study.add_trial(optuna.trial.create_trial(
                    params=ot.params, distributions=ot.distributions,
                    value=None if failed else value,
                    **({"state": state} if state else {})))
        self._slide()

    def _slide(self) -> None:
        """A study of WINDOW trials starts again from its best GOOD and latest WINDOW / 2."""
        trials = self.study.get_trials(deepcopy=False)
        if len(trials) < WINDOW:
            return
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = sorted(done, key=lambda t: t.value, reverse=True)[:GOOD]
        keep = {t.number: t for t in [*best, *done[-(WINDOW // 2):]]}
        study = optuna.create_study(direction="maximize", sampler=self.study.sampler)
        study.add_trials([keep[n] for n in sorted(keep)])
        self.study = study


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
