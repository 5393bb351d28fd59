"""A claim's primary evidence, pure: its effect pooled over every row the claim speaks of, with
seeds nested in rows, one test, one verdict, and the power behind it.

The design (docs/claims.md states it for a reader):
- Units: one value per row and seed (a paired difference, or a within-seed Spearman rho over
  the taus); rows (student x noise [x setting]) are the claim's fixed conditions, seeds are
  replicates within each. A row with fewer than MIN_SEEDS seeds is left out, named.
- Estimate: the mean over rows of each row's mean over seeds (every condition weighs the same).
  Interval: 95% t with the rows' own variances (a stratified mean; Welch-Satterthwaite degrees
  of freedom), so a noisy row widens it and never borrows a quiet row's variance.
- Test: the stratified sign-flip permutation test: under "no effect" each unit's value is as
  likely negated, so every pattern of signs is equally likely; exact over all 2^units patterns
  up to 2^16, else 20,000 seeded draws. It assumes units independent given their row. Runs of
  one seed in different rows share that seed's noisy labels (and, within a lineage, its
  teacher), so ``p_seed`` repeats the test with the seed as the unit (a t-test over each seed's
  mean over rows, seeds - 1 degrees of freedom): where the two disagree the report says so.
- Power: at this n, the smallest effect the test detects with POWER (the noncentral t, the
  rows' variances as observed), and the seeds that detect the paper's own effect.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .stats import ALPHA, CONSISTENT, INCONCLUSIVE, INCONSISTENT, MIN_SEEDS

POWER = 0.8  # the power a detectable effect and a seeds-needed figure are quoted at
EXACT_UNITS = 16  # up to 2^16 sign patterns are enumerated; beyond, FLIPS seeded draws
FLIPS, FLIP_SEED = 20_000, 20261204
MAX_SEEDS = 1_000  # seeds-needed beyond this is reported as out of reach


@dataclass(frozen=True)
class Pooled:
    """One effect pooled over a claim's rows. ``expected``: the sign the claim predicts (+1 or
    -1); ``variances``: each row's variance over seeds (what projects power to other n)."""

    name: str
    expected: int
    estimate: float
    low: float
    high: float
    p: float  # stratified sign-flip, two-sided (nan: no test)
    p_seed: float  # the seed as the unit (nan: no test)
    rows: int
    seeds: int
    units: int
    variances: tuple[float, ...]
    contrary: tuple[str, ...] = ()  # rows where every seed goes against the claim
    steady: tuple[tuple[str, float], ...] = ()  # rows where every seed gives the same value
    left_out: tuple[str, ...] = ()  # rows with fewer than MIN_SEEDS seeds
    paper: float | None = None  # the paper's own effect, where it gives one

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)

    def verdict(self, p: float | None = None) -> str:
        """The sign the claim predicts, found at ALPHA (``p``: adjusted, where a family is)."""
        p = self.p if p is None else p
        if not self.tested or p >= ALPHA:
            return INCONCLUSIVE
        return CONSISTENT if np.sign(self.estimate) == self.expected else INCONSISTENT

    def noninferior(self, margin: float) -> str:
        """The claim "no worse than by ``margin``" in the expected direction: consistent when
        the interval's far end clears -margin, inconsistent when its near end falls short."""
        if not self.tested:
            return INCONCLUSIVE
        low, high = sorted((self.low * self.expected, self.high * self.expected))
        if low > -margin:
            return CONSISTENT
        return INCONSISTENT if high < -margin else INCONCLUSIVE

    def detectable(self, seeds: int | None = None) -> float:
        """The smallest |effect| found with POWER at ALPHA with ``seeds`` seeds per row (this
        n by default); nan where the rows show no spread to project from."""
        seeds = seeds or self.seeds
        se, df = _se_df(self.variances, seeds)
        if not se > 0:
            return math.nan
        return float(optimize.brentq(lambda d: _power(d / se, df) - POWER, 0, 30 * se))

    def power(self, effect: float, seeds: int | None = None) -> float:
        se, df = _se_df(self.variances, seeds or self.seeds)
        return _power(abs(effect) / se, df) if se > 0 else math.nan

    def seeds_for(self, effect: float | None) -> int | None:
        """Seeds per row that find ``effect`` with POWER (None: no effect given, or none
        within MAX_SEEDS)."""
        if effect is None or not self.variances or not _se_df(self.variances, 2)[0] > 0:
            return None
        for n in itertools.chain(range(MIN_SEEDS, 100), range(100, MAX_SEEDS + 1, 10)):
            if self.power(effect, n) >= POWER:
                return n
        return None


def _se_df(variances, seeds: int) -> tuple[float, float]:
    """The pooled estimate's standard error and Welch-Satterthwaite df with ``seeds`` per row."""
    v = np.asarray(variances, float)
    if len(v) == 0 or seeds < 2:
        return math.nan, math.nan
    se = math.sqrt(v.sum() / seeds) / len(v)
    df = (seeds - 1) * v.sum() ** 2 / (v ** 2).sum() if (v ** 2).sum() > 0 else math.inf
    return se, df


def _power(noncentrality: float, df: float) -> float:
    """Two-sided power of a t-test at ALPHA (the far tail, where scipy's noncentral t gives
    nan, counts as 0)."""
    crit, nc = stats.t.ppf(1 - ALPHA / 2, df), abs(noncentrality)
    far = float(stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(far) else far)


def sign_flip(by_row: list[np.ndarray]) -> float:
    """Two-sided p of the mean of row means under independent sign flips of every unit."""
    sizes = [len(v) for v in by_row]
    values = np.concatenate(by_row)
    weights = np.concatenate([np.full(n, 1 / (n * len(sizes))) for n in sizes])
    observed = abs(float(values @ weights))
    k = len(values)
    if k <= EXACT_UNITS:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
        return float(np.mean(np.abs(signs @ (values * weights)) >= observed - 1e-12))
    rng = np.random.default_rng(FLIP_SEED)
    signs = rng.choice([-1.0, 1.0], size=(FLIPS, k))
    hits = int(np.sum(np.abs(signs @ (values * weights)) >= observed - 1e-12))
    return (1 + hits) / (1 + FLIPS)


def pool(units: pd.DataFrame, name: str, expected: int, paper: float | None = None) -> Pooled:
    """``units``: columns row, seed, value (one value per row and seed)."""
    units = units.dropna(subset=["value"])
    counts = units.groupby("row").seed.nunique()
    kept = counts[counts >= MIN_SEEDS].index
    left_out = tuple(sorted(map(str, counts.index.difference(kept))))
    seeds = int(counts.max()) if len(counts) else 0  # the most any row has
    units = units[units.row.isin(kept)]
    if units.empty:
        return Pooled(name, expected, math.nan, math.nan, math.nan, math.nan, math.nan, 0, seeds,
                      0, (), left_out=left_out, paper=paper)
    seeds = int(units.seed.nunique())
    by_row = {r: g.value.to_numpy(float) for r, g in units.groupby("row")}
    estimate = float(np.mean([v.mean() for v in by_row.values()]))
    variances = tuple(float(v.var(ddof=1)) for v in by_row.values())
    se = math.sqrt(sum(v.var(ddof=1) / len(v) for v in by_row.values())) / len(by_row)
    df = _welch_df(list(by_row.values()))
    half = stats.t.ppf(0.975, df) * se if se > 0 else 0.0
    per_seed = units.groupby("seed").value.mean()
    p_seed = (float(stats.ttest_1samp(per_seed, 0).pvalue)
              if len(per_seed) >= MIN_SEEDS and per_seed.std(ddof=1) > 0 else math.nan)
    contrary = tuple(sorted(str(r) for r, v in by_row.items()
                            if np.all(np.sign(v) == -expected)))
    steady = tuple(sorted((str(r), float(v[0])) for r, v in by_row.items() if np.ptp(v) == 0))
    return Pooled(name, expected, estimate, estimate - half, estimate + half,
                  sign_flip(list(by_row.values())), p_seed, len(by_row), seeds, len(units),
                  variances, contrary, steady, left_out, paper)


def _welch_df(by_row: list[np.ndarray]) -> float:
    a = np.array([v.var(ddof=1) / len(v) for v in by_row])
    denominator = sum(ai ** 2 / (len(v) - 1) for ai, v in zip(a, by_row, strict=True))
    return float(a.sum() ** 2 / denominator) if denominator > 0 else math.inf


def within_seed_rho(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Units of a trend: per row and seed, Spearman's rho of ``x`` against ``y`` over that
    seed's runs (runs of one seed share its teacher; runs of different seeds are never mixed).
    ``frame``: columns row, seed, x, y."""
    out = []
    for (row, seed), g in frame.dropna(subset=[x, y]).groupby(["row", "seed"]):
        if len(g) >= 3 and g[x].nunique() > 1 and g[y].nunique() > 1:
            out.append({"row": row, "seed": seed,
                        "value": float(stats.spearmanr(g[x], g[y]).statistic)})
    return pd.DataFrame(out, columns=["row", "seed", "value"])
