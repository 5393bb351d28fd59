"""The report's statistics over seeds, pure: intervals, paired tests, Holm, correlations, trends,
the verdict rule and the convergence flag. Nothing here claims more than its n supports.

- No interval, p-value or verdict from fewer than MIN_SEEDS seeds: a t-interval on one degree of
  freedom runs past 100%, and two seeds give no test worth the name. Below it the report shows
  each seed's value (so their range).
- Never p = 0: where every seed's difference is the same the t statistic is undefined, and the
  report says so in words.
- A family of tests is Holm-adjusted; nothing is tested against a "best" chosen on the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from kd_core.names import DATASET_FACTS

from ..domain.spec import ReportSpec

MIN_SEEDS = 3
ALPHA = 0.05  # the level a verdict is drawn at, after Holm's adjustment
# "Similar" accuracy (claim C2) as a non-inferiority margin: the spec's report.similar_margin,
# whose default (and why) is in spec/sections.py; a results file alone gets the default.
SIMILAR_MARGIN = ReportSpec().similar_margin
# A learning curve "still rising": a least-squares line over the last fifth of the epochs climbs
# by more than two test images (one image is within a run's evaluation noise), and its slope is
# positive beyond chance (p < ALPHA): epoch-to-epoch noise alone does not flag a run.
RISING_IMAGES = 2

CONSISTENT, INCONSISTENT, INCONCLUSIVE = "consistent", "inconsistent", "inconclusive"


def resolution(df: pd.DataFrame) -> tuple[float | None, int]:
    """What one test image is worth in accuracy points, and the decimals that supports (0.22
    points: one decimal); (None, 2) when the test set's size is not known."""
    if "dataset" not in df:
        return None, 2
    sizes = {DATASET_FACTS.get(d, {}).get("test") for d in df.dataset.unique()}
    if len(sizes) != 1 or None in sizes:
        return None, 2
    step = 100 / sizes.pop()
    return step, max(0, math.ceil(-math.log10(step) - 1e-9))


def t_interval(values) -> tuple[float, float, int]:
    """Mean, half-width of the 95% t-interval, and n, over seeds (half-width nan below
    MIN_SEEDS)."""
    v = np.asarray(pd.Series(values).dropna(), dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n < MIN_SEEDS:
        return float(v.mean()), math.nan, n
    half = stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def accuracy_interval(values, test_step: float | None, scale: float = 100
                      ) -> tuple[float, float, int]:
    """Mean, half-width of the 95% interval and n of accuracies (x ``scale`` into points) over
    seeds, as every table, claim table and figure band shows them (one interval per cell):
    below MIN_SEEDS no half-width (nan). ``test_step``: one test image in points: the seeds'
    half-width (t, seeds - 1 df) and the test set's binomial half-width (z; its variance
    p(1 - p) / test images is known: every seed is scored on the same images, so the seeds'
    spread cannot show it) add in quadrature. The result is never narrower than the seeds-only
    interval nor than the test set's alone (tied seeds never give "± 0")."""
    v = pd.Series(values).dropna() * scale
    mean, half, n = t_interval(v)
    if n >= MIN_SEEDS and test_step:
        p = min(max(mean / scale, 0.0), 1.0)
        binomial = scale * p * (1 - p) * test_step  # scale^2 p(1-p) / images, in points^2
        half = float(math.hypot(half, stats.norm.ppf(0.975) * math.sqrt(binomial)))
    return mean, half, n


def cell(values, decimals: int = 2, scale: float = 100, test_step: float | None = None) -> str:
    """Values (accuracy, x100 into %) as "mean ± half-width (n)" of their 95% interval over
    seeds (accuracy_interval); below MIN_SEEDS each seed's value, sorted (so their range), no
    interval."""
    mean, half, n = accuracy_interval(values, test_step, scale)
    if n == 0:
        return "-"
    if n < MIN_SEEDS:
        v = pd.Series(values).dropna() * scale
        return ", ".join(f"{x:.{decimals}f}" for x in sorted(v)) + f" (n={n})"
    return f"{mean:.{decimals}f} ± {half:.{decimals}f} (n={n})"


@dataclass(frozen=True)
class Paired:
    """A paired comparison a - b over matched seeds: mean difference, 95% interval (nan below
    MIN_SEEDS or with no spread), the two-sided t-test's p (nan where there is no test) and n."""

    d: float
    low: float
    high: float
    p: float
    n: int

    @property
    def flat(self) -> bool:
        """Enough seeds, but every seed differs by the same: no test (never p = 0)."""
        return self.n >= MIN_SEEDS and math.isnan(self.p)


def compare(a: pd.Series, b: pd.Series) -> Paired:
    """a - b over the seeds (index) both have."""
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    n = len(both)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0)
    d = both.a - both.b
    if n < MIN_SEEDS or d.std(ddof=1) == 0:
        return Paired(float(d.mean()), math.nan, math.nan, math.nan, n)
    mean, half, _ = t_interval(d)
    p = float(stats.ttest_rel(both.a, both.b).pvalue)
    return Paired(mean, mean - half, mean + half, p, n)


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """(mean of a - b, the paired t-test's two-sided p, n): ``compare`` in short."""
    c = compare(a, b)
    return c.d, c.p, c.n


def p_text(p: float) -> str:
    """A p-value as printed: three decimals, and never 0 ("<0.001")."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (nan: no test, left out of the
    family), in the order given. statsmodels' multipletests gives the same values, but runs a
    full garbage collection per call (0.8 s a call, measured with the report loaded on a
    shared, loaded machine)."""
    tested = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if tested:
        adjusted = holm_array(np.array([pvalues[i] for i in tested], float))
        for i, q in zip(tested, adjusted, strict=True):
            out[i] = float(q)
    return out


def holm_array(p: np.ndarray) -> np.ndarray:
    """Holm's adjusted p-values along the last axis (every family complete), vectorised: the
    report's families and the calibration simulation's thousands of studies alike."""
    p = np.asarray(p, float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1) * (m - np.arange(m))
    ranked = np.minimum(np.maximum.accumulate(ranked, axis=-1), 1.0)
    out = np.empty_like(ranked)
    np.put_along_axis(out, order, ranked, axis=-1)
    return out


@dataclass(frozen=True)
class Correlation:
    pearson: float
    spearman: float
    p: float  # Spearman's two-sided p (nan: no test)
    n: int


def correlation(x, y, seeds: int) -> Correlation:
    """Pearson r and Spearman rho of paired values, with Spearman's p only when the values come
    from at least MIN_SEEDS seeds and both vary."""
    both = pd.DataFrame({"x": list(x), "y": list(y)}).dropna()
    n = len(both)
    if n < 3 or both.x.nunique() < 2 or both.y.nunique() < 2:
        return Correlation(math.nan, math.nan, math.nan, n)
    r = float(np.corrcoef(both.x, both.y)[0, 1])
    rho, p = stats.spearmanr(both.x, both.y)
    return Correlation(r, float(rho), float(p) if seeds >= MIN_SEEDS else math.nan, n)


def verdict(direction: float, p: float, expected: int, seeds: int) -> str:
    """The verdict on one test of a claim: ``direction`` the observed sign (a difference or a
    correlation), ``expected`` the sign the claim predicts (+1 or -1), ``p`` Holm-adjusted."""
    if seeds < MIN_SEEDS or math.isnan(p) or math.isnan(direction):
        return INCONCLUSIVE
    if p >= ALPHA:
        return INCONCLUSIVE
    return CONSISTENT if np.sign(direction) == expected else INCONSISTENT


def combine(verdicts: list[str]) -> str:
    """A claim made of several tests: consistent only if each is; inconsistent if any is."""
    if not verdicts:
        return INCONCLUSIVE
    if INCONSISTENT in verdicts:
        return INCONSISTENT
    return CONSISTENT if all(v == CONSISTENT for v in verdicts) else INCONCLUSIVE


def _tail(curve) -> np.ndarray:
    """The last fifth (at least three points) of a curve's evaluated epochs; empty if shorter."""
    v = np.asarray([x for x in (curve if curve is not None else []) if x is not None], float)
    v = v[~np.isnan(v)]
    k = max(3, math.ceil(len(v) / 5))
    return v[-k:] if len(v) >= k else v[:0]


def late_rise(curve) -> float:
    """How much a least-squares line through the last fifth of a learning curve (at least three
    epochs) climbs over that fifth, in the curve's units; nan for a curve too short to say."""
    tail = _tail(curve)
    if len(tail) == 0:
        return math.nan
    return float(np.polyfit(np.arange(len(tail)), tail, 1)[0] * (len(tail) - 1))


def still_rising(curve, step: float) -> bool:
    """The curve's last fifth climbs by more than RISING_IMAGES steps (a test image's worth,
    in the curve's units) with a slope positive beyond chance."""
    tail = _tail(curve)
    if len(tail) < 3 or np.ptp(tail) == 0:
        return False
    fit = stats.linregress(np.arange(len(tail)), tail)
    return bool(fit.slope * (len(tail) - 1) > RISING_IMAGES * step and fit.slope > 0
                and fit.pvalue < ALPHA)
