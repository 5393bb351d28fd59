import math
from pathlib import Path

import pytest

from kd_core import registry
from sweeps.domain.plan import build_plan, code_used, trial_key
from sweeps.domain.spec import load_spec, parse_spec

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"


def test_digits_plan_counts_and_dedup():
    plan = build_plan(load_spec(CONFIGS / "digits.yaml"))
    # 2 noise x 3 seeds = 6 contexts; students: kl x 4 tau + mse + 2 extra (kl a=0.9 at tau 4
    # and 20) = 7 settings. gen 0: cnn-large teacher (shared by two chains) + 2 baselines = 3
    # per context; the third chain's teacher is the cnn-medium baseline itself. gen 1: 3
    # students per setting.
    assert [len(s) for s in plan.generations] == [18, 126, 42]
    assert {t.setting for t in plan.generations[1]} >= {"kl tau=4 a=0.9", "kl tau=20 a=0.9"}
    keys = [t.key for t in plan.trials]
    assert len(keys) == len(set(keys))
    teachers = [t for t in plan.generations[0] if t.model == "cnn-large"]
    assert len(teachers) == 6
    for t in plan.generations[1] + plan.generations[2]:
        assert t.loss in ("kl", "mse") and (t.tau is None) == (t.loss == "mse")
    # every student's teacher is in the previous stage with the same noise and seed
    by_key = {t.key: t for t in plan.trials}
    for t in plan.trials:
        if t.teacher_key:
            parent = by_key[t.teacher_key]
            assert parent.generation == t.generation - 1
            assert (parent.noise_rate, parent.seed) == (t.noise_rate, t.seed)
            if parent.generation > 0:
                assert (parent.loss, parent.tau) == (t.loss, t.tau)


def test_paper_plan_counts():
    plan = build_plan(load_spec(CONFIGS / "cifar100-paper.yaml"))
    # 4 noise x 3 seeds = 12 contexts; 10 student settings (8 kl taus + mse + standard KD, kl
    # tau 4 a=0.9); generation 0: 5 architectures (the teacher, and wrn-16-2, which teaches two
    # chains, alone among them); generation 1: seven students each (wrn-16-2, wrn-16-4,
    # wrn-28-2, wrn-40-2 from wrn-28-4, wrn-16-2 from wrn-16-4 trained alone, wrn-16-2 and
    # wrn-16-4 from wrn-16-2: each teacher the baseline's own trial, not a second one);
    # generation 2 continues the sequential chain's setting
    assert [len(s) for s in plan.generations] == [60, 840, 120]
    alpha_tau = build_plan(load_spec(CONFIGS / "cifar100-alpha-tau.yaml"))
    kl = [t for t in alpha_tau.generations[1] if t.loss == "kl"]
    assert len({(t.alpha, t.tau) for t in kl}) == 50 and len(kl) == 150  # 10 alphas x 5 taus
    # the map shares its teachers, baselines and alpha = 1 students with the paper grid's
    shared = {t.key for t in alpha_tau.trials} & {t.key for t in plan.trials}
    assert len(shared) == 3 + 3 + 3 * 5 + 3
    noisy = [t for t in plan.generations[1] if t.noise_rate > 0 and t.loss == "kl"]
    for rate in (0.2, 0.4, 0.6):  # tau < 1 at every noise rate
        assert {0.1, 0.25, 0.5} <= {t.tau for t in noisy if t.noise_rate == rate}
    assert sum(t.model == "wrn-28-4" for t in plan.generations[0]) == 12
    # `kdsweep plan` says what the students get: the grid, its kd baseline, noise and seeds
    text = plan.describe()
    assert ("students:\n    kl: tau 0.1, 0.25, 0.5, 1, 3, 5, 20, inf x alpha 1 (8 settings) of "
            "(1 - alpha) CE + alpha tau^2 KL\n    mse: alpha 1 of (1 - alpha) CE + alpha MSE\n"
            "    besides the grid: kl tau=4 a=0.9 (0.1 CE + 0.9 tau^2 KL)") in text
    assert "each at noise symmetric 0, 0.2, 0.4, 0.6 x seeds 0, 1, 2" in text
    assert "x alpha 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1 (50 settings)" in (
        alpha_tau.describe())


SMALL = {
    "name": "p", "dataset": {"name": "digits"}, "chains": [["cnn-large", "cnn-small"]],
    "train": {"epochs": 2}, "grid": {"loss": ["kl"], "tau": [1, 4], "baselines": False},
}


def test_keys_are_content_addressed():
    a = build_plan(parse_spec(SMALL))
    b = build_plan(parse_spec({**SMALL, "name": "renamed", "cluster": "elsewhere"}))
    assert [t.key for t in a.trials] == [t.key for t in b.trials]  # name/cluster: no effect
    c = build_plan(parse_spec({**SMALL, "train": {"epochs": 3}}))
    assert not {t.key for t in a.trials} & {t.key for t in c.trials}  # recipe: new trials
    extended = build_plan(parse_spec({**SMALL, "grid": {**SMALL["grid"], "tau": [1, 4, 10]}}))
    old, new = {t.key for t in a.trials}, {t.key for t in extended.trials}
    assert old < new and len(new - old) == 1
    (added,) = [t for t in extended.trials if t.key in new - old]
    assert added.tau == 10 and not math.isinf(added.tau)


def test_student_key_covers_its_lineage():
    chains = [["cnn-large", "cnn-small"], ["cnn-medium", "cnn-small"]]
    spec = parse_spec({**SMALL, "chains": chains})
    plan = build_plan(spec)
    small = [t for t in plan.generations[1] if t.tau == 1]
    assert len(small) == 2 and small[0].key != small[1].key
    assert {t.chain for t in small} == {"cnn-large>cnn-small", "cnn-medium>cnn-small"}


def test_a_validation_split_makes_new_keys_and_none_keeps_the_old():
    spec = load_spec(CONFIGS / "digits.yaml")
    keys = [t.key for t in build_plan(spec).trials]
    same = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"validation": 0})})
    assert [t.key for t in build_plan(same).trials] == keys  # the field's default: no new trial
    held = spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"validation": 0.1})})
    assert not set(keys) & {t.key for t in build_plan(held).trials}  # trained on less


# Keys trials were stored under before a spec field existed (main at 61ff7c7): a new field
# with its default must not change them, or a rerun of a stored sweep retrains everything.
STORED_KEYS = {
    "digits": {"2d0c90c74dd3d1f16261", "37c68989783092828ea3", "3b9198af20ca9f2cb4fe"},
    "cifar100-paper": {"894495d55aec5ae1be57", "271cbc91d02879f6ac02", "430929ca5a44ce77848d"},
}


@pytest.mark.parametrize("config", sorted(STORED_KEYS))
def test_the_shipped_grids_keep_their_stored_keys(config):
    keys = {t.key for t in build_plan(load_spec(CONFIGS / f"{config}.yaml")).trials}
    assert STORED_KEYS[config] <= keys


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"


@pytest.mark.parametrize("path", [*sorted(CONFIGS.glob("*.yaml")),
                                  EXAMPLES / "digits-plugins.yaml", "validation"],
                         ids=lambda p: Path(p).stem)
def test_the_plans_keys_are_trial_keys_definition(path):
    """build_plan computes keys the fast way (TrialKeys: the recipe serialised once, code
    looked up once); stored trials are found by key, so each must be trial_key's, the
    definition, on every shipped config (a plugin loss's params and code, a validation split)."""
    if path == "validation":
        spec = load_spec(CONFIGS / "digits.yaml")
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
            update={"validation": 0.1})})
    else:
        spec = load_spec(path)
    plan = build_plan(spec)
    by_key = {t.key: t for t in plan.trials}
    assert len(plan.trials) > 10
    for t in plan.trials:
        parent = by_key.get(t.teacher_key)
        assert t.plugins == code_used(spec, t.model, registry.loss_entry(t.loss), parent)
        assert t.key == trial_key(spec, model=t.model, loss=t.loss, tau=t.tau, alpha=t.alpha,
                                  noise_rate=t.noise_rate, seed=t.seed,
                                  teacher_key=t.teacher_key, params=t.params,
                                  plugins=t.plugins)
    if path == EXAMPLES / "digits-plugins.yaml":  # the identity's optional parts were covered
        assert any(t.params for t in plan.trials) and any(t.plugins for t in plan.trials)


def test_plan_on_a_search_says_why_no_teacher_has_students_yet():
    """A search samples its students during the run: the logits' section says so in a line,
    never a header with nothing under it (issue 42)."""
    from sweeps.ray.teacher_bank import bank_summary

    spec = parse_spec({**SMALL, "dataset": {"name": "digits", "validation": 0.2},
                       "search": {"type": "optuna", "num_samples": 4}})
    text = bank_summary(spec, build_plan(spec))
    assert text.startswith("teachers' logits (") and "\n" not in text
    assert "no student is planned before the optuna search samples it" in text
    grid = parse_spec(SMALL)
    lines = bank_summary(grid, build_plan(grid)).splitlines()
    assert len(lines) > 1 and lines[0].endswith(":")  # a grid lists its teachers under it


def test_storing_logits_is_no_part_of_a_trials_key():
    """train.store_logits keeps each trial's test logits beside its predictions: how a trial is
    kept, not what it learns, so the same trials (and the trainer gets no such field)."""
    plain = build_plan(parse_spec(SMALL))
    spec = parse_spec({**SMALL, "train": {**SMALL["train"], "store_logits": True}})
    assert spec.train.store_logits and [t.key for t in build_plan(spec).trials] == [
        t.key for t in plain.trials]
    assert not hasattr(spec.train.config(loss="kl", tau=4.0, alpha=1.0, seed=0, device="cpu"),
                       "store_logits")
