"""The pooled effect behind each claim's verdict (sweeps/report/pooled.py), recomputed by hand
with scipy and statsmodels on small frames."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from sweeps.report.evidence import Part, decide
from sweeps.report.pooled import (
    CODES,
    POWER,
    decide_codes,
    joint_power,
    pool,
    sign_flip_seeds,
    within_seed_rho,
)
from sweeps.report.stats import holm

# C5's shape on the demo: 4 rows (students at noise 0.4) x 3 seeds, tau 0.5 beats tau inf in
# every one of the 12 seed pairs, by very different amounts per row
DEMO_C5 = {"g1 L>M": [4.7, 3.3, 4.0], "g1 L>S": [18.1, 9.6, 10.4],
           "g1 M>S": [21.5, 6.8, 7.4], "g2 L>M>S": [33.6, 14.0, 12.7]}


def frame(values: dict) -> pd.DataFrame:
    return pd.DataFrame([{"row": r, "seed": s, "value": v}
                         for r, vs in values.items() for s, v in enumerate(vs)])


def test_the_seed_is_the_unit_by_hand():
    p = pool(frame(DEMO_C5), "kl tau=0.5 - kl tau=inf", +1)
    rows = np.array(list(DEMO_C5.values()))
    per_seed = rows.mean(axis=0)  # each seed's effect: the mean over the claim's rows
    assert p.per_seed == pytest.approx(tuple(per_seed)) and p.estimate == pytest.approx(
        per_seed.mean())
    # the test: a one-sample t over the 3 seeds (2 df); the interval is its inversion
    assert p.p == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue)
    low, high = stats.t.interval(0.95, 2, per_seed.mean(), stats.sem(per_seed))
    assert (p.low, p.high) == pytest.approx((low, high))
    # the whole-seed sign-flip beside it: every seed positive, 2 of the 8 patterns as extreme
    assert p.p_flip == pytest.approx(2 / 8)
    # every row's every seed favours tau 0.5, but the seeds' effects (19.5, 8.4, 8.6) give
    # t(2) = 3.34, p = 0.079: with the seed as the unit, three seeds do not decide it
    assert p.p == pytest.approx(0.0793, abs=5e-4) and p.verdict() == "inconclusive"
    assert (p.rows, p.seeds) == (4, 3)
    assert p.contrary == () and p.steady == ()


def test_interval_excludes_zero_exactly_when_p_is_below_alpha():
    rng = np.random.default_rng(1)
    for n in (3, 4, 7):
        for _ in range(40):
            values = rng.normal(rng.normal(0, 1.5), 1, n)
            p = pool(frame({"r": list(values)}), "d", +1)
            assert (p.low > 0 or p.high < 0) == (p.p < 0.05), (values, p)


def test_a_zero_width_interval_proves_nothing():
    p = pool(frame({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}), "d", +1)
    assert not p.tested and p.verdict() == "inconclusive" and p.steady == (("a", 1.0), ("b", 2.0))
    q = pool(frame({"a": [1.0, 1.0, 1.0]}), "d", +1, margin=0.5)
    assert not q.tested and q.noninferior() == "inconclusive"


def test_non_inferiority_is_the_same_interval_against_minus_margin():
    values = [0.2, -0.4, 0.5, 0.1]
    for margin in (0.2, 0.5, 1.0, 3.0):
        p = pool(frame({"r": values}), "mse - kl (similar)", +1, margin=margin)
        # one-sided p of H0: difference <= -margin; consistent exactly when the low end clears
        assert p.p == pytest.approx(stats.ttest_1samp(np.array(values) + margin, 0,
                                                      alternative="greater").pvalue)
        assert (p.verdict() == "consistent") == (p.low > -margin)
        # its power at a true difference of 0: noncentral t, one-sided 0.025
        sd = np.std(values, ddof=1)
        assert p.power(0.0) == pytest.approx(stats.nct.sf(stats.t.ppf(0.975, 3), 3,
                                                          margin * 2 / sd))
    worse = pool(frame({"r": [-3.0, -2.5, -3.5, -2.8]}), "d (similar)", +1, margin=1.0)
    assert worse.verdict() == "inconsistent" and worse.high < -1.0


def test_power_matches_statsmodels_for_the_seed_level_t():
    """The power, detectable effect and seeds needed are those of the one-sample t over the
    seeds' effects (statsmodels' TTestPower), whatever the number of rows."""
    values = {"r1": [1.0, 2.5, 0.5, 2.0], "r2": [1.4, 2.1, 0.3, 2.6]}
    p = pool(frame(values), "d", +1)
    sd = np.std(np.mean(list(values.values()), axis=0), ddof=1)
    power = TTestPower()
    assert p.power(1.0) == pytest.approx(power.power(1.0 / sd, 4, 0.05), rel=1e-6)
    assert p.detectable() == pytest.approx(power.solve_power(None, 4, 0.05, POWER) * sd,
                                           rel=1e-4)
    needed = power.solve_power(0.5 / sd, None, 0.05, POWER)
    assert p.seeds_for(0.5) == math.ceil(needed)


def test_joint_power_of_an_intersection_by_simulation():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 6)
    one = pool(frame({"r": list(a)}), "a", +1)
    # one effect: the simulation is the noncentral t (within its Monte-Carlo error)
    assert joint_power([one], [1.0]) == pytest.approx(one.power(1.0), abs=0.03)
    # two effects that are one (perfectly correlated over seeds): the joint is the single's
    assert joint_power([one, one], [1.0, 1.0]) == pytest.approx(joint_power([one], [1.0]),
                                                                abs=0.03)
    # two independent effects: about the product
    b = pool(frame({"r": list(rng.normal(0, 1, 6))}), "b", +1)
    b = dataclasses.replace(b, seed_ids=tuple(range(100, 106)))  # no seed shared
    product = joint_power([one], [1.0]) * joint_power([b], [1.0])
    assert joint_power([one, b], [1.0, 1.0]) == pytest.approx(product, abs=0.04)


def test_holm_is_statsmodels():
    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 9):
        p = rng.uniform(0, 0.2, m)
        assert holm(list(p)) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_the_claim_rule_on_arrays_is_the_reports():
    """decide_codes (the calibration simulation's) and evidence.decide (the report's) agree."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        k = int(rng.integers(1, 5))
        effects = [pool(frame({"r": list(rng.normal(rng.normal(0, 1), 1, 4))}), f"e{i}",
                        int(rng.choice([-1, 1]))) for i in range(k)]
        overall, _ = decide([Part("p", effects)])
        code = decide_codes(np.array([[e.estimate for e in effects]]),
                            np.array([[e.p for e in effects]]), [e.expected for e in effects])
        assert CODES[int(code[0])] == overall


def test_rows_below_three_seeds_and_seeds_not_in_every_row_are_left_out():
    p = pool(frame({"a": [1.0, 2.0], "b": [1.0, 2.0]}), "d", +1)
    assert not p.tested and p.verdict() == "inconclusive"
    assert p.left_out == ("a (2 seeds)", "b (2 seeds)")
    q = pool(frame({"a": [1.0, 2.0, 3.0], "b": [5.0, 6.0]}), "d", +1)
    assert q.rows == 1 and q.left_out == ("b (2 seeds)",)
    # a seed missing from one kept row is left out, so every seed's mean is over the same rows
    units = frame({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0, 6.0, 7.0, 8.0]})
    units = units[~((units.row == "b") & (units.seed == 3))]
    r = pool(units, "d", +1)
    assert r.seeds == 3 and r.left_out == ("seed 3 (not in every row)",)


def test_a_row_every_seed_contradicts_is_named():
    p = pool(frame({"ok": [1.0, 2.0, 3.0], "against": [-1.0, -0.5, -2.0]}), "d", +1)
    assert p.contrary == ("against",)
    # the whole-seed sign-flip cannot fall below 2 / 2^seeds
    assert sign_flip_seeds(np.ones(3)) == pytest.approx(2 / 8)


def test_trends_are_rho_within_each_seed_never_across_seeds():
    # within each seed y falls with x; across seeds the levels rise, so pooling runs of
    # different seeds would see a rising trend
    rows = [{"row": "r", "seed": s, "x": x + 3 * s, "y": 20 * s - x}
            for s in range(3) for x in (1, 2, 3)]
    units = within_seed_rho(pd.DataFrame(rows), "x", "y")
    assert list(units.value) == [-1.0, -1.0, -1.0]
    assert stats.spearmanr([r["x"] for r in rows], [r["y"] for r in rows]).statistic > 0.5


def test_plan_power_projects_a_pilot_to_the_specs_seeds(tmp_path, kdsweep_here):
    """`kdsweep plan SPEC --power PILOT`: per claim, what the spec's seeds detect and the seeds
    the paper's effect needs, from the pilot's variance; a pilot with nothing in it is one
    line."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from sweeps.store.results import SCHEMA
    from tests.test_report import claim_rows

    values = {}
    for noise in (0.0, 0.4):  # C6's arms: sequential 1, 1, 2 above direct in each row
        values |= {("A>B", noise, "kl0.5"): ([60, 62, 61], [3.0, 3.2, 3.1]),
                   ("A>M>B", noise, "kl0.5"): ([61, 63, 63], [3.0, 3.2, 3.1]),
                   ("M>B", noise, "kl0.5"): ([62, 65, 63], [3.0, 3.2, 3.1])}
    pilot = tmp_path / "pilot.parquet"
    pq.write_table(pa.Table.from_pylist(claim_rows(values), schema=SCHEMA), pilot)
    spec = yaml.safe_load(Path("sweeps/configs/digits.yaml").read_text())
    spec["grid"]["seeds"] = list(range(10))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    # the pilot's architectures (A, M, B) are not the spec's: refused in one line, nothing else
    code, out, err = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power", pilot)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "the pilot is digits (A, B, M)" in err and "--project-from-other-dataset" in err
    code, out, _ = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power", pilot,
                                "--project-from-other-dataset")
    assert code == 0, out
    assert "PROJECTED FROM ANOTHER DATASET" in out
    line = next(ln for ln in out.splitlines() if "sequential - direct" in ln)
    # sequential - direct = 1, 1, 2 in both rows: each seed's effect 1, 1, 2 (sd 0.577); the
    # seed-level t at 10 seeds (9 df)
    effect = pool(frame({"a": [1.0, 1.0, 2.0], "b": [1.0, 1.0, 2.0]}), "d", +1)
    assert "detectable at 10 seeds (digits pilot)" in out
    assert f"{effect.detectable(10):.3g}" in line
    assert f"{effect.seeds_for(0.28)}" in line.split()  # the paper's +0.28
    assert effect.seeds_for(0.28) == math.ceil(TTestPower().solve_power(0.28 / effect.sd, None,
                                                                         0.05, POWER))
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), tmp_path / "empty.parquet")
    code, out, err = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power",
                                  tmp_path / "empty.parquet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "empty.parquet" in err, err
    # a directory: one line, exit 2 (never an IsADirectoryError's traceback)
    code, out, err = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power",
                                  tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "a directory" in err, err
