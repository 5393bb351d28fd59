"""The pooled effect behind each claim's verdict (sweeps/report/pooled.py), recomputed by hand
with scipy and statsmodels on small frames."""

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from sweeps.report.pooled import POWER, pool, sign_flip, within_seed_rho

# C5's shape on the demo: 4 rows (students at noise 0.4) x 3 seeds, tau 0.5 beats tau inf in
# every one of the 12 seed pairs, by very different amounts per row
DEMO_C5 = {"g1 L>M": [4.7, 3.3, 4.0], "g1 L>S": [18.1, 9.6, 10.4],
           "g1 M>S": [21.5, 6.8, 7.4], "g2 L>M>S": [33.6, 14.0, 12.7]}


def frame(values: dict) -> pd.DataFrame:
    return pd.DataFrame([{"row": r, "seed": s, "value": v}
                         for r, vs in values.items() for s, v in enumerate(vs)])


def test_the_pooled_estimate_interval_and_tests_by_hand():
    p = pool(frame(DEMO_C5), "kl tau=0.5 - kl tau=inf", +1)
    rows = [np.array(v) for v in DEMO_C5.values()]
    # the estimate: every row weighs the same
    assert p.estimate == pytest.approx(np.mean([r.mean() for r in rows]))
    # the interval: a stratified mean's standard error, Welch-Satterthwaite df
    a = np.array([r.var(ddof=1) / 3 for r in rows])
    se, df = math.sqrt(a.sum()) / 4, a.sum() ** 2 / (a ** 2 / 2).sum()
    half = stats.t.ppf(0.975, df) * se
    assert (p.low, p.high) == pytest.approx((p.estimate - half, p.estimate + half))
    assert p.low > 0  # it excludes 0, where the row tests after Holm could not say
    # the sign-flip test by brute force: all 2^12 sign patterns of the 12 units
    units = np.concatenate(rows)
    observed = abs(np.mean([r.mean() for r in rows]))
    extreme = sum(abs(np.mean([(np.array(s[i * 3:i * 3 + 3]) * r).mean()
                               for i, r in enumerate(rows)])) >= observed - 1e-12
                  for s in itertools.product([-1, 1], repeat=len(units)))
    assert p.p == pytest.approx(extreme / 2 ** 12) and p.p == pytest.approx(2 / 4096)
    # the seed as the unit: a one-sample t-test over each seed's mean over rows
    per_seed = np.mean(rows, axis=0)
    assert p.p_seed == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue)
    assert p.verdict() == "consistent" and (p.rows, p.seeds, p.units) == (4, 3, 12)
    assert p.contrary == () and p.steady == ()


def test_power_matches_statsmodels_for_one_row():
    """With one row the pooled test is a one-sample t-test: the detectable effect, the power at
    an effect and the seeds needed are statsmodels' TTestPower's."""
    values = [1.0, 2.5, 0.5, 2.0]
    p = pool(frame({"r": values}), "d", +1)
    sd = np.std(values, ddof=1)
    power = TTestPower()
    assert p.power(1.0) == pytest.approx(power.power(1.0 / sd, 4, 0.05), rel=1e-6)
    assert p.detectable() == pytest.approx(power.solve_power(None, 4, 0.05, POWER) * sd,
                                           rel=1e-4)
    needed = power.solve_power(0.5 / sd, None, 0.05, POWER)
    assert p.seeds_for(0.5) == math.ceil(needed)


def test_rows_below_three_seeds_are_left_out_and_nothing_is_tested_without_them():
    p = pool(frame({"a": [1.0, 2.0], "b": [1.0, 2.0]}), "d", +1)
    assert not p.tested and p.left_out == ("a", "b") and p.verdict() == "inconclusive"
    q = pool(frame({"a": [1.0, 2.0, 3.0], "b": [5.0, 6.0]}), "d", +1)
    assert q.rows == 1 and q.left_out == ("b",)


def test_a_row_every_seed_contradicts_is_named():
    p = pool(frame({"ok": [1.0, 2.0, 3.0], "against": [-1.0, -0.5, -2.0]}), "d", +1)
    assert p.contrary == ("against",)
    # with only 6 units the sign-flip p cannot fall below 2/64
    assert sign_flip([np.ones(3), np.ones(3)]) == pytest.approx(2 / 64)


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
    code, out, _ = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power", pilot)
    assert code == 0, out
    line = next(ln for ln in out.splitlines() if "sequential - direct" in ln)
    # sequential - direct = 1, 1, 2 per row: per-row variance 1/3; pooled over 2 rows at 10
    # seeds: se = sqrt(2/3 / 10) / 2, df 18
    effect = pool(frame({"a": [1.0, 1.0, 2.0], "b": [1.0, 1.0, 2.0]}), "d", +1)
    assert "detectable at 10 seeds" in out and f"{effect.detectable(10):.3g}" in line
    assert f"{effect.seeds_for(0.28)}" in line.split()  # the paper's +0.28
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), tmp_path / "empty.parquet")
    code, out, err = kdsweep_here("plan", tmp_path / "spec.yaml", "--offline", "--power",
                                  tmp_path / "empty.parquet")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "empty.parquet" in err, err
