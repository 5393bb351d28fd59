"""The verdict rule's calibration, by simulation: null studies through the report's own test and
claim rule (pooled.seed_t, pooled.decide_codes), vectorised over thousands of studies.

A study: for each of a claim's effects, a value per seed and row, with rows correlated within
a seed (a seed's rows share its noisy labels, its teacher, initialisation and data order). The
design effect (the variance of a seed's mean over the rows divided by what it would be with
independent rows, docs/claims.md) is 1 + (rows - 1) x ICC; a study at design effect D has
ICC = (D - 1) / (rows - 1). A claim's effects are correlated too (they share arms: 0.5).

A study that adds seeds (grid.add_seeds) is simulated look by look through the same
sequential.look_codes the report and the driver use (``sequential``): its false-positive rate
over all the looks, and the seeds it saves against the fixed design.

`python -m sweeps.report.simulate` prints the tables docs/claims.md quotes;
tests/test_calibration.py holds the rule to them.
"""

from __future__ import annotations

import math

import numpy as np

from .pooled import decide_codes, seed_t
from .sequential import FUTILE, boundaries, fractions_of, look_codes
from .stats import ALPHA

EFFECT_CORRELATION = 0.5  # between a claim's effects (they share an arm)

# Each claim as rows per effect and the signs it predicts, in the two designs the project runs:
# the demo (sweeps/configs/digits.yaml: 4 students, noise 0 and 0.4, KL tau 0.5/4/20/inf, MSE;
# C6 over 5 settings x 2 noise rates) and the paper's grid (sweeps/configs/cifar100-paper.yaml:
# 8 students, 4 noise rates, 8 KL taus; C6 over 9 settings x 4 noise rates).
STRUCTURES: dict[str, dict[str, tuple[int, list[int]]]] = {
    "demo": {"C1": (8, [-1] * 5), "C2": (4, [+1] * 5), "C3": (8, [-1]),
             "C4": (8, [+1] * 4 + [-1]), "C5": (4, [+1] * 3), "C6": (10, [+1])},
    "paper grid": {"C1": (32, [-1] * 9), "C2": (8, [+1] * 9), "C3": (32, [-1]),
                   "C4": (32, [+1] * 8 + [-1]), "C5": (24, [+1] * 3), "C6": (36, [+1])},
}


def studies(rng: np.random.Generator, n: int, seeds: int, rows: int, effects: int,
            design_effect: float, mean=0.0) -> np.ndarray:
    """Values (n studies, seeds, rows, effects): unit variance per value, ICC from the design
    effect, effects correlated EFFECT_CORRELATION; ``mean`` (per effect) added."""
    icc = 0.0 if rows == 1 else min(1.0, (design_effect - 1) / (rows - 1))
    shared = rng.standard_normal((n, seeds, 1, 1))  # common to a seed's effects and rows
    own = rng.standard_normal((n, seeds, 1, effects))  # a seed's, per effect
    seed_part = math.sqrt(EFFECT_CORRELATION) * shared + math.sqrt(1 - EFFECT_CORRELATION) * own
    cell = rng.standard_normal((n, seeds, rows, effects))
    return math.sqrt(icc) * seed_part + math.sqrt(1 - icc) * cell + np.asarray(mean, float)


def verdicts(values: np.ndarray, expected) -> np.ndarray:
    """The report's rule on simulated studies: each seed's effect the mean over the rows, the
    t over seeds per effect, the claim's verdict code (1, -1, 0) per study."""
    per_seed = values.mean(axis=2)  # (n, seeds, effects)
    est, _, _, p = seed_t(np.moveaxis(per_seed, 1, -1))  # over seeds: (n, effects)
    return decide_codes(est, p, expected)


def false_positive_rate(claim: tuple[int, list[int]], seeds: int, design_effect: float,
                        n: int = 4000, seed: int = 0) -> float:
    """Under the null (every effect 0): the share of studies with a verdict other than
    inconclusive."""
    rows, expected = claim
    rng = np.random.default_rng(seed)
    codes = verdicts(studies(rng, n, seeds, rows, len(expected), design_effect), expected)
    return float(np.mean(codes != 0))


def least_favourable_rate(claim: tuple[int, list[int]], seeds: int, design_effect: float,
                          n: int = 4000, seed: int = 0) -> float:
    """An intersection-union claim's worst null: one effect 0, the others far in the predicted
    direction; the share of studies called consistent."""
    rows, expected = claim
    mean = np.array(expected, float) * 50.0
    mean[0] = 0.0
    rng = np.random.default_rng(seed)
    codes = verdicts(studies(rng, n, seeds, rows, len(expected), design_effect, mean), expected)
    return float(np.mean(codes == 1))


def power(claim: tuple[int, list[int]], seeds: int, design_effect: float, effect_sd: float,
          n: int = 4000, seed: int = 0) -> float:
    """The claim found (consistent) when every effect is ``effect_sd`` standard deviations of a
    seed's effect in its predicted direction."""
    rows, expected = claim
    icc = 0.0 if rows == 1 else min(1.0, (design_effect - 1) / (rows - 1))
    sd_seed = math.sqrt(icc + (1 - icc) / rows)  # the sd of a seed's mean over the rows
    mean = np.array(expected, float) * effect_sd * sd_seed
    rng = np.random.default_rng(seed)
    codes = verdicts(studies(rng, n, seeds, rows, len(expected), design_effect, mean), expected)
    return float(np.mean(codes == 1))


def look_sizes(first: int, per_look: int, up_to: int) -> list[int]:
    """Seeds at each look of a study that adds seeds (grid.add_seeds), cumulative."""
    sizes = [first]
    while sizes[-1] < up_to:
        sizes.append(min(sizes[-1] + per_look, up_to))
    return sizes


def sequential(claim: tuple[int, list[int]], first: int, per_look: int, up_to: int,
               design_effect: float, n: int = 4000, seed: int = 0, mean=0.0,
               futility: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Studies that add seeds (the report's own rule, sequential.look_codes, look by look):
    each study's final code (1, -1, 0 inconclusive, FUTILE) and the seeds it used."""
    rows, expected = claim
    rng = np.random.default_rng(seed)
    values = studies(rng, n, up_to, rows, len(expected), design_effect, mean)
    per_seed = values.mean(axis=2)  # (n, seeds, effects)
    sizes = look_sizes(first, per_look, up_to)
    fractions = fractions_of(sizes, up_to)
    final = boundaries(fractions)[-1]
    code, used, crossed = np.zeros(n, int), np.full(n, up_to), None
    for k, size in enumerate(sizes):
        est, _, _, p = seed_t(np.moveaxis(per_seed[:, :size], 1, -1))
        last = k == len(sizes) - 1
        c, crossed = look_codes(est, p, expected, sizes, up_to, crossed,
                                None if last or not futility else final, k)
        new = (code == 0) & (c != 0)
        code[new], used[new] = c[new], size
    return code, used


def sequential_false_positive_rate(claim, first: int, per_look: int, up_to: int,
                                   design_effect: float, n: int = 4000, seed: int = 0) -> float:
    """Under the null: the share of sequential studies decided either way."""
    code, _ = sequential(claim, first, per_look, up_to, design_effect, n, seed)
    return float(np.mean((code == 1) | (code == -1)))


def sized_effect(claim: tuple[int, list[int]], seeds: int, design_effect: float,
                 target: float = 0.8, n: int = 2000) -> float:
    """The effect (sd of a seed's effect, every effect alike) the fixed design of ``seeds``
    seeds finds with ``target`` power: what a study sized for the paper's effect assumes."""
    lo, hi = 0.0, 10.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power(claim, seeds, design_effect, mid, n) >= target else (mid, hi)
    return hi


def savings(claim, first: int, per_look: int, up_to: int, design_effect: float,
            effect_sd: float, n: int = 4000) -> tuple[float, float, float]:
    """At every effect ``effect_sd`` sd of a seed's effect in its predicted direction: the
    sequential study's power (consistent), its expected seeds, and the fixed design's power
    with ``up_to`` seeds."""
    rows, expected = claim
    icc = 0.0 if rows == 1 else min(1.0, (design_effect - 1) / (rows - 1))
    mean = np.array(expected, float) * effect_sd * math.sqrt(icc + (1 - icc) / rows)
    code, used = sequential(claim, first, per_look, up_to, design_effect, n, 1, mean)
    return (float(np.mean(code == 1)), float(used.mean()),
            power(claim, up_to, design_effect, effect_sd, n, 1))


def mc_se(rate: float = ALPHA, n: int = 4000) -> float:
    return math.sqrt(rate * (1 - rate) / n)


def main() -> None:  # pragma: no cover - prints docs/claims.md's tables
    seeds, effects = (3, 5, 10), (1.5, 2.0, 3.0)
    print(f"false-positive rate under the null (n = 4000 studies, MC SE {mc_se():.4f}); "
          "max over design effects 1-4:")
    for design, claims in STRUCTURES.items():
        for name, claim in claims.items():
            rates = [max(false_positive_rate(claim, s, d) for d in (1, 2, 3, 4)
                         if d <= claim[0]) for s in range(3, 11)]
            worst = [least_favourable_rate(claim, s, 4) for s in (3, 10)]
            print(f"  {design:10s} {name}: rows {claim[0]:2d}, effects {len(claim[1])}: "
                  f"{' '.join(f'{r:.3f}' for r in rates)} (3..10 seeds); least favourable "
                  f"(one effect 0): {worst[0]:.3f} / {worst[1]:.3f} at 3 / 10 seeds")
    print("power (the claim consistent) with every effect at k sd of a seed's effect, "
          "design effect 2:")
    for design, claims in STRUCTURES.items():
        for name, claim in claims.items():
            cells = [f"{k:g} sd: " + "/".join(f"{power(claim, s, 2, k):.2f}" for s in seeds)
                     for k in effects]
            print(f"  {design:10s} {name}: " + "; ".join(cells) + " at 3/5/10 seeds")

    print(f"adding seeds, 3 first, up to 10 (n = 4000 studies, MC SE {mc_se():.4f}): "
          "false-positive rate under the null, max over design effects 1-4, one seed a look / "
          "two a look:")
    for design, claims in STRUCTURES.items():
        for name, claim in claims.items():
            rates = [max(sequential_false_positive_rate(claim, 3, k, 10, d) for d in (1, 2, 3, 4)
                         if d <= claim[0]) for k in (1, 2)]
            print(f"  {design:10s} {name}: {rates[0]:.3f} / {rates[1]:.3f}")
    print("adding seeds, 3 first, one a look, up to 10, design effect 2; at the effect the fixed "
          "design of 10 seeds finds with 80% power: power sequential / fixed, expected seeds "
          "(saved of 10); under the null: expected seeds, share stopped for futility:")
    for design, claims in STRUCTURES.items():
        for name, claim in claims.items():
            k = sized_effect(claim, 10, 2)
            found, used, fixed = savings(claim, 3, 1, 10, 2, k)
            code, used0 = sequential(claim, 3, 1, 10, 2, 4000, 2)
            print(f"  {design:10s} {name}: effect {k:.2f} sd: power {found:.2f} / {fixed:.2f}, "
                  f"{used:.1f} seeds ({10 - used:.1f} saved); null: {used0.mean():.1f} seeds, "
                  f"{np.mean(code == FUTILE):.2f} futile")

if __name__ == "__main__":  # pragma: no cover
    main()
