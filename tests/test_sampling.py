"""optuna's sources, stepped by hand (no Ray, MLflow or storage): a study kept to its window,
the scheduler telling only the source that sampled a trial, search contexts found once each."""

import random

import optuna

from sweeps.domain import sampling
from sweeps.domain.plan import build_plan, search_contexts
from sweeps.domain.scheduler import Scheduler
from sweeps.domain.spec import parse_spec


def spec_of(samples: int, seeds=(0,), chains=(("cnn-large", "cnn-small"),), loss=("kl", "mse")):
    return parse_spec({
        "name": "s", "dataset": {"name": "digits", "validation": 0.2},
        "chains": [list(c) for c in chains], "train": {"epochs": 2},
        "grid": {"loss": list(loss), "seeds": list(seeds), "baselines": False},
        "search": {"type": "optuna", "num_samples": samples, "tau_range": [1.0, 20.0]},
        "storage": "/nonexistent"})


def test_a_study_keeps_its_window_and_its_best_trials():
    """Past WINDOW trials a source's study starts again from its best GOOD and latest
    WINDOW / 2: never more than WINDOW trials, the best value told so far always in it, and
    a sample asked before the window moved is told in its own study and the current one."""
    n = 3 * sampling.WINDOW
    spec = spec_of(n, loss=["kl"])  # every sample its own trial (mse's ignore tau)
    src = sampling.optuna_sources(spec, build_plan(spec))[0]
    rng, best, sizes = random.Random(1), -1.0, []
    held = src.ask()  # in flight while the window moves on
    first_study = src.study
    for _ in range(n - 2):
        t = src.ask()
        value = rng.random()
        best = max(best, value)
        src.tell(t.key, value)
        trials = src.study.get_trials(deepcopy=False)
        sizes.append(len(trials))
        done = [x.value for x in trials if x.state == optuna.trial.TrialState.COMPLETE]
        assert max(done) == best
        top = sorted(done, reverse=True)[:sampling.GOOD]
        assert len(top) == min(sampling.GOOD, len(done))
    assert max(sizes) < sampling.WINDOW and src.study is not first_study
    src.tell(held.key, 2.0)  # asked in the first study: told there, and added here
    assert first_study.best_value == 2.0
    assert src.study.best_value == 2.0


def test_search_contexts_are_each_teacher_and_student_once():
    spec = spec_of(1, seeds=range(3), chains=[("cnn-large", "cnn-small"),
                                              ("cnn-large", "cnn-small", "cnn-medium"),
                                              ("cnn-large", "cnn-medium"), ("cnn-small",)])
    plan = build_plan(spec)
    got = [(t.key, m) for t, m in search_contexts(plan)]
    teachers = [t for t in plan.generations[0] if t.model == "cnn-large"]
    assert got == [(t.key, m) for t in teachers for m in ("cnn-small", "cnn-medium")]


class Counting:
    """A source that counts what it is told (every tell: its own samples' or others')."""

    def __init__(self, inner):
        self.inner, self.teacher, self.model, self.told = inner, inner.teacher, inner.model, []
        self.asked = set()

    def left(self):
        return self.inner.left()

    def ask(self):
        trial = self.inner.ask()
        self.asked.add(trial.key)
        return trial

    def tell(self, key, value):
        self.told.append(key)
        self.inner.tell(key, value)


class Quiet:
    def added(self, trial):
        pass

    def skipped(self, trial, reason):
        pass


def test_the_scheduler_tells_only_the_source_that_sampled_a_trial():
    spec = spec_of(3, seeds=range(20))
    plan = build_plan(spec)
    sources = [Counting(s) for s in sampling.optuna_sources(spec, plan)]
    teachers = {t.key for t in plan.generations[0]}
    s = Scheduler(spec, plan.trials, [], done=teachers, banks=(), values={},
                  priority=lambda lineage: len(lineage), wants_bank=lambda n: False,
                  listener=Quiet(), sources=sources)
    jobs, n = [], 0
    while not s.finished():
        while (job := s.next_job()) is not None:
            s.start(str(n), job)
            jobs.append((str(n), job))
            n += 1
        job_id, job = jobs.pop(0)
        s.complete(job_id, done=False, value=0.5)
    for src in sources:  # told of its own samples, each once, and of no other trial
        assert set(src.told) == src.asked and src.told
    assert sum(len(src.asked) for src in sources) == n  # a job per distinct sample
    assert all(src.inner.left() == 0 and not src.inner.waiting for src in sources)
