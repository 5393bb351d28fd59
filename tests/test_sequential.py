"""A study that adds seeds until each claim is decided (grid.add_seeds): the spec, the looks'
trials, the group-sequential boundaries and rule, the replay over stored results (pure: no
training; the end-to-end run is tests/test_sequential_sweep.py)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeps.domain.looks import extend, in_strand, look_trials, strands, worst_case
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import SpecError, parse_spec
from sweeps.report.pooled import pool
from sweeps.report.sequential import (
    FUTILE,
    SPENT,
    boundaries,
    claim_strands,
    look_codes,
    needed,
    nominal,
    replay,
    spent,
)
from sweeps.report.tables import Section

BASE = {"name": "seq", "dataset": {"name": "digits"},
        "chains": [["cnn-medium", "cnn-small"], ["cnn-medium", "cnn-small", "cnn-small"],
                   ["cnn-small", "cnn-small"]],
        "grid": {"loss": ["kl", "mse"], "tau": [4], "noise": {"rate": [0.0, 0.4]},
                 "seeds": [0, 1, 2], "add_seeds": {"up_to": 6, "per_look": 2}}}


def spec_with(**grid):
    return parse_spec({**BASE, "grid": {**BASE["grid"], **grid}})


@pytest.mark.parametrize("grid, field", [
    ({"add_seeds": {"up_to": 3}}, "grid.add_seeds: up_to 3 is not more than"),
    ({"add_seeds": {"up_to": 6, "per_look": 0}}, "grid.add_seeds.per_look"),
    ({"add_seeds": {"per_look": 1}}, "grid.add_seeds.up_to: required"),
    ({"add_seeds": {"up_to": 6, "every": 1}}, "grid.add_seeds.every: unknown key"),
    ({"add_seeds": {"up_to": True}}, "grid.add_seeds.up_to"),
])
def test_bad_add_seeds_is_one_error_naming_the_field(grid, field):
    with pytest.raises(SpecError) as e:
        spec_with(**grid)
    assert field in str(e.value)


def test_add_seeds_needs_a_grid_search():
    with pytest.raises(SpecError, match="grid.add_seeds: .*search.type grid"):
        parse_spec({**BASE, "dataset": {"name": "digits", "validation": 0.1},
                    "search": {"type": "optuna"}})


def test_looks_start_with_grid_seeds_and_add_the_next_integers_up_to_the_budget():
    assert spec_with().grid.look_seeds() == [[0, 1, 2], [3, 4], [5]]
    assert spec_with(seeds=[7, 3, 5], add_seeds={"up_to": 5, "per_look": 1}).grid.look_seeds() \
        == [[7, 3, 5], [8], [9]]
    plain = parse_spec({**BASE, "grid": {**BASE["grid"], "add_seeds": None}})
    assert plain.grid.look_seeds() == [[0, 1, 2]]


def test_plan_prints_the_first_looks_and_the_worst_cases_trials():
    spec = spec_with()
    plan = build_plan(spec)
    text = plan.describe()
    every = build_plan(spec.model_copy(update={"grid": spec.grid.model_copy(
        update={"seeds": list(range(6)), "add_seeds": None})}))
    assert worst_case(spec) == len(every.trials) == 2 * len(plan.trials)
    assert f"the first look is {len(plan.trials)} trials" in text
    assert f"the worst case (no claim decided early) is {len(every.trials)} trials" in text


def test_a_look_adds_the_needed_strands_trials_with_the_keys_of_grid_seeds():
    spec = spec_with()
    plan = build_plan(spec)
    noisy = {lin for lin in strands(spec) if lin[1] > 0}
    added = extend(plan, [3, 4], noisy)
    same_seeds = build_plan(spec.model_copy(update={"grid": spec.grid.model_copy(
        update={"seeds": [3, 4], "add_seeds": None})}))
    assert added and {t.key for t in added} < {t.key for t in same_seeds.trials}
    assert {t.noise_rate for t in added} == {0.4} and {t.seed for t in added} == {3, 4}
    # every noisy trial of those seeds: teachers, students down every chain, baselines
    assert {t.key for t in added} == {t.key for t in same_seeds.trials if t.noise_rate == 0.4}
    assert extend(plan, [3, 4], noisy) == []  # already planned: nothing twice
    # one chain: its teacher, its students and its architectures alone, nothing of another
    direct = (("cnn-small", "cnn-small"), 0.0)
    only = look_trials(spec, [5], {direct})
    assert {(t.generation, t.model) for t in only} == {(0, "cnn-small"), (1, "cnn-small")}
    assert all(in_strand(t, direct) and t.lineage[0] == "cnn-small" for t in only)


def test_each_claims_strands():
    spec = spec_with()
    every = set(strands(spec))
    assert claim_strands("C1", spec) == every
    assert claim_strands("C2", spec) == {lin for lin in every if lin[1] == 0}
    assert claim_strands("C5", spec) == {lin for lin in every if lin[1] == 0.4}
    # C6: the sequential chain, its direct chain (cnn-medium>cnn-small); no cnn-small>cnn-small
    # (the intermediate trained alone would be cnn-small>cnn-small: it is in the spec)
    assert {lin[0] for lin in claim_strands("C6", spec)} == {
        ("cnn-medium", "cnn-small", "cnn-small"), ("cnn-medium", "cnn-small"),
        ("cnn-small", "cnn-small")}


def test_boundaries_are_lan_demets_obrien_fleming():
    """Five equally spaced looks, two-sided 0.05: the published boundaries (gsDesign's sfLDOF,
    Jennison & Turnbull table 2.x): 4.877, 3.357, 2.680, 2.290, 2.031."""
    c = boundaries((0.2, 0.4, 0.6, 0.8, 1.0))
    assert np.allclose(c, [4.877, 3.357, 2.680, 2.290, 2.031], atol=2e-3)
    assert math.isclose(spent(1.0), 0.05) and spent(0.5) < 0.01
    # one look at t = 1: the fixed design's 1.96
    assert math.isclose(boundaries((1.0,))[0], stats.norm.isf(0.025), rel_tol=1e-9)
    # a boundary depends on the looks up to it only
    assert boundaries((0.3, 0.5))[:2] == boundaries((0.3, 0.5, 0.9, 1.0))[:2]


def test_an_effect_crosses_below_the_looks_nominal_level_and_stays_crossed():
    sizes = (5, 10)  # two looks: 5 seeds, then 10
    level = nominal(sizes, 10, look=0)
    assert 0.0005 < level < 0.01 and nominal(sizes, 10) > 0.02
    codes, crossed = look_codes([[1.0]], [[level * 1.5]], [1], sizes, 10, look=0)
    assert codes[0] == 0 and not crossed.any()
    codes, crossed = look_codes([[1.0, 1.0]], [[level / 2, 0.5]], [1, 1], sizes, 10, look=0)
    assert codes[0] == 0 and crossed.tolist() == [[True, False]]
    codes, _ = look_codes([[1.0, 1.0]], [[0.3, 0.01]], [1, 1], sizes, 10, crossed, look=1)
    assert codes[0] == 1  # the first crossed at look 1, the second now: consistent
    codes, _ = look_codes([[-1.0]], [[1e-6]], [1], sizes, 10, look=0)
    assert codes[0] == -1  # against the claim beyond the boundary: inconsistent
    # futility: nothing under the current trend reaches the last boundary, either way
    final = boundaries((0.5, 1.0))[-1]
    codes, _ = look_codes([[0.01]], [[0.95]], [1], sizes, 10, None, final, look=0)
    assert codes[0] == FUTILE
    codes, _ = look_codes([[1.0]], [[0.02]], [1], sizes, 10, None, final, look=0)
    assert codes[0] == 0  # promising: goes on


def test_the_t_levels_spend_alpha_exactly_and_approach_the_normal_ones():
    """The seed-level t's levels: a single look at the budget is the fixed design's 0.05; many
    seeds per look give the z boundaries' levels; few seeds give stricter ones (a t's tails)."""
    assert math.isclose(nominal((10,), 10), 0.05, abs_tol=2e-3)
    z = [2 * stats.norm.sf(c) for c in boundaries((0.4, 0.6, 0.8, 1.0))]
    t = [nominal((400, 600, 800, 1000), 1000, look=k) for k in range(4)]
    assert np.allclose(t, z, rtol=0.1, atol=3e-4)
    assert nominal((3, 5, 10), 10) < 2 * stats.norm.sf(boundaries((0.3, 0.5, 1.0))[-1])


def _claim_sections(values: dict[str, dict[int, float]]):
    """A judge of made-up claims: each claim one effect, per seed the given value."""
    def judge(df):
        out = []
        for name, by_seed in values.items():
            seeds = sorted(set(df.seed) & set(by_seed))
            units = pd.DataFrame({"row": "r", "seed": seeds,
                                  "value": [by_seed[s] for s in seeds]})
            effects = [pool(units, f"{name} effect", +1)] if by_seed else []
            out.append(Section(f"{name} a claim", pd.DataFrame(), effects=effects))
        return out
    return judge


def test_replay_decides_each_claim_once_from_the_results_and_adds_seeds_to_the_rest():
    spec = spec_with(add_seeds={"up_to": 6, "per_look": 1})  # looks: 3 seeds, then 4, 5, 6
    rng = np.random.default_rng(3)
    judge = _claim_sections({
        "C5": {s: 10 + 0.01 * rng.standard_normal() for s in range(6)},  # decided at once
        "C2": {s: (-1) ** s * (1 + 0.1 * s) for s in range(6)},  # nothing there
        "C6": {},  # an arm missing
    })
    df = pd.DataFrame({"seed": range(6)})
    decisions = {d.claim: d for d in replay(df, spec, judge)}
    assert decisions["C5"].code == 1 and decisions["C5"].look == 1
    assert decisions["C5"].seeds == 3 and decisions["C5"].alpha_spent < 0.05
    assert decisions["C6"].untestable
    assert decisions["C2"].code in (FUTILE, SPENT)
    # after look 1, only the undecided claim's strands get the next seed
    first = replay(df[df.seed < 3], spec, judge)
    assert needed(first, spec) == (claim_strands("C2", spec) if decisions["C2"].look > 1
                                   else set())
    assert not needed(first, spec) & claim_strands("C5", spec) - claim_strands("C2", spec)
    # the same results, the same decisions (a rerun after preemption)
    again = {d.claim: (d.code, d.look, d.seeds) for d in replay(df, spec, judge)}
    assert again == {k: (d.code, d.look, d.seeds) for k, d in decisions.items()}


def test_a_driver_without_a_judge_refuses_a_sequential_spec_before_any_work(tmp_path):
    from sweeps.app.sweep import run_sweep

    spec = parse_spec({**BASE, "storage": str(tmp_path / "store")})
    with pytest.raises(SpecError, match="grid.add_seeds"):
        run_sweep(spec)
    assert not (tmp_path / "store").exists()
