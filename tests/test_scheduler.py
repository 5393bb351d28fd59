"""The scheduler's decisions, stepped by hand (no Ray, MLflow or storage; milliseconds): what
is released when, in which order, what is skipped, banks, optuna's samples. Tune runs it in
test_sweep.py."""

from pathlib import Path

import pytest

from sweeps.domain.plan import build_plan, children
from sweeps.domain.scheduler import Job, Scheduler
from sweeps.domain.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
# a slow, long chain and a fast, short one
CHAINS = [["cnn-large", "cnn-medium", "cnn-small"], ["cnn-small", "cnn-medium"]]
COST = {"cnn-large": 10.0, "cnn-medium": 3.0, "cnn-small": 1.0}


class Events:
    """The scheduler's listener: what it said, in order."""

    def __init__(self):
        self.new, self.gone = [], {}

    def added(self, trial):
        self.new.append(trial)

    def skipped(self, trial, reason):
        self.gone[trial.key] = reason


def spec_of(bank="off", taus=(4,), chains=CHAINS, **search):
    return parse_spec({
        "name": "sched",
        "dataset": {"name": "digits"},
        "chains": chains,
        "train": {"epochs": 2, "teacher_bank": bank},
        "grid": {"loss": ["kl"], "tau": list(taus), "seeds": [0], "baselines": False},
        "storage": "/nonexistent",
        **({"search": search} if search else {}),
    })


def work(spec):
    """Remaining work per lineage, from fixed costs (critical_path.remaining_work's shape)."""
    from sweeps.domain.critical_path import remaining_work

    return remaining_work(spec.chains, COST)


def scheduler(spec, done=(), banks=(), wants_bank=lambda n: n > 1):
    plan = build_plan(spec)
    events = Events()
    todo = [t for t in plan.trials if t.key not in done]
    s = Scheduler(spec, plan.trials, todo, done=done, banks=banks,
                  values={k: 0.5 for k in done}, priority=work(spec),
                  wants_bank=wants_bank, listener=events)
    return s, plan, events


def go(s, job_id):
    job = s.next_job()
    if job is not None:
        s.start(job_id, job)
    return job


def test_students_start_when_their_own_teacher_is_done_critical_path_first():
    s, plan, events = scheduler(spec_of())
    first, second = go(s, "a"), go(s, "b")
    # the teacher whose chain has the most work below it goes first
    assert [first.trial.model, second.trial.model] == ["cnn-large", "cnn-small"]
    assert go(s, "c") is None  # every student waits on a running teacher

    s.complete("b", done=True, value=0.9)  # the fast teacher ends: its student goes
    third = go(s, "c")
    assert third.trial.lineage == ("cnn-small", "cnn-medium")
    assert third.trial.teacher_key == second.trial.key
    assert go(s, "d") is None and not s.finished()

    # the slow teacher fails: both generations below it are skipped, never started
    s.complete("a", done=False)
    below = {t.key for t in plan.trials if t.lineage[0] == "cnn-large" and t.generation > 0}
    assert set(events.gone) == below and len(below) == 2
    assert all("is not done" in why for why in events.gone.values())
    assert go(s, "d") is None  # the fast student still runs
    s.complete("c", done=True)
    assert go(s, "d") is None and s.finished()


def test_ready_jobs_go_in_critical_path_order_then_plan_order():
    spec = spec_of(taus=(1, 4, 20))
    s, plan, _ = scheduler(spec, wants_bank=lambda n: False)
    teacher = go(s, "t0")
    assert teacher.trial.model == "cnn-large"
    go(s, "t1")
    s.complete("t0", done=True)
    jobs = [go(s, f"s{i}") for i in range(3)]
    # three students of one rank (same lineage): plan order, i.e. tau 1, 4, 20
    assert [j.trial.tau for j in jobs] == [1, 4, 20]


def test_a_stored_teacher_is_not_trained_again_and_its_students_go_at_once():
    spec = spec_of(chains=[["cnn-large", "cnn-small"]])
    plan = build_plan(spec)
    teacher = next(t for t in plan.trials if t.generation == 0)
    s, _, _ = scheduler(spec, done={teacher.key})
    job = go(s, "a")
    assert job.kind == "train" and job.trial.teacher_key == teacher.key
    assert go(s, "b") is None
    s.complete("a", done=True)
    assert s.finished()


def test_a_bank_is_built_as_soon_as_its_teacher_ends_and_gates_its_students():
    # two students: a shared bank (one student would get a private one, built in its trial)
    s, plan, _ = scheduler(spec_of(bank="on", taus=(4, 20)))
    slow, _fast = go(s, "a"), go(s, "b")
    s.complete("a", done=True)
    bank = go(s, "c")
    assert bank == Job("bank", slow.trial)
    assert go(s, "d") is None  # its students wait for the bank
    s.complete("c", done=False)  # built or not (a failed build lets them go: online)
    student = go(s, "d")
    assert student.kind == "train" and student.trial.teacher_key == slow.trial.key


def test_a_bank_already_stored_is_not_built_again():
    spec = spec_of(bank="on", taus=(4, 20), chains=[["cnn-large", "cnn-small"]])
    teacher = next(t for t in build_plan(spec).trials if t.generation == 0)
    s, _, _ = scheduler(spec, done={teacher.key}, banks={teacher.key})
    assert [go(s, "a").kind, go(s, "b").kind] == ["train", "train"]


@pytest.mark.parametrize("model", [True, False])
def test_a_students_own_students_follow_its_outcome(model):
    spec = spec_of(chains=[["cnn-large", "cnn-medium", "cnn-small"]])
    s, plan, events = scheduler(spec)
    go(s, "t")
    s.complete("t", done=True)
    go(s, "g1")
    s.complete("g1", done=model)
    nxt = go(s, "g2")
    assert (nxt is not None) == model
    assert (len(events.gone) == 1) == (not model)


def test_samples_are_released_once_told_their_value_and_continue_down_their_chain():
    spec = spec_of(chains=[["cnn-large", "cnn-medium", "cnn-small"]])
    plan = build_plan(spec)
    teacher = next(t for t in plan.trials if t.generation == 0)
    sample = next(t for t in plan.trials if t.generation == 1)
    grand = children(spec, [sample])[0]

    class Source:
        def __init__(self):
            self.teacher, self.model = teacher, sample.model
            self.asks, self.told = [sample, sample], []

        def left(self):
            return len(self.asks)

        def ask(self):
            return self.asks.pop(0)

        def tell(self, key, value):
            self.told.append((key, value))

    src = Source()
    # only the teacher is planned (optuna plans no students)
    s = Scheduler(spec, [teacher], [teacher], done=(), banks=(), values={},
                  priority=work(spec), wants_bank=lambda n: False, listener=(ev := Events()),
                  sources=[src])
    go(s, "t")
    assert go(s, "x") is None  # no sample before the teacher has a model
    s.complete("t", done=True)
    first = go(s, "s1")
    assert first.trial == sample and ev.new == [sample]
    assert go(s, "s2") is None  # the same sample again (mse ignores tau): no second job
    s.complete("s1", done=True, value=0.8)
    assert (sample.key, 0.8) in src.told
    third = go(s, "g2")  # the sample's own student, released below it
    assert third.trial == grand and ev.new == [sample, grand]
    s.complete("g2", done=True, value=0.7)
    assert s.finished()


def test_schedule_simulation_runs_and_beats_the_barrier():
    from benchmarks.schedule_sim import compare  # the model the benchmark prints, as numbers

    c = compare(load_spec(ROOT / "sweeps" / "configs" / "digits.yaml"), gpus=4, seeds=1)
    assert c["bound"] <= c["dependency"] <= c["barrier"]
    assert 0 < c["busy"] <= 1


class RandomSource:
    """A source below ``teacher`` that asks for random taus (repeats included: a sample
    already in flight or trained) from its own seeded stream."""

    def __init__(self, spec, teacher, model, budget, seed):
        import random

        from sweeps.domain.plan import make_trial

        self.teacher, self.model, self.budget = teacher, model, budget
        self.rng, self.told = random.Random(seed), []
        self.make = lambda tau: make_trial(spec, model, teacher, loss="kl", tau=tau, alpha=1.0,
                                           noise_rate=teacher.noise_rate, seed=teacher.seed)

    def left(self):
        return self.budget

    def ask(self):
        self.budget -= 1
        return self.make(self.rng.choice([1.0, 2.0, 4.0]))

    def tell(self, key, value):
        self.told.append((key, value))


def step_through(cls, spec, plan, done, stored_banks, wants, sampled, seed):
    """A whole run of ``cls`` with random slots, random outcomes and random completion order;
    returns every decision it made, in order."""
    import random

    rng = random.Random(seed)
    events = Events()
    teachers = [t for t in plan.trials if t.generation == 0]
    sources = [RandomSource(spec, t, spec.chains[0][1], 4, seed + i)
               for i, t in enumerate(teachers)] if sampled else []
    trials = teachers if sampled else plan.trials
    todo = [t for t in trials if t.key not in done]
    s = cls(spec, trials, todo, done=done, banks=stored_banks,
            values={k: 0.5 for k in done}, priority=work(spec),
            wants_bank=lambda n: n >= wants, listener=events, sources=sources)
    decisions, running, n = [], [], 0
    while not s.finished():
        for _ in range(rng.randint(1, 4)):
            if (job := s.next_job()) is None:
                break
            s.start(str(n), job)
            running.append(str(n))
            decisions.append(("start", job.kind, job.trial.key))
            n += 1
        if not running:
            decisions.append(("stuck",))
            break
        job_id = running.pop(rng.randrange(len(running)))
        model = rng.random() > 0.2
        s.complete(job_id, done=model, value=rng.random() if model else None)
        decisions.append(("end", job_id, model))
    told = [src.told for src in sources]
    return decisions, [t.key for t in events.new], sorted(events.gone), told


@pytest.mark.parametrize("seed", range(12))
def test_the_indexed_scheduler_decides_as_the_scan_by_definition_does(seed):
    """Random sweeps (three generations, banks wanted or not, some trials and banks stored,
    a fifth of jobs failing, optuna samples in every third): the heap-and-index scheduler
    hands out the same jobs in the same order as the scan of every trial (scheduler_oracle.py),
    skips the same trials and tells sources the same values."""
    import random

    from tests.scheduler_oracle import Oracle

    rng = random.Random(seed)
    spec = spec_of(bank="on", taus=(1, 4, 20), chains=[
        ["cnn-large", "cnn-medium", "cnn-small"], ["cnn-large", "cnn-small"],
        ["cnn-small", "cnn-medium"]])
    spec = spec.model_copy(update={"grid": spec.grid.model_copy(update={"seeds": [0, 1]})})
    plan = build_plan(spec)
    done = {t.key for t in plan.trials if t.generation == 0 and rng.random() < 0.3}
    stored = {k for k in done if rng.random() < 0.5}
    args = (spec, plan, done, stored, rng.choice([1, 2, 99]), seed % 3 == 0, seed)
    ours, theirs = step_through(Scheduler, *args), step_through(Oracle, *args)
    assert ours == theirs
    assert ("stuck",) not in ours[0]
    assert sum(d[0] == "start" for d in ours[0]) > 5
