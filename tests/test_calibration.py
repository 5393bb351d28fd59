"""The verdict rule's false-positive rate, by simulation (sweeps/report/simulate.py): null
studies with rows correlated within seed (design effects 1 to 4), 3 to 10 seeds, the demo's and
the paper grid's row structures, through the report's own test and claim rule; fixed designs
and studies that add seeds look by look (grid.add_seeds, sequential.py)."""

import pytest

from sweeps.report.simulate import (
    STRUCTURES,
    false_positive_rate,
    least_favourable_rate,
    mc_se,
    power,
    savings,
    sequential,
    sequential_false_positive_rate,
    sized_effect,
)
from sweeps.report.stats import ALPHA

N = 4000  # studies per cell: Monte-Carlo SE 0.0034 at 0.05
CLAIMS = [(design, name) for design, claims in STRUCTURES.items() for name in claims]


@pytest.mark.parametrize("design, name", CLAIMS)
def test_false_positive_rate_is_at_most_alpha_at_any_design_effect(design, name):
    claim = STRUCTURES[design][name]
    bound = ALPHA + 2 * mc_se(ALPHA, N)
    for seeds in (3, 5, 10):
        for design_effect in (1, 4):
            rate = false_positive_rate(claim, seeds, design_effect, N)
            assert rate <= bound, (design, name, seeds, design_effect, rate)
    # an intersection's least favourable null (one effect 0, the rest far in the predicted
    # direction): called consistent at most alpha / 2 (one side of a two-sided test)
    if len(claim[1]) > 1:
        rate = least_favourable_rate(claim, 3, 4, N)
        assert rate <= ALPHA / 2 + 2 * mc_se(ALPHA / 2, N), (design, name, rate)


def test_a_large_effect_consistent_over_three_seeds_is_decidable():
    """A t over 3 seeds decides an effect 5 sd of a seed's effect most of the time (a whole-seed
    sign-flip never could: its p cannot go below 0.25)."""
    for claims in STRUCTURES.values():
        assert power(claims["C6"], 3, 2, 5.0, N) > 0.7
        assert power(claims["C6"], 3, 2, 0.0, N) < ALPHA / 2 + 2 * mc_se(ALPHA / 2, N)


@pytest.mark.slow  # ~25 s in all on 2 cores: the whole suite's, not make check's
@pytest.mark.parametrize("design, name", CLAIMS)
def test_a_study_that_adds_seeds_keeps_the_false_positive_rate_at_alpha(design, name):
    """3 seeds first, one a look up to 10 (a look at every n from 3 to 10: the most looks, the
    most chances to cross), design effects 1 and 4."""
    claim = STRUCTURES[design][name]
    bound = ALPHA + 2 * mc_se(ALPHA, N)
    for design_effect in (1, 4):
        rate = sequential_false_positive_rate(claim, 3, 1, 10, design_effect, N)
        assert rate <= bound, (design, name, design_effect, rate)


def test_a_study_that_adds_seeds_spends_fewer_seeds_than_the_fixed_design():
    """At the effect the fixed design of 10 seeds finds with 80% power, and under the null
    (futility), the study stops before 10 seeds on average."""
    claim = STRUCTURES["demo"]["C6"]
    effect = sized_effect(claim, 10, 2)
    found, used, fixed = savings(claim, 3, 1, 10, 2, effect, N)
    assert used < 9 and found > 0.5 and 0.7 < fixed < 0.9, (found, used, fixed)
    _, used0 = sequential(claim, 3, 1, 10, 2, N, 2)
    assert used0.mean() < 9
