"""A claim's primary evidence, pure: its effect with the seed as the unit, one test, its interval
(the same procedure), one verdict, and the power of that test.

The design (docs/claims.md, "the verdict rule", states it for a reader):
- Units: one value per row and seed (a paired difference, or a within-seed Spearman rho over
  the taus). Runs of one seed in different rows share that seed's noisy labels, its teacher
  (within a lineage), initialisation and data order, so rows of a seed are not independent:
  the unit is the SEED. Its effect is the mean over the claim's rows of that seed's values
  (every row weighs the same). A row with fewer than MIN_SEEDS seeds is left out, named; a
  seed missing from a kept row is left out, named (the rows a seed's mean is over are the same
  for every seed, so an unequal design never mixes row levels into the seed effect).
- Test: a one-sample t-test over the seeds' effects, seeds - 1 degrees of freedom; the 95%
  interval is its inversion (zero outside the interval exactly when p < ALPHA). Every seed
  giving the same value is no test: a zero-width interval proves nothing.
- Non-inferiority (a "similar" part): the same interval; non-inferior when its low end clears
  -margin (the one-sided test at ALPHA / 2), inferior when its high end falls short.
- Robustness: the whole-seed sign-flip (exact over the 2^seeds patterns; it cannot go below
  2 / 2^seeds, 0.25 at 3 seeds), shown beside, never the verdict.
- Power: the noncentral t of this same test with the seeds' observed spread; for a
  non-inferiority part the power at a true difference of 0; for a claim (every effect must
  hold: intersection-union) the joint power by simulation with the effects' observed
  covariance over seeds (``joint_power``).

The array functions (``seed_t``, ``decide_codes``) take many studies at once: the report runs
them on one, the calibration simulation (simulate.py, tests/test_calibration.py) on thousands.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .stats import ALPHA, CONSISTENT, INCONCLUSIVE, INCONSISTENT, MIN_SEEDS, holm_array

POWER = 0.8  # the power a detectable effect and a seeds-needed figure are quoted at
EXACT_SEEDS = 16  # up to 2^16 whole-seed sign patterns are enumerated; beyond, FLIPS draws
FLIPS, FLIP_SEED = 20_000, 20261204
MAX_SEEDS = 1_000  # seeds-needed beyond this is reported as out of reach
JOINT_DRAWS, JOINT_SEED = 4_000, 20261207  # the joint power's simulated studies


# ---- the test, on arrays of studies ------------------------------------------------------------
def seed_t(per_seed: np.ndarray, null: float = 0.0):
    """The seed-level t over the last axis (seeds): estimate, 95% interval (low, high) and the
    two-sided p against ``null``, each an array over the leading axes. No spread: p, low and high
    nan (no test)."""
    v = np.asarray(per_seed, float)
    n = v.shape[-1]
    mean = v.mean(axis=-1)
    sd = v.std(axis=-1, ddof=1) if n > 1 else np.full(mean.shape, np.nan)
    se = sd / math.sqrt(n)
    flat = ~(se > 1e-12 * np.maximum(1.0, np.abs(mean)))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - null) / se
        p = 2 * stats.t.sf(np.abs(t), n - 1) if n > 1 else np.full(mean.shape, np.nan)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * se if n > 1 else np.full(mean.shape, np.nan)
    p, low, high = (np.where(flat, np.nan, x) for x in (p, mean - half, mean + half))
    return mean, low, high, p


def sign_flip_seeds(per_seed) -> float:
    """Two-sided p of the seeds' mean effect under independent sign flips of whole seeds (the
    robustness check beside the t: assumes only symmetry under the null)."""
    v = np.asarray(per_seed, float)
    k, observed = len(v), abs(float(v.mean()))
    if k == 0 or observed == 0 and not v.any():
        return math.nan
    if k <= EXACT_SEEDS:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
        return float(np.mean(np.abs(signs @ v) / k >= observed - 1e-12))
    signs = np.random.default_rng(FLIP_SEED).choice([-1.0, 1.0], size=(FLIPS, k))
    return (1 + int(np.sum(np.abs(signs @ v) / k >= observed - 1e-12))) / (1 + FLIPS)


# verdict codes of the array rule: 1 consistent, -1 inconsistent, 0 inconclusive
def decide_codes(estimate: np.ndarray, p: np.ndarray, expected) -> np.ndarray:
    """The claim rule over studies: ``estimate`` and ``p`` of shape (studies, effects), the
    claim's effects (the intersection it makes); consistent when every effect is significant at
    ALPHA in the predicted direction (an intersection-union test: no adjustment), inconsistent
    when any goes against the claim at ALPHA after Holm over the claim's effects, else
    inconclusive (a missing test, nan, is never significant)."""
    est, p = np.atleast_2d(estimate), np.atleast_2d(p)
    expected = np.asarray(expected, float)
    p = np.where(np.isnan(p), 1.0, p)
    right = np.sign(est) == expected
    consistent = np.all((p < ALPHA) & right, axis=1)
    holm = holm_array(p)
    inconsistent = np.any((holm < ALPHA) & ~right & (est != 0), axis=1)
    return np.where(inconsistent, -1, np.where(consistent, 1, 0))


CODES = {1: CONSISTENT, -1: INCONSISTENT, 0: INCONCLUSIVE}


# ---- one effect -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pooled:
    """One effect of a claim, the seed as the unit. ``expected``: the sign the claim predicts
    (+1 or -1); ``per_seed``: each seed's effect (the mean over the rows), in ``seed_ids``'
    order; ``margin``: a non-inferiority effect (no worse than by margin), else None."""

    name: str
    expected: int
    estimate: float
    low: float
    high: float
    p: float  # the seed-level t's two-sided p against 0 (non-inferiority: its one-sided p)
    p_flip: float  # the whole-seed sign-flip (robustness; nan: no test)
    rows: int
    seeds: int
    per_seed: tuple[float, ...] = ()
    seed_ids: tuple = ()
    contrary: tuple[str, ...] = ()  # rows where every seed goes against the claim
    steady: tuple[tuple[str, float], ...] = ()  # rows where every seed gives the same value
    left_out: tuple[str, ...] = ()  # rows with fewer than MIN_SEEDS seeds; seeds not in every row
    paper: float | None = None  # the paper's own effect, where it gives one
    margin: float | None = None

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p)

    @property
    def sd(self) -> float:
        return float(np.std(self.per_seed, ddof=1)) if len(self.per_seed) > 1 else math.nan

    def verdict(self, p_contrary: float | None = None) -> str:
        """Sign effects: consistent when the predicted sign is found at ALPHA; inconsistent when
        the contrary sign is, at ALPHA after Holm (``p_contrary``: the Holm-adjusted p, where a
        family is). Non-inferiority: see ``noninferior``."""
        if self.margin is not None:
            return self.noninferior(p_contrary)
        if not self.tested:
            return INCONCLUSIVE
        if np.sign(self.estimate) == self.expected:
            return CONSISTENT if self.p < ALPHA else INCONCLUSIVE
        q = self.p if p_contrary is None else p_contrary
        return INCONSISTENT if q < ALPHA and self.estimate != 0 else INCONCLUSIVE

    def noninferior(self, p_inferior: float | None = None) -> str:
        """No worse than by ``margin`` in the expected direction: consistent when the interval's
        far end clears -margin (one-sided at ALPHA / 2); inconsistent when the test of "worse by
        more than margin" is significant (``p_inferior``: its Holm-adjusted one-sided p)."""
        if not self.tested:
            return INCONCLUSIVE
        if self.p < ALPHA / 2:
            return CONSISTENT
        q = self.p_inferior if p_inferior is None else p_inferior
        return INCONSISTENT if q < ALPHA / 2 else INCONCLUSIVE

    @property
    def p_inferior(self) -> float:
        """Non-inferiority's contrary: one-sided p of "worse by more than margin"."""
        if self.margin is None or not self.tested:
            return math.nan
        t = (self.expected * self.estimate + self.margin) / (self.sd / math.sqrt(self.seeds))
        return float(stats.t.cdf(t, self.seeds - 1))

    # -- power of this same test --
    def power(self, effect: float, seeds: int | None = None) -> float:
        """Two-sided power at ALPHA of the seed-level t at a true ``effect`` (non-inferiority: of
        clearing -margin at a true difference ``effect``, one-sided ALPHA / 2)."""
        n, sd = seeds or self.seeds, self.sd
        if not sd > 0 or n < 2:
            return math.nan
        if self.margin is not None:
            crit = stats.t.ppf(1 - ALPHA / 2, n - 1)
            nc = (self.expected * effect + self.margin) * math.sqrt(n) / sd
            return float(stats.nct.sf(crit, n - 1, nc))
        return _power(abs(effect) * math.sqrt(n) / sd, n - 1)

    def detectable(self, seeds: int | None = None) -> float:
        """The smallest |effect| found with POWER at ALPHA with ``seeds`` seeds (this n by
        default); nan where the seeds show no spread to project from."""
        n, sd = seeds or self.seeds, self.sd
        if not sd > 0 or n < 2:
            return math.nan
        se = sd / math.sqrt(n)
        return float(optimize.brentq(lambda d: _power(d / se, n - 1) - POWER, 0, 60 * se))

    def seeds_for(self, effect: float | None) -> int | None:
        """Seeds that find ``effect`` with POWER (None: no effect given, no spread, or none
        within MAX_SEEDS). Non-inferiority: at a true difference ``effect`` (0: "the same")."""
        if effect is None or not self.sd > 0:
            return None
        return _first_seeds(lambda n: self.power(effect, n))


def _first_seeds(power_at) -> int | None:
    """The fewest seeds (MIN_SEEDS up) with power_at(n) >= POWER (power rises with n)."""
    grid = list(itertools.chain(range(MIN_SEEDS, 100), range(100, MAX_SEEDS + 1, 10)))
    if not power_at(grid[-1]) >= POWER:
        return None
    lo, hi = 0, len(grid) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if power_at(grid[mid]) >= POWER:
            hi = mid
        else:
            lo = mid + 1
    return grid[lo]


def _power(noncentrality: float, df: float) -> float:
    """Two-sided power of a t-test at ALPHA (the far tail, where scipy's noncentral t gives
    nan, counts as 0)."""
    crit, nc = stats.t.ppf(1 - ALPHA / 2, df), abs(noncentrality)
    far = float(stats.nct.cdf(-crit, df, nc))
    return float(stats.nct.sf(crit, df, nc)) + (0.0 if math.isnan(far) else far)


def pool(units: pd.DataFrame, name: str, expected: int, paper: float | None = None,
         margin: float | None = None, limits: tuple[float, float] | None = None) -> Pooled:
    """``units``: columns row, seed, value (one value per row and seed). ``limits``: what the
    effect can be (a correlation: -1, 1): the interval is cut there (which leaves whether it
    holds 0 as it was: the test and its interval still agree)."""
    units = units.dropna(subset=["value"])
    counts = units.groupby("row").seed.nunique()
    kept = counts[counts >= MIN_SEEDS].index
    left_out = [f"{r} ({int(counts[r])} seed{'s' * int(counts[r] != 1)})"
                for r in sorted(counts.index.difference(kept), key=str)]
    units = units[units.row.isin(kept)]
    table = units.pivot_table(index="seed", columns="row", values="value", aggfunc="mean")
    complete = table.dropna()
    left_out += [f"seed {s} (not in every row)" for s in table.index.difference(complete.index)]
    seeds = len(complete)
    if seeds < MIN_SEEDS:
        return Pooled(name, expected, math.nan, math.nan, math.nan, math.nan, math.nan,
                      len(kept), int(counts.max()) if len(counts) else 0,
                      left_out=tuple(left_out), paper=paper, margin=margin)
    per_seed = complete.mean(axis=1)  # every row weighs the same
    null = 0.0 if margin is None else -expected * margin
    estimate, low, high, p = (float(x[0]) for x in seed_t(per_seed.to_numpy()[None, :], null))
    if limits is not None and not math.isnan(p):
        low, high = max(low, limits[0]), min(high, limits[1])
    if margin is not None and not math.isnan(p):  # one-sided: better than -margin
        t_side = np.sign(estimate - null) == expected
        p = p / 2 if t_side else 1 - p / 2
    by_row = {r: complete[r].to_numpy(float) for r in complete.columns}
    contrary = tuple(sorted(str(r) for r, v in by_row.items()
                            if np.all(np.sign(v) == -expected)))
    steady = tuple(sorted((str(r), float(v[0])) for r, v in by_row.items() if np.ptp(v) == 0))
    return Pooled(name, expected, estimate, low, high, p, sign_flip_seeds(per_seed),
                  complete.shape[1], seeds, tuple(map(float, per_seed)),
                  tuple(per_seed.index), contrary, steady, tuple(left_out), paper, margin)


# ---- a claim: every effect at once ------------------------------------------------------------
def joint_power(effects: list[Pooled], truths: list[float], seeds: int | None = None) -> float:
    """The power of the claim's intersection-union test: that every effect is found (a sign
    effect significant in its predicted direction; a non-inferiority effect clear of -margin)
    when effect i is truly ``truths[i]``, with ``seeds`` seeds (this n by default). By
    simulation (JOINT_DRAWS studies, fixed seed) from a normal with the effects' observed
    covariance over the seeds they share (their variances alone where fewer than MIN_SEEDS
    seeds are shared)."""
    tested = [e for e in effects if e.tested]
    if not tested or len(tested) != len(effects):
        return math.nan
    n = seeds or min(e.seeds for e in effects)
    if len(effects) == 1:  # one effect: its own power, exactly
        return effects[0].power(truths[0], n)
    cov = _covariance(effects)
    if not np.all(np.diag(cov) > 0):
        return math.nan
    rng = np.random.default_rng(JOINT_SEED)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    w, v = np.linalg.eigh(corr)
    root = v * np.sqrt(np.clip(w, 0, None))
    z = rng.standard_normal((JOINT_DRAWS, n, len(effects))) @ root.T * sd
    draws = z + np.asarray(truths, float)
    found = np.ones(JOINT_DRAWS, bool)
    for i, e in enumerate(effects):
        null = 0.0 if e.margin is None else -e.expected * e.margin
        est, low, high, _ = seed_t(draws[:, :, i], null)
        if e.margin is None:
            found &= (low > 0) if e.expected > 0 else (high < 0)
        else:
            found &= (low > null) if e.expected > 0 else (high < null)
    return float(found.mean())


def joint_seeds(effects: list[Pooled], truths: list[float]) -> int | None:
    """The fewest seeds with joint power >= POWER (None: out of reach, or no power)."""
    if math.isnan(joint_power(effects, truths, MIN_SEEDS)):
        return None
    return _first_seeds(lambda n: joint_power(effects, truths, n))


def _covariance(effects: list[Pooled]) -> np.ndarray:
    frame = pd.DataFrame({i: pd.Series(e.per_seed, index=list(e.seed_ids))
                          for i, e in enumerate(effects)}).dropna()
    if len(frame) >= MIN_SEEDS:
        return np.atleast_2d(np.cov(frame.to_numpy().T, ddof=1))
    return np.diag([e.sd ** 2 for e in effects])


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


RHO = (-1.0, 1.0)  # a correlation's limits
