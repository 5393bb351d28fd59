"""A study that adds seeds until each claim is decided (grid.add_seeds): the group-sequential
rule, pure, and its replay over stored results (the driver's next look and the report alike).

The rule (docs/claims.md, "adding seeds", states it for a reader):
- Looks: grid.seeds is the first; each later look adds add_seeds.per_look seeds, up to
  add_seeds.up_to (N). The information fraction at a look is its seeds over N (planned, so the
  boundaries are known before any result; the last look's is 1).
- Each effect of a claim is the seed-level t of pooled.py. Its two-sided boundary at a look
  comes from Lan-DeMets alpha spending with the O'Brien-Fleming-type function
  alpha(t) = 4 - 4 Phi(z_{1 - alpha/4} / sqrt(t)) (two-sided; alpha at t = 1): nearly nothing
  is spent early, so the last look's boundary is close to the fixed design's. The boundaries
  found for the t itself: under the null the joint law of the looks' t statistics is free of
  the seeds' spread, so the |t| boundary spending exactly what alpha(t) adds at each look is
  computed once on simulated null sequences (``nominal``, fixed seed) and compared on the p
  scale (an effect's p against the look's nominal level). ``boundaries`` gives the same
  spending's z boundaries (the normal case, by numerical integration: the published values),
  which futility uses.
- Efficacy: the claim is "consistent" once every effect has crossed its boundary in the
  predicted direction (at this look or an earlier one: each effect's group-sequential test at
  alpha, joined as an intersection-union test, no adjustment); "inconsistent" when an effect
  crosses against the claim after Holm over the claim's effects (step j at the boundary for
  alpha / (m - j + 1)). Either stops the claim.
- Futility (non-binding: the boundaries ignore it, so it can only lower the type-I error):
  the claim stops "futile" when, under the current trend, its conditional power of being
  decided at the last look is below FUTILITY in both directions (the least of its effects'
  towards "consistent"; the most towards "inconsistent").
- The last look (N seeds) undecided: "budget spent", inconclusive.

The array functions take many studies at once: the report runs them on one, the simulation
(simulate.py, tests/test_calibration.py) on thousands.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from ..domain.looks import Strand, strands
from .stats import ALPHA, CONSISTENT, INCONCLUSIVE, INCONSISTENT

FUTILITY = 0.05  # a claim whose conditional power is below this both ways stops (docs/claims.md)
GRID = 401  # points of the numerical integration over the continuation region
FUTILE, SPENT = 2, 3  # codes beside 1 (consistent), -1 (inconsistent), 0 (undecided)


# ---- alpha spending and the boundaries ---------------------------------------------------------
def spent(t: float, alpha: float = ALPHA) -> float:
    """Two-sided alpha spent by information fraction ``t`` (Lan-DeMets, O'Brien-Fleming type)."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    return float(4 - 4 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 4) / math.sqrt(t)))


def boundaries(fractions: tuple[float, ...], alpha: float = ALPHA) -> tuple[float, ...]:
    """The two-sided z boundaries c_k at the looks' information ``fractions`` (increasing): the
    chance of |Z_k| >= c_k at look k, having crossed none before, is what the spending
    function adds at look k (under the null; Z_k = W(t_k) / sqrt(t_k), W a Brownian motion).
    By recursive numerical integration of the score's density on the continuation region; c_k
    depends on the looks up to k only (each prefix is computed once)."""
    return _state(tuple(min(float(f), 1.0) for f in fractions), alpha)[0]


@functools.lru_cache(maxsize=4096)
def _state(fractions: tuple[float, ...], alpha: float):
    """(boundaries, nodes, density, t, spent) after the looks ``fractions``."""
    if not fractions:
        return (), None, None, 0.0, 0.0
    out, nodes, density, previous_t, previous_spent = _state(fractions[:-1], alpha)
    t = fractions[-1]
    target = spent(t, alpha) - previous_spent
    if t <= previous_t or target <= 0:
        c = out[-1] if out else math.inf
        return (*out, c), nodes, density, previous_t, previous_spent
    if density is None:  # the first look: Z is standard normal
        c = float(stats.norm.isf(target / 2))
        b = c * math.sqrt(t)
        nodes = np.linspace(-b, b, GRID)
        return (c,), nodes, stats.norm.pdf(nodes, scale=math.sqrt(t)), t, spent(t, alpha)
    sd = math.sqrt(t - previous_t)
    mass = _weights(nodes) * density

    def cross(c):
        b = c * math.sqrt(t)
        return float(np.sum(mass * (stats.norm.sf((b - nodes) / sd)
                                    + stats.norm.cdf((-b - nodes) / sd))))

    c = 40.0 if cross(40.0) >= target else float(
        optimize.brentq(lambda c: cross(c) - target, 1e-6, 40.0, xtol=1e-10))
    b = c * math.sqrt(t)
    new = np.linspace(-b, b, GRID)
    z = (new[:, None] - nodes[None, :]) / sd
    density = np.exp(-0.5 * z * z) / (sd * math.sqrt(2 * math.pi)) @ mass
    return (*out, c), new, density, t, spent(t, alpha)


def _weights(nodes: np.ndarray) -> np.ndarray:
    """Trapezoid weights of a uniform grid."""
    w = np.full(len(nodes), nodes[1] - nodes[0])
    w[[0, -1]] /= 2
    return w


CALIBRATION_DRAWS, CALIBRATION_SEED = 200_000, 20261207


def nominal(sizes: tuple[int, ...], up_to: int, alpha: float = ALPHA,
            look: int | None = None) -> float:
    """The two-sided nominal level (a p-value threshold) of the seed-level t at look ``look``
    (0-based; None: the last) of the looks of cumulative ``sizes`` seeds (``levels``)."""
    out = levels(tuple(int(n) for n in sizes), int(up_to), float(alpha))
    return out[-1 if look is None else look]


@functools.lru_cache(maxsize=1024)
def levels(sizes: tuple[int, ...], up_to: int, alpha: float = ALPHA) -> tuple[float, ...]:
    """The two-sided nominal levels (p-value thresholds) of the seed-level t at the looks of
    cumulative ``sizes`` seeds (information sizes / up_to); a look's depends on the looks up to
    it only. Exact for the t: under the
    null the joint law of a study's t statistics over its looks is free of the seeds' spread,
    so the |t| boundary that spends what alpha(t) adds at each look is found on
    CALIBRATION_DRAWS null sequences (fixed seed: the same levels every time; each look's
    increment to within about sqrt(alpha / draws) = 0.0005), and given as its p (t, n - 1 df).
    A look with nothing to spend has level 0."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    total = np.zeros(CALIBRATION_DRAWS)  # each sequence's sum and sum of squares so far
    squares = np.zeros(CALIBRATION_DRAWS)
    alive = np.ones(CALIBRATION_DRAWS, bool)
    out, before, previous_spent = [], 0, 0.0
    for n in sizes:
        m = n - before
        if m > 0:  # a block of m seeds: its sum ~ N(0, m); its own centred squares ~ chi2(m - 1)
            block = rng.standard_normal(CALIBRATION_DRAWS) * math.sqrt(m)
            within = rng.chisquare(m - 1, CALIBRATION_DRAWS) if m > 1 else 0.0
            squares += within + block ** 2 / m
            total += block
        before = max(before, n)
        t_frac = min(n / up_to, 1.0)
        target = spent(t_frac, alpha) - previous_spent
        previous_spent = spent(t_frac, alpha)
        if n < 2 or target <= 0:
            out.append(0.0)
            continue
        mean = total / n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.abs(mean) / np.sqrt((squares - n * mean ** 2) / (n - 1) / n)
        k = int(round(target * CALIBRATION_DRAWS))
        live = np.sort(t[alive])
        if k <= 0 or len(live) == 0:
            out.append(0.0)
            continue
        c = float(live[max(len(live) - k, 0)])
        alive &= t < c
        out.append(float(2 * stats.t.sf(c, n - 1)))
    return tuple(out)


# ---- the rule, on arrays of studies -----------------------------------------------------------
def look_codes(estimate, p, expected, sizes, up_to: int, crossed=None,
               final: float | None = None, look: int | None = None):
    """One look of the rule over studies: ``estimate`` and ``p`` (studies, effects), the
    seed-level t's two-sided p; ``sizes`` the study's looks' seeds, cumulative, of ``up_to``;
    ``look`` this one's index (None: the last); ``crossed`` (studies, effects): the effects
    that crossed towards the claim at an earlier look; ``final``: the last look's z boundary
    (for futility; None: no futility). Returns the codes (1 consistent, -1 inconsistent,
    FUTILE, 0 on) and ``crossed`` updated."""
    est, p = np.atleast_2d(np.asarray(estimate, float)), np.atleast_2d(np.asarray(p, float))
    expected = np.asarray(expected, float)
    m = est.shape[1]
    sizes = tuple(int(n) for n in sizes)
    look = len(sizes) - 1 if look is None else look
    level = nominal(sizes, up_to, ALPHA, look)
    tested = ~np.isnan(p)
    p = np.where(tested, p, 1.0)
    right = np.sign(est) == expected
    crossed = np.zeros(est.shape, bool) if crossed is None else np.asarray(crossed, bool)
    crossed = crossed | ((p < level) & right)
    consistent = np.all(crossed, axis=1)
    # Holm over the claim's effects, each step at its own alpha's boundary
    steps = np.array([nominal(sizes, up_to, ALPHA / (m - j), look) for j in range(m)])
    order = np.argsort(p, axis=1, kind="stable")
    passed = np.cumprod(np.take_along_axis(p, order, axis=1) < steps, axis=1).astype(bool)
    rejected = np.empty_like(passed)
    np.put_along_axis(rejected, order, passed, axis=1)
    inconsistent = np.any(rejected & ~right & (est != 0), axis=1)
    codes = np.where(inconsistent, -1, np.where(consistent, 1, 0))
    t = min(sizes[look] / up_to, 1.0)
    if final is not None and t < 1:
        z = stats.norm.isf(p / 2) * np.where(right, 1.0, -1.0)  # towards the claim
        drift = z / math.sqrt(t)  # the final Z's mean under the current trend
        sd = math.sqrt(1 - t)
        towards = np.where(crossed | ~tested, 1.0, stats.norm.sf((final - drift) / sd))
        against = np.where(tested, stats.norm.cdf((-final - drift) / sd), 0.0)
        futile = (towards.min(axis=1) < FUTILITY) & (against.max(axis=1) < FUTILITY)
        codes = np.where((codes == 0) & futile, FUTILE, codes)
    return codes, crossed


def fractions_of(sizes: list[int], up_to: int) -> tuple[float, ...]:
    """Information fractions of looks of cumulative ``sizes`` seeds."""
    return tuple(min(n / up_to, 1.0) for n in sizes)


# ---- the replay over stored results -----------------------------------------------------------
@dataclass
class Decision:
    """One claim's course in a sequential study."""

    claim: str  # "C1"
    code: int  # 1, -1, FUTILE, SPENT, or 0 (the study goes on)
    look: int  # the look it was decided at (or the last evaluated)
    looks: int  # the study's looks
    seeds: int  # the seeds its effects rest on there
    boundary: float  # the nominal two-sided level an effect's p had to go below
    alpha_spent: float  # the spending function at that look
    untestable: bool = False  # an arm is missing: no seed can decide it
    section: object = None  # the claim's section at that look (tables.Section)

    @property
    def decided(self) -> bool:
        return self.code != 0

    def verdict(self) -> str:
        """The claim's verdict with where it was reached (the boundary and the alpha spent are
        the claims table's columns, ``row``)."""
        where = f"look {self.look} of {self.looks}, {self.seeds} seeds"
        if self.untestable:
            return f"{INCONCLUSIVE}: an arm is missing (no seed can decide it)"
        if self.code == 1:
            return f"{CONSISTENT} (decided at {where})"
        if self.code == -1:
            return f"{INCONSISTENT} (decided at {where})"
        if self.code == FUTILE:
            return (f"{INCONCLUSIVE}: futile at {where} (conditional power below {FUTILITY:g} "
                    "either way)")
        if self.code == SPENT:
            return f"{INCONCLUSIVE}: the budget ran out ({where})"
        return f"{INCONCLUSIVE} so far ({where}; the study goes on)"

    def row(self) -> dict:
        """The claims table's sequential columns."""
        if self.untestable:
            return {"seeds": self.seeds, "decided_at_look": "-", "stopped": "not testable",
                    "boundary (nominal p)": "-", "alpha spent": "-"}
        return {"seeds": self.seeds,
                "decided_at_look": self.look if self.code in (1, -1, FUTILE) else "-",
                "stopped": {1: "efficacy", -1: "contrary", FUTILE: "futility",
                            SPENT: "budget ran out", 0: "going on"}[self.code],
                "boundary (nominal p)": f"{self.boundary:.3g}",
                "alpha spent": f"{self.alpha_spent:.3g}"}


def claim_strands(claim: str, spec) -> set[Strand]:
    """The strands (a chain at a noise rate) a claim's evidence comes from (its seeds are
    added there)."""
    every = set(strands(spec))
    if claim == "C2":
        return {lin for lin in every if lin[1] == 0}
    if claim == "C5":
        return {lin for lin in every if lin[1] > 0}
    if claim == "C6":
        chains = {tuple(c) for c in spec.chains}
        used = set()
        for c in (c for c in chains if len(c) == 3):
            used |= {c, (c[0], c[2]), (c[1], c[2])} & chains
        return {lin for lin in every if lin[0] in used}
    return every


def primary_effects(section) -> list:
    """A claim's effects in its verdict (the Pooled of its non-secondary parts)."""
    names = section.lead.index if section.lead is not None and not section.lead.empty else []
    out = []
    for e in section.effects:
        if e.margin is not None:
            continue
        line = section.lead.loc[e.name] if e.name in names else None
        verdict = line["verdict"] if isinstance(line, pd.Series) else ""
        if isinstance(verdict, str) and "secondary" in verdict:
            continue
        out.append(e)
    return out


def replay(df: pd.DataFrame, spec, judge_claims) -> list[Decision]:
    """Every claim's course over the study's looks, from the stored results ``df`` alone (the
    done trials): look k sees the seeds of looks 1..k. ``judge_claims``: df -> the claims'
    sections (claims.claims with its margin). A look whose seeds have no trial yet ends the
    replay (the study is going on). The same results give the same decisions, whoever asks."""
    looks = spec.grid.look_seeds()
    up_to = spec.grid.add_seeds.up_to if spec.grid.add_seeds else len(looks[0])
    sizes = np.cumsum([len(s) for s in looks]).tolist()
    planned = fractions_of(sizes, up_to)
    final = boundaries(planned)[-1]
    decided: dict[str, Decision] = {}
    crossed: dict[str, np.ndarray] = {}
    course: dict[str, Decision] = {}
    for k, seeds in enumerate(looks, 1):
        if k > 1 and not df.seed.isin(seeds).any():
            break
        shown = sorted(s for look in looks[:k] for s in look)
        sections = judge_claims(df[df.seed.isin(shown)])
        fr = planned[:k]
        for section in sections:
            name = section.title.split()[0]
            if name in decided:
                continue
            effects = primary_effects(section)
            level, spend = nominal(tuple(sizes), up_to, ALPHA, k - 1), spent(fr[-1])
            missing = not effects or any(e.rows == 0 and e.seeds == 0 for e in effects)
            seeds = min((e.seeds for e in effects if e.rows), default=0)
            if missing:
                decided[name] = course[name] = Decision(name, SPENT, k, len(looks), seeds,
                                                        level, spend, True, section)
                continue
            codes, crossed[name] = look_codes(
                [[e.estimate for e in effects]], [[e.p for e in effects]],
                [e.expected for e in effects], sizes, up_to, crossed.get(name),
                final if k < len(looks) else None, k - 1)
            code = int(codes[0])
            if code == 0 and k == len(looks):
                code = SPENT
            course[name] = Decision(name, code, k, len(looks), seeds, level, spend, False,
                                    section)
            if code != 0:
                decided[name] = course[name]
    return list(course.values())


def needed(decisions: list[Decision], spec) -> set[Strand]:
    """The strands the next look adds seeds to: those of the claims not yet decided."""
    out: set[Strand] = set()
    for d in decisions:
        if not d.decided:
            out |= claim_strands(d.claim, spec)
    return out


def sequential_sections(df: pd.DataFrame, spec, judge_claims) -> list:
    """The claims' sections of a sequential study: each at the look that decided it (the seeds
    of looks 1..k, its verdict the rule's), or at the last look the results reach."""
    out = []
    for d in replay(df, spec, judge_claims):
        section = d.section
        section.verdict = d.verdict()
        section.sequential = d.row()
        section.notes = [
            f"a sequential study (grid.add_seeds: seeds {len(spec.grid.seeds)} first, "
            f"{spec.grid.add_seeds.per_look} a look, up to {spec.grid.add_seeds.up_to}): this "
            f"claim's tables are at look {d.look} ({d.seeds} seeds); the verdict is the "
            "group-sequential rule's (O'Brien-Fleming-type alpha spending, docs/claims.md, "
            f"'adding seeds'): an effect counts where its p went below the look's boundary "
            f"{d.boundary:.3g}; the effect lines' own verdicts are the fixed design's at "
            f"{ALPHA:g}, for reference", *section.notes]
        out.append(section)
    return out


def next_look(spec, uri: str) -> tuple[set[Strand], list[str]]:
    """The driver's judge (app.sweep.run_sweep): the claims' decisions from the stored results
    file ``uri`` alone, and the strands the next look adds seeds to."""
    from ..domain.record import TrialState
    from .claims import claims
    from .load import load

    rows, _ = load([uri])
    done = rows[rows.state == TrialState.DONE]
    decisions = replay(done, spec, lambda d: claims(d, spec.report.similar_margin))
    return needed(decisions, spec), [f"{d.claim} {d.verdict()}" for d in decisions]
